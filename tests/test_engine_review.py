"""Regression tests for engine bugs found in review: each one failed before its fix."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from pgqueue import worker as worker_module
from pgqueue.errors import DatabaseUnavailable
from pgqueue.queue import Queue
from pgqueue.sql import QUERIES
from pgqueue.worker import Worker
from tests.engine_fixtures import fetch, open_fast_queue, running_worker, wait_for_status
from tests.helpers import wait_for, wait_for_sync
from tests.process_fixtures import enqueue_marks, proc_db, query, scalar, spawn_worker  # noqa: F401 - fixtures
from tests.test_worker_processes import running_on


@pytest.fixture
async def fast_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        yield queue


# -- a NUL character (jsonb and text reject it) must not wedge the worker's flushers ----------


async def test_a_nul_in_a_log_line_does_not_stop_the_worker(fast_queue: Queue) -> None:
    async with running_worker(fast_queue, concurrency=2):
        poisoned = await fast_queue.enqueue("nul_log", {})
        await wait_for_status(fast_queue, poisoned.id, "succeeded", timeout=10)
        after = await fast_queue.enqueue("noop", {})
        await wait_for_status(fast_queue, after.id, "succeeded", timeout=10)
    lines = [e.data for e in await fast_queue.events(poisoned.id) if e.type == "log"]
    assert lines and "binary" in lines[0]["line"]


async def test_a_nul_in_a_result_does_not_leave_jobs_running(fast_queue: Queue) -> None:
    async with running_worker(fast_queue, concurrency=2):
        poisoned = await fast_queue.enqueue("nul_result", {})
        await wait_for_status(fast_queue, poisoned.id, "dead", timeout=10)
        after = [await fast_queue.enqueue("noop", {}) for _ in range(6)]
        for job in after:
            await wait_for_status(fast_queue, job.id, "succeeded", timeout=10)


async def test_a_nul_in_an_error_is_recorded(fast_queue: Queue) -> None:
    async with running_worker(fast_queue, concurrency=2):
        job = await fast_queue.enqueue("nul_error", {}, max_attempts=1)
        await wait_for_status(fast_queue, job.id, "dead", timeout=10)
    errors = await fast_queue.errors(job.id)
    assert len(errors) == 1 and "bad byte" in errors[0].error, errors


# -- a job's progress and log lines come before its terminal event ----------------------------


async def test_progress_of_a_job_finishing_during_an_event_flush_lands_before_its_success(
        fast_queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A completion flush first writes pending events; a job that reports progress and finishes
    while that insert is in flight must not get its 'succeeded' before that progress."""
    worker = Worker(fast_queue, ["default"], 2)
    first, second = (await fast_queue.enqueue("noop", {})), (await fast_queue.enqueue("noop", {}))
    claimed = {job.id: job for job in await fast_queue.claim(["default"], 2, worker.worker_id)}
    a, b = claimed[first.id], claimed[second.id]
    worker.events.progress(a.id, 50, "a half way")
    worker._completions.append((a.id, a.lease_token, None))  # type: ignore[arg-type]
    original = fast_queue.add_events

    async def add_events(events: Any) -> None:
        if not any(e[0] == b.id for e in events) and b.id not in dict((c[0], c) for c in worker._completions):
            # job b runs on the loop while this insert is in flight: it reports, then finishes
            worker.events.progress(b.id, 100, "b done")
            worker._completions.append((b.id, b.lease_token, None))  # type: ignore[arg-type]
        await original(events)

    monkeypatch.setattr(fast_queue, "add_events", add_events)
    await worker._flush_completions()
    await worker._flush_completions()
    await worker._flush_events()
    assert (await fast_queue.get(b.id)).status == "succeeded"
    types = [e.type for e in await fast_queue.events(b.id)]
    assert types[-1] == "succeeded", types


# -- shutdown ---------------------------------------------------------------------------------


async def test_a_job_cancelled_during_the_shutdown_grace_period_is_recorded_cancelled(fast_queue: Queue) -> None:
    async with running_worker(fast_queue, shutdown_grace=20) as worker:
        job = await fast_queue.enqueue("slow", {"steps": 200, "step_seconds": 0.05})
        await wait_for_status(fast_queue, job.id, "running", timeout=10)
        worker.stop()
        await fast_queue.cancel(job.id)
    finished = await fast_queue.get(job.id)
    assert finished.status == "cancelled", finished
    assert finished.last_error == "cancelled while running"


def test_a_second_sigterm_releases_running_jobs_at_once(proc_db, spawn_worker):  # noqa: F811
    worker = spawn_worker(proc_db, concurrency=2, grace=120)
    worker_id = worker.worker_id()
    ids = enqueue_marks(proc_db, 1, sleep=60) + enqueue_marks(proc_db, 1, sleep=60, kind="sync_mark")
    wait_for_sync(lambda: running_on(proc_db, worker_id) == ids, message="both jobs running")

    worker.terminate()
    wait_for_sync(lambda: "SIGTERM received" in worker.output(), message="the first SIGTERM to be handled")
    worker.terminate()
    assert worker.wait(20) == 0

    jobs = query(proc_db, "SELECT id, status, attempts, lease_token FROM pgqueue.jobs ORDER BY id")
    assert jobs == [(i, "queued", 0, None) for i in ids], "released at once, attempt not counted"
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.job_errors") == 0


# -- database outages -------------------------------------------------------------------------


async def test_completions_are_written_after_an_outage_longer_than_the_retry_deadline(
        fast_queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The completion flusher gave up retrying after a deadline; the finished jobs are still
    heartbeated (so nobody rescues them), so their completion must be written once the database
    is back, not only when some other job happens to finish."""
    clock = {"offset": 0.0}
    real_monotonic = time.monotonic
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(monotonic=lambda: real_monotonic() + clock["offset"]))
    original = fast_queue.complete_many
    state = {"down": True, "failures": 0}

    async def complete_many(items: Any) -> set[int]:
        if state["down"]:
            state["failures"] += 1
            clock["offset"] += 1000.0  # the retry deadline passes during this outage
            raise DatabaseUnavailable("simulated outage")
        return await original(items)

    monkeypatch.setattr(fast_queue, "complete_many", complete_many)
    async with running_worker(fast_queue, concurrency=2):
        job = await fast_queue.enqueue("noop", {})

        async def retried_past_the_deadline() -> bool:
            return state["failures"] >= 2

        await wait_for(retried_past_the_deadline, timeout=10, message="a completion retry past the deadline")
        state["down"] = False
        await wait_for_status(fast_queue, job.id, "succeeded", timeout=10)


# -- query plans on a large table -------------------------------------------------------------


async def test_next_run_at_reads_a_few_index_entries_not_every_scheduled_job(fast_queue: Queue) -> None:
    """An idle worker asks for the next run time every poll and after every short claim: with
    many scheduled jobs (or retries waiting) it must not read them all."""
    await fetch(fast_queue, """
        INSERT INTO pgqueue.jobs (queue, kind, priority, run_at)
        SELECT 'default', 'noop', 1 + n % 5, now() + interval '1 day' + n * interval '1 second'
        FROM generate_series(1, 100000) AS n""")
    await fetch(fast_queue, "ANALYZE pgqueue.jobs")
    [(plan,)] = await fetch(fast_queue, "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["next_run_at"].sql,
                            {"queues": ["default", "mail"]})

    def rows_read(node: Any) -> int:
        own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) if "Relation Name" in node else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    assert rows_read(plan[0]["Plan"]) <= 20, plan
    next_at, now = await fast_queue.store.next_run_at(["default", "mail"])
    [(expected,)] = await fetch(fast_queue, "SELECT min(run_at) FROM pgqueue.jobs")
    assert next_at == expected and next_at > now
