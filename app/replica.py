"""Reads that may lag, served by a read replica (APP_READ_DATABASE_URL, README "Past one box").

ReplicaStore routes each read: to the replica while it answers and is at most
APP_READ_MAX_LAG_SECONDS behind the primary (checked at most once a second per process, one
cheap statement), to the primary otherwise; never a hang, never a 500. A replica that fails is
left alone for RETRY_SECONDS, then probed again with a bounded check. The store's `pool` is that
router, so code that takes connections from `read_store.pool` (the dashboard's overview) is
routed the same way as the store's own statements (GET /jobs, /stats).

What is caught where:
- replica down, restarted, unreachable: found when a read takes a connection (a bounded wait for
  the pool, then a liveness round trip on the pooled connection) -> that read uses the primary;
- replica lagging past the bound (replay paused, a long conflict, the WAL receiver gone): found
  by the lag check -> reads use the primary until it has caught up;
- a statement the replica fails half-way (the server stops during it, a conflict with recovery):
  the store's own reads are answered again by the primary; a caller holding the connection (the
  overview's sections) gets DatabaseUnavailable, a 503 JSON error, and its next request goes to
  the primary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, Literal, cast

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from app.store import AppStore
from pgqueue.db import AsyncConnection
from pgqueue.errors import DatabaseUnavailable
from pgqueue.sql import parse_queries

log = logging.getLogger("app.replica")

QUERIES = parse_queries((Path(__file__).parent / "sql" / "replica.sql").read_text())

# A pooled connection of a stopped standby fails with OperationalError (or InterfaceError once
# closed); "canceling statement due to conflict with recovery" is a serialization failure (an
# OperationalError too), a database dropped on the primary while we read it DatabaseDropped.
# A statement_timeout (QueryCanceled) is the caller's business, not a sign of a bad replica.
REPLICA_FAILURES = (DatabaseUnavailable, psycopg.OperationalError, psycopg.InterfaceError)

CHECK_SECONDS: Final = 1.0  # how long a good verdict on the replica is trusted
RETRY_SECONDS: Final = 5.0  # how long a failed replica is left alone before it is probed again
ACQUIRE_SECONDS: Final = 2.0  # longest wait for a replica connection (or for the lag check)


class ReplicaFailed(DatabaseUnavailable):
    """A statement failed on the replica after it had been handed a replica connection."""


class Verdict(msgspec.Struct, kw_only=True):
    """Where reads go now, and why (GET /readyz and /metrics could show it; tests read it)."""

    source: Literal["replica", "primary"]
    reason: str | None = None  # why the primary, when it is the primary
    lag_seconds: float | None = None  # the last lag measured on the replica
    checked_at: float = -math.inf  # time.monotonic() of the last check


def _is_replica_failure(exc: BaseException) -> bool:
    return isinstance(exc, REPLICA_FAILURES) and not isinstance(exc, psycopg.errors.QueryCanceled)


class ReadRouter:
    """Looks like a pool to its callers (`connection()`), hands out replica or primary connections."""

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        store = self.store
        async with contextlib.AsyncExitStack() as stack:
            conn = await store._replica_connection(stack) if await store.replica_usable() else None
            if conn is None:
                async with store.primary.pool.connection() as primary_conn:
                    yield primary_conn
                return
            try:
                yield conn
            except BaseException as exc:
                if not _is_replica_failure(exc):
                    raise
                store.replica_failed(exc)
                raise ReplicaFailed(f"the read replica failed: {str(exc).strip()}") from exc


class ReplicaStore(AppStore):
    """An AppStore for reads that may lag: the replica's pool while it is up and fresh, else ``primary``."""

    def __init__(self, replica_pool: AsyncConnectionPool, primary: AppStore, *, max_lag_seconds: float = 10.0,
                 check_seconds: float = CHECK_SECONDS, retry_seconds: float = RETRY_SECONDS,
                 acquire_seconds: float = ACQUIRE_SECONDS) -> None:
        # `pool` is the router: AppStore's statements and the overview's sections go through it
        super().__init__(cast(AsyncConnectionPool, ReadRouter(self)))
        self.replica_pool = replica_pool
        self.primary = primary
        self.max_lag_seconds = max_lag_seconds
        self.check_seconds = check_seconds
        self.retry_seconds = retry_seconds
        self.acquire_seconds = acquire_seconds
        self.verdict = Verdict(source="replica")
        self.fallbacks = 0  # reads the primary answered because the replica failed or lagged
        self._checking = False

    # -- the verdict ------------------------------------------------------------------------------

    async def replica_usable(self) -> bool:
        """Whether this read may go to the replica; checks its lag when the last check is old.
        One check at a time per process: reads meanwhile go by the last verdict."""
        verdict = self.verdict
        # a replica that failed is left alone a while; one that lagged is looked at again soon
        failed = verdict.source == "primary" and verdict.lag_seconds is None
        trusted = self.retry_seconds if failed else self.check_seconds
        if time.monotonic() - verdict.checked_at >= trusted and not self._checking:
            self._checking = True
            try:
                await self._check_lag()
            finally:
                self._checking = False
        if self.verdict.source == "primary":
            self.fallbacks += 1
            return False
        return True

    async def _check_lag(self) -> None:
        try:
            async with self.replica_pool.connection(timeout=self.acquire_seconds) as conn:
                cur = await conn.execute(QUERIES["replica_lag"].sql)
                row = await cur.fetchone()
        except Exception as exc:
            if not _is_replica_failure(exc):
                raise
            self._use_primary(f"the read replica is unreachable ({str(exc).strip()})")
            return
        lag = float(row[0]) if row is not None else math.inf
        if lag > self.max_lag_seconds:
            self._use_primary(f"the read replica is {lag:.1f} s behind (APP_READ_MAX_LAG_SECONDS is "
                              f"{self.max_lag_seconds:g})", lag)
        else:
            if self.verdict.source == "primary":
                log.info("read replica back (%.1f s behind): lagging reads go there again", lag)
            self.verdict = Verdict(source="replica", lag_seconds=lag, checked_at=time.monotonic())

    def _use_primary(self, reason: str, lag: float | None = None) -> None:
        if self.verdict.source == "replica":
            log.warning("%s: lagging reads go to the primary", reason)
        self.verdict = Verdict(source="primary", reason=reason, lag_seconds=lag, checked_at=time.monotonic())

    def replica_failed(self, exc: BaseException) -> None:
        self._use_primary(f"the read replica failed ({str(exc).strip() or type(exc).__name__})")

    async def _replica_connection(self, stack: contextlib.AsyncExitStack) -> AsyncConnection | None:
        """A live replica connection held by ``stack``, or None (and the verdict turned) when the
        pool has none within ``acquire_seconds`` or the one it gives is dead."""
        taken = contextlib.AsyncExitStack()
        try:
            conn = await taken.enter_async_context(self.replica_pool.connection(timeout=self.acquire_seconds))
            await conn.execute(QUERIES["replica_alive"].sql)
        except Exception as exc:
            # the pool gets the broken connection back with the error, and discards it
            await taken.__aexit__(type(exc), exc, exc.__traceback__)
            if not _is_replica_failure(exc):
                raise
            self.replica_failed(exc)
            self.fallbacks += 1
            return None
        stack.push_async_exit(taken)
        return conn

    # -- the store's own reads --------------------------------------------------------------------

    async def _many(self, name: str, params: dict[str, Any], row: Any = None,
                    conn: AsyncConnection | None = None) -> list[Any]:
        if conn is not None:
            return await super()._many(name, params, row, conn)
        try:
            return await super()._many(name, params, row)
        except ReplicaFailed as exc:
            self.fallbacks += 1
            log.warning("read replica failed on %s (%s); read from the primary", name, exc)
            return await self.primary._many(name, params, row)
