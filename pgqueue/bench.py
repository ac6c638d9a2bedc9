"""`python -m pgqueue bench`: the library's enqueue, drain and wake-up figures, each next to the
raw PostgreSQL ceiling (plain psycopg and hand-written SQL, no library code) measured in the same
run on the same database, so a noisy machine moves both sides of every ratio together.

The bench empties pgqueue.jobs and its event, error and checkpoint tables between scenarios, so it
refuses a database holding jobs other than its own; without a URL it starts a throwaway embedded
server with durable settings (fsync and synchronous_commit on). Worker processes load the job kinds
below with `--app pgqueue.bench:bench_jobs`.

The JSON it writes has one top-level section, "engine"; other benches (the web layer's) add
sections of their own beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgqueue import bench_enqueue
from pgqueue.config import Settings
from pgqueue.context import JobContext
from pgqueue.errors import ConfigError, PgQueueError
from pgqueue.registry import JobRegistry

BENCH_QUEUE = "bench"
WORKER_CONCURRENCY = 100
RAW_BATCH_SIZE = 100
WAKE_RATE_PER_SECOND = 50.0

# Sizes: (full, quick). The job count itself comes from --jobs (capped at QUICK_MAX_JOBS with --quick).
# Every figure is the best of a few rounds, raw and library measurements taking turns.
QUICK_MAX_JOBS = 2000
ROUNDS = (3, 1)
DRAIN_ROUNDS = (3, 1)  # per worker configuration
SINGLE_PER_ROUND = (500, 200)  # one job per transaction, library and raw
RAW_SINGLE_DRAIN_PER_ROUND = (1000, 300)  # one job per transaction
WAKE_SAMPLES = (300, 50)
WAKE_WARMUP = 5
# wake-up latency is measured at the drains' concurrency and at these (issue: "at any concurrency")
WAKE_CONCURRENCIES = (1, 10)
WAKE_TARGET_P50_MS, WAKE_TARGET_P99_MS = 2.0, 5.0

# -- the job kinds the worker processes run ------------------------------------------------------

bench_jobs = JobRegistry()


@bench_jobs.kind("bench_noop", queue=BENCH_QUEUE)
async def bench_noop(ctx: JobContext, payload: dict) -> None:
    return None


@bench_jobs.kind("bench_wake", queue=BENCH_QUEUE)
async def bench_wake(ctx: JobContext, payload: dict) -> float:
    """The moment the handler started (wall clock of this machine), compared with the enqueue commit."""
    return time.time()


# -- raw ceilings: hand-written SQL, no library code (the baseline, deliberately not in queries.sql) --

# A scratch copy of pgqueue.jobs: same columns, defaults, constraints, indexes and storage options,
# but none of our triggers (so neither the events rows nor the NOTIFYs).
RAW_CREATE_SCRATCH = """
CREATE SCHEMA IF NOT EXISTS pgqueue_bench;
DROP TABLE IF EXISTS pgqueue_bench.raw_jobs;
CREATE TABLE pgqueue_bench.raw_jobs (LIKE pgqueue.jobs INCLUDING ALL);
ALTER TABLE pgqueue_bench.raw_jobs DISABLE TRIGGER USER;
DO $$
DECLARE options text := (SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = 'pgqueue.jobs'::regclass);
BEGIN
    IF options IS NOT NULL THEN
        EXECUTE format('ALTER TABLE pgqueue_bench.raw_jobs SET (%s)', options);
    END IF;
END $$;
"""
RAW_DROP_SCRATCH = "DROP SCHEMA IF EXISTS pgqueue_bench CASCADE"
RAW_RESET_SCRATCH = "TRUNCATE pgqueue_bench.raw_jobs RESTART IDENTITY"
RAW_ANALYZE_SCRATCH = "ANALYZE pgqueue_bench.raw_jobs"

# The same columns the library's COPY path writes (minus the ids it reserves first).
RAW_COPY_SCRATCH = "COPY pgqueue_bench.raw_jobs (queue, kind, payload, priority, max_attempts) FROM STDIN"
RAW_COPY_JOBS = "COPY pgqueue.jobs (queue, kind, payload, priority, max_attempts) FROM STDIN"
RAW_INSERT_JOB = "INSERT INTO pgqueue.jobs (queue, kind, payload) VALUES (%(queue)s, %(kind)s, '{}')"

# A bare SKIP LOCKED claim of up to n runnable rows (same ordering and index as the engine's),
# taking a lease as any real claim must. The update finds the locked rows by primary key
# (`= ANY(ARRAY(...))`): joined to the CTE instead, the planner scans the whole table once the
# batch is a fair share of it, and the ceiling would be a third lower than it can be.
RAW_CLAIM = """
WITH candidates AS MATERIALIZED (
    SELECT id FROM pgqueue_bench.raw_jobs
    WHERE queue = %(queue)s AND status IN ('queued', 'failed') AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgqueue_bench.raw_jobs AS j
SET status = 'running', attempts = j.attempts + 1, started_at = now(), updated_at = now(),
    lease_token = gen_random_uuid(), lease_expires_at = now() + interval '30 seconds'
WHERE j.id = ANY(ARRAY(SELECT id FROM candidates))
RETURNING j.id
"""
RAW_FINISH = """
UPDATE pgqueue_bench.raw_jobs SET status = 'succeeded', finished_at = now(), updated_at = now(),
    lease_token = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s)
"""

# -- the bench's own bookkeeping ------------------------------------------------------------------

BENCH_FOREIGN_JOBS = "SELECT count(*) FROM pgqueue.jobs WHERE queue <> %(queue)s"
BENCH_LIVE_WORKERS = "SELECT count(*) FROM pgqueue.workers WHERE heartbeat_at > now() - interval '1 minute'"
BENCH_RESET_ENGINE = """
TRUNCATE pgqueue.jobs, pgqueue.events, pgqueue.job_errors, pgqueue.checkpoints, pgqueue.job_dependencies RESTART IDENTITY
"""
BENCH_FORGET_WORKERS = "DELETE FROM pgqueue.workers WHERE pid = ANY(%(pids)s)"
BENCH_VACUUM_ENGINE = ("VACUUM ANALYZE pgqueue.jobs", "VACUUM ANALYZE pgqueue.events")
BENCH_ANALYZE_JOBS = "ANALYZE pgqueue.jobs"
BENCH_SERVER_INFO = """
SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit'),
       current_setting('shared_buffers'), inet_server_addr() IS NULL OR host(inet_server_addr()) IN ('127.0.0.1', '::1')
"""
BENCH_WORKERS_READY = "SELECT count(*) FROM pgqueue.workers WHERE pid = ANY(%(pids)s)"
BENCH_LISTENERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'pgqueue-worker-listen'
"""
# 'failed' is not fatal here: a job whose lease expired is rescued as failed and runs again.
POLL_MIN_SECONDS, POLL_MAX_SECONDS = 0.2, 2.0  # wait_for_jobs (0.2 s: as often as it used to)
BENCH_PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status IN ('dead', 'cancelled'))
FROM pgqueue.jobs WHERE kind = %(kind)s
"""
# Drain timing on the server's clock: first claim to last completion. Distinct timestamps count the
# claim and completion transactions (now() is fixed per transaction).
BENCH_DRAIN_STATS = """
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8,
       count(DISTINCT started_at), count(DISTINCT finished_at), count(*) FILTER (WHERE attempts > 1)
FROM pgqueue.jobs WHERE kind = %(kind)s AND status = 'succeeded'
"""
BENCH_DRAIN_PER_WORKER = """
SELECT lease_owner, count(*), extract(epoch FROM min(started_at) - (SELECT min(started_at) FROM pgqueue.jobs))::float8
FROM pgqueue.jobs WHERE kind = %(kind)s GROUP BY lease_owner ORDER BY lease_owner
"""
BENCH_WAKE_RESULTS = """
SELECT id, (result #>> '{}')::float8, extract(epoch FROM started_at)::float8
FROM pgqueue.jobs WHERE kind = 'bench_wake' AND status = 'succeeded'
"""


class BenchError(PgQueueError):
    """The bench itself could not run (not a missed target)."""


def say(message: str) -> None:
    """Progress goes to stderr; the table to stdout."""
    print(message, file=sys.stderr, flush=True)


def write_section(output: str, section: str, result: dict[str, Any]) -> None:
    """Put one bench's figures under its own key of the JSON file, keeping the other benches'."""
    path = Path(output)
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[section] = result
    path.write_text(json.dumps(existing, indent=2) + "\n")
    say(f"results written to {output} (section {section!r})")


# -- connections ----------------------------------------------------------------------------------


def _sync(url: str, autocommit: bool = True) -> Any:
    from pgqueue.db import connect_sync

    return connect_sync(url, autocommit=autocommit)


def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with _sync(url) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def reset_engine(url: str) -> None:
    """Empty the engine tables (fresh ids), then vacuum so every scenario starts from the same state."""
    with _sync(url) as conn:
        conn.execute(BENCH_RESET_ENGINE)
        for statement in BENCH_VACUUM_ENGINE:
            conn.execute(statement)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """The given database, or a throwaway embedded server with durable settings."""
    if url:
        yield url
        return
    from pgqueue.embedded import EmbeddedPostgres

    tmp = Path(tempfile.mkdtemp(prefix="pgqueue-bench-"))
    server = EmbeddedPostgres(tmp / "pg", fast=False)
    say(f"starting an embedded PostgreSQL (durable settings) in {tmp}")
    server.start()
    try:
        yield server.url
    finally:
        server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def check_database(url: str) -> None:
    if foreign := execute(url, BENCH_FOREIGN_JOBS, {"queue": BENCH_QUEUE})[0][0]:
        raise BenchError(
            f"the database holds {foreign} job(s) outside the {BENCH_QUEUE!r} queue and the bench empties "
            "pgqueue.jobs: point --database-url at a throwaway database, or leave it out for an embedded server"
        )
    if live := execute(url, BENCH_LIVE_WORKERS)[0][0]:
        raise BenchError(f"{live} worker(s) are running against this database; stop them before benchmarking")


# -- measurements: raw ceilings -------------------------------------------------------------------


def _raw_rows(count: int) -> Iterator[tuple[Any, ...]]:
    return ((BENCH_QUEUE, "bench_noop", "{}", 3, 3) for _ in range(count))


def raw_copy(url: str, copy_sql: str, count: int, analyze: str | None = None) -> float:
    """COPY `count` rows in one transaction; rows/s from the start of COPY to the commit."""
    with _sync(url, autocommit=False) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in _raw_rows(count):
                copy.write_row(row)
        if analyze:  # same transaction: ANALYZE sees its own transaction's rows
            conn.execute(analyze)
        conn.commit()
        return count / (time.perf_counter() - started)


def raw_single_inserts(url: str, count: int) -> float:
    with _sync(url) as conn:
        started = time.perf_counter()
        for _ in range(count):
            conn.execute(RAW_INSERT_JOB, {"queue": BENCH_QUEUE, "kind": "bench_noop"})
        return count / (time.perf_counter() - started)


def raw_drain(url: str, count: int, batch: int, commit_claim: bool) -> float:
    """Claim up to `batch` rows, mark them done, commit; until the scratch table is drained.

    With commit_claim the claim is committed on its own first (what a lease-based queue has to do
    before it runs the job), so every batch costs two commits.
    """
    with _sync(url) as setup:
        setup.execute(RAW_RESET_SCRATCH)
    raw_copy(url, RAW_COPY_SCRATCH, count, analyze=RAW_ANALYZE_SCRATCH)
    return raw_loop(url, count, batch, commit_claim)


def raw_loop(url: str, count: int, batch: int, commit_claim: bool,
             before: Callable[[], object] | None = None, after: Callable[[], object] | None = None) -> float:
    """raw_drain's loop alone, on the scratch table as it stands (`count` runnable rows); `before`
    and `after` are called with its connection open (bench_drain's meter: a backend that exited
    may not be reaped and counted yet)."""
    done = 0
    with _sync(url, autocommit=False) as conn:
        if before:
            before()
        started = time.perf_counter()
        while True:
            ids = [row[0] for row in conn.execute(RAW_CLAIM, {"queue": BENCH_QUEUE, "limit": batch}).fetchall()]
            if not ids:
                conn.commit()
                break
            if commit_claim:
                conn.commit()
            conn.execute(RAW_FINISH, {"ids": ids})
            conn.commit()
            done += len(ids)
        elapsed = time.perf_counter() - started
        if after:
            after()
    if done != count:
        raise BenchError(f"raw drain finished {done} rows, expected {count}")
    return done / elapsed


# -- measurements: the library --------------------------------------------------------------------


async def _library_bulk_enqueue(url: str, count: int) -> float:
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    try:
        items: list[tuple[str, Any]] = [("bench_noop", {})] * count
        started = time.perf_counter()  # validation included: the caller pays for it too
        ids = await queue.enqueue_many(items)
        return len(ids) / (time.perf_counter() - started)
    finally:
        await queue.close()


async def _library_single_enqueues(url: str, count: int) -> float:
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    try:
        started = time.perf_counter()
        for _ in range(count):
            await queue.enqueue("bench_noop", {})
        return count / (time.perf_counter() - started)
    finally:
        await queue.close()


async def _enqueue_and_analyze(url: str, count: int) -> None:
    """Bulk enqueue (library COPY path) and ANALYZE in one transaction: the workers see every job
    at once, on a table with fresh statistics, the way the raw drain does."""
    from pgqueue.db import connect
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    conn = await connect(url, autocommit=False, application_name="pgqueue-bench")
    try:
        await queue.enqueue_many([("bench_noop", {})] * count, conn=conn)
        await conn.execute(BENCH_ANALYZE_JOBS)
        await conn.commit()
    finally:
        await conn.close()
        await queue.close()


class WorkerProcesses:
    """`python -m pgqueue worker` subprocesses running the bench kinds, logging to files."""

    def __init__(self, url: str, count: int, log_dir: Path, env: dict[str, str] | None = None,
                 concurrency: int = WORKER_CONCURRENCY) -> None:
        self.url = url
        self.concurrency = concurrency
        self.log_paths = [log_dir / f"worker-{index}.log" for index in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = env or {}  # e.g. PGQUEUE_DIRECT_DATABASE_URL when `url` is a PgBouncer (bench_scaleout.py)

    def __enter__(self) -> WorkerProcesses:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        # INFO, the worker's default: measured the way a user meets it (per-job lines are DEBUG;
        # a batch's start and success take one INFO line each)
        args = [
            sys.executable, "-m", "pgqueue", "--log-level", "INFO", "worker", "--database-url", self.url,
            "--app", "pgqueue.bench:bench_jobs", "--queues", BENCH_QUEUE,
            "--concurrency", str(self.concurrency), "--grace", "5",
        ]
        for path in self.log_paths:
            with path.open("wb") as log:
                self.processes.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
        return self

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the worker processes so far (Linux /proc; None elsewhere)."""
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def check_alive(self) -> None:
        for process, path in zip(self.processes, self.log_paths, strict=True):
            if process.poll() is not None:
                tail = path.read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {process.pid} exited with {process.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Registered in pgqueue.workers, and their LISTEN connections open (then idle)."""
        deadline = time.monotonic() + timeout
        while execute(self.url, BENCH_WORKERS_READY, {"pids": self.pids})[0][0] < len(self.processes):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"workers not registered after {timeout:.0f}s")
            time.sleep(0.05)
        # A worker not listening yet would still find the jobs by its poll, only later; give the
        # LISTEN connections a few seconds to show up, then go on regardless.
        listen_deadline = time.monotonic() + 5
        while (execute(self.url, BENCH_LISTENERS)[0][0] < len(self.processes)
               and time.monotonic() < listen_deadline):
            self.check_alive()
            time.sleep(0.05)
        time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        execute(self.url, BENCH_FORGET_WORKERS, {"pids": self.pids})


def wait_for_jobs(url: str, workers: WorkerProcesses, kind: str, count: int, label: str, timeout: float,
                  execute: Callable[..., list[tuple[Any, ...]]] = execute) -> None:
    """Poll the succeeded count until all `count` jobs of `kind` are done; `execute` runs the poll
    (bench_drain's meter passes its own connection's).

    The poll scans the jobs table: about 48 ms of server CPU at 200,000 jobs, whose row versions
    the drain keeps adding. Asked every 0.2 s it took a quarter of a core from a drain on a
    two-core machine (and was counted in the drain's Postgres CPU), which the raw loop, counting
    its own rows, never paid. So it is asked when the rate seen so far says the jobs should be
    done: never more than POLL_MAX_SECONDS apart (the progress line), nor less than POLL_MIN_SECONDS."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    last_report = time.monotonic()
    while True:
        succeeded, broken = execute(url, BENCH_PROGRESS, {"kind": kind})[0]
        if broken:
            raise BenchError(f"{label}: {broken} job(s) dead or cancelled; see the worker logs")
        if succeeded >= count:
            return
        workers.check_alive()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"{label}: only {succeeded}/{count} jobs succeeded after {timeout:.0f}s")
        if now - last_report >= 1.0:
            say(f"    {label}: {succeeded}/{count} succeeded")
            last_report = now
        if first is None:
            first = (now, succeeded)
        rate = (succeeded - first[1]) / (now - first[0]) if succeeded > first[1] else 0.0
        due = (count - succeeded) / rate if rate else POLL_MIN_SECONDS
        time.sleep(min(max(due, POLL_MIN_SECONDS), POLL_MAX_SECONDS))


def drain_once(url: str, count: int, workers: WorkerProcesses, label: str) -> dict[str, Any]:
    """With the workers idle, `count` jobs appear in one commit; first claim to last completion."""
    reset_engine(url)
    asyncio.run(_enqueue_and_analyze(url, count))
    cpu_before = workers.cpu_seconds()
    wait_for_jobs(url, workers, "bench_noop", count, label, timeout=max(60.0, count / 200))
    cpu_after = workers.cpu_seconds()
    cpu_seconds = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    total, seconds, claims, completions, retried = execute(url, BENCH_DRAIN_STATS, {"kind": "bench_noop"})[0]
    per_worker = execute(url, BENCH_DRAIN_PER_WORKER, {"kind": "bench_noop"})
    if retried:
        say(f"    {label}: {retried} job(s) ran more than once (lease expired before the completion was written)")
    drain = {
        "jobs_per_s": total / seconds,
        "seconds": seconds,
        "worker_cpu_s": cpu_seconds,
        "worker_cpu_ms_per_1000_jobs": None if cpu_seconds is None else cpu_seconds * 1000 / total * 1000,
        "jobs_run_more_than_once": retried,
        "claims": claims,
        "completion_batches": completions,
        "jobs_per_claim": total / claims,
        "jobs_per_completion_batch": total / completions,
        "per_worker": [{"jobs": jobs, "first_claim_after_s": lag} for _owner, jobs, lag in per_worker],
    }
    say(f"    {label}: {drain['jobs_per_s']:,.0f} jobs/s")
    return drain


async def _enqueue_paced(url: str, samples: int, rate: float) -> dict[int, float]:
    """One job at a time at a steady rate; returns {job id: wall clock right after its commit}."""
    from pgqueue.queue import Queue

    committed: dict[int, float] = {}
    queue = await Queue.connect(url, bench_jobs, max_size=2)
    try:
        started = time.perf_counter()
        for index in range(samples):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            job = await queue.enqueue("bench_wake", {})
            committed[job.id] = time.time()
    finally:
        await queue.close()
    return committed


async def _store_loop(count: int, url: str) -> float:
    """The library's claim and completion statements (Queue.claim, Queue.complete_many) in a bare
    loop on one connection, no worker: how much of the gap to the raw ceiling is SQL, how much the
    worker around it."""
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    done = 0
    try:
        started = time.perf_counter()
        while jobs := await queue.claim([BENCH_QUEUE], RAW_BATCH_SIZE, "pgqueue-bench-store-loop"):
            await queue.complete_many([(job.id, job.lease_token, None) for job in jobs if job.lease_token])
            done += len(jobs)
        elapsed = time.perf_counter() - started
    finally:
        await queue.close()
    if done != count:
        raise BenchError(f"store loop finished {done} jobs, expected {count}")
    return done / elapsed


def store_loop_drain(url: str, count: int) -> float:
    reset_engine(url)
    asyncio.run(_enqueue_and_analyze(url, count))
    return asyncio.run(_store_loop(count, url))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def wake_latency(url: str, samples: int, log_dir: Path, concurrency: int = WORKER_CONCURRENCY) -> dict[str, Any]:
    """Enqueue commit -> handler start, with one idle worker of `concurrency` slots, at a steady low rate."""
    reset_engine(url)
    with WorkerProcesses(url, 1, log_dir, concurrency=concurrency) as workers:
        workers.wait_ready()
        warmup = asyncio.run(_enqueue_paced(url, WAKE_WARMUP, 10.0))
        wait_for_jobs(url, workers, "bench_wake", len(warmup), "wake-up warm-up", timeout=30)
        say(f"    wake-up: {samples} jobs, one at a time at {WAKE_RATE_PER_SECOND:.0f}/s")
        committed = asyncio.run(_enqueue_paced(url, samples, WAKE_RATE_PER_SECOND))
        wait_for_jobs(url, workers, "bench_wake", len(warmup) + samples, "wake-up", timeout=30)
    total, to_claim, to_handler = [], [], []
    for job_id, handler_started, claimed in execute(url, BENCH_WAKE_RESULTS):
        if job_id in committed:
            total.append((handler_started - committed[job_id]) * 1000)
            to_claim.append((claimed - committed[job_id]) * 1000)
            to_handler.append((handler_started - claimed) * 1000)
    if len(total) != samples:
        raise BenchError(f"wake-up: {len(total)} results for {samples} jobs")
    return {
        "samples": samples,
        "concurrency": concurrency,
        "p50_ms": percentile(total, 0.50),
        "p99_ms": percentile(total, 0.99),
        "max_ms": max(total),
        # where the time goes (server clock vs this machine's: meaningful when both are the same host)
        "commit_to_claim_p50_ms": percentile(to_claim, 0.50),
        "claim_to_handler_p50_ms": percentile(to_handler, 0.50),
    }


# -- the run --------------------------------------------------------------------------------------


class Steps:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        say(f"[{self.done}/{self.total}] {title} ...")
        started = time.perf_counter()
        yield
        say(f"    done in {time.perf_counter() - started:.1f}s")


def run(url: str, jobs: int, quick: bool) -> dict[str, Any]:
    size = 1 if quick else 0
    rounds, drain_rounds = ROUNDS[size], DRAIN_ROUNDS[size]
    single_count, wake_samples = SINGLE_PER_ROUND[size], WAKE_SAMPLES[size]
    raw_single_drain = min(RAW_SINGLE_DRAIN_PER_ROUND[size], jobs)
    from pgqueue.migrate import migrate

    migrate(url)
    check_database(url)
    version, fsync, synchronous_commit, shared_buffers, local = execute(url, BENCH_SERVER_INFO)[0]
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {}

    def sample(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    library: dict[str, Any] = {}
    steps = Steps(2 * rounds + 7)
    log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-bench-workers-"))
    try:
        with _sync(url) as conn:
            conn.execute(RAW_CREATE_SCRATCH)
        for index in range(rounds):
            with steps.step(f"enqueue round {index + 1}/{rounds}: raw COPY of {jobs} rows without and with our "
                            f"triggers, enqueue_many of {jobs}; {single_count} single INSERTs and enqueue()s"):
                with _sync(url) as conn:
                    conn.execute(RAW_RESET_SCRATCH)
                sample("copy_no_triggers_rows_per_s", raw_copy(url, RAW_COPY_SCRATCH, jobs))
                reset_engine(url)
                sample("copy_jobs_table_rows_per_s", raw_copy(url, RAW_COPY_JOBS, jobs))
                reset_engine(url)
                sample("enqueue_many_jobs_per_s", asyncio.run(_library_bulk_enqueue(url, jobs)))
                reset_engine(url)
                sample("insert_single_rows_per_s", raw_single_inserts(url, single_count))
                sample("enqueue_single_jobs_per_s", asyncio.run(_library_single_enqueues(url, single_count)))
        for index in range(rounds):
            with steps.step(f"drain round {index + 1}/{rounds} without workers: raw batches of {RAW_BATCH_SIZE} "
                            f"(one and two commits), raw single ({raw_single_drain} jobs), library claim + "
                            "complete_many loop"):
                sample("drain_batch_jobs_per_s", raw_drain(url, jobs, RAW_BATCH_SIZE, commit_claim=False))
                sample("drain_batch_two_commits_jobs_per_s", raw_drain(url, jobs, RAW_BATCH_SIZE, commit_claim=True))
                sample("drain_single_jobs_per_s", raw_drain(url, raw_single_drain, 1, commit_claim=False))
                sample("store_loop_drain_jobs_per_s", store_loop_drain(url, jobs))
        with steps.step("drains by fresh worker processes (1 and 2, concurrency "
                        f"{WORKER_CONCURRENCY}) beside the raw loop, after a CHECKPOINT, median of the rounds"):
            from pgqueue import bench_drain

            library["drain"] = drain = bench_drain.measure(
                url, log_dir, execute=execute, say=say, quick=quick,
                sizes=(jobs,) if quick else tuple(sorted({jobs, *bench_drain.SIZES})), rounds=drain_rounds)
            # the headline figures: the largest size, medians (bench_drain has every size and round)
            largest = drain[str(max(drain["sizes"]))]
            for processes, key in ((1, "drain_1_worker"), (2, "drain_2_workers")):
                row = largest[f"{processes}_process"]
                library[key] = {"jobs_per_s": row["jobs_per_s"]["median"], "range_jobs_per_s": row["jobs_per_s"],
                                "vs_raw": row["vs_raw"],
                                "postgres_cpu_us_per_job": (row.get("postgres_cpu_us_per_job") or {}).get("median"),
                                "worker_cpu_us_per_job": (row.get("worker_cpu_us_per_job") or {}).get("median")}
            samples["drain_batch_jobs_per_s"] += [r["jobs_per_s"] for r in largest["raw"]["rounds"]]
        with steps.step(f"wake-up latency, {wake_samples} jobs at {WAKE_RATE_PER_SECOND:.0f}/s to an idle worker"):
            library["wakeup"] = wake_latency(url, wake_samples, log_dir)
            library["wakeup_by_concurrency"] = {
                str(c): wake_latency(url, wake_samples, log_dir, concurrency=c) for c in WAKE_CONCURRENCIES}
        with steps.step(f"concurrent single enqueue at P = 1, 8, 32 ({bench_enqueue.TOTAL} per round, "
                        "raw INSERT with no trigger as the ceiling)"):
            library["concurrent_enqueue"] = bench_enqueue.measure(url, execute, say=say,
                                                                  rounds=1 if quick else bench_enqueue.ROUNDS)
        with steps.step(f"flow control: drains of {jobs} jobs by 1 worker, plain and with limits never reached "
                        "(concurrency, rate, 1,000 keys), taking turns"):
            from pgqueue import bench_flow

            library["flow_control"] = bench_flow.measure(url, jobs, log_dir, execute=execute, say=say,
                                                         rounds=1 if quick else bench_flow.ROUNDS)
        with steps.step("periodic jobs: fire-time accuracy of a once-a-second schedule, fresh worker per round"):
            from pgqueue import bench_periodic

            library["periodic"] = bench_periodic.measure(url, log_dir, execute=execute, say=say, quick=quick)
        with steps.step("clean-up"):
            reset_engine(url)
            execute(url, RAW_DROP_SCRATCH)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    # every figure is the median of its samples (the spread is in "samples"): what a user meets
    best = {name: statistics.median(values) for name, values in samples.items()}
    raw = {name: best[name] for name in (
        "copy_no_triggers_rows_per_s", "copy_jobs_table_rows_per_s", "insert_single_rows_per_s",
        "drain_batch_jobs_per_s", "drain_batch_two_commits_jobs_per_s", "drain_single_jobs_per_s",
    )}
    for name in ("enqueue_many_jobs_per_s", "enqueue_single_jobs_per_s", "store_loop_drain_jobs_per_s"):
        library[name] = best[name]
    ratios = {
        "enqueue_many_vs_raw_copy": library["enqueue_many_jobs_per_s"] / raw["copy_jobs_table_rows_per_s"],
        "enqueue_many_vs_raw_copy_no_triggers": library["enqueue_many_jobs_per_s"] / raw["copy_no_triggers_rows_per_s"],
        "raw_copy_triggers_vs_no_triggers": raw["copy_jobs_table_rows_per_s"] / raw["copy_no_triggers_rows_per_s"],
        "enqueue_single_vs_raw_insert": library["enqueue_single_jobs_per_s"] / raw["insert_single_rows_per_s"],
        # same-size medians of the fresh-process drains against the raw loops of their rounds
        "drain_1_worker_vs_raw_batch": library["drain_1_worker"]["vs_raw"],
        "drain_2_workers_vs_raw_batch": library["drain_2_workers"]["vs_raw"],
        "drain_1_worker_vs_raw_batch_two_commits":
            library["drain_1_worker"]["jobs_per_s"] / raw["drain_batch_two_commits_jobs_per_s"],
        "store_loop_vs_raw_batch_two_commits":
            library["store_loop_drain_jobs_per_s"] / raw["drain_batch_two_commits_jobs_per_s"],
        "drain_1_worker_vs_store_loop": library["drain_1_worker"]["jobs_per_s"] / library["store_loop_drain_jobs_per_s"],
    }
    targets = {
        "drain_1_worker_vs_raw_batch": _target(ratios["drain_1_worker_vs_raw_batch"], ">=", 0.7),
        "drain_2_workers_vs_raw_batch": _target(ratios["drain_2_workers_vs_raw_batch"], ">=", 0.7),
        "enqueue_many_vs_raw_copy": _target(ratios["enqueue_many_vs_raw_copy"], ">=", 0.5),
        "wakeup_p50_ms": _target(library["wakeup"]["p50_ms"], "<=", WAKE_TARGET_P50_MS),
        "wakeup_p99_ms": _target(library["wakeup"]["p99_ms"], "<=", WAKE_TARGET_P99_MS),
        **{f"wakeup_concurrency_{c}_{p}_ms": _target(w[f"{p}_ms"], "<=", bound)
           for c, w in library["wakeup_by_concurrency"].items()
           for p, bound in (("p50", WAKE_TARGET_P50_MS), ("p99", WAKE_TARGET_P99_MS))},
    }
    return {
        "meta": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": (datetime.now(UTC) - started_at).total_seconds(),
            "jobs": jobs,
            "quick": quick,
            "rounds": rounds,
            "drain_rounds": drain_rounds,
            "single_per_round": single_count,
            "raw_single_drain_jobs": raw_single_drain,
            "raw_batch_size": RAW_BATCH_SIZE,
            "worker_concurrency": WORKER_CONCURRENCY,
            "postgres": version,
            "fsync": fsync,
            "synchronous_commit": synchronous_commit,
            "shared_buffers": shared_buffers,
            "server_on_this_host": bool(local),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        },
        "raw": raw,
        "library": library,
        "ratios": ratios,
        "targets": targets,
        "samples": samples,
    }


def _target(value: float, op: str, bound: float) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
    return {"value": value, "target": f"{op} {bound:g}", "pass": met}


# -- the report -----------------------------------------------------------------------------------


def _rate(value: float, unit: str) -> str:
    return f"{value:>12,.0f} {unit}"


def _verdict(target: dict[str, Any]) -> str:
    return f"{target['target']:<7} {'PASS' if target['pass'] else 'MISS'}"


def _drain_rows(drain: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    from pgqueue.bench_drain import render_rows

    return render_rows(drain)


def render(engine: dict[str, Any]) -> str:
    meta, raw, lib, ratios, targets = (engine[k] for k in ("meta", "raw", "library", "ratios", "targets"))
    wake = lib["wakeup"]
    rows: list[tuple[str, str, str, str]] = [
        ("raw PostgreSQL ceilings (no library code)", "", "", ""),
        ("  COPY, scratch table without triggers", _rate(raw["copy_no_triggers_rows_per_s"], "rows/s"), "", ""),
        ("  COPY, pgqueue.jobs (events + NOTIFY triggers)", _rate(raw["copy_jobs_table_rows_per_s"], "rows/s"),
         f"{ratios['raw_copy_triggers_vs_no_triggers']:.0%} of no-trigger COPY", ""),
        ("  INSERT one row per transaction, pgqueue.jobs", _rate(raw["insert_single_rows_per_s"], "rows/s"), "", ""),
        (f"  drain, batch of {meta['raw_batch_size']} per transaction", _rate(raw["drain_batch_jobs_per_s"], "jobs/s"),
         "", ""),
        ("  drain, batch, claim and finish committed apart",
         _rate(raw["drain_batch_two_commits_jobs_per_s"], "jobs/s"), "", ""),
        ("  drain, one job per transaction", _rate(raw["drain_single_jobs_per_s"], "jobs/s"), "", ""),
        ("pgqueue", "", "", ""),
        ("  bulk enqueue (enqueue_many, COPY path)", _rate(lib["enqueue_many_jobs_per_s"], "jobs/s"),
         f"{ratios['enqueue_many_vs_raw_copy']:.0%} of raw COPY "
         f"({ratios['enqueue_many_vs_raw_copy_no_triggers']:.0%} w/o triggers)",
         _verdict(targets["enqueue_many_vs_raw_copy"])),
        ("  single enqueue()", _rate(lib["enqueue_single_jobs_per_s"], "jobs/s"),
         f"{ratios['enqueue_single_vs_raw_insert']:.0%} of raw single INSERT", ""),
        ("  claim + complete_many loop, no worker (diagnostic)", _rate(lib["store_loop_drain_jobs_per_s"], "jobs/s"),
         f"{ratios['store_loop_vs_raw_batch_two_commits']:.0%} of raw two-commit drain", ""),
        (f"drains by fresh worker processes (concurrency {meta['worker_concurrency']}), median (range) of the rounds",
         "", "", ""),
        *_drain_rows(lib["drain"]),
        ("  wake-up latency p50 (enqueue commit -> handler)", f"{wake['p50_ms']:>12.2f} ms",
         f"commit->claim {wake['commit_to_claim_p50_ms']:.2f}, claim->handler {wake['claim_to_handler_p50_ms']:.2f}",
         _verdict(targets["wakeup_p50_ms"])),
        ("  wake-up latency p99", f"{wake['p99_ms']:>12.2f} ms", "", _verdict(targets["wakeup_p99_ms"])),
        (f"  wake-up latency max ({wake['samples']} samples)", f"{wake['max_ms']:>12.2f} ms", "", ""),
        *[row for c, w in lib["wakeup_by_concurrency"].items() for row in (
            (f"  wake-up latency p50, a worker of concurrency {c}", f"{w['p50_ms']:>12.2f} ms", "",
             _verdict(targets[f"wakeup_concurrency_{c}_p50_ms"])),
            (f"  wake-up latency p99, a worker of concurrency {c}", f"{w['p99_ms']:>12.2f} ms", f"max {w['max_ms']:.2f} ms",
             _verdict(targets[f"wakeup_concurrency_{c}_p99_ms"])))],
    ]
    if "flow_control" in lib:
        from pgqueue.bench_flow import render_rows

        rows += [("queues: limits never reached (README \"Queues\")", "", "", ""), *render_rows(lib["flow_control"])]
    if "periodic" in lib:
        from pgqueue.bench_periodic import render_rows as periodic_rows

        rows += [("periodic jobs (README \"Periodic jobs\")", "", "", ""), *periodic_rows(lib["periodic"])]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = (
        f"pgqueue bench: {meta['jobs']:,} jobs, PostgreSQL {meta['postgres']} (fsync={meta['fsync']}, "
        f"synchronous_commit={meta['synchronous_commit']}), {meta['cpus']} CPUs, "
        f"load {meta['loadavg_before'][0]:.1f} -> {meta['loadavg_after'][0]:.1f}, {meta['duration_s']:.0f}s\n"
        f"every rate is the median of {meta['rounds']} round(s) ({meta['drain_rounds']} per drain), "
        "raw and library measured in turns"
    )
    lines = [header, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    logging.getLogger("yoyo").setLevel(logging.WARNING)  # migration chatter would bury the progress lines
    jobs = min(args.jobs, QUICK_MAX_JOBS) if args.quick else args.jobs
    if jobs < 10:
        raise ConfigError("--jobs must be at least 10")
    with database(url) as bench_url:
        engine = run(bench_url, jobs, args.quick)
    print(render(engine))
    if args.output:
        write_section(args.output, "engine", engine)
    return 0
