"""The web app's settings, read from the environment.

The database URL is the engine's (``PGQUEUE_DATABASE_URL``); everything that only the web
layer needs is ``APP_*`` (``APP_MAX_BODY_BYTES``, ``APP_SECRET``, ``APP_RUN_WORKER`` ...).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
from pathlib import Path

import msgspec

from pgqueue.config import MIN_INTERVAL_SECONDS, Settings, check_concurrency, check_seconds, load_settings
from pgqueue.errors import ConfigError
from pgqueue.webhooks import decode_secret

MIB = 1024 * 1024


def _check_range(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        rule = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be an integer {rule}, got {value!r}")


def _check_webhook_settings(settings: AppSettings) -> None:
    for secret in settings.webhook_secrets():
        try:
            decode_secret(secret)
        except ValueError:
            raise ConfigError("APP_WEBHOOK_SECRET holds a secret that is not 'whsec_' followed by base64 "
                              "(python -c 'from pgqueue.webhooks import new_webhook_secret as n; print(n())')") from None
    for entry in settings.webhook_allowed_hosts():
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if "/" in entry or not _HOST_NAME.match(entry):
                raise ConfigError(f"APP_WEBHOOK_ALLOW_HOSTS: {entry!r} is not a host name, an IP address "
                                  "or a network") from None
    if not (math.isfinite(settings.webhook_timeout_seconds) and 0.1 <= settings.webhook_timeout_seconds <= 300):
        raise ConfigError("APP_WEBHOOK_TIMEOUT_SECONDS must be from 0.1 to 300, "
                          f"got {settings.webhook_timeout_seconds!r}")


_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")


class AppSettings(msgspec.Struct, kw_only=True):
    # PGQUEUE_DATABASE_URL: the one database of the engine and the app
    database_url: str | None = None
    # PGQUEUE_DIRECT_DATABASE_URL: the same database not through a pooler, for the event hub's
    # LISTEN (README, "Past one box"); default: database_url
    direct_database_url: str | None = None
    # APP_READ_DATABASE_URL: a read replica for the reads that may lag (GET /jobs, /stats, the
    # dashboard's overview); writes, single jobs and every event stream stay on the primary
    read_database_url: str | None = None
    # APP_READ_MAX_LAG_SECONDS: past this replica lag (or while the replica is down) those reads
    # go to the primary instead (app/replica.py)
    read_max_lag_seconds: float = 10.0
    # largest JSON request body; read in chunks and refused (413) as soon as it is exceeded
    max_body_bytes: int = MIB
    # HMAC key of the short-lived stream tokens (SSE / WebSocket). Processes that serve the same
    # users must share it; when unset each process draws a random one (fine for one process).
    secret: str = ""
    stream_token_seconds: int = 300
    # connections in the app's pool
    pool_size: int = 10
    # run a worker for the app's job kinds inside the web process (`python -m app run`)
    run_worker: bool = False
    worker_concurrency: int = 10
    # comma-separated; empty means the queues of every app kind that has a Python handler
    worker_queues: str = ""
    worker_shutdown_grace: float = 10.0
    # event streams (SSE / WebSocket): a `: keep-alive` comment after this many idle seconds,
    # the reconnect delay suggested to EventSource (`retry:`), and the events one subscriber
    # may have waiting before it must catch up from the table (see app/hub.py)
    sse_keepalive_seconds: float = 15.0
    sse_retry_ms: int = 3000
    sse_queue_size: int = 256
    # log-file ingestion (app/uploads.py, app/ingest.py): where uploads are stored
    # (APP_STORAGE_URL or PGQUEUE_STORAGE_URL: file:///abs/dir or s3://bucket/prefix with the
    # PGQUEUE_S3_* variables of pgqueue/storage.py; empty: .data/uploads in the working directory),
    # the largest upload (413 past it, enforced while streaming), and the ingest job's batch
    # size and random per-line delay (0-1 s, for demos of a slow worker; 0 = off)
    storage_url: str = ""
    max_upload_bytes: int = 100 * MIB
    ingest_batch_lines: int = 10_000
    ingest_line_delay_max_seconds: float = 0.0
    # /metrics shows every user's per-queue counts: it takes an admin's API token or this token
    # (both as `Authorization: Bearer`), unless APP_METRICS_PUBLIC opens it (a private network)
    metrics_token: str = ""
    metrics_public: bool = False
    # webhook delivery (app/kinds/webhooks.py). APP_WEBHOOK_SECRET: the signing secret(s),
    # `whsec_<base64>`, separated by spaces or commas; every one signs each delivery (several
    # while a rotation lasts). APP_WEBHOOK_ALLOW_HOSTS: comma-separated host names, IP addresses
    # or networks (10.0.0.0/8) that webhooks may reach although loopback, private or link-local.
    webhook_secret: str = ""
    webhook_allow_hosts: str = ""
    webhook_timeout_seconds: float = 15.0

    @classmethod
    def from_env(cls, **overrides: object) -> AppSettings:
        defaults: dict[str, object] = {}
        if url := os.environ.get("PGQUEUE_DATABASE_URL"):
            defaults["database_url"] = url
        if direct_url := os.environ.get("PGQUEUE_DIRECT_DATABASE_URL"):
            defaults["direct_database_url"] = direct_url
        if storage_url := os.environ.get("PGQUEUE_STORAGE_URL"):  # shared with workers (docker-compose.yml)
            defaults["storage_url"] = storage_url
        settings = load_settings(cls, "APP_", overrides, defaults)
        if not settings.secret:
            settings.secret = secrets.token_urlsafe(32)
        return settings

    def __post_init__(self) -> None:
        """Refuse values the app cannot work with, naming the variable and the rule."""
        _check_range("APP_MAX_BODY_BYTES", self.max_body_bytes, 1)
        _check_range("APP_MAX_UPLOAD_BYTES", self.max_upload_bytes, 1)
        _check_range("APP_STREAM_TOKEN_SECONDS", self.stream_token_seconds, 1, 7 * 24 * 3600)
        _check_range("APP_POOL_SIZE", self.pool_size, 1, 1000)
        check_concurrency(self.worker_concurrency, "APP_WORKER_CONCURRENCY")
        check_seconds("APP_WORKER_SHUTDOWN_GRACE", self.worker_shutdown_grace, 0.0)
        check_seconds("APP_SSE_KEEPALIVE_SECONDS", self.sse_keepalive_seconds, MIN_INTERVAL_SECONDS)
        check_seconds("APP_READ_MAX_LAG_SECONDS", self.read_max_lag_seconds, 0.0)
        _check_range("APP_SSE_RETRY_MS", self.sse_retry_ms, 1, 24 * 3600 * 1000)
        _check_range("APP_SSE_QUEUE_SIZE", self.sse_queue_size, 1, 1_000_000)
        _check_range("APP_INGEST_BATCH_LINES", self.ingest_batch_lines, 1, 100_000)
        if self.metrics_token and len(self.metrics_token) < 16:
            raise ConfigError("APP_METRICS_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        _check_webhook_settings(self)
        delay = self.ingest_line_delay_max_seconds
        if not (math.isfinite(delay) and 0 <= delay <= 1):
            raise ConfigError(f"APP_INGEST_LINE_DELAY_MAX_SECONDS must be from 0 to 1, got {delay!r}")

    def upload_storage_url(self) -> str:
        return self.storage_url or Path(".data", "uploads").resolve().as_uri()

    def engine_settings(self) -> Settings:
        """The engine's settings (lease, poll, retention from PGQUEUE_*), with our database URLs."""
        return Settings.from_env(database_url=self.database_url, direct_database_url=self.direct_database_url)

    def webhook_secrets(self) -> list[str]:
        return [part for part in re.split(r"[\s,]+", self.webhook_secret) if part]

    def webhook_allowed_hosts(self) -> frozenset[str]:
        """APP_WEBHOOK_ALLOW_HOSTS as lower-case entries (a trailing dot dropped)."""
        return frozenset(part.strip().lower().rstrip(".") for part in self.webhook_allow_hosts.split(",")
                         if part.strip())

    def queues_to_work(self, default: list[str]) -> list[str]:
        named = [name.strip() for name in self.worker_queues.split(",") if name.strip()]
        return named or default
