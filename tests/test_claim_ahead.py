"""Claiming ahead (pgqueue/worker.py, README "Tuning --concurrency"): a worker whose jobs are fast
claims the next batch while the current one runs, yet never runs more than `concurrency` jobs at
once; slow jobs are never claimed ahead; jobs claimed ahead are heartbeated, dropped when their
lease is taken away, and go back to the queue (attempt not counted) when the worker stops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pgqueue.queue import Queue
from pgqueue.worker import Worker
from tests.engine_fixtures import fetch, open_fast_queue, running_worker
from tests.helpers import wait_for
from tests.jobs import GAUGE


@pytest.fixture
async def fast_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        yield queue


async def all_succeeded(queue: Queue, ids: list[int]) -> bool:
    rows = await fetch(queue, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND status = 'succeeded'", [ids])
    return rows[0][0] == len(ids)


async def test_fast_jobs_are_claimed_ahead_yet_never_run_beyond_concurrency(fast_queue: Queue) -> None:
    GAUGE.update(now=0, most=0)
    ids = await fast_queue.enqueue_many([("gauge", {"n": n}) for n in range(600)])
    async with running_worker(fast_queue, ["default"], concurrency=4) as worker:
        await wait_for(lambda: all_succeeded(fast_queue, ids), timeout=60, message="600 fast jobs to succeed")
    assert GAUGE["most"] <= 4
    assert worker.counters["claimed_ahead"] > 0
    assert worker.counters["succeeded"] == 600
    # each ran once: claimed ahead is claimed once, never twice
    assert await fetch(fast_queue, "SELECT DISTINCT attempts FROM pgqueue.jobs WHERE id = ANY(%s)", [ids]) == [(1,)]


async def test_no_claim_ahead_when_turned_off(fast_queue: Queue) -> None:
    ids = await fast_queue.enqueue_many([("gauge", {"n": n}) for n in range(200)])
    async with running_worker(fast_queue, ["default"], concurrency=4, claim_ahead=False) as worker:
        await wait_for(lambda: all_succeeded(fast_queue, ids), timeout=60, message="200 fast jobs to succeed")
    assert worker.counters["claimed_ahead"] == 0


async def test_slow_jobs_are_never_claimed_ahead(fast_queue: Queue) -> None:
    GAUGE.update(now=0, most=0)
    ids = await fast_queue.enqueue_many([("gauge", {"n": n, "sleep": 0.05}) for n in range(24)])
    async with running_worker(fast_queue, ["default"], concurrency=3) as worker:
        await wait_for(lambda: all_succeeded(fast_queue, ids), timeout=60, message="24 slow jobs to succeed")
    assert worker.counters["claimed_ahead"] == 0
    assert GAUGE["most"] <= 3


async def claimed_for(queue: Queue, worker: Worker, count: int) -> list[int]:
    """`count` jobs claimed for `worker` and put where jobs claimed ahead wait (its ready list)."""
    ids = await queue.enqueue_many([("noop", {"n": n}) for n in range(count)])
    jobs = await queue.claim(["default"], count, worker.worker_id)
    assert sorted(job.id for job in jobs) == sorted(ids)
    worker._ready.extend(jobs)
    return ids


async def test_jobs_claimed_ahead_go_back_to_the_queue_when_the_worker_stops(fast_queue: Queue) -> None:
    worker = Worker(fast_queue, ["default"], 2)
    ids = await claimed_for(fast_queue, worker, 3)
    await worker._drain()
    rows = await fetch(fast_queue, "SELECT status, attempts, lease_token FROM pgqueue.jobs WHERE id = ANY(%s)", [ids])
    assert rows == [("queued", 0, None)] * 3  # runnable at once, the attempt not counted
    assert not worker._ready


async def test_heartbeat_extends_jobs_claimed_ahead_and_drops_those_taken_away(fast_queue: Queue) -> None:
    worker = Worker(fast_queue, ["default"], 2)
    kept, taken = await claimed_for(fast_queue, worker, 2)
    await fetch(fast_queue, "UPDATE pgqueue.jobs SET lease_expires_at = now()")  # about to expire
    # another worker took one over (its lease was rescued and claimed again)
    await fetch(fast_queue, "UPDATE pgqueue.jobs SET lease_token = gen_random_uuid() WHERE id = %s", [taken])
    async with fast_queue.pool.connection() as conn:
        await worker._heartbeat(conn)
    assert [job.id for job in worker._ready] == [kept]
    assert worker.counters["lease_lost"] == 1
    # pushed a lease further (fast settings: a lease is 1 s)
    rows = await fetch(fast_queue, "SELECT lease_expires_at > now() + interval '0.5 seconds' FROM pgqueue.jobs "
                                   "WHERE id = %s", [kept])
    assert rows == [(True,)]
