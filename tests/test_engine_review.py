"""Regression tests for engine bugs found in review: each one failed before its fix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pgqueue.queue import Queue
from tests.engine_fixtures import open_fast_queue, running_worker, wait_for_status


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

