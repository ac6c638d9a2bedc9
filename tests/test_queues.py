"""Queues: pause and resume, concurrency limits (per queue and per concurrency key) and rate
limits, enforced in the claim statement (README "Queues").

The contract tests run on both backends (the `backend` fixture of test_contract.py); the rest
are PostgreSQL's: the claim's plan and text, concurrent claimers in one process, and real worker
processes with a ledger of run intervals written by the handlers on the database's clock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from pgqueue import MemoryQueue, Queue, QueueBackend
from pgqueue.errors import InvalidQueueSettings
from pgqueue.limits import Rate, parse_rate
from pgqueue.sql import QUERIES
from tests.engine_fixtures import fetch, nested_plans
from tests.helpers import wait_for_sync
from tests.jobs import jobs
from tests.process_fixtures import WorkerProcess, query, run_cli, scalar
from tests.test_contract import backend, pass_time  # noqa: F401  (the two-backend fixture)

LEDGER = ("CREATE TABLE IF NOT EXISTS test_ledger (job_id bigint, key text, pid int, "
          "started timestamptz, ended timestamptz)")


# -- the contract, on both backends -------------------------------------------------------------


async def test_a_paused_queue_is_not_claimed_from_but_takes_jobs(backend: QueueBackend) -> None:  # noqa: F811
    first = await backend.enqueue("noop", {})
    paused = await backend.pause_queue("default")
    assert paused.state == "paused" and paused.paused and paused.queued == 1
    second = await backend.enqueue("noop", {})  # enqueue still works
    other = await backend.enqueue("noop", {}, queue="reports")
    claimed = await backend.claim(["default", "reports"], 10, "w1")
    assert [job.id for job in claimed] == [other.id]  # other queues are not held up
    resumed = await backend.resume_queue("default")
    assert resumed.state == "active" and resumed.queued == 2
    assert sorted(job.id for job in await backend.claim(["default"], 10, "w1")) == [first.id, second.id]


async def test_a_job_running_when_its_queue_is_paused_finishes(backend: QueueBackend) -> None:  # noqa: F811
    await backend.enqueue("noop", {})
    [job] = await backend.claim(["default"], 1, "w1")
    await backend.pause_queue("default")
    assert job.lease_token is not None
    await backend.complete(job.id, job.lease_token, "done")
    assert (await backend.get(job.id)).status == "succeeded"


async def test_concurrency_limit_of_a_queue(backend: QueueBackend) -> None:  # noqa: F811
    ids = await backend.enqueue_many([("noop", {"n": n}) for n in range(5)])
    info = await backend.set_queue_limits("default", concurrency=2)
    assert info.concurrency_limit == 2 and info.rate is None
    first = await backend.claim(["default"], 10, "w1")
    assert [job.id for job in first] == ids[:2]  # best first, as without a limit
    assert {job.queue_slot for job in first} == {0, 1}
    assert await backend.claim(["default"], 10, "w2") == []  # skipped, not failed
    assert [(await backend.get(i)).status for i in ids[2:]] == ["queued"] * 3
    # a slot is free again whichever way its job stops running: success, failure, release
    done, failed = first
    assert done.lease_token is not None and failed.lease_token is not None
    await backend.complete(done.id, done.lease_token)
    [third] = await backend.claim(["default"], 10, "w2")
    await backend.fail(failed.id, failed.lease_token, "boom", retry_delay=3600)
    [fourth] = await backend.claim(["default"], 10, "w2")
    assert third.lease_token is not None and fourth.id == ids[3]
    await backend.release([(third.id, third.lease_token)])
    [fifth] = await backend.claim(["default"], 10, "w3")  # the released slot, for the oldest waiting job
    assert fifth.id == ids[4]
    assert await backend.claim(["default"], 10, "w3") == []
    # removing the limit lets the rest run
    await backend.set_queue_limits("default", concurrency=None)
    assert [job.id for job in await backend.claim(["default"], 10, "w3")] == [third.id]


async def test_per_key_limit_skips_a_full_key_without_blocking_the_others(backend: QueueBackend) -> None:  # noqa: F811
    await backend.set_queue_limits("default", key_concurrency=1)
    hot = await backend.enqueue_many([("noop", {"n": n}, {"concurrency_key": "hot"}) for n in range(20)])
    cold = await backend.enqueue_many([("noop", {"n": n}, {"concurrency_key": f"k{n}"}) for n in range(3)])
    plain = await backend.enqueue("noop", {"n": "no key"})  # no key: only the queue's own limits apply
    # a claim may spend its window on the hot key's jobs once (Postgres: they are all candidates
    # until one of them runs); from then on the full key is passed over
    first = await backend.claim(["default"], 3, "w1")
    assert first[0].id == hot[0] and sum(job.concurrency_key == "hot" for job in first) == 1
    second = await backend.claim(["default"], 10, "w2")
    assert sorted(job.id for job in first + second) == sorted([hot[0], *cold, plain.id])
    assert await backend.claim(["default"], 10, "w2") == []
    assert (await backend.get_queue("default")).running_keys == 4


async def test_rate_limit_of_a_queue_and_of_a_key(backend: QueueBackend) -> None:  # noqa: F811
    await backend.enqueue_many([("noop", {"n": n}, {"concurrency_key": "a" if n % 2 else "b"}) for n in range(10)])
    info = await backend.set_queue_limits("default", rate="3/s", key_rate=Rate(2, 1.0))
    assert (info.rate, info.key_rate) == (Rate(3, 1.0), Rate(2, 1.0))
    first = await backend.claim(["default"], 10, "w1")
    assert len(first) == 3  # the queue's bucket holds 3 starts
    assert sorted(job.concurrency_key or "" for job in first).count("b") <= 2
    assert await backend.claim(["default"], 10, "w1") == []
    await pass_time(backend, 1.05)  # three more tokens for the queue, two per key
    second = await backend.claim(["default"], 10, "w1")
    assert 1 <= len(second) <= 3
    assert all(sum(job.concurrency_key == key for job in first + second) <= 4 for key in "ab")


async def test_bad_limits_and_names_are_refused_and_nothing_is_written(backend: QueueBackend) -> None:  # noqa: F811
    await backend.set_queue_limits("default", concurrency=3)
    bad: list[dict] = [{"concurrency": 0}, {"concurrency": -1}, {"concurrency": 2.5}, {"concurrency": True},
                       {"rate": "0/s"}, {"rate": "10/fortnight"}, {"rate": (5, 0)}, {"key_rate": "x"},
                       {"key_concurrency": 10**9}, {"concurrency": 4, "rate": "-1/s"}]
    for options in bad:
        with pytest.raises(InvalidQueueSettings):
            await backend.set_queue_limits("default", **options)
    for name in ("", "a b", "x" * 101, "bad/name", "nul\x00"):
        with pytest.raises(InvalidQueueSettings):
            await backend.pause_queue(name)
        with pytest.raises(InvalidQueueSettings):
            await backend.get_queue(name)
    info = await backend.get_queue("default")
    assert (info.concurrency_limit, info.rate, info.paused) == (3, None, False)  # the last good state
    names = [q.name for q in await backend.list_queues()]
    assert names == ["default"]


async def test_an_untouched_queue_runs_unlimited(backend: QueueBackend) -> None:  # noqa: F811
    info = await backend.get_queue("never-seen")
    assert (info.state, info.concurrency_limit, info.rate, info.queued, info.running) == ("active", None, None, 0, 0)
    with pytest.raises(Exception, match="concurrency_key"):
        await backend.enqueue("noop", {}, concurrency_key="x" * 501)


async def test_run_until_empty_honours_pause_and_rate() -> None:
    mq = MemoryQueue(jobs)
    await mq.enqueue_many([("noop", {"n": n}) for n in range(4)])
    await mq.enqueue("noop", {}, queue="held")
    await mq.pause_queue("held")
    await mq.set_queue_limits("default", rate="2/10s")
    started = mq.now()
    counts = await mq.run_until_empty(run_scheduled=True)
    assert counts["succeeded"] == 4
    assert mq.now() - started >= timedelta(seconds=9)  # the 3rd and 4th waited for tokens (the clock jumps)
    assert len(mq.list_jobs(status="queued", queue="held")) == 1


def test_rate_syntax() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert parse_rate("600/1m") == Rate(600, 60.0)
    assert parse_rate("5 / 30s") == Rate(5, 30.0)
    assert parse_rate("2/500ms") == Rate(2, 0.5)
    assert parse_rate("1000/hours") == Rate(1000, 3600.0)
    assert str(Rate(600, 60.0)) == "600/m" and str(Rate(5, 30.0)) == "5/30s"
    for text in ("", "10", "/s", "10/", "0/s", "10/0s", "1e3/s", "10/fortnight", "-1/s"):
        with pytest.raises(InvalidQueueSettings):
            parse_rate(text)


# -- PostgreSQL: the claim statement ------------------------------------------------------------


async def test_limited_claim_stays_on_the_claim_index(queue: Queue) -> None:
    await fetch(queue, """
        INSERT INTO pgqueue.jobs (queue, kind, status, finished_at, priority, concurrency_key)
        SELECT 'q' || (n % 4), 'noop', CASE WHEN n % 50 = 0 THEN 'queued' ELSE 'succeeded' END,
               CASE WHEN n % 50 = 0 THEN NULL ELSE now() END, 1 + n % 5, 'k' || (n / 100 % 100)
        FROM generate_series(1, 20000) AS n""")
    await queue.set_queue_limits("q0", concurrency=50, rate="1000/s", key_concurrency=2, key_rate="10/s")
    await fetch(queue, "ANALYZE pgqueue.jobs")
    params = {"queues": ["q0"], "limit": 10, "worker_id": "explain", "lease_seconds": 30.0, "record_started": True,
              "async_commit": False, "charged": False, "include_suspects": False}
    # the plans inside pgqueue.claim (auto_explain): every scan of jobs by an index
    plans = await nested_plans(queue, QUERIES["claim_jobs"].sql, params)
    text = str(plans)
    assert "jobs_claim_idx" in text, plans
    assert "'Seq Scan', 'Relation Name': 'jobs'" not in text.replace('"', "'"), plans
    claimed = await queue.claim(["q0"], 10, "w1")
    assert len(claimed) == 10 and all(job.queue_slot is not None and job.key_slot is not None for job in claimed)


async def test_concurrent_claimers_never_exceed_the_limits_nor_fail(queue: Queue) -> None:
    """Eight claimers on eight connections hammer one queue limited to 3 running (1 per key):
    no claim errors (a slot race is skipped, never a unique violation), and after every claim
    no more than 3 jobs run, at most one per key."""
    await queue.enqueue_many([("noop", {"n": n}, {"concurrency_key": f"k{n % 5}"}) for n in range(120)])
    await queue.set_queue_limits("default", concurrency=3, key_concurrency=1)
    finished = 0
    peak = 0

    async def claimer(name: str) -> None:
        nonlocal finished, peak
        while finished < 120:
            claimed = await queue.claim(["default"], 2, name)
            [(running, worst_key)] = await fetch(queue, """
                SELECT count(*), coalesce(max(n), 0) FROM (
                    SELECT concurrency_key, count(*) OVER (PARTITION BY concurrency_key) AS n
                    FROM pgqueue.jobs WHERE status = 'running') AS r""")
            assert running <= 3 and worst_key <= 1, (running, worst_key)
            peak = max(peak, running)
            await asyncio.sleep(0)
            done = await queue.complete_many([(job.id, job.lease_token, None) for job in claimed if job.lease_token])
            finished += len(done)
            if not claimed:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(*(claimer(f"w{i}") for i in range(8))), 60)
    assert finished == 120 and peak >= 2
    assert (await queue.get_queue("default")).running == 0


# -- real worker processes ----------------------------------------------------------------------


def _overlaps(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an end at the instant another starts: not overlapping)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda point: (point[0], point[1]))
    open_now = peak = 0
    for _, step in points:
        open_now += step
        peak = max(peak, open_now)
    return peak


def _ledger(url: str) -> list[tuple[str, datetime, datetime, int]]:
    return query(url, "SELECT key, started, ended, pid FROM test_ledger WHERE ended IS NOT NULL ORDER BY started")


def _start_workers(spawn_worker: Callable[..., WorkerProcess], url: str, queues: str, count: int = 4,
                   concurrency: int = 4) -> list[WorkerProcess]:
    workers = [spawn_worker(url, queues=queues, concurrency=concurrency) for _ in range(count)]
    for worker in workers:
        worker.worker_id()
    return workers


def test_concurrency_limits_hold_across_four_worker_processes(proc_db: str,
                                                              spawn_worker: Callable[..., WorkerProcess]) -> None:
    """4 processes x 4 slots on a queue limited to 4 running and 1 per key: the ledger of run
    intervals never has more than 4 open at once, nor 2 of one key; a hot key enqueued first
    does not hold up the other keys (they all finish before the hot key's last job starts)."""
    from pgqueue.queue import SyncQueue

    query(proc_db, LEDGER)
    assert run_cli("queues", "set", "flow", "--concurrency", "4", "--key-concurrency", "1",
                   database_url=proc_db).returncode == 0
    sync = SyncQueue(proc_db, jobs)
    sync.enqueue_many([("interval", {"key": "hot", "sleep": 0.15}, {"concurrency_key": "hot"}) for _ in range(12)])
    sync.enqueue_many([("interval", {"key": f"k{n % 6}", "sleep": 0.15}, {"concurrency_key": f"k{n % 6}"})
                       for n in range(18)])
    _start_workers(spawn_worker, proc_db, "flow")
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM test_ledger WHERE ended IS NOT NULL") >= 30,
                  timeout=60, interval=0.1, message="30 runs in the ledger")
    ledger = _ledger(proc_db)
    assert len(ledger) == 30 and len({pid for *_, pid in ledger}) >= 2  # the work was shared
    assert _overlaps([(start, end) for _, start, end, _ in ledger]) <= 4
    for key in {key for key, *_ in ledger}:
        assert _overlaps([(start, end) for k, start, end, _ in ledger if k == key]) == 1, key
    assert _overlaps([(start, end) for _, start, end, _ in ledger]) >= 2  # the limit, not one worker, bound it
    last_hot_start = max(start for key, start, _, _ in ledger if key == "hot")
    assert max(end for key, _, end, _ in ledger if key != "hot") < last_hot_start


def test_rate_limit_holds_across_four_worker_processes(proc_db: str,
                                                       spawn_worker: Callable[..., WorkerProcess]) -> None:
    """5 starts per second across 4 processes: a token bucket of 5, refilled by 5 a second, so
    any stretch of T seconds holds at most 5 + 5T starts (on the claims' own timestamps)."""
    from pgqueue.queue import SyncQueue

    query(proc_db, LEDGER)
    assert run_cli("queues", "set", "flow", "--rate", "5/s", database_url=proc_db).returncode == 0
    SyncQueue(proc_db, jobs).enqueue_many([("interval", {"sleep": 0}) for _ in range(15)])
    _start_workers(spawn_worker, proc_db, "flow")
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") >= 15,
                  timeout=60, interval=0.1, message="15 jobs done")
    starts = [row[0] for row in query(proc_db, "SELECT started_at FROM pgqueue.jobs ORDER BY started_at")]
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            span = (starts[j] - starts[i]).total_seconds()
            assert j - i + 1 <= 5 + 5 * span + 1e-6, (i, j, span)
    assert (starts[-1] - starts[0]).total_seconds() >= 1.9  # 15 starts: 5 at once, then 5 a second
    assert len(set(scalar(proc_db, "SELECT array_agg(DISTINCT lease_owner) FROM pgqueue.jobs"))) >= 2


def test_a_pause_is_never_violated_by_any_process(proc_db: str,
                                                  spawn_worker: Callable[..., WorkerProcess]) -> None:
    """4 processes drain a queue; it is paused mid-way: no claim begun after the pause committed
    takes a job of it, running ones finish, the workers go on with their other queue, and after
    the resume everything runs."""
    from pgqueue.queue import SyncQueue

    query(proc_db, LEDGER)
    sync = SyncQueue(proc_db, jobs)
    sync.enqueue_many([("interval", {"sleep": 0.1}) for _ in range(300)])
    _start_workers(spawn_worker, proc_db, "flow,default")
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM test_ledger") >= 20, timeout=60, interval=0.02,
                  message="some runs")
    asyncio.run(_pause(proc_db, "flow"))  # in-process: a CLI start could outlast the queue
    paused_at = scalar(proc_db, "SELECT clock_timestamp()")  # later than the pause's commit
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'running'") == 0,
                  timeout=30, interval=0.05, message="running jobs to finish")
    # the workers are alive and claiming: a job of their other queue runs
    marker = sync.enqueue("noop", {})
    wait_for_sync(lambda: scalar(proc_db, "SELECT status FROM pgqueue.jobs WHERE id = %s", [marker.id]) == "succeeded",
                  timeout=30, interval=0.05, message="a job of the other queue")
    late = scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE queue = 'flow' AND started_at >= %s", [paused_at])
    assert late == 0
    left = scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE queue = 'flow' AND status = 'queued'")
    assert left > 0
    assert run_cli("queues", "resume", "flow", database_url=proc_db).returncode == 0
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") == 301,
                  timeout=60, interval=0.1, message="everything after the resume")


async def _pause(url: str, name: str) -> None:
    async with await Queue.connect(url, max_size=1) as queue:
        await queue.pause_queue(name)


def test_queues_cli(db_url: str) -> None:
    ok = run_cli("queues", "set", "mail", "--concurrency", "5", "--rate", "100/1m", "--key-concurrency", "2",
                 database_url=db_url)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"mail\s+active\s+5\s+100/m\s+2\s+-", ok.stdout), ok.stdout
    assert "paused" in run_cli("queues", "pause", "mail", database_url=db_url).stdout
    listed = run_cli("queues", "list", database_url=db_url).stdout
    assert re.search(r"mail\s+paused", listed), listed
    for args in (("set", "mail", "--concurrency", "0"), ("set", "mail", "--rate", "10/fortnight"),
                 ("set", "mail", "--key-concurrency", "two"), ("pause", "bad/name"), ("set", "a b", "--rate", "1/s")):
        bad = run_cli("queues", *args, database_url=db_url)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1, \
            (args, bad.stderr)
    row = query(db_url, "SELECT paused, concurrency_limit, rate_limit, rate_period FROM pgqueue.queues")
    assert row == [(True, 5, 100, 60.0)]  # nothing half-written
    enqueued = run_cli("enqueue", "noop", "--untyped", "--queue", "mail", "--concurrency-key", "tenant-1",
                       database_url=db_url)
    assert enqueued.returncode == 0, enqueued.stderr
    assert scalar(db_url, "SELECT concurrency_key FROM pgqueue.jobs") == "tenant-1"
    view = query(db_url, "SELECT name, state, queued, running FROM pgqueue.queue_status")
    assert view == [("mail", "paused", 1, 0)]


async def test_pause_notifies_the_control_channel(queue: Queue, db_url: str) -> None:
    from tests.engine_fixtures import listening, notifications_so_far

    async with listening(db_url, "pgqueue_control") as listener:
        await queue.pause_queue("mail")
        await queue.set_queue_limits("mail", concurrency=2)
        await queue.resume_queue("mail")
        assert await notifications_so_far(listener, db_url, "pgqueue_control") == ["pause mail", "limits mail",
                                                                                  "resume mail"]


async def test_full_and_orphaned_token_buckets_are_pruned(queue: Queue) -> None:
    """A bucket refilled to capacity is the same as no row (a claim reads a missing bucket as
    full), so the maintenance pass deletes it; one still short of tokens stays, and the buckets of
    a limit since removed go."""
    from pgqueue.maintenance import Pruner

    await queue.enqueue_many([("noop", {"n": n}, {"concurrency_key": f"k{n % 2}"}) for n in range(6)])
    await queue.set_queue_limits("default", rate="2/h", key_rate="5/h")
    assert len(await queue.claim(["default"], 10, "w1")) == 2  # the queue's bucket allows 2
    buckets = dict(await fetch(queue, "SELECT key, tokens FROM pgqueue.rate_buckets ORDER BY key"))
    assert buckets == {"": 0.0, "k0": 4.0, "k1": 4.0}
    pruner = Pruner(queue.store, queue.settings)
    await pruner.run_once()
    assert len(await fetch(queue, "SELECT 1 FROM pgqueue.rate_buckets")) == 3  # none full yet

    # the key buckets refill (an hour ago), the queue's does not: only the keys' go
    await fetch(queue, "UPDATE pgqueue.rate_buckets SET refilled_at = now() - interval '1 hour' WHERE key <> ''")
    await pruner.run_once()
    assert [key for (key,) in await fetch(queue, "SELECT key FROM pgqueue.rate_buckets")] == [""]
    # a pruned bucket reads as full: the next claim may take the keys' tokens again, not more
    assert len(await queue.claim(["default"], 10, "w1")) == 0  # the queue's bucket is still empty

    await queue.set_queue_limits("default", rate=None)
    await pruner.run_once()
    assert await fetch(queue, "SELECT 1 FROM pgqueue.rate_buckets") == []
    assert len(await queue.claim(["default"], 10, "w1")) == 4  # only the per-key limit (5/h) is left
