"""Job dependencies and waiting for a result (README, "Job dependencies", "Waiting for a result").

The contract part runs against both backends (the `backend` fixture of tests/test_contract.py);
the rest needs PostgreSQL: concurrency of completions and enqueues, real worker processes, the
shared LISTEN connection of wait().
"""

from __future__ import annotations

import asyncio

import pytest

from pgqueue import InvalidPayload, JobNotFound, MemoryQueue, Queue, QueueBackend, SyncQueue, WaitTimeout
from pgqueue.waiter import WAITER_APPLICATION_NAME
from tests import test_contract
from tests.engine_fixtures import fetch, open_fast_queue
from tests.helpers import wait_for, wait_for_sync
from tests.jobs import jobs
from tests.process_fixtures import enqueue_marks, query, scalar  # proc_db, spawn_worker: fixtures of conftest
from tests.test_contract import claim_one, event_types

backend = test_contract.backend  # the contract's fixture: each test runs on PostgreSQL and in memory

# -- the contract, both backends ------------------------------------------------------------------


async def finish(backend: QueueBackend, job_id: int) -> None:
    """Claim exactly this job (it must be the only runnable one) and complete it."""
    job = await claim_one(backend)
    assert job.id == job_id
    assert job.lease_token is not None
    await backend.complete(job.id, job.lease_token, {"done": job_id})


async def status(backend: QueueBackend, job_id: int) -> str:
    return (await backend.get(job_id)).status


async def test_a_diamond_runs_in_dependency_order(backend: QueueBackend) -> None:
    a, b, c, d = await backend.enqueue_many([
        ("noop", {"n": "a"}, {"ref": "a"}),
        ("noop", {"n": "b"}, {"ref": "b", "depends_on": ["a"]}),
        ("noop", {"n": "c"}, {"ref": "c", "depends_on": ["a"]}),
        ("noop", {"n": "d"}, {"depends_on": ["b", "c"]}),
    ])
    assert [await status(backend, i) for i in (a, b, c, d)] == ["queued", "waiting", "waiting", "waiting"]
    await finish(backend, a)  # the only runnable one
    assert [await status(backend, i) for i in (b, c, d)] == ["queued", "queued", "waiting"]
    assert "unblocked" in await event_types(backend, b)
    claimed = await backend.claim(["default"], 10, "w")
    assert sorted(job.id for job in claimed) == [b, c]
    first, second = sorted(claimed, key=lambda job: job.id)
    assert first.lease_token is not None and second.lease_token is not None
    await backend.complete(first.id, first.lease_token)
    assert await status(backend, d) == "waiting"  # c has not finished
    await backend.complete(second.id, second.lease_token)
    assert await status(backend, d) == "queued"
    await finish(backend, d)
    assert [parent for parent, _status, _anyway in await backend.parents(d)] == [b, c]


async def test_a_dead_parent_cancels_its_dependents_transitively_unless_they_run_anyway(backend: QueueBackend) -> None:
    parent = await backend.enqueue("noop", {"n": "parent"})
    child, grandchild, anyway = await backend.enqueue_many([
        ("noop", {"n": "child"}, {"ref": "child", "depends_on": [parent.id]}),
        ("noop", {"n": "grandchild"}, {"depends_on": ["child"]}),
        ("noop", {"n": "anyway"}, {"depends_on": [parent.id], "run_if_parent_fails": True}),
    ])
    job = await claim_one(backend)
    assert job.id == parent.id and job.lease_token is not None
    await backend.fail(job.id, job.lease_token, "boom", permanent=True)

    assert await status(backend, parent.id) == "dead"
    cancelled_child = await backend.get(child)
    assert cancelled_child.status == "cancelled"
    assert cancelled_child.last_error == f"cancelled: parent job {parent.id} ended dead"
    [event] = [e for e in await backend.events(child) if e.type == "cancelled"]
    assert event.data == {"reason": "parent dead", "parent_id": parent.id}
    cancelled_grandchild = await backend.get(grandchild)
    assert cancelled_grandchild.status == "cancelled"
    assert cancelled_grandchild.last_error == f"cancelled: parent job {child} ended cancelled"
    assert await status(backend, anyway) == "queued"
    await finish(backend, anyway)


async def test_cancelling_a_waiting_job_cancels_what_waits_on_it(backend: QueueBackend) -> None:
    parent = await backend.enqueue("noop", {})
    child = await backend.enqueue("noop", {}, depends_on=[parent.id])
    grandchild = await backend.enqueue("noop", {}, depends_on=[child.id])
    assert (await backend.cancel(child.id)).status == "cancelled"
    assert await status(backend, grandchild.id) == "cancelled"
    assert await status(backend, parent.id) == "queued"


async def test_deleting_a_parent_cancels_its_waiting_dependents(backend: QueueBackend) -> None:
    parent = await backend.enqueue("noop", {})
    child = await backend.enqueue("noop", {}, depends_on=[parent.id])
    await backend.delete(parent.id)
    assert await status(backend, child.id) == "cancelled"


async def test_dependencies_on_finished_jobs_settle_at_enqueue(backend: QueueBackend) -> None:
    done = await backend.enqueue("noop", {})
    await finish(backend, done.id)
    dead = await backend.enqueue("noop", {})
    job = await claim_one(backend)
    assert job.lease_token is not None
    await backend.fail(job.id, job.lease_token, "no", permanent=True)

    assert (await backend.enqueue("noop", {}, depends_on=[done.id])).status == "queued"
    assert (await backend.enqueue("noop", {}, depends_on=[done.id, dead.id])).status == "cancelled"
    assert (await backend.enqueue("noop", {}, depends_on=[dead.id], run_if_parent_fails=True)).status == "queued"


async def test_bad_dependencies_are_refused_and_nothing_is_written(backend: QueueBackend) -> None:
    parent = await backend.enqueue("noop", {}, owner_id="alice")
    before = await backend.stats()
    bad_batches = [
        ([("noop", {}, {"ref": "a"}), ("noop", {}, {"depends_on": ["a", 10**9]})], "job 1000000000 does not exist"),
        ([("noop", {}, {"depends_on": ["later"]}), ("noop", {}, {"ref": "later"})], "names no earlier job"),
        ([("noop", {}, {"ref": "x"}), ("noop", {}, {"ref": "x"})], "used twice"),
        ([("noop", {}, {"ref": "k", "unique_key": "k"})], "cannot have a unique_key"),
        ([("noop", {}, {"depends_on": [True]})], "must be a job id or a ref"),
        ([("noop", {}, {"depends_on": "1"})], "must be a list"),
        ([("noop", {}, {"depends_on": [0]})], "job 0 does not exist"),
        ([("noop", {}, {"depends_on": [parent.id], "run_if_parent_fails": "yes"})], "true or false"),
    ]
    for items, message in bad_batches:
        with pytest.raises(InvalidPayload, match=message):
            await backend.enqueue_many(items)
    # another owner's job is "not found", exactly like a missing one
    with pytest.raises(InvalidPayload, match=f"job {parent.id} does not exist"):
        await backend.enqueue("noop", {}, depends_on=[parent.id], owner_id="bob", parents_owned_by="bob")
    assert (await backend.enqueue("noop", {}, depends_on=[parent.id], parents_owned_by="alice")).status == "waiting"
    after = await backend.stats()
    assert after["default"].pop("waiting") == 1
    assert after == before


async def test_a_unique_key_holder_that_waits_is_returned_again(backend: QueueBackend) -> None:
    parent = await backend.enqueue("noop", {})
    first = await backend.enqueue("noop", {}, depends_on=[parent.id], unique_key="once")
    again = await backend.enqueue("noop", {}, unique_key="once")
    assert again.id == first.id and again.status == "waiting"


async def test_wait_returns_the_finished_job_or_times_out(backend: QueueBackend) -> None:
    ok, bad, stopped = await backend.enqueue_many([("noop", {"n": i}) for i in range(3)])

    async def finish_all() -> None:
        for job in await backend.claim(["default"], 10, "w"):
            assert job.lease_token is not None
            if job.id == ok:
                await backend.complete(job.id, job.lease_token, {"answer": 42})
            elif job.id == bad:
                await backend.fail(job.id, job.lease_token, "broken", permanent=True)
            elif job.id == stopped:
                await backend.release([(job.id, job.lease_token)])
                await backend.cancel(job.id)

    waits = [asyncio.create_task(backend.wait(job_id, timeout=30)) for job_id in (ok, bad, stopped)]
    await asyncio.sleep(0)  # the waits are registered before anything finishes
    await finish_all()
    done_ok, done_bad, done_stopped = await asyncio.gather(*waits)
    assert (done_ok.status, done_ok.result) == ("succeeded", {"answer": 42})
    assert (done_bad.status, done_bad.last_error) == ("dead", "broken")
    assert done_stopped.status == "cancelled"
    assert (await backend.wait(ok, timeout=0)).status == "succeeded"  # finished already: at once
    slow = (await backend.enqueue("noop", {"n": "slow"})).id
    with pytest.raises(WaitTimeout) as timed_out:
        await backend.wait(slow, timeout=0.2)
    assert (timed_out.value.job_id, timed_out.value.status) == (slow, "queued")
    with pytest.raises(JobNotFound):
        await backend.wait(10**9, timeout=1)


# -- PostgreSQL only: concurrency ------------------------------------------------------------------


async def test_concurrent_completions_of_many_parents_unblock_their_child_exactly_once(db_url: str) -> None:
    async with open_fast_queue(db_url) as queue:
        for _ in range(3):
            parents = await queue.enqueue_many([("noop", {"n": i}) for i in range(40)])
            child = await queue.enqueue("noop", {"n": "child"}, depends_on=parents)
            claimed = await queue.claim(["default"], 40, "w")
            assert sorted(job.id for job in claimed) == sorted(parents)
            # one completion statement per parent, all at once, on 8 connections: each locks its
            # parent, then the child; none may deadlock, and exactly one sees the others finished
            await asyncio.gather(*(queue.complete(job.id, job.lease_token) for job in claimed if job.lease_token))
            assert (await queue.get(child.id)).status == "queued"
            assert await event_types(queue, child.id) == ["unblocked"]
            await finish(queue, child.id)


async def test_children_enqueued_while_their_parent_completes_are_never_left_waiting(db_url: str) -> None:
    async with open_fast_queue(db_url) as queue:
        parents = await queue.enqueue_many([("noop", {"n": i}) for i in range(30)])
        claimed = {job.id: job for job in await queue.claim(["default"], 30, "w")}

        async def race(parent_id: int) -> int:
            job = claimed[parent_id]
            assert job.lease_token is not None
            child, _ = await asyncio.gather(queue.enqueue("noop", {"child_of": parent_id}, depends_on=[parent_id]),
                                            queue.complete(job.id, job.lease_token))
            return child.id

        children = await asyncio.gather(*(race(parent_id) for parent_id in parents))
        rows = await fetch(queue, "SELECT status, count(*) FROM pgqueue.jobs WHERE id = ANY(%s) GROUP BY status",
                           [children])
        assert dict(rows) == {"queued": len(children)}


def test_a_diamond_graph_runs_in_order_under_concurrent_worker_processes(proc_db, spawn_worker) -> None:
    items = []
    for n in range(15):
        items += [
            ("mark", {"key": f"{n}a", "sleep": 0.02}, {"ref": f"{n}a"}),
            ("mark", {"key": f"{n}b", "sleep": 0.05}, {"ref": f"{n}b", "depends_on": [f"{n}a"]}),
            ("mark", {"key": f"{n}c", "sleep": 0.01}, {"ref": f"{n}c", "depends_on": [f"{n}a"]}),
            ("mark", {"key": f"{n}d"}, {"depends_on": [f"{n}b", f"{n}c"]}),
        ]
    ids = [job.id for job in SyncQueue(proc_db, jobs).enqueue_many(items)]
    workers = [spawn_worker(proc_db, concurrency=4) for _ in range(3)]
    for worker in workers:
        worker.worker_id()
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") == len(ids),
                  timeout=60, interval=0.1, message="every job of the graphs to succeed")
    assert scalar(proc_db, "SELECT count(*) FROM test_runs") == len(ids)  # each ran once
    assert scalar(proc_db, "SELECT count(DISTINCT worker_pid) FROM test_runs") > 1
    # no child started before each of its parents had finished
    early = query(proc_db, """
        SELECT d.job_id, d.depends_on FROM pgqueue.job_dependencies d
        JOIN pgqueue.jobs c ON c.id = d.job_id JOIN pgqueue.jobs p ON p.id = d.depends_on
        WHERE c.started_at < p.finished_at""")
    assert early == []
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.job_dependencies") == 15 * 4


# -- PostgreSQL only: waiting ------------------------------------------------------------------------


async def test_wait_across_processes_and_one_listen_connection_for_all_waiters(proc_db, spawn_worker) -> None:
    ids = enqueue_marks(proc_db, 20, sleep=0.05)
    async with open_fast_queue(proc_db) as queue:
        waits = [asyncio.create_task(queue.wait(job_id, timeout=60)) for job_id in ids]
        await wait_for(lambda: _async_true(queue.waiters.waiting == len(ids)), message="every wait to register")
        listeners = await fetch(queue, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                [WAITER_APPLICATION_NAME])
        assert listeners == [(1,)]
        spawn_worker(proc_db, concurrency=4)
        finished = await asyncio.gather(*waits)
        assert [job.status for job in finished] == ["succeeded"] * len(ids)
        assert queue.waiters.waiting == 0


async def _async_true(value: bool) -> bool:
    return value


def test_sync_wait_returns_when_a_worker_process_finishes_the_job(proc_db, spawn_worker) -> None:
    sync = SyncQueue(proc_db, jobs)
    job = sync.enqueue("mark", {"key": "sync-wait"})
    with pytest.raises(WaitTimeout, match=r"did not finish within 0\.2s"):
        sync.wait(job.id, timeout=0.2)
    spawn_worker(proc_db, concurrency=2)
    assert sync.wait(job.id, timeout=60).status == "succeeded"


async def test_a_wait_outlives_a_lost_listen_connection(db_url: str) -> None:
    async with open_fast_queue(db_url) as queue:
        job = await queue.enqueue("noop", {})
        queue.waiters.recheck_seconds = 0.5
        waiting = asyncio.create_task(queue.wait(job.id, timeout=60))
        await wait_for(lambda: _listening(queue), message="the waiter to LISTEN")
        await fetch(queue, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    [WAITER_APPLICATION_NAME])
        await finish(queue, job.id)
        assert (await waiting).status == "succeeded"


async def _listening(queue: Queue) -> bool:
    rows = await fetch(queue, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                       [WAITER_APPLICATION_NAME])
    return rows[0][0] == 1


async def test_memory_wait_is_woken_by_run_until_empty() -> None:
    memory = MemoryQueue(jobs)
    parent = await memory.enqueue("noop", {})
    child = await memory.enqueue("noop", {}, depends_on=[parent.id])
    waiting = asyncio.create_task(memory.wait(child.id, timeout=30))
    counts = await memory.run_until_empty()
    assert counts["succeeded"] == 2
    assert (await waiting).status == "succeeded"


async def test_a_dependent_job_keeps_its_concurrency_key(db_url: str) -> None:
    from pgqueue.queue import Queue
    from tests.jobs import jobs

    queue = await Queue.connect(db_url, jobs, max_size=2)
    try:
        parent = await queue.enqueue("noop", {})
        child = await queue.enqueue("noop", {}, depends_on=[parent.id], concurrency_key="tenant-7")
        assert (await queue.get(child.id)).concurrency_key == "tenant-7"
    finally:
        await queue.close()
