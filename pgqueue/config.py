"""Settings read from the environment (PGQUEUE_*). Imports nothing else of ours but errors."""

from __future__ import annotations

import math
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


# PGQUEUE_POOLER: is PGQUEUE_DATABASE_URL a connection pooler (pgqueue/db.py, README "Past one box")?
POOLER_MODES = ("auto", "pgbouncer", "none")


class Settings(msgspec.Struct, kw_only=True):
    database_url: str | None = None
    # what needs a session of its own (LISTEN, the maintenance leader's advisory lock, the
    # heartbeat, migrations) connects here, never through a pooler; default: database_url
    direct_database_url: str | None = None
    # auto: find out per connection (one round trip); pgbouncer / none: say so
    pooler: str = "auto"
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 2.0
    # how often the elected worker rescues expired leases and prunes
    maintenance_seconds: float = 5.0
    # retention of finished jobs (and their events), see README "What we keep"
    keep_succeeded_seconds: float = 24 * 3600
    keep_failed_seconds: float = 7 * 24 * 3600
    keep_events_seconds: float = 7 * 24 * 3600
    # events are partitioned by UTC day; the maintenance leader keeps this many days of
    # partitions ready ahead of today (README "History that grows for years")
    event_partitions_ahead_days: int = 7
    # the largest payload enqueue accepts, measured as JSON (the REST layer's APP_MAX_BODY_BYTES
    # default): a job row is read by every claim, big inputs belong in storage (pgqueue/storage.py)
    max_payload_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        check_engine_settings(self)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        return load_settings(cls, "PGQUEUE_", overrides)

    def session_url(self) -> str | None:
        """Where connections that need a session of their own go: the direct URL, else the main one."""
        return self.direct_database_url or self.database_url


# Floors that keep the worker sane: a lease shorter than a second expires under a normal
# commit hiccup, a heartbeat faster than 50 ms costs hundreds of commits a second per worker.
MIN_LEASE_SECONDS = 1.0
MIN_HEARTBEAT_SECONDS = 0.05
MIN_INTERVAL_SECONDS = 0.01  # poll and maintenance: anything shorter is a busy loop
# A heartbeat at most a third of the lease: two missed beats still leave the lease held.
HEARTBEATS_PER_LEASE = 3
MAX_CONCURRENCY = 1000


def check_seconds(name: str, value: float, minimum: float, *, inclusive: bool = True) -> float:
    """``value`` if it is a finite number of seconds >= (or >) ``minimum``, else a ConfigError naming ``name``."""
    rule = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
        raise ConfigError(f"{name} must be a finite number of seconds {rule}, got {value!r}")
    return value


def check_concurrency(value: int, name: str = "concurrency") -> int:
    """``value`` if it is a whole number of job slots from 1 to MAX_CONCURRENCY, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(f"{name} must be an integer from 1 to {MAX_CONCURRENCY}, got {value!r}")
    return value


def check_engine_settings(settings: Settings) -> None:
    """Refuse timings the worker cannot keep (a negative lease, a zero heartbeat, ...)."""
    check_seconds("PGQUEUE_LEASE_SECONDS", settings.lease_seconds, MIN_LEASE_SECONDS)
    check_seconds("PGQUEUE_HEARTBEAT_SECONDS", settings.heartbeat_seconds, MIN_HEARTBEAT_SECONDS)
    check_seconds("PGQUEUE_POLL_SECONDS", settings.poll_seconds, MIN_INTERVAL_SECONDS)
    check_seconds("PGQUEUE_MAINTENANCE_SECONDS", settings.maintenance_seconds, MIN_INTERVAL_SECONDS)
    if settings.pooler not in POOLER_MODES:
        raise ConfigError(f"PGQUEUE_POOLER must be one of {', '.join(POOLER_MODES)}, got {settings.pooler!r}")
    if isinstance(settings.max_payload_bytes, bool) or settings.max_payload_bytes < 1:
        raise ConfigError(f"PGQUEUE_MAX_PAYLOAD_BYTES must be an integer >= 1, got {settings.max_payload_bytes!r}")
    ahead = settings.event_partitions_ahead_days
    if isinstance(ahead, bool) or not isinstance(ahead, int) or not 1 <= ahead <= 366:
        raise ConfigError(f"PGQUEUE_EVENT_PARTITIONS_AHEAD_DAYS must be an integer from 1 to 366, got {ahead!r}")
    for field in ("keep_succeeded_seconds", "keep_failed_seconds", "keep_events_seconds"):
        check_seconds(f"PGQUEUE_{field.upper()}", getattr(settings, field), 0.0)
    if settings.heartbeat_seconds * HEARTBEATS_PER_LEASE > settings.lease_seconds:
        raise ConfigError(
            f"PGQUEUE_HEARTBEAT_SECONDS must be at most a third of PGQUEUE_LEASE_SECONDS (so a couple of missed "
            f"beats do not lose the lease), got heartbeat {settings.heartbeat_seconds:g} s for a "
            f"{settings.lease_seconds:g} s lease")


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
    for field in ("database_url", "direct_database_url", "read_database_url"):
        if url := getattr(settings, field, None):
            validate_database_url(url)
    return settings
