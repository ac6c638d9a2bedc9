"""The job kinds chaos worker processes run (`--app pgqueue.chaos.jobs`).

Every handler that succeeds writes `(job_id, attempt)` to pgqueue_chaos.ledger inside
ctx.transaction(), so a job whose side effect committed twice shows up as two ledger rows.
"""

from __future__ import annotations

import asyncio
import os

import msgspec

from pgqueue.chaos.sql import CHAOS_QUERIES
from pgqueue.context import JobContext
from pgqueue.registry import JobRegistry

CHAOS_QUEUE = "chaos"
WORK, SLOW_TX, POISON = "chaos.work", "chaos.slow_tx", "chaos.poison"

chaos_jobs = JobRegistry()

# Short backoffs: a failed attempt (e.g. its connection was terminated) retries within seconds,
# so a scenario settles before its recovery deadline.
BACKOFF_BASE, BACKOFF_MAX = 0.2, 1.0


class Work(msgspec.Struct):
    before: float = 0.0  # seconds of work before the side effect
    after: float = 0.0  # seconds of work after it (the result is not recorded yet)


class SlowTransaction(msgspec.Struct):
    hold: float = 2.0  # seconds ctx.transaction() stays open after the side effect


async def _record(ctx: JobContext, conn: object) -> None:
    await conn.execute(CHAOS_QUERIES["record_side_effect"],  # type: ignore[attr-defined]
                       {"job_id": ctx.job.id, "attempt": ctx.attempt, "pid": os.getpid()})


@chaos_jobs.kind(WORK, queue=CHAOS_QUEUE, backoff_base=BACKOFF_BASE, backoff_max=BACKOFF_MAX)
async def work(ctx: JobContext, payload: Work) -> None:
    if payload.before:
        await asyncio.sleep(payload.before)
    async with ctx.transaction() as conn:
        await _record(ctx, conn)
    if payload.after:
        await asyncio.sleep(payload.after)


@chaos_jobs.kind(SLOW_TX, queue=CHAOS_QUEUE, backoff_base=BACKOFF_BASE, backoff_max=BACKOFF_MAX)
async def slow_transaction(ctx: JobContext, payload: SlowTransaction) -> None:
    """Holds its lease transaction (and the job row lock it takes) open for `hold` seconds."""
    async with ctx.transaction() as conn:
        await _record(ctx, conn)
        await asyncio.sleep(payload.hold)


@chaos_jobs.kind(POISON, queue=CHAOS_QUEUE, backoff_base=BACKOFF_BASE, backoff_max=BACKOFF_MAX)
async def poison(ctx: JobContext, payload: dict) -> None:
    """Takes the whole worker process down, every attempt."""
    os._exit(1)
