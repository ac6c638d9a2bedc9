"""pgqueue.worker_status: a killed worker shows as gone within a few of its own heartbeats,
and the pruner forgets its row after max(10 heartbeats, 2 leases, 5 minutes)."""

from __future__ import annotations

from collections.abc import Callable

from pgqueue.config import Settings
from pgqueue.maintenance import Pruner
from pgqueue.queue import Queue
from tests.helpers import wait_for_sync
from tests.process_fixtures import HEARTBEAT_SECONDS, WorkerProcess, proc_db, query, spawn_worker  # noqa: F401

ADD_WORKER = """INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, heartbeat_seconds, heartbeat_at)
                VALUES (%s, 'host', 1, '{default}', 1, %s, now() - make_interval(secs => %s))"""


def status(url: str, worker_id: str) -> tuple[bool, float] | None:
    rows = query(url, "SELECT alive, heartbeat_seconds FROM pgqueue.worker_status WHERE id = %s", [worker_id])
    return rows[0] if rows else None


def test_a_killed_worker_shows_as_gone_within_a_few_heartbeats(proc_db: str,  # noqa: F811
                                                               spawn_worker: Callable[..., WorkerProcess]):  # noqa: F811
    worker = spawn_worker(proc_db)
    worker_id = worker.worker_id()
    assert status(proc_db, worker_id) == (True, HEARTBEAT_SECONDS)
    worker.kill()
    # greatest(3 heartbeats, 2 s) after its last heartbeat: well within the deadline, never slept on
    wait_for_sync(lambda: status(proc_db, worker_id) == (False, HEARTBEAT_SECONDS), timeout=30,
                  message="the killed worker to show as gone")


async def test_the_pruner_forgets_silent_workers_after_ten_heartbeats_two_leases_or_five_minutes(queue: Queue):
    rows = [  # id, its heartbeat interval, silent for (seconds)
        ("recent", 5, 60),             # silent for 1 minute: kept (under 5 minutes)
        ("gone", 5, 600),              # 10 minutes: pruned (an hour before)
        ("slow-beats", 60, 360),       # 6 minutes but 10 of its 60 s heartbeats is 10 minutes: kept
    ]
    async with queue.pool.connection() as conn:
        for row in rows:
            await conn.execute(ADD_WORKER, row)
    await Pruner(queue.store, Settings(lease_seconds=30)).run_once()
    async with queue.pool.connection() as conn:
        left = {row[0] for row in await (await conn.execute("SELECT id FROM pgqueue.workers")).fetchall()}
    assert left == {"recent", "slow-beats"}
    # a long lease keeps them longer: 2 leases of 10 minutes
    async with queue.pool.connection() as conn:
        await conn.execute(ADD_WORKER, ("long-lease", 5, 900))
    await Pruner(queue.store, Settings(lease_seconds=600)).run_once()
    async with queue.pool.connection() as conn:
        left = {row[0] for row in await (await conn.execute("SELECT id FROM pgqueue.workers")).fetchall()}
    assert "long-lease" in left
