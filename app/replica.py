"""Reads that may lag, served by a read replica (APP_READ_DATABASE_URL, README "Past one box").

A read the replica cannot answer (the connection is gone, or the standby cancelled the query in a
conflict with recovery) is answered by the primary instead, with a warning in the log: a dashboard
should show slightly fresher numbers rather than an error.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from app.store import AppStore
from pgqueue.db import AsyncConnection
from pgqueue.errors import DatabaseUnavailable

log = logging.getLogger("app.replica")

# "canceling statement due to conflict with recovery" is a serialization failure; a database
# dropped on the primary while we read it is DatabaseDropped.
REPLICA_FAILURES = (DatabaseUnavailable, psycopg.errors.SerializationFailure, psycopg.errors.DatabaseDropped)


class ReplicaStore(AppStore):
    """An AppStore on the replica's pool that falls back to ``primary`` when the replica fails."""

    def __init__(self, pool: AsyncConnectionPool, primary: AppStore) -> None:
        super().__init__(pool)
        self.primary = primary
        self.fallbacks = 0

    async def _many(self, name: str, params: dict[str, Any], row: Any = None,
                    conn: AsyncConnection | None = None) -> list[Any]:
        if conn is not None:
            return await super()._many(name, params, row, conn)
        try:
            return await super()._many(name, params, row)
        except REPLICA_FAILURES as exc:
            self.fallbacks += 1
            log.warning("read replica failed on %s (%s); read from the primary", name, str(exc).strip())
            return await self.primary._many(name, params, row)
