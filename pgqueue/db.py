"""Connections to PostgreSQL: pools, dedicated connections, and driver-error translation.

Only this module and the store import psycopg.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import msgspec
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgqueue.config import POOLER_MODES, validate_database_url
from pgqueue.errors import ConfigError, DatabaseUnavailable
from pgqueue.sql import QUERIES

log = logging.getLogger("pgqueue.db")

AsyncConnection = psycopg.AsyncConnection[Any]
Connection = psycopg.Connection[Any]
# The pool's type, for modules that name it but must not import the driver (see the import rules).
ConnectionPool = AsyncConnectionPool


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def use_fast_json(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Decode and encode jsonb with msgspec on this connection (several times faster than json)."""
    set_json_loads(msgspec.json.decode, conn)
    set_json_dumps(_json_dumps, conn)


# -- connection poolers (PgBouncer) ---------------------------------------------------------------
# Behind a pooler in transaction mode, consecutive transactions of one client run on different
# server connections: a statement psycopg prepared on one (it prepares a query after its 5th run)
# is unknown on the next ("prepared statement _pg3_0 does not exist"). Such connections run every
# statement unprepared. Whatever needs a session of its own (LISTEN, a session advisory lock)
# connects to PGQUEUE_DIRECT_DATABASE_URL instead (README, "Past one box").


def _check_pooler(pooler: str) -> str:
    if pooler not in POOLER_MODES:
        raise ConfigError(f"PGQUEUE_POOLER must be one of {', '.join(POOLER_MODES)}, got {pooler!r}")
    return pooler


def _pid_differs(conn: AsyncConnection | Connection, row: Any) -> bool:
    # The pid the server announced at login is the cancel key a pooler made up, not the pid of
    # the server process that runs our statements.
    return row is not None and row[0] != conn.info.backend_pid


async def behind_pooler(conn: AsyncConnection) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a connection pooler (one round trip)."""
    cur = await conn.execute(QUERIES["backend_pid"].sql)
    pooled = _pid_differs(conn, await cur.fetchone())
    if not conn.autocommit:
        await conn.rollback()
    return pooled


def behind_pooler_sync(conn: Connection) -> bool:
    pooled = _pid_differs(conn, conn.execute(QUERIES["backend_pid"].sql).fetchone())
    if not conn.autocommit:
        conn.rollback()
    return pooled


async def _unprepared_if_pooled(conn: AsyncConnection, pooler: str) -> bool:
    """Turn off server-side prepared statements on a connection through a pooler; True if it is."""
    pooled = pooler == "pgbouncer" or (pooler == "auto" and await behind_pooler(conn))
    if pooled:
        conn.prepare_threshold = None
    return pooled


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "pgqueue",
                    pooler: str = "auto") -> AsyncConnectionPool:
    """An open pool; raises DatabaseUnavailable quickly when the server cannot be reached.

    ``pooler`` (PGQUEUE_POOLER): "auto" finds out per connection whether it goes through a pooler
    such as PgBouncer, "pgbouncer" says it does, "none" that it does not (no probe round trip);
    connections through a pooler never use server-side prepared statements."""
    _check_pooler(pooler)

    async def configure(conn: AsyncConnection) -> None:
        use_fast_json(conn)
        await _unprepared_if_pooled(conn, pooler)

    # One direct attempt first: an unreachable server fails at once, with the driver's reason
    # (refused, unknown host, no such database), instead of a bare pool timeout 10 s later.
    await (await connect(url, application_name=name, pooler=pooler)).close()
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        configure=configure,
        # autocommit: every engine statement is one atomic statement, so it costs one round trip
        # instead of three (BEGIN, statement, COMMIT); multi-statement work uses transaction()
        kwargs={"application_name": name, "autocommit": True},
        reconnect_timeout=3600,
        timeout=30,
    )
    try:
        await pool.open(wait=True, timeout=10)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
    return pool


async def connect(url: str, *, autocommit: bool = True, application_name: str = "pgqueue", pooler: str = "auto",
                  session_for: str | None = None) -> AsyncConnection:
    """One dedicated connection (LISTEN, heartbeats, maintenance) outside any pool.

    ``session_for`` names what needs this connection's session (a LISTEN, a session advisory
    lock): when the connection goes through a pooler after all, that is logged as a warning."""
    validate_database_url(url)
    _check_pooler(pooler)
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, application_name=application_name, connect_timeout=10
        )
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"malformed database URL: {exc}") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    use_fast_json(conn)
    try:
        pooled = await _unprepared_if_pooled(conn, pooler)
    except psycopg.Error as exc:
        await conn.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    if pooled and session_for:
        log.warning("%s goes through a connection pooler, which does not keep a session for it (a LISTEN "
                    "hears nothing, a session lock stays behind on a pooled server connection): set "
                    "PGQUEUE_DIRECT_DATABASE_URL to PostgreSQL itself", session_for)
    return conn


def connect_sync(url: str, *, autocommit: bool = False, pooler: str = "auto") -> Connection:
    """One connection for synchronous code (SyncQueue, the CLI); unprepared through a pooler."""
    validate_database_url(url)
    _check_pooler(pooler)
    try:
        conn = psycopg.Connection.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"malformed database URL: {exc}") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    try:
        if pooler == "pgbouncer" or (pooler == "auto" and behind_pooler_sync(conn)):
            conn.prepare_threshold = None
    except psycopg.Error as exc:
        conn.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    use_fast_json(conn)
    return conn



# Errors that mean "the server or the connection went away": callers retry these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.AdminShutdown,
    DatabaseUnavailable,
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver connection failures into DatabaseUnavailable at the store boundary."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc


@contextlib.asynccontextmanager
async def connection(pool: AsyncConnectionPool, conn: AsyncConnection | None = None) -> AsyncIterator[AsyncConnection]:
    """The caller's connection as is, or a pooled autocommit one: for a single statement."""
    with translate_errors():
        if conn is not None:
            yield conn
        else:
            async with pool.connection() as pooled:
                yield pooled


async def fetch(pool: AsyncConnectionPool, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None,
                row_factory: Any = None) -> list[Any]:
    """Run one named statement on the caller's connection or a pooled autocommit one (one round
    trip); the rows it returns, if any. The stores of the engine and the app go through here."""
    async with connection(pool, conn) as c, c.cursor(row_factory=row_factory or tuple_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


@contextlib.asynccontextmanager
async def transaction(pool: AsyncConnectionPool, conn: AsyncConnection | None = None) -> AsyncIterator[AsyncConnection]:
    """The caller's connection as is (its transaction, its commit), or a pooled one in a new transaction."""
    if conn is not None:
        with translate_errors():
            yield conn
        return
    with translate_errors():
        async with pool.connection() as pooled, pooled.transaction():
            yield pooled
