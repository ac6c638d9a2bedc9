"""Settings read from the environment (PGQUEUE_*). Imports nothing else of ours but errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec

from pgqueue.errors import ConfigError


def validate_database_url(url: str) -> str:
    """Reject a malformed PostgreSQL URL with a message that names the problem."""
    if not url:
        raise ConfigError("database URL is empty")
    if "://" not in url:
        # libpq key=value strings are fine too ("host=... dbname=...")
        if "=" in url:
            return url
        raise ConfigError(f"malformed database URL {url!r}: expected postgresql://user@host:port/dbname")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"malformed database URL: scheme must be postgresql://, got {parts.scheme + '://'!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"malformed database URL: {exc}") from None
    return url


class Settings(msgspec.Struct, kw_only=True):
    database_url: str | None = None
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 2.0
    # how often the elected worker rescues expired leases and prunes
    maintenance_seconds: float = 5.0
    # retention of finished jobs (and their events), see README "What we keep"
    keep_succeeded_seconds: float = 24 * 3600
    keep_failed_seconds: float = 7 * 24 * 3600
    keep_events_seconds: float = 7 * 24 * 3600

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        return load_settings(cls, "PGQUEUE_", overrides)


S = TypeVar("S", bound=msgspec.Struct)


def load_settings(cls: type[S], prefix: str, overrides: Mapping[str, object],
                  defaults: Mapping[str, object] | None = None) -> S:
    """A settings Struct from ``defaults``, then environment variables ``<prefix><FIELD>``, then
    the non-None ``overrides``; a bad value or database URL is a ConfigError naming it."""
    values: dict[str, object] = dict(defaults or {})
    for field in cls.__struct_fields__:
        raw = os.environ.get(prefix + field.upper())
        if raw is not None and raw != "":
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad setting ({prefix}*): {exc}") from None
    if url := getattr(settings, "database_url", None):
        validate_database_url(url)
    return settings
