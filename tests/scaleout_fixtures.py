"""Fixtures for running past one box: a PgBouncer in transaction-pooling mode in front of the
session's server, and a streaming read replica of it (pgqueue/scaleout.py starts both).

``pgbouncer`` skips the test when the binary is missing (`apt-get install pgbouncer`; .ci/run
installs it); ``replica`` needs the suite's embedded server (it takes a base backup of it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue.scaleout import EmbeddedPgBouncer, EmbeddedReplica, find_pgbouncer
from tests.conftest import PgServer
from tests.helpers import wait_for_sync

__all__ = ["Bouncer", "pgbouncer", "pgbouncer_clients", "replica", "replica_caught_up", "route"]

PGBOUNCER_MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"


class Bouncer:
    """The running PgBouncer, and what a test needs of it."""

    def __init__(self, process: EmbeddedPgBouncer) -> None:
        self.process = process

    def url_for(self, database_url: str) -> str:
        return self.process.url_for(database_url)

    def clients(self, database: str) -> list[dict[str, Any]]:
        """SHOW CLIENTS of the admin console: the client connections to ``database`` through us."""
        admin_url = f"postgresql://postgres@127.0.0.1:{self.process.port}/pgbouncer"
        with psycopg.connect(admin_url, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.execute("SHOW CLIENTS")
            names = [column.name for column in cur.description or []]
            return [row for row in (dict(zip(names, values, strict=True)) for values in cur.fetchall())
                    if row["database"] == database]


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PgServer) -> Iterator[Bouncer]:
    if find_pgbouncer() is None:
        pytest.skip(PGBOUNCER_MISSING)
    process = EmbeddedPgBouncer(pg_server.url, Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))).start()
    try:
        yield Bouncer(process)
    finally:
        process.stop()


def pgbouncer_clients(bouncer: Bouncer, database_url: str) -> list[dict[str, Any]]:
    return bouncer.clients(database_url.rsplit("/", 1)[1])


class Route:
    """How a test's code reaches its database: ``url`` for the pool, ``direct_url`` for sessions."""

    def __init__(self, name: str, url: str, direct_url: str, bouncer: Bouncer | None) -> None:
        self.name = name
        self.url = url
        self.direct_url = direct_url
        self.bouncer = bouncer

    @property
    def pooled(self) -> bool:
        return self.bouncer is not None

    def env(self) -> dict[str, str]:
        """PGQUEUE_* variables of a worker process on this route."""
        return {"PGQUEUE_DATABASE_URL": self.url, "PGQUEUE_DIRECT_DATABASE_URL": self.direct_url}


@pytest.fixture
def route(request: pytest.FixtureRequest, db_url: str) -> Route:
    """"direct" unless a test is parametrised ``pytest.mark.parametrize("route", ["direct",
    "pgbouncer"], indirect=True)``: then its second run goes through PgBouncer."""
    name = getattr(request, "param", "direct")
    if name == "direct":
        return Route(name, db_url, db_url, None)
    bouncer: Bouncer = request.getfixturevalue("pgbouncer")
    return Route(name, bouncer.url_for(db_url), db_url, bouncer)


@pytest.fixture(scope="session")
def replica(pg_server: PgServer) -> Iterator[EmbeddedReplica]:
    """A hot standby of the session's server, streaming from it (session-wide: every database
    created on the primary later appears on it too)."""
    if pg_server.embedded is None:
        pytest.skip("needs the suite's embedded PostgreSQL (the replica is a base backup of it)")
    standby = EmbeddedReplica(pg_server.embedded, Path(tempfile.mkdtemp(prefix="pgqueue-replica-")) / "pg").start()
    try:
        yield standby
    finally:
        standby.stop()


def replica_caught_up(primary_url: str, replica_url: str, timeout: float = 30.0) -> None:
    """Until the replica has replayed everything the primary had written when this was called."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        # the insert position, not pg_current_wal_lsn() (the write position): with the suite's
        # asynchronous commits, a commit record may still sit in the WAL buffers behind it
        [(target,)] = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchall()

    def replayed() -> bool:
        try:
            with psycopg.connect(replica_url, autocommit=True, connect_timeout=5) as conn:
                [(done,)] = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchall()
                return bool(done)
        except psycopg.OperationalError:  # the database itself not replayed yet
            return False

    wait_for_sync(replayed, timeout=timeout, interval=0.02, message="the replica to replay the primary's WAL")
