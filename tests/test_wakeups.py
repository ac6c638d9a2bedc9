"""Wake-ups only when a worker waits: an insert notifies only while some worker with free slots
listens on its queue (schema/0015.wakeup-listener-locks.sql), and no wake-up is lost in the race
between a worker going idle and a job arriving. The worker processes here poll only every
30 s, so a lost wake-up would leave a job waiting far past the deadlines below."""

from __future__ import annotations

import threading
import time

import psycopg

from tests.helpers import wait_for_sync
from tests.process_fixtures import proc_db, query, scalar, spawn_worker  # noqa: F401 - fixtures

SLOW_POLL = {"PGQUEUE_POLL_SECONDS": "30"}
# far below the slow poll (>= 24 s with its jitter): only a NOTIFY or the worker's own look
# for runnable work right after marking itself idle can start a job this soon
NO_POLL_NEEDED = 10.0

RAW_INSERT = "INSERT INTO pgqueue.jobs (kind, payload) VALUES ('noop', '{}') RETURNING id"


def listeners(url: str) -> int:
    return scalar(url, "SELECT listeners FROM pgqueue.wakeup_listeners WHERE queue = 'default'")


def succeeded(url: str, job_id: int) -> bool:
    return scalar(url, "SELECT status = 'succeeded' FROM pgqueue.jobs WHERE id = %s", [job_id])


def test_a_job_arriving_as_the_worker_goes_idle_is_never_missed(proc_db, spawn_worker):  # noqa: F811
    """One slot; each job is inserted (raw SQL, as psql or another language would) the moment
    the previous one is seen finished: exactly when the worker finds the queue empty and marks
    itself idle. Every one must start without waiting for the poll."""
    worker = spawn_worker(proc_db, concurrency=1, env=SLOW_POLL)
    worker.worker_id()
    waits = []
    with psycopg.connect(proc_db, autocommit=True) as conn:
        for _ in range(150):
            job_id = conn.execute(RAW_INSERT).fetchone()[0]  # type: ignore[index]
            started = time.monotonic()
            wait_for_sync(lambda job_id=job_id: succeeded(proc_db, job_id), timeout=NO_POLL_NEEDED, interval=0.001,
                          message=f"job {job_id} to run (a lost wake-up waits for the 30 s poll)")
            waits.append(time.monotonic() - started)
    assert worker.is_alive()
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") == 150


def test_concurrent_producers_and_an_idling_worker_lose_no_wake_up(proc_db, spawn_worker):  # noqa: F811
    """Four producers insert one job at a time at random moments while two one-slot workers keep
    going idle and waking: every job runs long before the poll would have found it."""
    spawn_worker(proc_db, concurrency=1, env=SLOW_POLL).worker_id()
    spawn_worker(proc_db, concurrency=1, env=SLOW_POLL).worker_id()
    errors: list[BaseException] = []

    def produce(seed: int) -> None:
        import random

        rng = random.Random(seed)
        try:
            with psycopg.connect(proc_db, autocommit=True) as conn:
                for _ in range(60):
                    conn.execute(RAW_INSERT)
                    time.sleep(rng.uniform(0, 0.01))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") == 240,
                  timeout=NO_POLL_NEEDED, interval=0.01, message="every job to run without the poll")
    slowest = scalar(proc_db, "SELECT max(extract(epoch FROM started_at - created_at)) FROM pgqueue.jobs")
    assert slowest < NO_POLL_NEEDED


def test_a_busy_worker_is_not_woken_and_an_idle_one_is(proc_db, spawn_worker):  # noqa: F811
    """The worker listens for inserts while it waits with free slots, and stops while every slot
    is taken (inserts then send no NOTIFY)."""
    worker = spawn_worker(proc_db, concurrency=1, env=SLOW_POLL)
    worker.worker_id()
    wait_for_sync(lambda: listeners(proc_db) == 1, message="the worker to listen for inserts")
    query(proc_db, "INSERT INTO pgqueue.jobs (kind, payload) VALUES ('mark', '{\"key\": \"long\", \"sleep\": 30}')")
    wait_for_sync(lambda: listeners(proc_db) == 0, message="the busy worker to stop listening")
