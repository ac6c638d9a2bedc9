"""The web app's settings, read from the environment.

The database URL is the engine's (``PGQUEUE_DATABASE_URL``); everything that only the web
layer needs is ``APP_*`` (``APP_MAX_BODY_BYTES``, ``APP_SECRET``, ``APP_RUN_WORKER`` ...).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from pgqueue.config import Settings, load_settings
from pgqueue.errors import ConfigError

MIB = 1024 * 1024


class AppSettings(msgspec.Struct, kw_only=True):
    # PGQUEUE_DATABASE_URL: the one database of the engine and the app
    database_url: str | None = None
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

    @classmethod
    def from_env(cls, **overrides: object) -> AppSettings:
        defaults: dict[str, object] = {}
        if url := os.environ.get("PGQUEUE_DATABASE_URL"):
            defaults["database_url"] = url
        if storage_url := os.environ.get("PGQUEUE_STORAGE_URL"):  # shared with workers (docker-compose.yml)
            defaults["storage_url"] = storage_url
        settings = load_settings(cls, "APP_", overrides, defaults)
        if not settings.secret:
            settings.secret = secrets.token_urlsafe(32)
        if settings.max_body_bytes < 1:
            raise ConfigError("APP_MAX_BODY_BYTES must be at least 1")
        if settings.max_upload_bytes < 1:
            raise ConfigError("APP_MAX_UPLOAD_BYTES must be at least 1")
        if not 1 <= settings.ingest_batch_lines <= 100_000:
            raise ConfigError("APP_INGEST_BATCH_LINES must be from 1 to 100000")
        if not 0 <= settings.ingest_line_delay_max_seconds <= 1:
            raise ConfigError("APP_INGEST_LINE_DELAY_MAX_SECONDS must be from 0 to 1")
        return settings

    def upload_storage_url(self) -> str:
        return self.storage_url or Path(".data", "uploads").resolve().as_uri()

    def engine_settings(self) -> Settings:
        """The engine's settings (lease, poll, retention from PGQUEUE_*), with our database URL."""
        return Settings.from_env(database_url=self.database_url)

    def queues_to_work(self, default: list[str]) -> list[str]:
        named = [name.strip() for name in self.worker_queues.split(",") if name.strip()]
        return named or default
