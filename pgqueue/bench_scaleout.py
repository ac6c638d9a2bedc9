"""`python -m pgqueue.bench_scaleout`: past one box (README, "Past one box").

- The drain through PgBouncer in transaction-pooling mode against the direct drain, in the same
  run: a fresh worker process per drain (`python -m pgqueue worker`, concurrency 100), the two
  routes taking turns, median and spread of the rounds, and the ratio of the medians.
- The lag a reader of a streaming replica sees while a worker drains the primary: samples of
  pg_stat_replication.replay_lag (on the primary) and of now() - pg_last_xact_replay_timestamp()
  (on the replica) every 20 ms during the drain.

Without --database-url it starts a throwaway embedded server with durable settings (fsync and
synchronous_commit on), a PgBouncer in front of it and a replica beside it; with a URL it
measures PgBouncer only (the replica needs the embedded primary's data directory).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgqueue.bench import (
    BenchError,
    WorkerProcesses,
    check_database,
    drain_once,
    execute,
    percentile,
    reset_engine,
    say,
    write_section,
)
from pgqueue.config import Settings
from pgqueue.embedded import EmbeddedPostgres
from pgqueue.errors import ConfigError
from pgqueue.scaleout import EmbeddedPgBouncer, EmbeddedReplica, find_pgbouncer

ROUNDS = (3, 1)  # full, --quick
PGBOUNCER_POOL_SIZE = 20  # server connections per database: fewer than the worker's 22 clients
LAG_SAMPLE_SECONDS = 0.02

# Bench-only statements (like those of pgqueue/bench.py, deliberately not in queries.sql).
BENCH_PRIMARY_LAG = """
SELECT coalesce(extract(epoch FROM replay_lag)::float8, 0), pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8
FROM pg_stat_replication
"""
BENCH_REPLICA_STALENESS = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
BENCH_SERVER_SETTINGS = """
SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')
"""
BENCH_WAL_POSITION = "SELECT pg_current_wal_lsn()::text"
BENCH_WAL_BYTES_SINCE = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %(since)s::pg_lsn)::float8"


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def _drain(url: str, worker_url: str, direct_url: str, count: int, log_dir: Path, label: str) -> dict[str, Any]:
    """One drain of `count` jobs by one fresh worker process that reaches the database at `worker_url`."""
    env = {"PGQUEUE_DIRECT_DATABASE_URL": direct_url}
    with WorkerProcesses(worker_url, 1, log_dir, env=env) as workers:
        workers.wait_ready()
        return drain_once(url, count, workers, label)


def pgbouncer_drains(url: str, pooled_url: str, count: int, rounds: int, log_dir: Path) -> dict[str, Any]:
    direct: list[float] = []
    pooled: list[float] = []
    for index in range(rounds):
        # the routes take turns, the first one alternating, so neither always runs on a warmer server
        order = [("direct", url), ("pgbouncer", pooled_url)]
        for name, worker_url in order if index % 2 == 0 else reversed(order):
            drain = _drain(url, worker_url, url, count, log_dir, f"drain {name}, round {index + 1}/{rounds}")
            (direct if name == "direct" else pooled).append(drain["jobs_per_s"])
    ratio = statistics.median(pooled) / statistics.median(direct)
    say(f"    through PgBouncer: {ratio:.0%} of the direct drain (medians of {rounds})")
    return {"jobs": count, "worker_concurrency": 100, "pgbouncer_pool_size": PGBOUNCER_POOL_SIZE,
            "direct_jobs_per_s": _spread(direct), "pgbouncer_jobs_per_s": _spread(pooled),
            "ratio_of_medians": ratio}


class LagSampler(threading.Thread):
    """Samples the replica's lag every LAG_SAMPLE_SECONDS until stopped."""

    def __init__(self, primary_url: str, replica_url: str) -> None:
        super().__init__(daemon=True, name="lag-sampler")
        self.primary_url = primary_url
        self.replica_url = replica_url
        self.stopping = threading.Event()
        self.replay_lag_s: list[float] = []
        self.bytes_behind: list[float] = []
        self.staleness_s: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from pgqueue.db import connect_sync

        try:
            with connect_sync(self.primary_url, autocommit=True) as primary, \
                    connect_sync(self.replica_url, autocommit=True) as replica:
                while not self.stopping.wait(LAG_SAMPLE_SECONDS):
                    for lag, behind in primary.execute(BENCH_PRIMARY_LAG).fetchall():
                        self.replay_lag_s.append(lag)
                        self.bytes_behind.append(behind or 0.0)
                        # a reader of a replica that replayed everything sees everything; one
                        # behind sees the primary as of the last commit it replayed
                        [(stale,)] = replica.execute(BENCH_REPLICA_STALENESS).fetchall() if behind else [(0.0,)]
                        self.staleness_s.append(stale or 0.0)
        except BaseException as exc:
            self.error = exc


def _summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50_ms": percentile(values, 0.5) * 1000, "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": max(values) * 1000, "samples": len(values)}


def replica_lag(url: str, replica_url: str, count: int, log_dir: Path) -> dict[str, Any]:
    """The replica's lag while one fresh worker process drains `count` jobs from the primary."""
    sampler = LagSampler(url, replica_url)
    env = {"PGQUEUE_DIRECT_DATABASE_URL": url}
    with WorkerProcesses(url, 1, log_dir, env=env) as workers:
        workers.wait_ready()
        [(since,)] = execute(url, BENCH_WAL_POSITION)
        sampler.start()
        try:
            drain = drain_once(url, count, workers, "drain with a replica streaming")
        finally:
            sampler.stopping.set()
            sampler.join(10)
    if sampler.error is not None:
        raise BenchError(f"lag sampling failed: {sampler.error}")
    [(wal_bytes,)] = execute(url, BENCH_WAL_BYTES_SINCE, {"since": since})
    result = {
        "jobs": count, "drain_jobs_per_s": drain["jobs_per_s"], "wal_bytes_per_job": wal_bytes / count,
        "replay_lag": _summary_ms(sampler.replay_lag_s),
        "replica_staleness": _summary_ms(sampler.staleness_s),
        "bytes_behind": {"p50": percentile(sampler.bytes_behind, 0.5), "max": max(sampler.bytes_behind)}
        if sampler.bytes_behind else {},
    }
    lag = result["replay_lag"]
    if lag:
        say(f"    replay lag during the drain: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
            f"max {lag['max_ms']:.1f} ms")
    return result


@contextmanager
def _servers(url: str | None, work_dir: Path, with_replica: bool) -> Iterator[tuple[str, EmbeddedReplica | None]]:
    if url:
        yield url, None
        return
    primary = EmbeddedPostgres(work_dir / "primary", fast=False)
    say(f"starting an embedded PostgreSQL (durable settings) in {work_dir}")
    primary.start()
    replica = None
    try:
        if with_replica:
            replica = EmbeddedReplica(primary, work_dir / "replica").start()
        yield primary.url, replica
    finally:
        if replica is not None:
            replica.stop()
        primary.destroy()


def run(url: str | None, jobs: int, quick: bool) -> dict[str, Any]:
    from pgqueue.migrate import migrate

    if find_pgbouncer() is None:
        raise ConfigError("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    rounds = ROUNDS[1 if quick else 0]
    work_dir = Path(tempfile.mkdtemp(prefix="pgqueue-bench-scaleout-"))
    log_dir = work_dir / "logs"
    log_dir.mkdir()
    result: dict[str, Any] = {"rounds": rounds}
    try:
        with _servers(url, work_dir, with_replica=True) as (server_url, replica):
            migrate(server_url)
            check_database(server_url)
            [(version, fsync, synchronous_commit)] = execute(server_url, BENCH_SERVER_SETTINGS)
            result["server"] = {"postgres": version, "fsync": fsync, "synchronous_commit": synchronous_commit}
            bouncer = EmbeddedPgBouncer(server_url, work_dir / "pgbouncer", pool_size=PGBOUNCER_POOL_SIZE).start()
            try:
                say(f"drains of {jobs:,} jobs, direct and through PgBouncer (transaction pooling), {rounds} rounds")
                result["pgbouncer"] = pgbouncer_drains(server_url, bouncer.url_for(server_url), jobs, rounds,
                                                       log_dir)
            finally:
                bouncer.stop()
            if replica is not None:
                say(f"a drain of {jobs:,} jobs with a streaming replica, sampling its lag")
                result["replica"] = replica_lag(server_url, replica.url_for(server_url), jobs, log_dir)
            reset_engine(server_url)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def render(result: dict[str, Any]) -> str:
    pgb = result["pgbouncer"]
    lines = [
        f"past one box: {pgb['jobs']:,} jobs, fresh worker process per drain (concurrency 100), "
        f"median of {result['rounds']}",
        f"  drain direct            {pgb['direct_jobs_per_s']['median']:>10,.0f} jobs/s "
        f"(min {pgb['direct_jobs_per_s']['min']:,.0f}, max {pgb['direct_jobs_per_s']['max']:,.0f})",
        f"  drain through PgBouncer {pgb['pgbouncer_jobs_per_s']['median']:>10,.0f} jobs/s "
        f"(min {pgb['pgbouncer_jobs_per_s']['min']:,.0f}, max {pgb['pgbouncer_jobs_per_s']['max']:,.0f})",
        f"  PgBouncer / direct      {pgb['ratio_of_medians']:>10.0%}",
    ]
    if rep := result.get("replica"):
        lag, stale = rep["replay_lag"], rep["replica_staleness"]
        lines.append(f"  replica replay lag during a {rep['drain_jobs_per_s']:,.0f} jobs/s drain: "
                     f"p50 {lag.get('p50_ms', 0):.1f} ms, p99 {lag.get('p99_ms', 0):.1f} ms, "
                     f"max {lag.get('max_ms', 0):.1f} ms; staleness on the replica p99 "
                     f"{stale.get('p99_ms', 0):.1f} ms; {rep['wal_bytes_per_job']:,.0f} WAL bytes per job")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgqueue.bench_scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded server)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="one round of at most 2,000 jobs")
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args(argv)
    jobs = min(args.jobs, 2000) if args.quick else args.jobs
    if jobs < 10:
        raise SystemExit("--jobs must be at least 10")
    url = Settings.from_env(database_url=args.database_url).database_url
    result = run(url, jobs, args.quick)
    print(render(result))
    if args.output:
        write_section(args.output, "scaleout", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
