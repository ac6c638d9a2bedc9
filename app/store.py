"""The app's own statements (app/sql/queries.sql): users and tokens, the job list, stats, metrics.

One method per named statement, msgspec Structs out, on the engine's connection pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from psycopg.rows import dict_row, kwargs_row
from psycopg_pool import AsyncConnectionPool

from pgqueue.db import AsyncConnection, Connection, fetch, translate_errors
from pgqueue.models import Job
from pgqueue.sql import parse_queries

QUERIES = parse_queries((Path(__file__).parent / "sql" / "queries.sql").read_text())

_JOB_FIELDS = frozenset(Job.__struct_fields__)


class User(msgspec.Struct, kw_only=True):
    id: int
    name: str
    is_admin: bool
    created_at: datetime

    @property
    def owner_id(self) -> str:
        """How this user appears in pgqueue.jobs.owner_id."""
        return str(self.id)


class TokenUser(msgspec.Struct, kw_only=True):
    token_hash: bytes
    id: int
    name: str
    is_admin: bool
    created_at: datetime

    def user(self) -> User:
        return User(id=self.id, name=self.name, is_admin=self.is_admin, created_at=self.created_at)


class JobFilter(msgspec.Struct, kw_only=True):
    """What list_jobs matches; None means "any"."""

    owner_id: str | None = None
    statuses: list[str] | None = None
    kinds: list[str] | None = None
    queues: list[str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    pattern: str | None = None  # an ILIKE pattern, already escaped
    scheduled: bool | None = None  # queued to run later (run_at in the future), or not
    has_error: bool | None = None  # has a last_error (failed at least once), or not


class JobCount(msgspec.Struct):
    status: str | None
    kind: str | None
    queue: str | None
    jobs: int


class MinuteCount(msgspec.Struct):
    minute: datetime
    succeeded: int
    dead: int
    cancelled: int


class WaitHistogram(msgspec.Struct):
    bucket_counts: list[int]
    sum: float
    count: int


class ScheduleFire(msgspec.Struct):
    name: str
    fire_at: datetime
    job_id: int
    status: str | None  # None once the job was pruned


def create_user_sync(conn: Connection, name: str, is_admin: bool, token_hash: bytes, label: str = "") -> User:
    """Insert a user and their first token hash in the caller's transaction (CLI and test set-up)."""
    with translate_errors(), conn.cursor(row_factory=kwargs_row(User)) as cur:
        cur.execute(QUERIES["insert_user"].sql, {"name": name, "is_admin": is_admin})
        user = cur.fetchone()
        assert user is not None
        cur.execute(QUERIES["insert_token"].sql, {"token_hash": token_hash, "user_id": user.id, "label": label})
        return user


def add_token_sync(conn: Connection, name: str, token_hash: bytes, label: str = "") -> User | None:
    """Give an existing user another token; None when there is no such user."""
    with translate_errors(), conn.cursor(row_factory=kwargs_row(User)) as cur:
        cur.execute(QUERIES["user_by_name"].sql, {"name": name})
        user = cur.fetchone()
        if user is not None:
            cur.execute(QUERIES["insert_token"].sql, {"token_hash": token_hash, "user_id": user.id, "label": label})
        return user


class AppStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _many(self, name: str, params: dict[str, Any], row: Any = None,
                    conn: AsyncConnection | None = None) -> list[Any]:
        return await fetch(self.pool, QUERIES[name].sql, params, conn, row)

    async def _one(self, name: str, params: dict[str, Any], row: Any = None) -> Any:
        rows = await self._many(name, params, row)
        return rows[0] if rows else None

    async def user_by_token_hash(self, token_hash: bytes) -> TokenUser | None:
        return await self._one("user_by_token_hash", {"token_hash": token_hash}, kwargs_row(TokenUser))

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._one("user_by_id", {"id": user_id}, kwargs_row(User))

    async def list_jobs(self, where: JobFilter, *, sort: str, descending: bool, limit: int,
                        offset: int, count_limit: int | None = None) -> tuple[int, list[Job]]:
        """(total matches, counted up to ``count_limit`` when given; one page of jobs)."""
        params = {**msgspec.structs.asdict(where), "sort": sort, "descending": descending, "limit": limit,
                  "offset": offset, "count_limit": count_limit}
        rows = await self._many("list_jobs", params, dict_row)
        total = rows[0]["total"] if rows else 0
        page = [Job(**{k: v for k, v in row.items() if k in _JOB_FIELDS}) for row in rows if row["id"] is not None]
        return total, page

    async def job_owners(self, ids: Sequence[int]) -> dict[int, tuple[str | None, str]]:
        """{job id: (owner_id, status)} for the ids that exist."""
        return {row[0]: (row[1], row[2]) for row in await self._many("job_owners", {"ids": list(ids)})}

    async def job_counts(self, owner_id: str | None) -> list[JobCount]:
        return await self._many("job_counts", {"owner_id": owner_id}, kwargs_row(JobCount))

    async def finished_per_minute(self, owner_id: str | None) -> list[MinuteCount]:
        return await self._many("finished_per_minute", {"owner_id": owner_id}, kwargs_row(MinuteCount))

    async def job_gauges(self) -> list[tuple[str, str, int]]:
        return await self._many("job_gauges", {})

    async def wait_time_histogram(self, bounds: Sequence[float], window_seconds: float) -> WaitHistogram:
        params = {"bounds": list(bounds), "window_seconds": window_seconds}
        return await self._one("wait_time_histogram", params, kwargs_row(WaitHistogram))

    async def schedule_recent_runs(self, names: Sequence[str], per_schedule: int) -> list[ScheduleFire]:
        return await self._many("schedule_recent_runs", {"names": list(names), "per_schedule": per_schedule},
                                kwargs_row(ScheduleFire))
