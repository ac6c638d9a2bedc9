"""Fixtures for in-process engine tests: a Queue with short leases and timings, the tables the
test job kinds write to, a worker running inside the test's event loop, and LISTEN helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg

from pgqueue.config import Settings
from pgqueue.models import Job
from pgqueue.queue import Queue
from pgqueue.worker import Worker
from tests.helpers import wait_for
from tests.jobs import jobs

TEST_TABLES = (
    "CREATE TABLE IF NOT EXISTS test_runs (job_id bigint, key text, worker_pid int, at timestamptz DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS test_items (job_id bigint, item int)",
)


def fast_settings(url: str, **overrides: Any) -> Settings:
    """Short leases, heartbeats and polls so lease and retry paths run in well under a second."""
    values: dict[str, Any] = {"lease_seconds": 1, "heartbeat_seconds": 0.2, "poll_seconds": 0.2}
    values.update(overrides)
    return Settings(database_url=url, **values)


@contextlib.asynccontextmanager
async def open_fast_queue(db_url: str) -> AsyncIterator[Queue]:
    """A Queue on ``db_url`` with the test job kinds, fast settings and the test tables."""
    queue = await Queue.connect(db_url, jobs, settings=fast_settings(db_url), max_size=8)
    try:
        async with queue.pool.connection() as conn:
            for statement in TEST_TABLES:
                await conn.execute(statement)
        yield queue
    finally:
        await queue.close()


@contextlib.asynccontextmanager
async def running_worker(queue: Queue, queues: Sequence[str] = ("default", "mail"), concurrency: int = 4,
                         **options: Any) -> AsyncIterator[Worker]:
    """A Worker running on this event loop; stopped (gracefully) when the block ends."""
    options.setdefault("shutdown_grace", 5.0)
    options.setdefault("maintenance_interval", 0.2)
    worker = Worker(queue, queues, concurrency, **options)
    task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def wait_for_status(queue: Queue, job_id: int, *statuses: str, timeout: float = 30.0) -> Job:
    async def reached() -> Job | None:
        job = await queue.get(job_id)
        return job if job.status in statuses else None

    return await wait_for(reached, timeout=timeout, message=f"job {job_id} to be {'/'.join(statuses)}")


async def fetch(queue: Queue, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Test-side SQL (inspection and set-up) on a pooled connection."""
    async with queue.pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


@contextlib.asynccontextmanager
async def listening(url: str, channel: str = "pgqueue_jobs") -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {channel}")
        yield conn


async def notifications_so_far(listener: psycopg.AsyncConnection[Any], url: str,
                               channel: str = "pgqueue_jobs") -> list[str]:
    """Every payload delivered to ``listener`` before now, without sleeping: send a marker from
    another connection and read up to it (notifications arrive in commit order)."""
    marker = f"marker-{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        await other.execute("SELECT pg_notify(%s, %s)", (channel, marker))
    seen: list[str] = []
    async for note in listener.notifies(timeout=10):
        if note.payload == marker:
            return seen
        seen.append(note.payload)
    raise AssertionError(f"marker notification not received on {channel} (saw {seen})")


async def nested_plans(queue: Queue, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    """The plans of every statement `sql` runs, functions' inner statements included (auto_explain,
    nested statements, sent to this client as notices), in a transaction rolled back afterwards."""
    plans: list[Any] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" in text:
            plans.append(json.loads(text.split("plan:", 1)[1])["Plan"])

    async with queue.pool.connection() as conn:
        conn.add_notice_handler(on_notice)
        try:
            async with conn.transaction(force_rollback=True):
                for setting in ("LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                                "SET LOCAL auto_explain.log_nested_statements = on",
                                "SET LOCAL auto_explain.log_format = json", "SET LOCAL auto_explain.log_level = notice",
                                "SET LOCAL client_min_messages = notice"):
                    await conn.execute(setting)
                await conn.execute(sql, params)
                await conn.execute("SET LOCAL auto_explain.log_min_duration = -1")
        finally:
            conn.remove_notice_handler(on_notice)
    return plans
