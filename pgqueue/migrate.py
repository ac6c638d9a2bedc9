"""Applies the yoyo migrations in schema/ (engine and app), safely from many processes at once."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pgqueue.config import validate_database_url
from pgqueue.db import connect_sync
from pgqueue.errors import ConfigError, SchemaNotMigrated
from pgqueue.store import Store

# Concurrent `migrate` runs queue up behind this session advisory lock: yoyo's own lock
# table cannot protect the very first run, which creates it.
MIGRATION_LOCK_KEY = 0x70677173  # "pgqs"


def schema_dir() -> Path:
    for candidate in (Path(__file__).parent.parent / "schema", Path(__file__).parent / "schema"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("schema/ directory with the migrations not found")


def _yoyo_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("migrate needs a postgresql:// URL")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


@contextlib.contextmanager
def _backend_and_migrations(url: str, directory: Path | None):
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(validate_database_url(url)))
    try:
        yield backend, read_migrations(str(directory or schema_dir()))
    finally:
        # yoyo never closes its connection; left to the garbage collector it keeps the database
        # busy (e.g. CREATE DATABASE ... TEMPLATE of a just-migrated database fails)
        backend.connection.close()


def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; returns the ids applied (empty when up to date)."""
    with connect_sync(url, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            with _backend_and_migrations(url, directory) as (backend, migrations), backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
            return [m.id for m in pending]
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def rollback(url: str, count: int = 1, directory: Path | None = None) -> list[str]:
    """Roll back the last ``count`` applied migrations."""
    with connect_sync(url, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            with _backend_and_migrations(url, directory) as (backend, migrations), backend.lock():
                applied = backend.to_rollback(migrations)[:count]
                backend.rollback_migrations(applied)
            return [m.id for m in applied]
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def pending(url: str, directory: Path | None = None) -> list[str]:
    with _backend_and_migrations(url, directory) as (backend, migrations):
        return [m.id for m in backend.to_apply(migrations)]


def shipped_migrations(directory: Path | None = None) -> list[str]:
    """The ids of the migrations in schema/ (read from the files; no database involved)."""
    from yoyo import read_migrations

    return [migration.id for migration in read_migrations(str(directory or schema_dir()))]


def missing_migrations(applied: set[str], shipped: list[str]) -> list[str]:
    """The shipped migrations not applied yet, in order."""
    return [migration for migration in shipped if migration not in applied]


async def check_schema(store: Store) -> None:
    """SchemaNotMigrated unless every migration in schema/ is applied (a worker checks before it starts)."""
    applied = await store.applied_migrations()
    if missing := missing_migrations(applied, shipped_migrations()):
        raise SchemaNotMigrated(missing, applied_any=bool(applied))
