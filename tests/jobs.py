"""Job kinds used by the tests (also loaded by worker subprocesses with --app tests.jobs)."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec

from pgqueue import JobContext, JobRegistry, PermanentFailure

jobs = JobRegistry()


class Email(msgspec.Struct):
    to: str
    subject: str = ""


class Marker(msgspec.Struct):
    key: str
    sleep: float = 0.0


@jobs.kind("email", queue="mail", priority=3)
async def send_email(ctx: JobContext, email: Email) -> dict:
    return {"sent_to": email.to}


@jobs.kind("noop")
async def noop(ctx: JobContext, payload: dict) -> None:
    return None


@jobs.kind("mark")
async def mark(ctx: JobContext, marker: Marker) -> None:
    """Records each run in test_runs (so tests can count executions), optionally sleeping first."""
    if marker.sleep:
        await asyncio.sleep(marker.sleep)
    async with ctx.transaction() as conn:
        await conn.execute(
            "INSERT INTO test_runs (job_id, key, worker_pid) VALUES (%s, %s, %s)", (ctx.job.id, marker.key, os.getpid())
        )


@jobs.kind("sync_mark")
def sync_mark(ctx: JobContext, marker: Marker) -> str:
    deadline = time.monotonic() + marker.sleep
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    return marker.key


@jobs.kind("flaky", max_attempts=3, backoff_base=0.05, backoff_max=0.2)
async def flaky(ctx: JobContext, payload: dict) -> str:
    if ctx.attempt < payload.get("succeed_on", 99):
        raise RuntimeError(f"boom on attempt {ctx.attempt}")
    return "ok"


@jobs.kind("fatal")
async def fatal(ctx: JobContext, payload: dict) -> None:
    raise PermanentFailure("do not retry me")


@jobs.kind("slow")
async def slow(ctx: JobContext, payload: dict) -> str:
    for step in range(int(payload.get("steps", 10))):
        ctx.progress(step * 100 / payload.get("steps", 10), f"step {step}")
        ctx.log(f"line {step}")
        await asyncio.sleep(payload.get("step_seconds", 0.1))
    ctx.progress(100, "done")
    return "slow done"


class Count(msgspec.Struct):
    total: int
    crash_at: int = -1
    step_seconds: float = 0.0


@jobs.kind("counter", max_attempts=5, backoff_base=0.01, backoff_max=0.05)
async def counter(ctx: JobContext, count: Count) -> int:
    """Writes rows 0..total-1 to test_items in batches of 10 with a checkpoint; may crash once."""
    state = await ctx.load_checkpoint() or {"next": 0}
    position = state["next"]
    while position < count.total:
        batch = range(position, min(position + 10, count.total))
        async with ctx.transaction() as conn:
            for item in batch:
                await conn.execute("INSERT INTO test_items (job_id, item) VALUES (%s, %s)", (ctx.job.id, item))
            position = batch[-1] + 1
            await ctx.save_checkpoint({"next": position}, conn=conn)
        if count.crash_at >= 0 and position >= count.crash_at and ctx.attempt == 1:
            raise RuntimeError("crash after a committed batch")
        if count.step_seconds:
            await asyncio.sleep(count.step_seconds)
    return position


class Burn(msgspec.Struct):
    seconds: float


@jobs.kind("busy")
def busy(ctx: JobContext, burn: Burn) -> int:
    """A sync handler that burns CPU in pure Python (no sleeps, no I/O) for `seconds`: the
    worker's heartbeats must keep its lease alive meanwhile."""
    deadline = time.monotonic() + burn.seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return spins


@jobs.kind("chatty")
async def chatty(ctx: JobContext, payload: dict) -> int:
    """Reports progress `calls` times as fast as it can: coalescing must keep the events few."""
    calls = int(payload.get("calls", 10_000))
    for call in range(calls):
        ctx.progress(call * 100 / calls, f"call {call}")
        if call % 500 == 0:
            await asyncio.sleep(0)  # let the worker's event flusher run in between
    ctx.progress(100, "done")
    return calls


@jobs.kind("nul_log")
async def nul_log(ctx: JobContext, payload: dict) -> str:
    """Logs a line with a NUL character (binary data in a log line): jsonb cannot store \\u0000."""
    ctx.log("binary \x00 garbage")
    ctx.progress(50, "half \x00 way")
    return "logged"


@jobs.kind("nul_result")
async def nul_result(ctx: JobContext, payload: dict) -> dict:
    """Returns a result holding a NUL character (JSON-serialisable, but not storable as jsonb)."""
    return {"out": "a\x00b"}


@jobs.kind("nul_error")
async def nul_error(ctx: JobContext, payload: dict) -> None:
    """Fails with an error message holding a NUL character (text columns reject it)."""
    raise RuntimeError("bad byte \x00 here")


class Interval(msgspec.Struct):
    key: str = ""
    sleep: float = 0.2


@jobs.kind("interval", queue="flow")
async def interval(ctx: JobContext, run: Interval) -> None:
    """Writes its run interval to test_ledger (start and end on the database's clock, each in
    its own transaction while the lease is held): the queue tests count overlapping runs."""
    async with ctx.transaction() as conn:
        await conn.execute("INSERT INTO test_ledger (job_id, key, pid, started) VALUES (%s, %s, %s, clock_timestamp())",
                           (ctx.job.id, run.key, os.getpid()))
    await asyncio.sleep(run.sleep)
    async with ctx.transaction() as conn:
        await conn.execute("UPDATE test_ledger SET ended = clock_timestamp() WHERE job_id = %s AND ended IS NULL",
                           (ctx.job.id,))
