"""The dashboard's read endpoints.

    GET /dashboard/api/overview              (admins) status cards, throughput charts, queue depth, queues, workers
    GET /dashboard/api/jobs/{job_id}/related an ingest job's file, counts and bad lines; an API
                                             sync part's source and counts (the job's owner or an admin)

Each statement (app/dashboard/queries.sql) runs in its own transaction under a
``statement_timeout`` of 2 s (STATEMENT_TIMEOUT_MS), so one slow
statement costs its own section of the page (reported in ``unavailable``), never the page.
Counts that would need a scan of the whole table are estimates from the planner's statistics
once the table is large, and say so (``estimated``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from app.api import parse_job_id
from app.auth import authenticate, authenticate_admin, may_see
from app.errors import not_found
from app.openapi import operation
from pgqueue.limits import Rate
from pgqueue.models import STATUSES
from pgqueue.sql import parse_queries

QUERIES = parse_queries((Path(__file__).parent / "queries.sql").read_text())

STATEMENT_TIMEOUT_MS = 2000
EXACT_COUNT_MAX_ROWS = 200_000  # below this (planner's estimate) every status is counted exactly
LIVE_COUNT_CAP = 100_000  # a live status counted past this is shown as an estimate
QUEUE_SCAN_CAP = 200_000  # live rows the queue table and the depth chart look at, at most
HOURS = 7 * 24
HOURS_PER_CALL = 6  # missing hours of the 7-day chart counted per request (the rest next time)
DEPTH_SCAN_CAP = 20_000  # jobs the depth chart rebuilds from; past it the chart says `capped`


class StatusCount(msgspec.Struct, kw_only=True):
    jobs: int
    estimated: bool


class Minute(msgspec.Struct, kw_only=True):
    minute: datetime
    succeeded: int
    failed: int
    dead: int
    cancelled: int


class Hour(msgspec.Struct, kw_only=True):
    hour: datetime
    succeeded: int
    dead: int
    cancelled: int


class QueueRow(msgspec.Struct, kw_only=True):
    queue: str
    queued: int
    scheduled: int
    failed_waiting: int
    running: int
    oldest_wait_seconds: float | None
    jobs_per_minute: float
    capped: bool
    paused: bool = False
    concurrency_limit: int | None = None
    rate: str | None = None  # such as 10/s
    key_concurrency_limit: int | None = None
    key_rate: str | None = None


class DepthPoint(msgspec.Struct, kw_only=True):
    at: datetime
    waiting: dict[str, int]


class Depth(msgspec.Struct, kw_only=True):
    points: list[DepthPoint]
    capped: bool
    approximate: bool = True  # an estimate rebuilt from timestamps: a retried job's earlier waits are missing


class WorkerRow(msgspec.Struct, kw_only=True):
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    running: int


class Overview(msgspec.Struct, kw_only=True):
    generated_at: datetime
    counts: dict[str, StatusCount]
    per_minute: list[Minute]
    per_hour: list[Hour]
    per_hour_missing: int  # hours of the 7-day chart not counted yet (filled in by later requests)
    queues: list[QueueRow]
    depth: Depth | None
    workers: list[WorkerRow]
    unavailable: dict[str, str]  # section -> why it is missing (e.g. its statement timed out)
    timings_ms: dict[str, float]  # how long each section's statement took on the server


class HourCache:
    """Per-hour counts of finished hours (they no longer change), kept by the app process."""

    def __init__(self) -> None:
        self.hours: dict[datetime, Hour] = {}


async def _rows(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(QUERIES["set_statement_timeout"].sql, {"timeout": f"{STATEMENT_TIMEOUT_MS}ms"})
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(QUERIES[name].sql, params)
        return await cursor.fetchall()


class _Sections:
    """Runs each section, timing it and turning a timeout into an `unavailable` entry."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.unavailable: dict[str, str] = {}
        self.timings_ms: dict[str, float] = {}

    async def rows(self, section: str, name: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        started = time.perf_counter()
        try:
            return await _rows(self.pool, name, params)
        except pg_errors.QueryCanceled:
            self.unavailable[section] = f"its query took longer than {STATEMENT_TIMEOUT_MS} ms"
            return None
        finally:
            key = f"{section}:{name}"
            self.timings_ms[key] = self.timings_ms.get(key, 0.0) + round((time.perf_counter() - started) * 1000, 2)


async def status_counts(sections: _Sections, live: dict[str, int] | None = None) -> dict[str, StatusCount]:
    """Exact counts while the table is small; past that the planner's estimate, with the live
    statuses exact: from ``live`` (the queue table's sums, when it read every live job) or
    counted from their partial indexes."""
    [table] = await sections.rows("counts", "job_table_estimate", {}) or [{"rows": -1, "shares": {}}]
    if 0 <= table["rows"] < EXACT_COUNT_MAX_ROWS or not table["shares"]:
        exact = await sections.rows("counts", "exact_status_counts", {})
        if exact is not None:
            found = {row["status"]: row["jobs"] for row in exact}
            return {status: StatusCount(jobs=found.get(status, 0), estimated=False) for status in STATUSES}
    counts = {status: StatusCount(jobs=round(table["rows"] * table["shares"].get(status, 0)), estimated=True)
              for status in STATUSES}
    if live is not None:
        counts.update({status: StatusCount(jobs=jobs, estimated=False) for status, jobs in live.items()})
        return counts
    for row in await sections.rows("counts", "live_status_counts", {"cap": LIVE_COUNT_CAP}) or []:
        if row["jobs"] <= LIVE_COUNT_CAP:
            counts[row["status"]] = StatusCount(jobs=row["jobs"], estimated=False)
    return counts


def live_counts(queues: list[dict[str, Any]] | None) -> dict[str, int] | None:
    """Jobs queued, failed (waiting to retry) and running, summed over the queue table; None when
    the table stopped at QUEUE_SCAN_CAP live jobs (each one falls in exactly one of its columns)."""
    if queues is None:
        return None
    live = {"queued": sum(q["queued"] + q["scheduled"] for q in queues),
            "failed": sum(q["failed_waiting"] for q in queues), "running": sum(q["running"] for q in queues)}
    return None if sum(live.values()) >= QUEUE_SCAN_CAP else live


async def per_hour(sections: _Sections, cache: HourCache, now: datetime) -> tuple[list[Hour], int]:
    """The last 168 hours, the current one fresh, finished ones from the cache (HOURS_PER_CALL
    missing ones filled per call, the newest first)."""
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [this_hour - timedelta(hours=back) for back in range(HOURS - 1, -1, -1)]
    missing = [hour for hour in hours[:-1] if hour not in cache.hours]
    batch = sorted(missing[-HOURS_PER_CALL:])  # the most recent missing hours first
    spans = [(batch[0], batch[-1] + timedelta(hours=1))] if batch else []
    spans.append((this_hour, this_hour + timedelta(hours=1)))
    fresh: dict[datetime, Hour] = {}
    for since, until in spans:
        rows = await sections.rows("per_hour", "finished_per_hour", {"since": since, "until": until, "owner_id": None})
        if rows is None:
            continue
        found = {row["hour"]: Hour(**row) for row in rows}
        step = since
        while step < until:
            fresh[step] = found.get(step, Hour(hour=step, succeeded=0, dead=0, cancelled=0))
            step += timedelta(hours=1)
    cache.hours.update({hour: counts for hour, counts in fresh.items() if hour < this_hour})
    for stale in [hour for hour in cache.hours if hour < hours[0]]:
        del cache.hours[stale]
    series = [fresh.get(hour) or cache.hours.get(hour) for hour in hours]
    return [h for h in series if h is not None], sum(h is None for h in series)


def _depth(rows: list[dict[str, Any]] | None, queues: list[dict[str, Any]]) -> Depth | None:
    """Every 5-minute point of the last hour, per queue: the jobs whose wait began within the hour
    (depth_over_time) plus those runnable since before it (queue_table's waiting_over_an_hour)."""
    if rows is None:
        return None
    base = {row["queue"]: row["waiting_over_an_hour"] for row in queues}
    names = sorted(set(base) | {row["queue"] for row in rows if row["queue"] is not None})
    points = {at: {name: base.get(name, 0) for name in names} for at in sorted({row["at"] for row in rows})}
    capped = any(row["capped"] for row in queues)
    for row in rows:
        if row["queue"] is not None:
            points[row["at"]][row["queue"]] += row["waiting"]
        capped = capped or row["capped"]
    return Depth(points=[DepthPoint(at=point, waiting=waiting) for point, waiting in points.items()], capped=capped)


def _rate(limit: int | None, period: float | None) -> str | None:
    return None if limit is None or period is None else str(Rate(limit, period))


def _queue_rows(queues: list[dict[str, Any]], settings: list[dict[str, Any]]) -> list[QueueRow]:
    """The queue table with each queue's paused state and limits (a paused queue without jobs too)."""
    by_name = {row["name"]: row for row in settings}
    rows = {row["queue"]: {k: v for k, v in row.items() if k != "waiting_over_an_hour"} for row in queues}
    for name in by_name.keys() - rows.keys():
        rows[name] = {"queue": name, "queued": 0, "scheduled": 0, "failed_waiting": 0, "running": 0,
                      "oldest_wait_seconds": None, "jobs_per_minute": 0.0, "capped": False}
    out = []
    for name in sorted(rows):
        limits = by_name.get(name)
        extra: dict[str, Any] = {}
        if limits is not None:
            extra = {"paused": limits["paused"], "concurrency_limit": limits["concurrency_limit"],
                     "rate": _rate(limits["rate_limit"], limits["rate_period"]),
                     "key_concurrency_limit": limits["key_concurrency_limit"],
                     "key_rate": _rate(limits["key_rate_limit"], limits["key_rate_period"])}
        out.append(QueueRow(**rows[name], **extra))
    return out


@operation(summary="The dashboard's overview: status counts, throughput, queue depth, queues, workers",
           response=Overview, tag="dashboard", auth="admin",
           description="Admins only: it shows every user's jobs. Counts marked `estimated` come from the "
                       "planner's statistics (the table is too large to count on each refresh); each section's "
                       "statement runs under a statement_timeout and a section that timed out is listed in "
                       "`unavailable`.")
async def overview(request: Request) -> Response:
    await authenticate_admin(request)
    pool = request.state.read_store.pool  # the read replica when there is one (README, "Past one box")
    cache = getattr(request.app.state, "dashboard_hours", None)
    if cache is None:
        cache = request.app.state.dashboard_hours = HourCache()
    body = await build_overview(_Sections(pool), cache)
    return Response(msgspec.json.encode(body), media_type="application/json", headers={"Cache-Control": "no-store"})


async def build_overview(sections: _Sections, cache: HourCache) -> Overview:
    """Every section of the overview, one statement at a time (python -m app.dashboard.bench times this)."""
    now = datetime.now(UTC)
    queues = await sections.rows("queues", "queue_table", {"cap": QUEUE_SCAN_CAP})
    live = live_counts(queues)
    if queues is not None and live is None:  # stopped at the cap: every queue's counts may be low
        queues = [{**row, "capped": True} for row in queues]
    queues = queues or []
    counts = await status_counts(sections, live)
    minutes = await sections.rows("per_minute", "finished_per_minute", {"owner_id": None}) or []
    hours, missing = await per_hour(sections, cache, now)
    settings = await sections.rows("queues", "queue_settings", {}) or []
    depth = _depth(await sections.rows("depth", "depth_over_time", {"cap": DEPTH_SCAN_CAP}), queues)
    workers = await sections.rows("workers", "workers", {}) or []
    return Overview(generated_at=now, counts=counts, per_minute=[Minute(**row) for row in minutes], per_hour=hours,
                    per_hour_missing=missing, queues=_queue_rows(queues, settings), depth=depth,
                    workers=[WorkerRow(**row) for row in workers], unavailable=sections.unavailable,
                    timings_ms=sections.timings_ms)


BAD_LINES_SHOWN = 100


class FileOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    size: int
    bytes_read: int
    lines_total: int
    lines_valid: int
    lines_invalid: int
    lines_blank: int
    created_at: datetime


class BadLine(msgspec.Struct, kw_only=True):
    line_no: int
    reason: str
    excerpt: str


class SyncPartOut(msgspec.Struct, kw_only=True):
    sync_id: int
    source: str
    target: str
    part: int
    parts: int
    pages: int
    events: int
    inserted: int
    invalid: int
    retries: int
    rate_limited: int
    bytes: int
    restarts: int
    total: int | None
    last_page_at: datetime | None


class JobRelated(msgspec.Struct, kw_only=True):
    file: FileOut | None = None
    bad_lines: list[BadLine] = []
    bad_lines_shown: int = BAD_LINES_SHOWN
    sync: SyncPartOut | None = None


@operation(summary="What a job's page shows beside the job: an ingest job's file, counts and bad lines; an API "
                   "sync's source and counts", response=JobRelated, tag="dashboard",
           path_params={"job_id": "the job's id"}, errors=(404,),
           description=f"The job's owner or an admin; another user's job is a 404. At most {BAD_LINES_SHOWN} bad lines, "
                       "in line order.")
async def job_related(request: Request) -> Response:
    user = await authenticate(request)
    job_id = parse_job_id(request.path_params["job_id"])
    pool = request.state.store.pool
    [owner] = await _rows(pool, "job_owner", {"job_id": job_id}) or [None]
    if owner is None or not may_see(user, owner["owner_id"]):
        raise not_found(f"job {job_id} not found")
    related = JobRelated()
    [file] = await _rows(pool, "job_file", {"job_id": job_id}) or [None]
    if file is not None:
        related.file = FileOut(**file)
        related.bad_lines = [BadLine(**row) for row in
                             await _rows(pool, "file_bad_lines", {"file_id": file["id"], "limit": BAD_LINES_SHOWN})]
    [part] = await _rows(pool, "job_sync_part", {"job_id": job_id}) or [None]
    if part is not None:
        related.sync = SyncPartOut(**part)
    return Response(msgspec.json.encode(related), media_type="application/json", headers={"Cache-Control": "no-store"})
