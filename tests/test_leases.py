"""Leases under contention: a heartbeat never waits on a handler, runs are tracked by lease,
a crash of a batch is charged to nobody until the suspect ran alone, and no lease is rescued
before the server has been up for a lease (README, "Leases and row locks", "One bad job")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from pgqueue import JobContext, JobRegistry
from pgqueue.maintenance import LeaseRescuer
from pgqueue.queue import Queue
from pgqueue.worker import Worker
from tests.engine_fixtures import fast_settings, fetch, open_fast_queue, running_worker, wait_for_status
from tests.helpers import wait_for
from tests.jobs import jobs as test_jobs

# Handlers of this module wait on these: (job id, attempt) -> event the test sets.
GATES: dict[tuple[int, int], asyncio.Event] = {}


def gate(job_id: int, attempt: int) -> asyncio.Event:
    return GATES.setdefault((job_id, attempt), asyncio.Event())


lease_jobs = JobRegistry()
lease_jobs.include(test_jobs)


@lease_jobs.kind("hold_tx")
async def hold_tx(ctx: JobContext, payload: dict) -> str:
    """Holds ctx.transaction() (the lease check's row lock) until the test opens its gate."""
    async with ctx.transaction() as conn:
        await conn.execute("INSERT INTO test_runs (job_id, key) VALUES (%s, 'hold')", (ctx.job.id,))
        await gate(ctx.job.id, ctx.attempt).wait()
    return "held"


@lease_jobs.kind("gated")
async def gated(ctx: JobContext, payload: dict) -> int:
    await gate(ctx.job.id, ctx.attempt).wait()
    return ctx.attempt


@pytest.fixture(autouse=True)
def fresh_gates() -> None:
    GATES.clear()  # job ids start at 1 in every test's database


@pytest.fixture
async def lease_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        queue.registry = lease_jobs
        yield queue


async def other_connection(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def expiry(queue: Queue, job_id: int) -> Any:
    return (await fetch(queue, "SELECT lease_expires_at FROM pgqueue.jobs WHERE id = %s", [job_id]))[0][0]


# -- the heartbeat and row locks --------------------------------------------------------------


async def test_heartbeat_passes_a_handler_inside_its_lease_transaction(lease_queue: Queue, db_url: str) -> None:
    """ctx.transaction() checks the lease with FOR KEY SHARE; the heartbeat's UPDATE takes
    FOR NO KEY UPDATE, which does not conflict: it extends the lease without waiting."""
    queue = lease_queue
    await queue.enqueue_many([("noop", {}), ("noop", {})])
    a, b = await queue.claim(["default"], 2, "w1")
    assert a.lease_token and b.lease_token
    before = await expiry(queue, a.id)
    async with queue.lease_transaction(a.id, a.lease_token), await other_connection(db_url) as beat:
        # a heartbeat that waited for the transaction would never return inside this block
        rows = await asyncio.wait_for(queue.store.extend_leases([(a.id, a.lease_token), (b.id, b.lease_token)],
                                                                 60, beat), 20)
    assert sorted(rows) == sorted([(a.id, a.lease_token, False, True), (b.id, b.lease_token, False, True)])
    assert await expiry(queue, a.id) > before


async def test_heartbeat_skips_a_row_another_writer_holds_and_extends_it_next_time(lease_queue: Queue,
                                                                                   db_url: str) -> None:
    queue = lease_queue
    await queue.enqueue_many([("noop", {}), ("noop", {})])
    a, b = await queue.claim(["default"], 2, "w1")
    assert a.lease_token and b.lease_token
    items = [(a.id, a.lease_token), (b.id, b.lease_token)]
    async with await other_connection(db_url) as locker, await other_connection(db_url) as beat:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", [b.id])
            rows = await asyncio.wait_for(queue.store.extend_leases(items, 60, beat), 20)
            # b is still ours (held), only not extended this time
            assert sorted(rows) == sorted([(a.id, a.lease_token, False, True), (b.id, b.lease_token, False, False)])
        rows = await queue.store.extend_leases(items, 60, beat)
        assert sorted(rows) == sorted([(a.id, a.lease_token, False, True), (b.id, b.lease_token, False, True)])


async def test_rescue_waits_for_a_lease_transaction_to_end(lease_queue: Queue) -> None:
    """An expired lease whose handler is still inside ctx.transaction() is skipped (its work
    may yet commit); once the transaction ends, the rescue takes it."""
    queue = lease_queue
    job = await queue.enqueue("noop", {})
    [claimed] = await queue.claim(["default"], 1, "w1", lease_seconds=0.2)
    assert claimed.lease_token
    async with queue.lease_transaction(job.id, claimed.lease_token):
        await fetch(queue, "UPDATE pgqueue.jobs SET lease_expires_at = now() - interval '1 minute' WHERE id = %s",
                    [job.id])
        assert await queue.rescue_expired_leases() == []
    assert await queue.rescue_expired_leases() == [job.id]


async def test_a_live_worker_keeps_every_lease_while_a_handler_holds_a_transaction(lease_queue: Queue) -> None:
    """Issue 8 #1: a job inside ctx.transaction() held up the heartbeat's UPDATE, so the
    worker's other jobs expired and were rescued while it was alive. Here one job holds its
    transaction while the others outlast several leases (1 s) on the same worker."""
    queue = lease_queue
    holder = await queue.enqueue("hold_tx", {})
    slow = [await queue.enqueue("slow", {"steps": 6, "step_seconds": 0.5}) for _ in range(3)]
    async with running_worker(queue, concurrency=4):
        for job in slow:
            await wait_for_status(queue, job.id, "succeeded", "failed", "dead")
        gate(holder.id, 1).set()
        await wait_for_status(queue, holder.id, "succeeded")
    rescued = await fetch(queue, "SELECT job_id FROM pgqueue.events WHERE type = 'rescued'")
    assert rescued == []
    assert await fetch(queue, "SELECT job_id, error FROM pgqueue.job_errors") == []
    states = await fetch(queue, "SELECT status, attempts FROM pgqueue.jobs ORDER BY id")
    assert states == [("succeeded", 1)] * 4


# -- runs are tracked by lease ----------------------------------------------------------------


async def test_a_job_claimed_again_by_its_worker_keeps_its_new_run(db_url: str) -> None:
    """Issue 8 #2: the worker tracked runs by job id. When it claimed again a job taken from it,
    the old run's clean-up removed the new run (no longer heartbeated), and the old lease's
    heartbeat answer cancelled the new run."""
    settings = fast_settings(db_url, lease_seconds=60, heartbeat_seconds=20)
    queue = await Queue.connect(db_url, lease_jobs, settings=settings, max_size=6)
    try:
        job = await queue.enqueue("gated", {})
        worker = Worker(queue, ["default"], 2, maintenance=False)
        task = asyncio.create_task(worker.run())
        try:
            first = await wait_for(lambda: _run_of(worker, job.id, attempt=1), message="the first run")
            # the worker's first heartbeat (at start-up, then every 20 s) has extended the lease:
            # one landing after the take-away below would stop the old run before it can finish
            await wait_for(lambda: _extended_once(queue, job.id), message="the first heartbeat")
            # the job is taken away from this run (as a rescue would) and queued again
            await fetch(queue, "UPDATE pgqueue.jobs SET status = 'queued', lease_token = NULL, "
                               "lease_expires_at = NULL WHERE id = %s", [job.id])
            worker._wake.set()
            second = await wait_for(lambda: _run_of(worker, job.id, attempt=2), message="the second run")
            assert first.lease_token != second.lease_token

            # the old run ends: its outcome is discarded, and the new run stays tracked
            gate(job.id, 1).set()
            await wait_for(lambda: _true(worker.counters["lease_lost"] == 1), message="the old outcome discarded")
            assert second.lease_token in worker.running

            # a heartbeat sent for both leases: only the old one is lost
            async with await other_connection(db_url) as beat:
                await worker._heartbeat(beat)
            assert not worker.running[second.lease_token].ctx.cancelled.is_set()  # type: ignore[index]

            gate(job.id, 2).set()
            done = await wait_for_status(queue, job.id, "succeeded")
            assert done.result == 2 and done.attempts == 2
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
    finally:
        await queue.close()


async def _run_of(worker: Worker, job_id: int, attempt: int) -> Any:
    for run in worker.running.values():
        if run.job.id == job_id and run.job.attempts == attempt:
            return run.job
    return None


async def _extended_once(queue: Queue, job_id: int) -> bool:
    [(extended,)] = await fetch(queue, "SELECT lease_expires_at > started_at + interval '60 seconds' "
                                       "FROM pgqueue.jobs WHERE id = %s", [job_id])
    return bool(extended)


async def _true(value: bool) -> bool:
    return value


# -- one bad job harms only itself ------------------------------------------------------------


async def expire(queue: Queue, ids: list[int]) -> None:
    await fetch(queue, "UPDATE pgqueue.jobs SET lease_expires_at = now() - interval '1 minute' WHERE id = ANY(%s)",
                [ids])


async def test_a_crashed_batch_costs_no_attempt_and_each_job_then_runs_alone(lease_queue: Queue) -> None:
    """Issue 8 #4: the jobs of a worker that died were each charged an attempt, rescued with the
    same run_at and claimed together again, so one job that kills its worker took innocent ones
    with it. Now a batch claim is uncharged: the rescue gives the attempt back and marks the jobs
    crash suspects, which the worker claims one at a time with nothing beside them (charged)."""
    queue, store = lease_queue, lease_queue.store
    ids = await queue.enqueue_many([("noop", {}) for _ in range(3)])
    poison = ids[0]
    await queue.enqueue("noop", {"innocent": True})  # never a suspect
    batch = await store.claim_jobs(["default"], 3, "w1", 30, charged=False, include_suspects=False)
    assert sorted(j.id for j in batch) == sorted(ids)
    await expire(queue, ids)
    assert sorted(await queue.rescue_expired_leases()) == sorted(ids)
    rows = await fetch(queue, "SELECT id, status, attempts, crash_suspect FROM pgqueue.jobs WHERE id = ANY(%s) "
                              "ORDER BY id", [ids])
    assert rows == [(i, "failed", 0, True) for i in sorted(ids)]

    # the plain claim passes the suspects by; they are claimed one by one, charged
    assert await store.suspects_waiting(["default"])
    plain = await store.claim_jobs(["default"], 10, "w2", 30, charged=False, include_suspects=False)
    assert [j.payload for j in plain] == [{"innocent": True}]
    for _ in range(len(ids)):
        [alone] = await store.claim_suspect_job(["default"], "w2", 30)
        assert alone.lease_charged and alone.lease_token
        if alone.id != poison:
            await queue.complete(alone.id, alone.lease_token)
        else:
            poison_lease = alone
    assert not await store.suspects_waiting(["default"])

    # the poison job crashes its worker every time it runs alone: charged, dead after its attempts
    for attempt in range(1, 4):
        assert poison_lease.attempts == attempt
        await expire(queue, [poison])
        assert await queue.rescue_expired_leases() == [poison]
        if attempt < 3:
            [poison_lease] = await store.claim_suspect_job(["default"], "w2", 30)
    dead = await queue.get(poison)
    assert dead.status == "dead" and dead.attempts == 3
    errors = await queue.errors(poison)
    assert [e.attempt for e in errors] == [1, 1, 2, 3]
    assert "not counted" in errors[0].error and "not counted" not in errors[1].error
    statuses = dict(await fetch(queue, "SELECT id, status FROM pgqueue.jobs"))
    assert sorted(statuses.values()) == ["dead", "running", "succeeded", "succeeded"]  # the plain one is w2's


async def test_an_ordinary_failure_clears_the_suspicion(lease_queue: Queue) -> None:
    queue, store = lease_queue, lease_queue.store
    job = await queue.enqueue("noop", {})
    await store.claim_jobs(["default"], 1, "w1", 30, charged=False, include_suspects=False)
    await expire(queue, [job.id])
    await queue.rescue_expired_leases()
    [alone] = await store.claim_suspect_job(["default"], "w2", 30)
    assert alone.lease_token
    await queue.fail(job.id, alone.lease_token, "an exception, not a crash", retry_delay=0)
    failed = await queue.get(job.id)
    assert failed.status == "failed" and not failed.crash_suspect and failed.attempts == 1
    [again] = await store.claim_jobs(["default"], 1, "w3", 30, charged=False, include_suspects=False)
    assert again.id == job.id


async def test_the_worker_runs_a_suspect_with_nothing_beside_it(lease_queue: Queue) -> None:
    queue, store = lease_queue, lease_queue.store
    suspect = await queue.enqueue("gated", {})
    await store.claim_jobs(["default"], 1, "dead-worker", 30, charged=False, include_suspects=False)
    await expire(queue, [suspect.id])
    assert await queue.rescue_expired_leases() == [suspect.id]
    others = await queue.enqueue_many([("noop", {}) for _ in range(5)])
    async with running_worker(queue, ["default"], concurrency=4) as worker:
        await wait_for(lambda: _run_of(worker, suspect.id, attempt=1), message="the suspect to run")
        assert len(worker.running) == 1  # alone: the five plain jobs wait
        assert [s for (s,) in await fetch(queue, "SELECT status FROM pgqueue.jobs WHERE id = ANY(%s)", [others])] \
            == ["queued"] * 5
        gate(suspect.id, 1).set()
        for job_id in others:
            await wait_for_status(queue, job_id, "succeeded")
    done = await queue.get(suspect.id)
    assert done.status == "succeeded" and done.attempts == 1
    assert worker.counters["isolated"] == 1


# -- after an outage ---------------------------------------------------------------------------


async def test_no_lease_is_rescued_before_the_server_has_been_up_for_a_lease(lease_queue: Queue) -> None:
    """Issue 8 #5: right after a restart, the rescuer took every lease that expired during the
    outage before the live workers had reconnected, and their finished results were thrown
    away. Leases are rescued only once the server has been up for longer than a lease."""
    queue, store = lease_queue, lease_queue.store
    job = await queue.enqueue("noop", {})
    await store.claim_jobs(["default"], 1, "w1", 30, charged=False, include_suspects=False)
    await expire(queue, [job.id])
    [(uptime,)] = await fetch(queue, "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
    assert await store.rescue_expired_leases(100, lease_seconds=uptime + 3600) == []
    assert (await queue.get(job.id)).status == "running"
    rescuer = LeaseRescuer(store, lease_seconds=0.1)
    assert await rescuer.run_once() == 1


async def test_heartbeat_extends_from_the_moment_it_writes(lease_queue: Queue, db_url: str) -> None:
    """The new expiry counts from clock_timestamp(): a heartbeat statement that started long
    ago (here: inside a transaction begun a while before) still grants a whole lease."""
    queue = lease_queue
    job = await queue.enqueue("noop", {})
    [claimed] = await queue.claim(["default"], 1, "w1")
    assert claimed.lease_token
    async with await psycopg.AsyncConnection.connect(db_url) as beat:
        started = (await (await beat.execute("SELECT now()")).fetchone())[0]  # type: ignore[index]
        await fetch(queue, "SELECT pg_sleep(0.3)")
        await queue.store.extend_leases([(job.id, claimed.lease_token)], 10, beat)
        await beat.commit()
    expires = await expiry(queue, job.id)
    assert (expires - started).total_seconds() >= 10.3



async def test_heartbeats_completions_and_releases_on_shared_rows_never_deadlock(lease_queue: Queue,
                                                                                  db_url: str) -> None:
    """Issue 8 #3: the heartbeat and batched completions updated many rows in no fixed order
    and deadlocked under load. Every multi-row statement now locks in id order (or skips what
    is locked): hammer overlapping sets, given in random orders, from several connections."""
    import random

    queue = lease_queue
    await queue.enqueue_many([("noop", {}) for _ in range(300)])
    claimed = await queue.claim(["default"], 300, "w1")
    leases = [(job.id, job.lease_token) for job in claimed if job.lease_token]
    rng = random.Random(8)
    finish = leases[:]
    rng.shuffle(finish)
    to_complete, to_release = finish[:150], finish[150:]

    async def beat(rounds: int) -> None:
        async with await other_connection(db_url) as conn:
            for _ in range(rounds):
                batch = leases[:]
                rng.shuffle(batch)
                await queue.store.extend_leases(batch, 60, conn)

    async def complete(items: list[Any]) -> None:
        for start in range(0, len(items), 25):
            chunk = items[start:start + 25]
            rng.shuffle(chunk)
            await queue.store.complete_jobs([(job_id, token, None) for job_id, token in chunk])

    async def release(items: list[Any]) -> None:
        for start in range(0, len(items), 25):
            chunk = items[start:start + 25]
            rng.shuffle(chunk)
            await queue.release(chunk)

    await asyncio.gather(beat(30), beat(30), beat(30), complete(to_complete), release(to_release))
    counts = dict(await fetch(queue, "SELECT status, count(*) FROM pgqueue.jobs GROUP BY status"))
    assert counts == {"succeeded": 150, "queued": 150}
