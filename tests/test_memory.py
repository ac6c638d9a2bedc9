"""What only the in-memory backend offers (the shared contract is in test_contract.py):
`run_until_empty` running real handlers in-process, and the injectable, advanceable clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from pgqueue import JobContext, JobRegistry, MemoryQueue
from pgqueue.config import Settings
from tests.helpers import wait_for
from tests.jobs import jobs as shared_jobs

registry = JobRegistry()
registry.include(shared_jobs)

# Items each `resumable` job processed, by job id: a test checks nothing ran twice.
PROCESSED: dict[int, list[int]] = {}


class Resumable(msgspec.Struct):
    total: int
    crash_after: int = -1


@registry.kind("resumable", max_attempts=3, backoff_base=5.0)
async def resumable(ctx: JobContext, work: Resumable) -> int:
    state = await ctx.load_checkpoint() or {"next": 0}
    for item in range(state["next"], work.total):
        async with ctx.transaction() as conn:
            assert conn is None  # the memory backend has no connection to give
            PROCESSED.setdefault(ctx.job.id, []).append(item)
            await ctx.save_checkpoint({"next": item + 1}, conn=conn)
        if item == work.crash_after and ctx.attempt == 1:
            raise RuntimeError("crash after a saved item")
    return work.total


@registry.kind("sync_checkpoint")
def sync_checkpoint(ctx: JobContext, payload: dict) -> int:
    """A sync handler (run in a thread) reaching the async helpers through ctx.wait."""
    ctx.wait(ctx.save_checkpoint({"seen": payload["n"]}))
    return ctx.wait(ctx.load_checkpoint())["seen"]


@registry.kind("chain")
async def chain(ctx: JobContext, payload: dict) -> None:
    await ctx.queue.enqueue("chain", {})


@registry.kind("park")
async def park(ctx: JobContext, payload: dict) -> None:
    await asyncio.Event().wait()  # until cancelled


@registry.kind("unstorable")
async def unstorable(ctx: JobContext, payload: dict) -> object:
    return object()


@pytest.fixture
def mq() -> MemoryQueue:
    PROCESSED.clear()
    return MemoryQueue(registry, Settings(lease_seconds=30))


async def test_runs_async_and_sync_handlers_with_decoded_payloads(mq: MemoryQueue) -> None:
    email = await mq.enqueue("email", {"to": "a@example.com"})
    marker = await mq.enqueue("sync_mark", {"key": "k1"})
    sync_cp = await mq.enqueue("sync_checkpoint", {"n": 7})
    counts = await mq.run_until_empty()
    assert counts == {"succeeded": 3, "failed": 0, "dead": 0, "cancelled": 0, "lease_lost": 0}
    assert (await mq.get(email.id)).result == {"sent_to": "a@example.com"}
    assert (await mq.get(marker.id)).result == "k1"
    assert (await mq.get(sync_cp.id)).result == 7
    assert await mq.run_until_empty() == dict.fromkeys(counts, 0)


async def test_failed_attempts_wait_for_their_retry_unless_asked_to_run_scheduled(mq: MemoryQueue) -> None:
    flaky = await mq.enqueue("flaky", {"succeed_on": 3})
    doomed = await mq.enqueue("flaky", {"succeed_on": 99})
    fatal = await mq.enqueue("fatal", {})
    first = await mq.run_until_empty()
    assert first == {"succeeded": 0, "failed": 2, "dead": 1, "cancelled": 0, "lease_lost": 0}
    assert (await mq.get(flaky.id)).status == "failed"
    assert "PermanentFailure" in ((await mq.get(fatal.id)).last_error or "")

    rest = await mq.run_until_empty(run_scheduled=True)
    assert rest == {"succeeded": 1, "failed": 2, "dead": 1, "cancelled": 0, "lease_lost": 0}
    done = await mq.get(flaky.id)
    assert (done.status, done.attempts, done.result) == ("succeeded", 3, "ok")
    assert [e.attempt for e in await mq.errors(flaky.id)] == [1, 2]
    assert (await mq.get(doomed.id)).status == "dead"
    assert "boom on attempt 3" in (await mq.errors(doomed.id))[-1].error


async def test_only_the_given_queues_run(mq: MemoryQueue) -> None:
    email = await mq.enqueue("email", {"to": "a@example.com"})
    noop = await mq.enqueue("noop", {})
    assert (await mq.run_until_empty(["mail"]))["succeeded"] == 1
    assert (await mq.get(email.id)).status == "succeeded"
    assert (await mq.get(noop.id)).status == "queued"


async def test_a_checkpointed_job_resumes_where_it_stopped(mq: MemoryQueue) -> None:
    job = await mq.enqueue("resumable", {"total": 10, "crash_after": 4})
    await mq.run_until_empty(run_scheduled=True)
    done = await mq.get(job.id)
    assert (done.status, done.attempts, done.result) == ("succeeded", 2, 10)
    assert PROCESSED[job.id] == list(range(10))  # each item once: attempt 2 started at 5


async def test_cancel_stops_a_running_async_handler(mq: MemoryQueue) -> None:
    job = await mq.enqueue("park", {})
    runner = asyncio.create_task(mq.run_until_empty())

    async def running() -> bool:
        return (await mq.get(job.id)).status == "running"

    await wait_for(running, timeout=10, message="the handler to start")
    await mq.cancel(job.id)
    counts = await asyncio.wait_for(runner, 10)
    assert counts["cancelled"] == 1
    assert (await mq.get(job.id)).status == "cancelled"
    assert [e.type for e in await mq.events(job.id)] == ["started", "cancel_requested", "cancelled"]


async def test_cancel_reaches_a_sync_handler_polling_raise_if_cancelled(mq: MemoryQueue) -> None:
    job = await mq.enqueue("sync_mark", {"key": "k", "sleep": 60})
    runner = asyncio.create_task(mq.run_until_empty())

    async def running() -> bool:
        return (await mq.get(job.id)).status == "running"

    await wait_for(running, timeout=10, message="the handler to start")
    await mq.cancel(job.id)
    assert (await asyncio.wait_for(runner, 10))["cancelled"] == 1
    assert (await mq.get(job.id)).status == "cancelled"


async def test_cancelling_the_caller_is_not_mistaken_for_a_job_cancellation(mq: MemoryQueue) -> None:
    job = await mq.enqueue("park", {})
    runner = asyncio.create_task(mq.run_until_empty())

    async def running() -> bool:
        return (await mq.get(job.id)).status == "running"

    await wait_for(running, timeout=10, message="the handler to start")
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert (await mq.get(job.id)).status == "running"  # left as a killed worker would leave it


async def test_progress_is_coalesced_and_comes_before_the_end(mq: MemoryQueue) -> None:
    job = await mq.enqueue("chatty", {"calls": 10_000})
    await mq.run_until_empty()
    events = await mq.events(job.id)
    progress = [e.data["percent"] for e in events if e.type == "progress"]
    assert 1 <= len(progress) <= 11  # at most one per 10% band
    assert progress[-1] == 100 and progress == sorted(progress)
    assert events[-1].type == "succeeded"


async def test_a_result_that_cannot_be_stored_kills_the_job(mq: MemoryQueue) -> None:
    job = await mq.enqueue("unstorable", {})
    assert (await mq.run_until_empty())["dead"] == 1
    assert "not JSON-serialisable" in ((await mq.get(job.id)).last_error or "")


async def test_a_job_chain_that_never_ends_is_stopped(mq: MemoryQueue) -> None:
    await mq.enqueue("chain", {})
    with pytest.raises(RuntimeError, match="5 jobs"):
        await mq.run_until_empty(max_jobs=5)
    assert len(mq.list_jobs(kind="chain", status="succeeded")) == 5
    assert len(mq.list_jobs(kind="chain", status="queued")) == 1
    assert mq.list_jobs(status="running") == []


async def test_the_clock_is_injectable_and_advances_on_demand() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    mq = MemoryQueue(registry, Settings(lease_seconds=30), clock=lambda: start)
    job = await mq.enqueue("noop", {})
    scheduled = await mq.enqueue("noop", {}, delay=3600)
    assert job.created_at == start and scheduled.run_at == start + timedelta(hours=1)
    [running] = await mq.claim(["default"], 10, "w1")
    assert running.lease_expires_at == start + timedelta(seconds=30)

    mq.advance(30)
    assert mq.now() == start + timedelta(seconds=30)
    assert await mq.rescue_expired_leases() == []  # expires_at == now: not yet past
    mq.advance(0.001)
    assert await mq.rescue_expired_leases() == [job.id]

    mq.advance(3600)
    assert {j.id for j in await mq.claim(["default"], 10, "w1")} == {job.id, scheduled.id}
    with pytest.raises(ValueError):
        mq.advance(-1)


async def test_list_jobs_filters(mq: MemoryQueue) -> None:
    a = await mq.enqueue("noop", {})
    b = await mq.enqueue("email", {"to": "x@example.com"})
    await mq.cancel(a.id)
    assert [j.id for j in mq.list_jobs()] == [a.id, b.id]
    assert [j.id for j in mq.list_jobs(kind="email")] == [b.id]
    assert [j.id for j in mq.list_jobs(status="cancelled")] == [a.id]
    assert [j.id for j in mq.list_jobs(queue="mail", status="queued")] == [b.id]
