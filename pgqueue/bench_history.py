"""`python -m pgqueue.bench_history`: history that grows for years (README, "History that grows
for years"), partitioned events (schema/0012) against the plain table they replaced.

Two databases on one throwaway embedded PostgreSQL (durable settings): `partitioned`, migrated to
the head, and `plain`, migrated to the head and then given the old unpartitioned events table back
(the 0012 rollback's SQL, run without yoyo, so a worker still starts on it). History is generated
with INSERT ... SELECT generate_series, with the NOTIFY trigger off for the loading session.

- Pruning one day of --day-events events (with --kept-events of the next day kept): detaching
  and dropping its partition against today's batched DELETE (5,000 rows a statement, the old
  `prune_events`) and the VACUUM that has to follow it; time, WAL written, table size after.
- The claim / complete path with --history-events rows of history (spread over the week before
  today): drains of --jobs no-op jobs, each by a fresh worker process after a CHECKPOINT,
  partitioned and plain taking turns, median and spread of --rounds; and the SSE replay queries
  (a job's events after an id, every event after an id) on both tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pgqueue.bench import BENCH_DRAIN_STATS, BenchError, WorkerProcesses, _enqueue_and_analyze, say, wait_for_jobs

ROUNDS = 3
LOAD_CHUNK = 1_000_000  # rows per INSERT ... SELECT statement (one transaction each)
REPLAY_SAMPLES = 200

# Bench-only statements (like those of pgqueue/bench.py, deliberately not in queries.sql).
# The old `prune_events` of queries.sql, as the maintenance leader ran it before schema/0012.
OLD_PRUNE_EVENTS = """
DELETE FROM pgqueue.events
WHERE id IN (SELECT id FROM pgqueue.events WHERE created_at < %(cutoff)s ORDER BY id LIMIT %(limit)s)
RETURNING id
"""
OLD_PRUNE_BATCH = 5000
DROP_PARTITIONS = "SELECT pgqueue.drop_event_partitions(%(cutoff)s)"
CREATE_PARTITION = "SELECT pgqueue.create_event_partition(%(day)s)"
LOAD_EVENTS = """
INSERT INTO pgqueue.events (job_id, type, data, created_at)
SELECT g / 4 + 1, (ARRAY['started', 'progress', 'log', 'succeeded'])[g %% 4 + 1], '{"pct": 50}',
       %(start)s::timestamptz + (g - %(first)s) * %(step)s::interval
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
LOADING_SESSION = "SET session_replication_role = replica"  # no NOTIFY trigger while loading history
# the table itself when plain, its partitions when partitioned
EVENTS_TABLES = """
SELECT c.oid FROM pg_class c
WHERE (c.oid = 'pgqueue.events'::regclass AND c.relkind = 'r')
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'pgqueue.events'::regclass)
"""
EVENTS_SIZE = f"SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::bigint FROM ({EVENTS_TABLES}) AS t"
EVENTS_DEAD_TUPLES = f"""
SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE relid IN ({EVENTS_TABLES})
"""
EVENTS_COUNT = "SELECT count(*) FROM pgqueue.events"
EMPTY_EVENTS = "TRUNCATE pgqueue.events"
WAL_POSITION = "SELECT pg_current_wal_lsn()::text"
WAL_SINCE = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %(since)s::pg_lsn)::bigint"
VACUUM_EVENTS = "VACUUM pgqueue.events"
ANALYZE_EVENTS = "ANALYZE pgqueue.events"
CHECKPOINT = "CHECKPOINT"
SERVER_WAL_ROOM = "ALTER SYSTEM SET max_wal_size = '8GB'"
RELOAD_CONF = "SELECT pg_reload_conf()"
SERVER_SETTINGS = "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('max_wal_size')"
EMPTY_JOBS = "TRUNCATE pgqueue.jobs CASCADE"
FORGET_WORKERS = "DELETE FROM pgqueue.workers"
MAX_EVENT_ID = "SELECT max(id) FROM pgqueue.events"
REPLAY_JOB = "SELECT id, type, data FROM pgqueue.events WHERE job_id = %(job_id)s AND id > %(after_id)s ORDER BY id LIMIT 1000"
REPLAY_ALL = "SELECT id, job_id, type, data FROM pgqueue.events WHERE id > %(after_id)s ORDER BY id LIMIT 1000"
PLAIN_AUTOVACUUM_OFF = "ALTER TABLE pgqueue.events SET (autovacuum_enabled = false)"


def _connect(url: str) -> Any:
    from pgqueue.db import connect_sync

    return connect_sync(url, autocommit=True)


def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with _connect(url) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _in_parallel(load: Callable[[str], float], names: list[str]) -> dict[str, float]:
    """Both databases loaded at once (one backend each: the machine's two cores), seconds each."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(load, names), strict=True))


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


# -- the two databases ----------------------------------------------------------------------------


def prepare_databases(server_url: str) -> dict[str, str]:
    from pgqueue.migrate import migrate, schema_dir

    urls: dict[str, str] = {}
    for name in ("partitioned", "plain"):
        execute(server_url, f"DROP DATABASE IF EXISTS history_{name}")
        execute(server_url, f"CREATE DATABASE history_{name}")
        urls[name] = server_url.rsplit("/", 1)[0] + f"/history_{name}"
        migrate(urls[name])
    # the plain table of before schema/0012 (every migration stays recorded: a worker starts on it)
    rollback_sql = (schema_dir() / "0012.partitioned-events.rollback.sql").read_text()
    with _connect(urls["plain"]) as conn:
        conn.execute(rollback_sql)
    return urls


def load_events(url: str, count: int, start: datetime, span: timedelta, label: str) -> float:
    """`count` events spread evenly over [start, start + span); returns the seconds it took."""
    if count <= 0:
        return 0.0
    step = span / count
    started = time.perf_counter()
    with _connect(url) as conn:
        conn.execute(LOADING_SESSION)
        for first in range(0, count, LOAD_CHUNK):
            last = min(first + LOAD_CHUNK, count) - 1
            conn.execute(LOAD_EVENTS, {"first": first, "last": last, "start": start, "step": step})
            if count > LOAD_CHUNK:
                say(f"    {label}: {last + 1:,}/{count:,} events")
        conn.execute(ANALYZE_EVENTS)
    return time.perf_counter() - started


def partitions_for(url: str, first: date, days: int) -> None:
    for offset in range(days):
        execute(url, CREATE_PARTITION, {"day": first + timedelta(days=offset)})


# -- pruning one day ----------------------------------------------------------------------------


def _size_and_dead(url: str) -> dict[str, int]:
    return {"bytes": execute(url, EVENTS_SIZE)[0][0], "dead_tuples": execute(url, EVENTS_DEAD_TUPLES)[0][0]}


def prune_by_delete(url: str, cutoff: datetime) -> dict[str, Any]:
    before = _size_and_dead(url)
    since = execute(url, WAL_POSITION)[0][0]
    deleted = statements = 0
    started = time.perf_counter()
    with _connect(url) as conn:
        while True:
            rows = conn.execute(OLD_PRUNE_EVENTS, {"cutoff": cutoff, "limit": OLD_PRUNE_BATCH}).fetchall()
            deleted += len(rows)
            statements += 1
            if len(rows) < OLD_PRUNE_BATCH:
                break
    delete_seconds = time.perf_counter() - started
    delete_wal = execute(url, WAL_SINCE, {"since": since})[0][0]
    after_delete = _size_and_dead(url)
    since = execute(url, WAL_POSITION)[0][0]
    started = time.perf_counter()
    execute(url, VACUUM_EVENTS)  # what autovacuum must do afterwards (off on this table meanwhile)
    vacuum_seconds = time.perf_counter() - started
    vacuum_wal = execute(url, WAL_SINCE, {"since": since})[0][0]
    after_vacuum = _size_and_dead(url)
    return {"rows_deleted": deleted, "statements": statements, "delete_seconds": delete_seconds,
            "delete_wal_bytes": delete_wal, "vacuum_seconds": vacuum_seconds, "vacuum_wal_bytes": vacuum_wal,
            "seconds_with_vacuum": delete_seconds + vacuum_seconds,
            "table_bytes_before": before["bytes"], "table_bytes_after_delete": after_delete["bytes"],
            "dead_tuples_after_delete": after_delete["dead_tuples"], "table_bytes_after_vacuum": after_vacuum["bytes"],
            "rows_left": execute(url, EVENTS_COUNT)[0][0]}


def prune_by_drop(url: str, cutoff: datetime) -> dict[str, Any]:
    before = _size_and_dead(url)
    rows_before = execute(url, EVENTS_COUNT)[0][0]
    since = execute(url, WAL_POSITION)[0][0]
    started = time.perf_counter()
    dropped = [row[0] for row in execute(url, DROP_PARTITIONS, {"cutoff": cutoff})]
    seconds = time.perf_counter() - started
    wal = execute(url, WAL_SINCE, {"since": since})[0][0]
    rows_left = execute(url, EVENTS_COUNT)[0][0]
    return {"partitions_dropped": dropped, "rows_deleted": rows_before - rows_left, "seconds": seconds,
            "wal_bytes": wal, "table_bytes_before": before["bytes"], "table_bytes_after": _size_and_dead(url)["bytes"],
            "rows_left": rows_left}


def pruning(urls: dict[str, str], day_events: int, kept_events: int) -> dict[str, Any]:
    doomed = datetime.now(UTC).date() - timedelta(days=30)
    kept = doomed + timedelta(days=1)
    partitions_for(urls["partitioned"], doomed, 2)
    execute(urls["plain"], PLAIN_AUTOVACUUM_OFF)
    say(f"  loading {day_events:,} + {kept_events:,} events into each database")

    def load(name: str) -> float:
        url = urls[name]
        return (load_events(url, day_events, _utc_midnight(doomed), timedelta(days=1), f"{name}, pruned day")
                + load_events(url, kept_events, _utc_midnight(kept), timedelta(days=1), f"{name}, kept day"))

    loads = _in_parallel(load, list(urls))
    execute(urls["plain"], CHECKPOINT)
    cutoff = _utc_midnight(kept)
    say(f"  pruning {day_events:,} events of {doomed}: batched DELETE (plain), then DETACH + DROP (partitioned)")
    delete = prune_by_delete(urls["plain"], cutoff)
    execute(urls["partitioned"], CHECKPOINT)
    drop = prune_by_drop(urls["partitioned"], cutoff)
    for result in (delete, drop):
        if result["rows_deleted"] != day_events or result["rows_left"] != kept_events:
            raise BenchError(f"pruning removed {result['rows_deleted']:,} rows, kept {result['rows_left']:,}: "
                             f"expected {day_events:,} and {kept_events:,}")
    ratio = delete["seconds_with_vacuum"] / max(drop["seconds"], 1e-6)
    say(f"    DELETE {delete['delete_seconds']:.1f} s + VACUUM {delete['vacuum_seconds']:.1f} s; "
        f"DETACH + DROP {drop['seconds'] * 1000:.0f} ms ({ratio:,.0f}x)")
    # the drains start from the same history on both sides: the kept day goes (a worker's
    # maintenance would drop it on one side only)
    execute(urls["partitioned"], DROP_PARTITIONS, {"cutoff": cutoff + timedelta(days=1)})
    for url in urls.values():
        execute(url, EMPTY_EVENTS)
    return {"day_events": day_events, "kept_events": kept_events, "load_seconds": loads,
            "batched_delete": delete, "drop_partition": drop, "delete_and_vacuum_over_drop": ratio}


# -- the claim / complete path with history -----------------------------------------------------


def drain(url: str, count: int, log_dir: Path, label: str) -> float:
    """One drain of `count` no-op jobs by one fresh worker process, after a CHECKPOINT."""
    execute(url, EMPTY_JOBS)
    execute(url, FORGET_WORKERS)
    execute(url, CHECKPOINT)
    # maintenance once, at the worker's start: the drain measures the claim / complete path
    with WorkerProcesses(url, 1, log_dir, env={"PGQUEUE_MAINTENANCE_SECONDS": "3600"}) as workers:
        workers.wait_ready()
        asyncio.run(_enqueue_and_analyze(url, count))
        wait_for_jobs(url, workers, "bench_noop", count, label, timeout=max(120.0, count / 100))
    total, seconds, *_ = execute(url, BENCH_DRAIN_STATS, {"kind": "bench_noop"})[0]
    rate = float(total / seconds)
    say(f"    {label}: {rate:,.0f} jobs/s")
    return rate


def _median_ms(run: Callable[[], Any], samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def replay_ms(url: str, samples: int) -> dict[str, float]:
    """The SSE replay statements from a recent position (the last 10,000 events), median ms."""
    newest = execute(url, MAX_EVENT_ID)[0][0] or 0
    after = max(newest - 10_000, 0)
    with _connect(url) as conn:
        job_id = conn.execute("SELECT job_id FROM pgqueue.events WHERE id > %(after)s ORDER BY id LIMIT 1",
                              {"after": after}).fetchone()
        params = {"job_id": job_id[0] if job_id else 1, "after_id": after}
        return {"job_events_after_id": _median_ms(lambda: conn.execute(REPLAY_JOB, params).fetchall(), samples),
                "events_after_id": _median_ms(lambda: conn.execute(REPLAY_ALL, params).fetchall(), samples)}


def with_history(urls: dict[str, str], history_events: int, jobs: int, rounds: int, log_dir: Path) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    week_ago = today - timedelta(days=7)
    partitions_for(urls["partitioned"], week_ago, 7)
    say(f"  loading {history_events:,} events of history (the week before today) into each database")

    def load(name: str) -> float:
        seconds = load_events(urls[name], history_events, _utc_midnight(week_ago), timedelta(days=7),
                              f"{name}, history")
        execute(urls[name], VACUUM_EVENTS)
        return seconds

    loads = _in_parallel(load, list(urls))
    history = {name: execute(url, EVENTS_COUNT)[0][0] for name, url in urls.items()}
    rates: dict[str, list[float]] = {"partitioned": [], "plain": []}
    say(f"  drains of {jobs:,} jobs by a fresh worker process, {rounds} rounds, taking turns")
    for index in range(rounds):
        order = ["partitioned", "plain"] if index % 2 == 0 else ["plain", "partitioned"]
        for name in order:
            rates[name].append(drain(urls[name], jobs, log_dir, f"{name}, round {index + 1}/{rounds}"))
    ratio = statistics.median(rates["partitioned"]) / statistics.median(rates["plain"])
    say(f"    partitioned: {ratio:.0%} of the plain table's drain (medians of {rounds})")
    replay = {name: replay_ms(url, REPLAY_SAMPLES) for name, url in urls.items()}
    say(f"    replay (median ms): {replay}")
    return {"history_events": history,
            "load_seconds": loads, "jobs": jobs, "rounds": rounds,
            "drain_jobs_per_s": {name: _spread(values) for name, values in rates.items()},
            "partitioned_over_plain": ratio, "replay_median_ms": replay}


# -- the command --------------------------------------------------------------------------------


@contextmanager
def _server(url: str | None, work_dir: Path) -> Iterator[str]:
    if url:
        yield url
        return
    from pgqueue.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(work_dir / "pg", fast=False)
    say(f"starting an embedded PostgreSQL (durable settings) in {work_dir}")
    server.start()
    try:
        # room for the history's WAL between checkpoints (the default 1GB checkpoints every few
        # seconds while loading, each followed by full-page writes), as a server keeping years would
        execute(server.url, SERVER_WAL_ROOM)
        execute(server.url, RELOAD_CONF)
        yield server.url
    finally:
        server.destroy()


def run(*, server_url: str | None, day_events: int, kept_events: int, history_events: int, jobs: int,
        rounds: int) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="pgqueue-bench-history-"))
    log_dir = work_dir / "logs"
    log_dir.mkdir()
    try:
        with _server(server_url, work_dir) as url:
            urls = prepare_databases(url)
            [(version, fsync, wal)] = execute(url, SERVER_SETTINGS)
            result: dict[str, Any] = {"server": {"postgres": version, "fsync": fsync, "max_wal_size": wal},
                                      "load_average_before": list(os.getloadavg())}
            say("pruning one day")
            result["pruning"] = pruning(urls, day_events, kept_events)
            say("the claim / complete path with history")
            result["with_history"] = with_history(urls, history_events, jobs, rounds, log_dir)
            result["load_average_after"] = list(os.getloadavg())
            for name in urls:
                execute(url, f"DROP DATABASE IF EXISTS history_{name} WITH (FORCE)")
            return result
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgqueue.bench_history", description=__doc__.split("\n")[0])
    parser.add_argument("--server-url", help="a throwaway server (two databases are created on it); "
                                             "default: an embedded one")
    parser.add_argument("--day-events", type=int, default=10_000_000, help="events of the day pruned")
    parser.add_argument("--kept-events", type=int, default=1_000_000, help="events of the next day, kept")
    parser.add_argument("--history-events", type=int, default=50_000_000, help="events in the table during drains")
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per drain")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--output", help="bench-results.json to write the 'history' section into")
    args = parser.parse_args(argv)
    from pgqueue.bench import write_section

    result = run(server_url=args.server_url, day_events=args.day_events, kept_events=args.kept_events,
                 history_events=args.history_events, jobs=args.jobs, rounds=args.rounds)
    result["command"] = " ".join(["python -m pgqueue.bench_history", *(sys.argv[1:] if argv is None else argv)])
    if args.output:
        write_section(args.output, "history", result)
    pruning_result, history = result["pruning"], result["with_history"]
    print(f"prune a day of {pruning_result['day_events']:,} events: batched DELETE "
          f"{pruning_result['batched_delete']['delete_seconds']:.1f} s + VACUUM "
          f"{pruning_result['batched_delete']['vacuum_seconds']:.1f} s, DETACH + DROP "
          f"{pruning_result['drop_partition']['seconds'] * 1000:.0f} ms")
    print(f"drain of {history['jobs']:,} jobs with {history['history_events']['partitioned']:,} events of history: "
          f"partitioned {history['drain_jobs_per_s']['partitioned']['median']:,.0f} jobs/s, plain "
          f"{history['drain_jobs_per_s']['plain']['median']:,.0f} jobs/s "
          f"({history['partitioned_over_plain']:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
