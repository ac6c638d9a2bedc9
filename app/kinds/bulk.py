"""Bulk actions: retry, cancel or delete many jobs, one at a time, each under the engine's own
rules (POST /jobs/bulk with ids, POST /jobs/bulk/filter with a filter).

A filter-wide action on more than INLINE_MAX jobs runs as a job of kind ``bulk_action`` (queue
``maintenance``, owned by the caller) whose progress streams like any job's: it walks the
matching ids in id order, up to the newest id when it was asked for, in batches of BATCH, and
saves its position after each batch (a rescued run resumes there). Only the app enqueues it:
its payload carries the caller's ownership filter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
from psycopg.rows import dict_row

from app.errors import ErrorInfo
from app.store import JobFilter
from pgqueue import JobContext, JobRegistry
from pgqueue.db import fetch
from pgqueue.errors import InvalidTransition, JobNotFound, UniqueKeyTaken
from pgqueue.sql import parse_queries

QUERIES = parse_queries((Path(__file__).parent.parent / "sql" / "bulk.sql").read_text())

BULK_KIND = "bulk_action"
BULK_QUEUE = "maintenance"
INLINE_MAX = 100  # a filter matching more jobs than this runs as a bulk_action job
BATCH = 200
ERRORS_KEPT = 20  # the first failures a bulk_action job lists in its result

BulkAction = Literal["cancel", "retry", "delete"]


class BulkResult(msgspec.Struct, kw_only=True):
    id: int
    ok: bool
    status: str | None = None  # the job's status afterwards (None once deleted)
    error: ErrorInfo | None = None


async def apply_action(queue: Any, action: str, job_id: int) -> BulkResult:
    """One job's share of a bulk action; a refusal is a result, never an exception."""
    try:
        if action == "delete":
            await queue.delete(job_id)
            return BulkResult(id=job_id, ok=True)
        job = await (queue.cancel(job_id) if action == "cancel" else queue.retry(job_id))
        return BulkResult(id=job_id, ok=True, status=job.status)
    except JobNotFound as exc:
        return BulkResult(id=job_id, ok=False, error=ErrorInfo("not_found", str(exc)))
    except UniqueKeyTaken as exc:
        return BulkResult(id=job_id, ok=False, error=ErrorInfo("unique_key_taken", str(exc)))
    except InvalidTransition as exc:
        return BulkResult(id=job_id, ok=False, status=exc.status, error=ErrorInfo("invalid_transition", str(exc)))


async def max_job_id(pool: Any) -> int:
    rows = await fetch(pool, QUERIES["max_job_id"].sql, {})
    return int(rows[0][0])


async def matching_ids(pool: Any, where: JobFilter, *, after_id: int, max_id: int, limit: int) -> list[int]:
    params = {**msgspec.structs.asdict(where), "after_id": after_id, "max_id": max_id, "limit": limit}
    return [row["id"] for row in await fetch(pool, QUERIES["bulk_job_ids"].sql, params, row_factory=dict_row)]


class BulkActionPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: BulkAction
    filter: JobFilter  # owner_id set for a non-admin: only their jobs
    max_id: int
    matched: int  # how many matched when it was asked for (the progress bar's 100 %)


class BulkTally(msgspec.Struct, kw_only=True):
    after_id: int = 0
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: dict[str, int] = {}
    first_errors: list[BulkResult] = []


bulk_jobs = JobRegistry()


@bulk_jobs.kind(BULK_KIND, queue=BULK_QUEUE, max_attempts=3, backoff_base=1.0, backoff_max=30.0)
async def run_bulk_action(ctx: JobContext, spec: BulkActionPayload) -> dict[str, Any]:
    pool = ctx.queue.pool  # type: ignore[attr-defined]
    saved = await ctx.load_checkpoint()
    tally = msgspec.convert(saved, BulkTally) if saved else BulkTally()
    total = max(spec.matched, 1)
    ctx.log(f"{spec.action} every job matching the filter, up to job {spec.max_id} ({spec.matched} matched)")
    while True:
        ctx.raise_if_cancelled()
        ids = await matching_ids(pool, spec.filter, after_id=tally.after_id, max_id=spec.max_id, limit=BATCH)
        if not ids:
            break
        for job_id in ids:
            if job_id == ctx.job.id:
                continue
            result = await apply_action(ctx.queue, spec.action, job_id)
            tally.done += 1
            if result.ok:
                tally.succeeded += 1
            else:
                assert result.error is not None
                tally.failed += 1
                tally.errors[result.error.code] = tally.errors.get(result.error.code, 0) + 1
                if len(tally.first_errors) < ERRORS_KEPT:
                    tally.first_errors.append(result)
        tally.after_id = ids[-1]
        await ctx.save_checkpoint(msgspec.to_builtins(tally))
        ctx.progress(min(99.0, 100 * tally.done / total), f"{tally.done}/{spec.matched} jobs")
    ctx.progress(100, f"{tally.done} jobs: {tally.succeeded} done, {tally.failed} refused")
    ctx.log(f"finished: {tally.succeeded} {spec.action} done, {tally.failed} refused {tally.errors or ''}".rstrip())
    return {"action": spec.action, "matched": spec.matched, "processed": tally.done, "succeeded": tally.succeeded,
            "failed": tally.failed, "errors": tally.errors, "first_errors": msgspec.to_builtins(tally.first_errors)}
