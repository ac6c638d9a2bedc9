"""Test fixtures: one real PostgreSQL per session (embedded, or PGQUEUE_TEST_DATABASE_URL),
one template database migrated once, and a fresh clone of it per test."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pgqueue.embedded import EmbeddedPostgres
from pgqueue.migrate import migrate
from pgqueue.queue import Queue

# worker-subprocess fixtures (spawn_worker, ...) and the PgBouncer / read replica ones
# (pgbouncer, route, replica) are used by several test modules
pytest_plugins = ("tests.process_fixtures", "tests.scaleout_fixtures")

TEMPLATE_DB = "pgqueue_template"


def with_dbname(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


class PgServer:
    """The session's server: its admin URL, and (when embedded) stop/start for outage tests."""

    def __init__(self, url: str, embedded: EmbeddedPostgres | None) -> None:
        self.url = url
        self.embedded = embedded

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("PGQUEUE_TEST_DATABASE_URL")
    if external:
        yield PgServer(external, None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="pgqueue-test-"))
    server = EmbeddedPostgres(tmp / "pg")
    server.start()
    try:
        yield PgServer(server.url, server)
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> str:
    with pg_server.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    migrate(with_dbname(pg_server.url, TEMPLATE_DB))
    return TEMPLATE_DB


@contextlib.contextmanager
def scratch_database(pg_server: PgServer, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database (a clone of `template`, or empty), dropped afterwards; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with pg_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield with_dbname(pg_server.url, name)
    finally:
        with pg_server.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with scratch_database(pg_server, "t", template_db) as url:
        yield url


@pytest.fixture
async def queue(db_url: str) -> AsyncIterator[Queue]:
    from tests.jobs import jobs

    q = await Queue.connect(db_url, jobs, max_size=10)
    try:
        yield q
    finally:
        await q.close()
