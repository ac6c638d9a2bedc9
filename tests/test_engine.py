"""The PostgreSQL engine in-process: transactions, concurrency, NOTIFY, the claim query's plan,
the in-process Worker, maintenance services, the SQL file, import rules and migrations.

(What both backends promise is in test_contract.py; worker *processes* are in
test_worker_processes.py.)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue.errors import JobNotFound
from pgqueue.maintenance import LeaseRescuer, Pruner
from pgqueue.migrate import migrate, rollback
from pgqueue.queue import Queue
from pgqueue.sql import QUERIES
from pgqueue.store import complete_params
from pgqueue.worker import _summary
from tests.conftest import PgServer, with_dbname
from tests.engine_fixtures import (
    fast_settings,
    fetch,
    listening,
    nested_plans,
    notifications_so_far,
    open_fast_queue,
    running_worker,
    wait_for_status,
)
from tests.helpers import wait_for

PACKAGE_DIR = Path(pgqueue.__file__).parent


class DeliberateRollbackError(Exception):
    """Raised inside a transaction block to roll it back."""


@pytest.fixture
async def fast_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        yield queue


# -- transactions ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def an_idle_worker(queue: Queue, db_url: str,
                         queues: Sequence[str] = ("default", "mail")) -> AsyncIterator[psycopg.AsyncConnection]:
    """A worker's wake-up session listening on ``queues`` (schema/0015): inserts into them
    notify only while one listens. Closing the session (as a dying worker does) ends it."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as session:
        assert await queue.store.listen_for_inserts(session, queues) == (True, True)
        yield session


async def test_enqueue_joins_the_callers_transaction(fast_queue: Queue, db_url: str) -> None:
    queue = fast_queue
    async with an_idle_worker(queue, db_url), listening(db_url) as listener, \
            await psycopg.AsyncConnection.connect(db_url) as conn:
        with pytest.raises(DeliberateRollbackError):
            async with conn.transaction():
                rolled_back = await queue.enqueue("noop", {}, conn=conn)
                copied = await queue.enqueue_many([("noop", {"n": n}) for n in range(3)], conn=conn)
                assert (await queue.get(rolled_back.id, conn=conn)).status == "queued"  # visible inside
                raise DeliberateRollbackError
        for job_id in [rolled_back.id, *copied]:
            with pytest.raises(JobNotFound):
                await queue.get(job_id)
        assert await notifications_so_far(listener, db_url) == []

        async with conn.transaction():
            committed = await queue.enqueue("noop", {}, conn=conn)
            with pytest.raises(JobNotFound):
                await queue.get(committed.id)  # not visible to others before commit
            assert await notifications_so_far(listener, db_url) == []  # nor announced
        assert (await queue.get(committed.id)).status == "queued"
        assert await notifications_so_far(listener, db_url) == ["default"]
    assert await fetch(queue, "SELECT count(*) FROM pgqueue.jobs") == [(1,)]


async def test_a_rolled_back_savepoint_forgets_that_it_probed_for_a_listener(fast_queue: Queue, db_url: str) -> None:
    """An insert probes for a listening worker once per transaction and queue (schema/0015);
    when the savepoint holding that probe (and its NOTIFY) rolls back, the next insert of the
    transaction probes again, so the job that commits still wakes the worker."""
    queue = fast_queue
    async with an_idle_worker(queue, db_url, ["default"]), listening(db_url) as listener, \
            await psycopg.AsyncConnection.connect(db_url) as conn:
        async with conn.transaction():
            with pytest.raises(DeliberateRollbackError):
                async with conn.transaction():  # a savepoint
                    await queue.enqueue("noop", {}, conn=conn)
                    raise DeliberateRollbackError
            kept = await queue.enqueue("noop", {}, conn=conn)
        assert await notifications_so_far(listener, db_url) == ["default"]
    assert await fetch(queue, "SELECT id FROM pgqueue.jobs") == [(kept.id,)]


async def test_concurrent_enqueues_share_statements_and_each_gets_its_own_job(fast_queue: Queue) -> None:
    """200 enqueues at once from one process go in a few shared statements (so a busy web app's
    commits carry many jobs each), yet every caller gets back exactly its own committed job."""
    queue = fast_queue
    jobs = await asyncio.gather(*(queue.enqueue("noop", {"n": n}, priority=n % 5 + 1) for n in range(200)))
    assert [job.payload for job in jobs] == [{"n": n} for n in range(200)]
    assert [job.priority for job in jobs] == [n % 5 + 1 for n in range(200)]
    assert len({job.id for job in jobs}) == 200
    stored = dict(await fetch(queue, "SELECT id, payload->>'n' FROM pgqueue.jobs"))
    assert all(stored[job.id] == str(job.payload["n"]) for job in jobs)
    # one transaction per statement: jobs of one statement share created_at (now())
    statements = len({job.created_at for job in jobs})
    assert statements < 100, f"{statements} statements for 200 concurrent enqueues"
    assert (await queue.enqueue("noop", {"alone": True})).payload == {"alone": True}  # alone: at once


async def test_a_failing_shared_statement_fails_its_callers_only_and_writes_none(fast_queue: Queue) -> None:
    """When the database refuses a shared statement, every caller in it gets the error, none of
    its jobs is stored, and callers in other statements are unaffected."""
    queue = fast_queue
    await fetch(queue, """CREATE FUNCTION public.refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.payload ? 'refuse' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$""")
    await fetch(queue, "CREATE TRIGGER refuse_marked BEFORE INSERT ON pgqueue.jobs FOR EACH ROW "
                       "EXECUTE FUNCTION public.refuse_marked()")
    try:
        results = await asyncio.gather(*(queue.enqueue("noop", {"refuse": True} if n == 50 else {"n": n})
                                         for n in range(100)), return_exceptions=True)
    finally:
        await fetch(queue, "DROP TRIGGER refuse_marked ON pgqueue.jobs")
        await fetch(queue, "DROP FUNCTION public.refuse_marked()")
    failed = [n for n, result in enumerate(results) if isinstance(result, BaseException)]
    assert 50 in failed
    assert all("refused by the test" in str(results[n]) for n in failed)
    stored = {n for (n,) in await fetch(queue, "SELECT (payload->>'n')::int FROM pgqueue.jobs")}
    assert stored == {n for n in range(100) if n not in failed}  # the refused statements wrote nothing
    assert len(failed) < 100  # other statements went in


async def test_concurrent_enqueue_of_one_unique_key_makes_one_job(fast_queue: Queue, db_url: str) -> None:
    queue = fast_queue
    start = asyncio.Barrier(20)

    async def enqueue_on_own_connection(n: int) -> int:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await start.wait()
            async with conn.transaction():
                return (await queue.enqueue("noop", {"n": n}, unique_key="nightly-report", conn=conn)).id

    ids = await asyncio.gather(*(enqueue_on_own_connection(n) for n in range(20)))
    assert len(set(ids)) == 1
    assert await fetch(queue, "SELECT id FROM pgqueue.jobs WHERE unique_key = 'nightly-report'") == [(ids[0],)]


# -- bulk enqueue and NOTIFY -----------------------------------------------------------------


class _Counting:
    """Wraps a store method to count calls (which enqueue path ran), still calling it."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.method(*args, **kwargs)


async def test_enqueue_many_uses_copy_for_plain_jobs(fast_queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = fast_queue
    copy_jobs, insert_jobs = _Counting(queue.store.copy_jobs), _Counting(queue.store.insert_jobs)
    monkeypatch.setattr(queue.store, "copy_jobs", copy_jobs)
    monkeypatch.setattr(queue.store, "insert_jobs", insert_jobs)
    items = [("noop", {"n": n}, {"priority": 1 + n % 5, "owner_id": f"user-{n % 3}", "max_attempts": 2})
             for n in range(500)]
    ids = await queue.enqueue_many(items)
    assert (copy_jobs.calls, insert_jobs.calls) == (1, 0)
    assert len(ids) == 500 and ids == sorted(ids)
    rows = await fetch(queue, "SELECT id, payload, priority, owner_id, max_attempts, status, run_at <= now() "
                              "FROM pgqueue.jobs ORDER BY id")
    assert [row[0] for row in rows] == ids
    assert all(row[1:] == ({"n": n}, 1 + n % 5, f"user-{n % 3}", 2, "queued", True) for n, row in enumerate(rows))
    assert await queue.enqueue_many([]) == []


async def test_enqueue_many_with_unique_keys_and_delays_inserts(fast_queue: Queue,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    queue = fast_queue
    copy_jobs, insert_jobs = _Counting(queue.store.copy_jobs), _Counting(queue.store.insert_jobs)
    monkeypatch.setattr(queue.store, "copy_jobs", copy_jobs)
    monkeypatch.setattr(queue.store, "insert_jobs", insert_jobs)
    items = [("noop", {"n": n}, {"unique_key": f"key-{n % 100}", "delay": 60 if n % 2 else 0}) for n in range(300)]
    ids = await queue.enqueue_many(items)
    assert (copy_jobs.calls, insert_jobs.calls) == (0, 1)
    assert ids[:100] == ids[100:200] == ids[200:]  # keys repeat every 100 items: the first holder wins
    rows = await fetch(queue, "SELECT payload->>'n', run_at > created_at + interval '59 seconds' "
                              "FROM pgqueue.jobs ORDER BY id")
    assert rows == [(str(n), n % 2 == 1) for n in range(100)]


async def test_one_notify_per_statement_and_queue(fast_queue: Queue, db_url: str) -> None:
    queue = fast_queue
    async with an_idle_worker(queue, db_url) as session, listening(db_url) as listener:
        await queue.enqueue_many([("noop", {"n": n}) for n in range(500)]
                                 + [("email", {"to": f"u{n}@example.com"}) for n in range(500)])
        assert sorted(await notifications_so_far(listener, db_url)) == ["default", "mail"]

        await queue.enqueue_many([("noop", {"n": n}, {"unique_key": f"k{n}"}) for n in range(1000)])
        assert await notifications_so_far(listener, db_url) == ["default"]

        await queue.enqueue_many([("noop", {"n": n}, {"delay": 3600}) for n in range(10)])
        assert await notifications_so_far(listener, db_url) == []  # nothing to wake for yet

        # a worker whose slots are all taken needs no NOTIFY: with nobody idle, inserts send none
        await queue.store.stop_listening_for_inserts(session)
        await queue.enqueue("noop", {})
        await queue.enqueue_many([("email", {"to": f"v{n}@example.com"}) for n in range(5)])
        await fetch(queue, "INSERT INTO pgqueue.jobs (kind, payload) SELECT 'noop', '{}' FROM generate_series(1, 3)")
        assert await notifications_so_far(listener, db_url) == []
    async with listening(db_url) as listener:
        # nor for a worker whose session died while it listened (its locks went with it)
        async with an_idle_worker(queue, db_url, ["default"]):
            pass

        async def locks_released() -> bool:  # the backend lets go as it exits, just after the close
            return await fetch(queue, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                      "AND classid = 1885827449") == [(0,)]

        await wait_for(locks_released, message="the closed session's listening locks to go")
        await queue.enqueue("noop", {})
        assert await notifications_so_far(listener, db_url) == []
        # two listening at once: one going busy leaves the other listening
        async with an_idle_worker(queue, db_url, ["default"]), an_idle_worker(queue, db_url, ["default"]) as second:
            await queue.store.stop_listening_for_inserts(second)
            await queue.enqueue("noop", {})
            assert await notifications_so_far(listener, db_url) == ["default"]


# -- the claim query -------------------------------------------------------------------------


def _index_names(plan: Any) -> set[str]:
    if isinstance(plan, dict):
        found = {plan["Index Name"]} if "Index Name" in plan else set()
        return found.union(*(_index_names(value) for value in plan.values()))
    if isinstance(plan, list):
        return set().union(*(_index_names(item) for item in plan))
    return set()


def _scanned_relations(plan: Any) -> list[tuple[str, str]]:
    if isinstance(plan, dict):
        here = [(plan["Node Type"], plan["Relation Name"])] if "Relation Name" in plan else []
        return here + [scan for value in plan.values() for scan in _scanned_relations(value)]
    if isinstance(plan, list):
        return [scan for item in plan for scan in _scanned_relations(item)]
    return []


async def test_claim_query_uses_the_claim_index(fast_queue: Queue) -> None:
    queue = fast_queue
    await fetch(queue, """
        INSERT INTO pgqueue.jobs (queue, kind, status, finished_at, priority)
        SELECT 'q' || (n % 4), 'noop', CASE WHEN n % 50 = 0 THEN 'queued' ELSE 'succeeded' END,
               CASE WHEN n % 50 = 0 THEN NULL ELSE now() END, 1 + n % 5
        FROM generate_series(1, 20000) AS n""")
    await fetch(queue, "ANALYZE pgqueue.jobs")
    params = {"queues": ["q0"], "limit": 10, "worker_id": "explain", "lease_seconds": 30.0, "record_started": True,
              "async_commit": False, "charged": False, "include_suspects": False}
    # the claim runs in pgqueue.claim: its statements' plans come from auto_explain
    plans = await nested_plans(queue, QUERIES["claim_jobs"].sql, params)
    assert "jobs_claim_idx" in _index_names(plans), plans
    assert ("Seq Scan", "jobs") not in _scanned_relations(plans), plans
    # the crash-suspect statements probe their own small index
    plans = await nested_plans(queue, QUERIES["claim_suspect_job"].sql, params)
    assert "jobs_suspect_idx" in _index_names(plans), plans
    assert ("Seq Scan", "jobs") not in _scanned_relations(plans), plans
    [(plan,)] = await fetch(queue, "EXPLAIN (FORMAT JSON) " + QUERIES["suspects_waiting"].sql, params)
    assert "jobs_suspect_idx" in _index_names(plan), plan
    assert ("Seq Scan", "jobs") not in _scanned_relations(plan), plan


async def test_runnable_claims_keep_their_generic_plans(fast_queue: Queue) -> None:
    """schema/0016: the worker's claims go through claim_runnable, which plans its statements once
    per session (a custom plan per call cost 3-6 us per job); a crash suspect's claim calls
    pgqueue.claim with custom plans, the only ones that can use jobs_suspect_idx (tested above)."""
    assert "pgqueue.claim_runnable(" in QUERIES["claim_jobs"].sql
    assert "pgqueue.claim(" in QUERIES["claim_suspect_job"].sql
    rows = await fetch(fast_queue, "SELECT p.proname, p.proconfig FROM pg_proc AS p "
                                   "WHERE p.pronamespace = 'pgqueue'::regnamespace AND p.proname LIKE 'claim%%' "
                                   "ORDER BY p.proname")
    assert rows == [("claim", None), ("claim_runnable", ["plan_cache_mode=force_generic_plan"])]


async def test_batch_statements_find_their_rows_by_primary_key(fast_queue: Queue) -> None:
    """A batch of 100 on a 2,000-row table: joined to their input, claim and complete used to
    hash it against a scan of the whole table (most of their cost in the drain benchmark);
    the heartbeat, release, rescue and prune statements are written the same way."""
    queue = fast_queue
    await queue.enqueue_many([("noop", {"n": n}) for n in range(2000)])
    await fetch(queue, "ANALYZE pgqueue.jobs")
    claim = {"queues": ["default"], "limit": 100, "worker_id": "explain", "lease_seconds": 30.0,
             "record_started": False, "async_commit": False, "charged": False, "include_suspects": False}
    plans = await nested_plans(queue, QUERIES["claim_jobs"].sql, claim)
    assert plans and ("Seq Scan", "jobs") not in _scanned_relations(plans), plans
    jobs = await queue.claim(["default"], 100, "explain")
    items = complete_params([(job.id, job.lease_token, None) for job in jobs if job.lease_token])
    lease = {"ids": [job.id for job in jobs], "tokens": [job.lease_token for job in jobs], "lease_seconds": 30.0}
    for name, params in (("complete_jobs", items), ("extend_leases", lease), ("release_jobs", lease),
                         ("rescue_expired_leases", {"limit": 100, "lease_seconds": 30.0}),
                         ("prune_finished_jobs", {"older_than_seconds": 0, "statuses": ["queued"], "limit": 100})):
        [(plan,)] = await fetch(queue, "EXPLAIN (FORMAT JSON) " + QUERIES[name].sql, params)
        assert ("Seq Scan", "jobs") not in _scanned_relations(plan), (name, plan)
        assert "jobs_pkey" in _index_names(plan), (name, plan)


async def test_claim_reads_timestamps_in_any_session_time_zone(fast_queue: Queue, db_url: str) -> None:
    """Claimed jobs come back as JSON; a zone whose offset for year 1 has seconds (Amsterdam's
    local mean time, +00:19:32) is no RFC 3339 and takes the slower parse, losing nothing."""
    queue = fast_queue
    job = await queue.enqueue("noop", {}, run_at=datetime(1, 1, 2, tzinfo=UTC))
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("SET TIME ZONE 'Europe/Amsterdam'")
        [claimed] = await queue.store.claim_jobs(["default"], 10, "tz-worker", 30.0, conn=conn)
    assert claimed.id == job.id and claimed.status == "running" and claimed.lease_token is not None
    assert claimed.run_at == datetime(1, 1, 2, tzinfo=UTC)
    assert claimed.started_at is not None
    assert claimed.started_at.utcoffset() in (timedelta(hours=1), timedelta(hours=2))  # CET or CEST


async def test_only_a_claim_on_its_own_transaction_skips_the_wal_flush(fast_queue: Queue, db_url: str) -> None:
    """The worker's claims (pooled autocommit: the statement is the transaction) commit without
    waiting for the WAL flush; a claim inside the caller's transaction leaves its durability be."""
    queue = fast_queue
    await queue.enqueue_many([("noop", {"n": n}) for n in range(3)])
    params = {"queues": ["default"], "limit": 1, "worker_id": "commit-mode", "lease_seconds": 30.0,
              "record_started": False, "charged": True, "include_suspects": True}
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute("SET synchronous_commit = on")  # (the test server runs without it)
        await conn.commit()
        for async_commit, expected in ((True, "off"), (False, "on")):
            [(claimed, _mode)] = await (await conn.execute(QUERIES["claim_jobs"].sql,
                                                     {**params, "async_commit": async_commit})).fetchall()
            assert claimed is not None
            assert (await (await conn.execute("SHOW synchronous_commit")).fetchone()) == (expected,)
            await conn.commit()
        assert (await (await conn.execute("SHOW synchronous_commit")).fetchone()) == ("on",)  # local to that transaction
        [claimed_here] = await queue.store.claim_jobs(["default"], 1, "commit-mode", 30.0, conn=conn)
        assert (await (await conn.execute("SHOW synchronous_commit")).fetchone()) == ("on",)
        await conn.commit()
    assert claimed_here.status == "running"


async def test_events_only_take_the_engine_vocabulary(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("noop", {})
    for bad in ("no_such_type", "progress 1", "log\n2 3 x"):
        with pytest.raises(psycopg.errors.CheckViolation):
            await fetch(queue, QUERIES["insert_event"].sql, {"job_id": job.id, "type": bad, "data": "{}"})
    await fetch(queue, QUERIES["insert_event"].sql, {"job_id": job.id, "type": "progress", "data": "{}"})
    assert [event.type for event in await queue.events(job.id)] == ["progress"]


async def test_concurrent_claims_never_exceed_the_limit_nor_share_a_job(fast_queue: Queue) -> None:
    queue = fast_queue
    ids = await queue.enqueue_many([("noop", {"n": n}) for n in range(100)])
    batches: list[list[int]] = []

    async def claimer(name: str) -> None:
        while batch := await queue.claim(["default"], 10, name):
            batches.append([job.id for job in batch])

    await asyncio.gather(*(claimer(f"claimer-{n}") for n in range(4)))
    assert all(1 <= len(batch) <= 10 for batch in batches)
    claimed = [job_id for batch in batches for job_id in batch]
    assert sorted(claimed) == sorted(ids)  # every job once: none twice, none missed
    assert await fetch(queue, "SELECT DISTINCT attempts FROM pgqueue.jobs") == [(1,)]


# -- the in-process worker -------------------------------------------------------------------


async def test_worker_logs_starts_and_successes_one_line_per_batch(fast_queue: Queue,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    ids = await fast_queue.enqueue_many([("noop", {"n": n}) for n in range(30)])
    failing = await fast_queue.enqueue("fatal", {})
    with caplog.at_level(logging.INFO, logger="pgqueue.worker"):
        async with running_worker(fast_queue, ["default"], concurrency=50):
            for job_id in [*ids, failing.id]:
                await wait_for_status(fast_queue, job_id, "succeeded", "dead")
    lines = [r.getMessage() for r in caplog.records if r.name == "pgqueue.worker" and r.levelno == logging.INFO]
    assert not [line for line in lines if re.fullmatch(r"job \d+ (succeeded|\S+ started .*)", line)]
    succeeded = [line for line in lines if line.startswith("succeeded ")]
    assert sum(int(line.split()[1]) for line in succeeded) == 30 and len(succeeded) <= 3
    assert any(line.startswith("started ") for line in lines)
    # what needs a look keeps its own line
    assert any(r.levelno == logging.ERROR and f"job {failing.id} dead" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("concurrency", "jobs"), [(1, 1), (10, 3)])
async def test_claimed_jobs_begin_before_the_worker_says_another_word_to_the_database(
        fast_queue: Queue, monkeypatch: pytest.MonkeyPatch, concurrency: int, jobs: int) -> None:
    """After a claim the worker lets its handlers begin before its next statement: the claim
    of fewer jobs than free slots is followed by the idle round trips (the listening locks, the
    look at the next run time), a full one by giving the locks up, and each send can wake a
    backend onto the worker's core (this was 0.3-0.6 ms of every wake-up, README "Where a
    drain's time goes")."""
    import pgqueue.worker as worker_module

    seen: list[tuple[str, Any]] = []
    handler = worker_module.run_handler

    async def recording_handler(ctx: Any, executor: Any = None) -> Any:
        seen.append(("started", ctx.job.id))
        return await handler(ctx, executor)

    monkeypatch.setattr(worker_module, "run_handler", recording_handler)
    store = fast_queue.store
    for name in ("listen_for_inserts", "stop_listening_for_inserts", "next_run_at", "suspects_waiting"):
        def wrap(original: Any, name: str = name) -> Any:
            async def called(*args: Any, **kwargs: Any) -> Any:
                seen.append(("statement", name))
                return await original(*args, **kwargs)
            return called
        monkeypatch.setattr(store, name, wrap(getattr(store, name)))
    claim = store.claim_jobs

    async def recording_claim(*args: Any, **kwargs: Any) -> Any:
        claimed = await claim(*args, **kwargs)
        if claimed:
            seen.append(("claimed", {job.id for job in claimed}))
        return claimed

    monkeypatch.setattr(store, "claim_jobs", recording_claim)
    async with running_worker(fast_queue, ["default"], concurrency=concurrency):
        await asyncio.sleep(0.3)  # idle: listening, nothing to claim
        for _ in range(3):
            ids = await fast_queue.enqueue_many([("noop", {}) for _ in range(jobs)])
            for job_id in ids:
                await wait_for_status(fast_queue, job_id, "succeeded")
    claims = [i for i, (what, _) in enumerate(seen) if what == "claimed"]
    assert len(claims) >= 3
    for i in claims:
        waiting = set(seen[i][1])
        for what, value in seen[i + 1:]:
            if what == "started":
                waiting.discard(value)
            elif what in ("statement", "claimed"):
                assert not waiting, f"{value} ran before jobs {sorted(waiting)} had begun"
                break


async def test_a_woken_worker_claims_before_it_asks_for_crash_suspects(fast_queue: Queue,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The look for crash suspects (once per poll interval) comes after a claim, not between a
    wake-up and its claim: on the wake-up path it was the slowest 1 % of wake-ups. Suspects
    still go first when a worker starts (test_leases: a suspect with nothing beside it)."""
    import time

    calls: list[str] = []
    store = fast_queue.store
    for name in ("suspects_waiting", "claim_jobs", "next_run_at"):
        def wrap(original: Any, name: str = name) -> Any:
            async def called(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                result = await original(*args, **kwargs)
                calls.append(f"{name} done")
                return result
            return called
        monkeypatch.setattr(store, name, wrap(getattr(store, name)))
    # no poll while the test looks (it would claim and ask on its own timer): NOTIFYs only
    fast_queue.settings = fast_settings(fast_queue.settings.database_url, poll_seconds=30)
    async with running_worker(fast_queue, ["default"], concurrency=10) as worker:
        async def waiting() -> bool:  # idle, its last look at the next run time answered
            return worker._marked_idle and bool(calls) and calls[-1] == "next_run_at done"

        await wait_for(waiting, message="the worker to go idle")
        for _ in range(3):
            worker._suspects_checked_at = time.monotonic() - 3600  # a look is due
            calls.clear()
            job = await fast_queue.enqueue("noop", {})
            await wait_for_status(fast_queue, job.id, "succeeded")
            await wait_for(waiting, message="the worker to go idle again")
            looks = [call for call in calls if call in ("claim_jobs", "suspects_waiting")]
            assert looks == ["claim_jobs", "suspects_waiting"], calls  # the look right after the claim


def test_batch_summaries_name_the_ids_in_runs() -> None:
    assert _summary([5]) == "1 job: 5"
    assert _summary([10, 1, 2, 3, 7, 9]) == "6 jobs: 1-3, 7, 9-10"
    assert _summary(range(1, 101)) == "100 jobs: 1-100"
    assert _summary(range(1, 40, 2)) == "20 jobs: 1, 3, 5, 7, 9, 11, 13, 15 and 12 more runs"


async def test_worker_runs_async_and_sync_handlers(fast_queue: Queue) -> None:
    queue = fast_queue
    email = await queue.enqueue("email", {"to": "a@example.com"})
    marked = await queue.enqueue("sync_mark", {"key": "from-a-thread", "sleep": 0.05})
    noop = await queue.enqueue("noop", {})
    async with running_worker(queue):
        done = [await wait_for_status(queue, job.id, "succeeded") for job in (email, marked, noop)]
    assert [job.result for job in done] == [{"sent_to": "a@example.com"}, "from-a-thread", None]
    # 'started' is debounced like progress: a job done before the next event flush has none
    assert [e.type for e in await queue.events(email.id)] in (["succeeded"], ["started", "succeeded"])


async def test_a_job_still_running_at_the_event_flush_gets_its_started_event(fast_queue: Queue) -> None:
    queue = fast_queue
    slow = await queue.enqueue("sync_mark", {"key": "slow", "sleep": 0.5})  # several 100 ms flushes
    async with running_worker(queue):
        await wait_for_status(queue, slow.id, "succeeded")
    events = await queue.events(slow.id)
    assert [e.type for e in events] == ["started", "succeeded"]
    assert events[0].data["attempt"] == 1


async def test_worker_retries_a_flaky_job_until_it_succeeds(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("flaky", {"succeed_on": 3})
    async with running_worker(queue):
        done = await wait_for_status(queue, job.id, "succeeded")
    assert (done.attempts, done.result) == (3, "ok")
    assert [e.attempt for e in await queue.errors(job.id)] == [1, 2]
    assert "boom on attempt 2" in (await queue.errors(job.id))[1].error
    types = [e.type for e in await queue.events(job.id)]
    # a failing attempt always gets its 'started' (written before the failure); the quick last
    # attempt may finish before the next event flush and then has none
    assert types[:4] == ["started", "failed", "started", "failed"]
    assert types[4:] in (["succeeded"], ["started", "succeeded"])


async def test_worker_gives_up_after_max_attempts_or_a_permanent_failure(fast_queue: Queue) -> None:
    queue = fast_queue
    flaky = await queue.enqueue("flaky", {"succeed_on": 99})
    fatal = await queue.enqueue("fatal", {})
    async with running_worker(queue):
        dead = await wait_for_status(queue, flaky.id, "dead", "succeeded")
        fatal_dead = await wait_for_status(queue, fatal.id, "dead", "succeeded")
    assert (dead.status, dead.attempts, len(await queue.errors(flaky.id))) == ("dead", 3, 3)
    assert (fatal_dead.status, fatal_dead.attempts) == ("dead", 1)
    assert "PermanentFailure: do not retry me" in (fatal_dead.last_error or "")


async def test_worker_cancels_a_running_async_job(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("slow", {"steps": 10_000, "step_seconds": 0.05})
    async with running_worker(queue):
        await wait_for_status(queue, job.id, "running")
        await queue.cancel(job.id)
        cancelled = await wait_for_status(queue, job.id, "cancelled", "succeeded")
    assert cancelled.status == "cancelled" and cancelled.attempts == 1
    events = await queue.events(job.id)
    assert events[-1].type == "cancelled" and events[-1].data == {"while_running": True}
    assert "cancel_requested" in [e.type for e in events]


async def test_worker_cancels_a_sync_job_that_polls_for_it(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("sync_mark", {"key": "k", "sleep": 60})
    async with running_worker(queue, shutdown_grace=1):
        await wait_for_status(queue, job.id, "running")
        await queue.cancel(job.id)
        cancelled = await wait_for_status(queue, job.id, "cancelled", "succeeded")
    assert cancelled.status == "cancelled"


async def test_checkpointed_job_resumes_where_it_stopped(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("counter", {"total": 55, "crash_at": 20})
    async with running_worker(queue):
        done = await wait_for_status(queue, job.id, "succeeded", "dead")
    assert (done.status, done.attempts, done.result) == ("succeeded", 2, 55)
    items = [row[0] for row in await fetch(queue, "SELECT item FROM test_items WHERE job_id = %s ORDER BY item",
                                           (job.id,))]
    assert items == list(range(55))  # each item exactly once: attempt 2 started at item 20
    assert await queue.load_checkpoint(job.id) == {"next": 55}
    assert "crash after a committed batch" in (await queue.errors(job.id))[0].error


async def test_progress_is_coalesced_and_lands_before_success(fast_queue: Queue) -> None:
    queue = fast_queue
    job = await queue.enqueue("chatty", {"calls": 10_000})
    async with running_worker(queue):
        await wait_for_status(queue, job.id, "succeeded")
    events = await queue.events(job.id)
    progress = [e.data["percent"] for e in events if e.type == "progress"]
    assert 2 <= len(progress) <= 40, progress  # 10,000 calls; a handful of rows
    assert progress[-1] == 100 and progress == sorted(progress)
    assert events[-1].type == "succeeded"
    assert [e.type for e in events].index("succeeded") > max(i for i, e in enumerate(events) if e.type == "progress")


# -- maintenance services --------------------------------------------------------------------


async def test_lease_rescuer_run_once(fast_queue: Queue) -> None:
    queue = fast_queue
    short_a, short_b, long = await queue.enqueue_many([("noop", {"n": n}) for n in range(3)])
    claimed = await queue.claim(["default"], 2, "vanished-worker", lease_seconds=0.2)
    assert {job.id for job in claimed} == {short_a, short_b}
    await queue.claim(["default"], 1, "healthy-worker", lease_seconds=60)
    rescuer = LeaseRescuer(queue.store, queue.settings.lease_seconds)

    assert await wait_for(rescuer.run_once, timeout=10, message="the short leases to be rescued") == 2
    assert await rescuer.run_once() == 0
    statuses = dict(await fetch(queue, "SELECT id, status FROM pgqueue.jobs"))
    assert statuses == {short_a: "failed", short_b: "failed", long: "running"}
    assert [e.worker_id for e in await queue.errors(short_a)] == ["vanished-worker"]


async def test_pruner_run_once_deletes_what_is_past_retention(fast_queue: Queue, db_url: str) -> None:
    queue = fast_queue
    succeeded, cancelled, dead, waiting = await queue.enqueue_many([("noop", {"n": n}) for n in range(4)])
    await queue.cancel(cancelled)
    first, second = await queue.claim(["default"], 2, "w1")
    assert {first.id, second.id} == {succeeded, dead}
    await queue.complete(succeeded, (first if first.id == succeeded else second).lease_token)
    await queue.fail(dead, (first if first.id == dead else second).lease_token, "boom", permanent=True)

    keep_failures = fast_settings(db_url, keep_succeeded_seconds=0, keep_failed_seconds=3600,
                                  keep_events_seconds=3600)
    assert await Pruner(queue.store, keep_failures).run_once() == 2
    remaining = dict(await fetch(queue, "SELECT id, status FROM pgqueue.jobs"))
    assert remaining == {dead: "dead", waiting: "queued"}
    assert len(await queue.errors(dead)) == 1
    assert await queue.events(succeeded)  # events have their own retention

    keep_nothing = fast_settings(db_url, keep_succeeded_seconds=0, keep_failed_seconds=0, keep_events_seconds=0)
    pruned = await Pruner(queue.store, keep_nothing).run_once()
    assert await fetch(queue, "SELECT id, status FROM pgqueue.jobs") == [(waiting, "queued")]
    assert pruned == 1  # the dead job
    assert await queue.errors(dead) == []
    # events go by whole UTC days (their partition), so today's stay: tests/test_partitions.py
    assert await queue.events(succeeded)


# -- the SQL file ----------------------------------------------------------------------------

_PARAM = re.compile(r"%\((\w+)\)s")
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def test_every_named_query_is_well_formed() -> None:
    text = (PACKAGE_DIR / "sql" / "queries.sql").read_text()
    name_lines = [line for line in text.splitlines() if line.startswith("-- name")]
    headers = [re.fullmatch(r"-- name: (\w+) :(one|many|none|copy)\s*", line) for line in name_lines]
    assert all(headers), [line for line, match in zip(name_lines, headers, strict=True) if not match]
    names = [match.group(1) for match in headers if match]
    assert len(names) == len(set(names)), "a query name is used twice"
    assert sorted(QUERIES) == sorted(names)
    for query in QUERIES.values():
        code = _STRING_LITERAL.sub("''", query.sql)
        assert query.sql.strip(), query.name
        assert "{" not in code and "}" not in code, f"{query.name}: looks like an f-string/format placeholder"
        assert "%s" not in code and not re.search(r"\$\d", code), f"{query.name}: use %(name)s placeholders"
        assert ";" not in code, f"{query.name}: one statement per name"


def _numbered(sql: str) -> str:
    """%(name)s placeholders as $1, $2 ... (what the server sees) for a bare PREPARE."""
    order: list[str] = []
    for name in _PARAM.findall(sql):
        if name not in order:
            order.append(name)
    return _PARAM.sub(lambda match: f"${order.index(match.group(1)) + 1}", sql)


async def test_every_query_prepares_against_the_migrated_schema(db_url: str) -> None:
    failures = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for query in QUERIES.values():
            try:
                if query.cardinality == "copy":
                    async with conn.transaction(force_rollback=True), conn.cursor() as cur, cur.copy(query.sql):
                        pass  # zero rows: checks the table and columns exist
                    continue
                await conn.execute(f"PREPARE check_{query.name} AS {_numbered(query.sql)}")
                await conn.execute(f"DEALLOCATE check_{query.name}")
            except psycopg.Error as exc:
                failures.append(f"{query.name}: {str(exc).strip()}")
    assert failures == []


# -- import rules ----------------------------------------------------------------------------

DRIVER_PACKAGES = {"psycopg", "psycopg_pool"}
# Which of our modules may import which outside package (STYLE.md, "Layout that shows the architecture").
ALLOWED_OUTSIDE_IMPORTS = {
    "psycopg": {"store.py", "db.py"},
    "psycopg_pool": {"store.py", "db.py"},
    "yoyo": {"migrate.py"},
    "minio": {"storage.py"},
    "app": set(),
    "starlette": set(),
}
# Leaf modules: the only modules of ours each may import.
LEAF_MODULES = {"models.py": set(), "errors.py": set(), "config.py": {"pgqueue.errors"}}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (also inside functions), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            relative = "pgqueue" + ("." + node.module if node.module else "")  # `from . import x`
            base = relative if node.level else node.module or ""
            found.add(base)
            if base == "pgqueue":  # `from pgqueue import errors` imports pgqueue.errors
                found.update(f"pgqueue.{alias.name}" for alias in node.names)
    return found


def test_import_rules() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 10
    broken = []
    for path in files:
        name = path.relative_to(PACKAGE_DIR).as_posix()
        imports = _imports(path)
        for module in imports:
            top = module.split(".")[0]
            if top in ALLOWED_OUTSIDE_IMPORTS and name not in ALLOWED_OUTSIDE_IMPORTS[top]:
                broken.append(f"{name} imports {module}")
        if name in LEAF_MODULES:
            ours = {module for module in imports if module.split(".")[0] == "pgqueue"}
            broken += [f"{name} imports {module}" for module in ours - LEAF_MODULES[name]]
    assert broken == []


def test_import_rules_catch_a_violation(tmp_path: Path) -> None:
    """The walker itself: an import hidden in a function is still seen."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from psycopg.rows import dict_row\n    import starlette.routing\n"
                      "from . import errors\n")
    assert _imports(sample) == {"psycopg.rows", "starlette.routing", "pgqueue", "pgqueue.errors"}


# -- migrations ------------------------------------------------------------------------------


def _schema_objects(url: str) -> list[tuple[str, str]]:
    """Every table, view, index, sequence and function in our schemas, and every trigger."""
    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute("""
            SELECT c.relkind::text, n.nspname || '.' || c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'public')""").fetchall()
        functions = conn.execute("""
            SELECT 'function', n.nspname || '.' || p.proname FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')""").fetchall()
        triggers = conn.execute("SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal").fetchall()
    return sorted(relations + functions + triggers)


def test_migrations_apply_roll_back_and_reapply(pg_server: PgServer) -> None:
    name = f"m_{secrets.token_hex(6)}"
    with pg_server.admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_dbname(pg_server.url, name)
    try:
        applied = migrate(url)
        assert applied and applied[0].startswith("0001")
        objects = _schema_objects(url)
        assert ("r", "pgqueue.jobs") in objects and ("i", "pgqueue.jobs_claim_idx") in objects
        assert ("v", "pgqueue.queue_depth") in objects

        assert rollback(url, count=len(applied)) == list(reversed(applied))
        assert _schema_objects(url) == []  # every rollback script undoes all of its migration

        assert migrate(url) == applied
        assert _schema_objects(url) == objects
        assert migrate(url) == []
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
