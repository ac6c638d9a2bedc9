"""The drain rows of `python -m pgqueue bench`, measured the way a user meets the worker.

Every drain starts a fresh `python -m pgqueue worker` process (or two), after a CHECKPOINT, and
is set side by side with a no-library SKIP LOCKED loop (batches of 100, one commit each) drained
from the same table state in the same round. Rounds take turns (raw, 1 process, 2 processes), and
every figure is the median of the rounds with its range: never only the best.

The workers start on a paused queue, the jobs are committed and the CHECKPOINT written, and the
queue is resumed: so what is counted (the server's clock from the first claim to the last
completion, the CPU of every Postgres process, WAL bytes) is the drain alone, not the workers'
start-up nor the enqueue.

Postgres CPU is read from /proc (the postmaster, its live children, and the children it reaped
since), less the backend of the bench's own connection: it is None when the server is not on
this host. The bench watches the drain (progress, WAL position, the resume) through that one
connection, opened before the drain: a connection per look would bill the drain for about 10 ms
of backend start-up per look (5 us per job at 20,000 jobs), and the raw loop pays none. For the
same reason the progress poll runs without parallel workers, and seldom (bench.wait_for_jobs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgqueue.sql import QUERIES

SIZES = (20_000, 200_000)
QUICK_SIZES = (2_000,)
ROUNDS = 3
PROCESSES = (1, 2)
TARGET_VS_RAW = 0.7
TARGET_PG_CPU_US_PER_JOB = 20.0

# the engine's own pause/resume (its NOTIFY on pgqueue_control wakes the workers at the resume)
PAUSE = QUERIES["set_queue_paused"].sql
FORGET_QUEUE = "DELETE FROM pgqueue.queues WHERE name = %(queue)s"
BACKEND_PID = "SELECT pg_backend_pid()"
WAL_POSITION = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"

Execute = Callable[..., list[tuple[Any, ...]]]


# -- Postgres CPU, from /proc ---------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


class ServerCpu:
    """CPU seconds of one local PostgreSQL server: the postmaster's own and its reaped children's
    (utime, stime, cutime, cstime), plus every live child's utime and stime."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.tick = os.sysconf("SC_CLK_TCK")

    @classmethod
    def find(cls, url: str, execute: Execute) -> ServerCpu | None:
        backend = execute(url, BACKEND_PID)[0][0]
        fields = _stat(backend)
        if fields is None:  # not on this host
            return None
        return cls(int(fields[1]))  # the backend's parent is the postmaster

    def backend_seconds(self, pid: int) -> float:
        fields = _stat(pid)
        return float("nan") if fields is None else (int(fields[11]) + int(fields[12])) / self.tick

    def seconds(self) -> float:
        own = _stat(self.postmaster)
        if own is None:
            return float("nan")
        total = sum(int(value) for value in own[11:15])
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == self.postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / self.tick


class Meter:
    """What one drain cost: Postgres CPU, WAL bytes, and the given worker processes' CPU.

    `watch` runs the bench's own statements during a drain on the meter's one connection, whose
    backend's CPU is left out of the Postgres figure."""

    def __init__(self, url: str, server: ServerCpu | None) -> None:
        from pgqueue.db import connect_sync

        self.url, self.server = url, server
        self.conn = connect_sync(url, autocommit=True)
        # asked, not read from the connection: behind a pooler libpq only knows the pooler's pid
        self.own_pid: int = self.watch(url, BACKEND_PID)[0][0]

    def watch(self, _url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """An `Execute` on the meter's connection (the url is ignored). Without parallel workers:
        the progress poll scans the jobs table, and workers would be counted as the drain's and
        take its cores (SET LOCAL: behind a pooler a session setting would reach other clients)."""
        with self.conn.transaction():
            self.conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            cur = self.conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.conn.close()

    def snapshot(self, workers: Any = None) -> dict[str, float | None]:
        pg_cpu = None
        if self.server:
            pg_cpu = self.server.seconds() - self.server.backend_seconds(self.own_pid)
        return {"pg_cpu": pg_cpu,
                "wal": float(self.watch(self.url, WAL_POSITION)[0][0]),
                "worker_cpu": workers.cpu_seconds() if workers is not None else time.process_time()}

    @staticmethod
    def per_job(before: dict[str, float | None], after: dict[str, float | None], jobs: int) -> dict[str, float | None]:
        def delta(key: str, scale: float) -> float | None:
            a, b = before[key], after[key]
            return None if a is None or b is None else (b - a) * scale / jobs
        return {"postgres_cpu_us_per_job": delta("pg_cpu", 1e6), "wal_bytes_per_job": delta("wal", 1.0),
                "client_cpu_us_per_job": delta("worker_cpu", 1e6)}


# -- one drain each way ---------------------------------------------------------------------------


def raw_round(url: str, count: int, meter: Meter, execute: Execute) -> dict[str, Any]:
    from pgqueue.bench import (
        RAW_ANALYZE_SCRATCH,
        RAW_BATCH_SIZE,
        RAW_COPY_SCRATCH,
        RAW_RESET_SCRATCH,
        raw_copy,
        raw_loop,
    )

    execute(url, RAW_RESET_SCRATCH)
    raw_copy(url, RAW_COPY_SCRATCH, count, analyze=RAW_ANALYZE_SCRATCH)
    execute(url, "CHECKPOINT")
    marks: list[dict[str, float | None]] = []
    rate = raw_loop(url, count, RAW_BATCH_SIZE, commit_claim=False,
                    before=lambda: marks.append(meter.snapshot()), after=lambda: marks.append(meter.snapshot()))
    return {"jobs_per_s": rate, **Meter.per_job(marks[0], marks[1], count)}


def library_round(url: str, count: int, processes: int, log_dir: Path, meter: Meter, execute: Execute,
                  label: str, env: dict[str, str] | None = None,
                  concurrency: int | None = None) -> dict[str, Any]:
    from pgqueue.bench import (
        BENCH_DRAIN_STATS,
        BENCH_QUEUE,
        WORKER_CONCURRENCY,
        WorkerProcesses,
        _enqueue_and_analyze,
        reset_engine,
        wait_for_jobs,
    )

    reset_engine(url)
    execute(url, PAUSE, {"name": BENCH_QUEUE, "paused": True})
    try:
        with WorkerProcesses(url, processes, log_dir, env=env,
                             concurrency=concurrency or WORKER_CONCURRENCY) as workers:
            workers.wait_ready()
            asyncio.run(_enqueue_and_analyze(url, count))
            execute(url, "CHECKPOINT")
            time.sleep(0.3)  # the workers' idle polls of the paused queue settle
            before = meter.snapshot(workers)
            meter.watch(url, PAUSE, {"name": BENCH_QUEUE, "paused": False})
            wait_for_jobs(url, workers, "bench_noop", count, label, timeout=max(60.0, count / 200),
                          execute=meter.watch)
            after = meter.snapshot(workers)
    finally:
        execute(url, FORGET_QUEUE, {"queue": BENCH_QUEUE})
    total, seconds, claims, completions, retried = execute(url, BENCH_DRAIN_STATS, {"kind": "bench_noop"})[0]
    out = {"jobs_per_s": total / seconds, "seconds": seconds, "claims": claims, "completion_batches": completions,
           "jobs_per_claim": total / claims, "jobs_per_completion_batch": total / completions,
           "jobs_run_more_than_once": retried, **Meter.per_job(before, after, total)}
    out["worker_cpu_us_per_job"] = out.pop("client_cpu_us_per_job")
    return out


# -- the whole measurement ------------------------------------------------------------------------


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds}
    for key in rounds[0]:
        values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
        if values and key not in ("claims", "completion_batches", "jobs_run_more_than_once"):
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def measure(url: str, log_dir: Path, *, execute: Execute, say: Callable[[str], None], quick: bool = False,
            sizes: tuple[int, ...] | None = None, rounds: int | None = None,
            processes: tuple[int, ...] = PROCESSES, concurrency: int | None = None) -> dict[str, Any]:
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    rounds = rounds or (1 if quick else ROUNDS)
    meter = Meter(url, ServerCpu.find(url, execute))
    result: dict[str, Any] = {"rounds": rounds, "sizes": list(sizes), "concurrency": concurrency,
                              "method": " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " ")}
    try:
        _measure_sizes(url, log_dir, meter, result, execute=execute, say=say, sizes=sizes, rounds=rounds,
                       processes=processes, concurrency=concurrency)
    finally:
        meter.close()
    return result


def _measure_sizes(url: str, log_dir: Path, meter: Meter, result: dict[str, Any], *, execute: Execute,
                   say: Callable[[str], None], sizes: tuple[int, ...], rounds: int, processes: tuple[int, ...],
                   concurrency: int | None) -> None:
    for size in sizes:
        samples: dict[str, list[dict[str, Any]]] = {"raw": [], **{f"{p}_process": [] for p in processes}}
        for index in range(rounds):
            raw = raw_round(url, size, meter, execute)
            samples["raw"].append(raw)
            say(f"    {size:,} jobs, round {index + 1}/{rounds}: raw loop {raw['jobs_per_s']:,.0f} jobs/s, "
                f"Postgres {raw['postgres_cpu_us_per_job'] or 0:.1f} us/job")
            for p in processes:
                label = f"{size:,} jobs, {p} worker process{'es' if p > 1 else ''}, round {index + 1}/{rounds}"
                lib = library_round(url, size, p, log_dir, meter, execute, label, concurrency=concurrency)
                lib["vs_raw_same_round"] = lib["jobs_per_s"] / raw["jobs_per_s"]
                samples[f"{p}_process"].append(lib)
                say(f"    {label}: {lib['jobs_per_s']:,.0f} jobs/s ({lib['vs_raw_same_round']:.0%} of raw), "
                    f"Postgres {lib['postgres_cpu_us_per_job'] or 0:.1f} us/job, "
                    f"worker {lib['worker_cpu_us_per_job'] or 0:.1f} us/job")
        row: dict[str, Any] = {name: _summary(values) for name, values in samples.items()}
        raw_median = row["raw"]["jobs_per_s"]["median"]
        for p in processes:
            lib = row[f"{p}_process"]
            lib["vs_raw"] = lib["jobs_per_s"]["median"] / raw_median
            lib["pass"] = lib["vs_raw"] >= TARGET_VS_RAW
            pg = lib.get("postgres_cpu_us_per_job")
            lib["postgres_cpu_pass"] = None if pg is None else pg["median"] <= TARGET_PG_CPU_US_PER_JOB
        result[str(size)] = row


def _range(stat: dict[str, float], fmt: str) -> str:
    return f"{format(stat['median'], fmt)} ({format(stat['min'], fmt)}-{format(stat['max'], fmt)})"


def render_rows(drain: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for size in drain["sizes"]:
        row = drain[str(size)]
        raw = row["raw"]
        rows.append((f"  {size:,} jobs: raw SKIP LOCKED loop, batch 100", f"{raw['jobs_per_s']['median']:>12,.0f} jobs/s",
                     f"range {_range(raw['jobs_per_s'], ',.0f')}; Postgres "
                     + (_range(raw['postgres_cpu_us_per_job'], '.1f') + " us/job" if 'postgres_cpu_us_per_job' in raw else "n/a"),
                     ""))
        for key in row:
            if not key.endswith("_process"):
                continue
            lib = row[key]
            pg = lib.get("postgres_cpu_us_per_job")
            rows.append((f"  {size:,} jobs: {key.split('_')[0]} fresh worker process(es)",
                         f"{lib['jobs_per_s']['median']:>12,.0f} jobs/s",
                         f"{lib['vs_raw']:.0%} of raw, range {_range(lib['jobs_per_s'], ',.0f')}; Postgres "
                         + (_range(pg, '.1f') + " us/job" if pg else "n/a")
                         + f", worker {_range(lib['worker_cpu_us_per_job'], '.1f')} us/job",
                         f">= {TARGET_VS_RAW:g}   {'PASS' if lib['pass'] else 'MISS'}"))
    return rows


def main() -> int:
    """`python -m pgqueue.bench_drain [--database-url URL] [--sizes 20000,200000] [--rounds 3]`: the
    drain rows alone (the full bench runs them too), written to the "drain" section of --output."""
    import argparse
    import shutil
    import tempfile

    from pgqueue.bench import RAW_CREATE_SCRATCH, RAW_DROP_SCRATCH, check_database, database, say, write_section
    from pgqueue.bench import execute as run_sql
    from pgqueue.migrate import migrate

    parser = argparse.ArgumentParser(prog="python -m pgqueue.bench_drain")
    parser.add_argument("--database-url")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--processes", default=",".join(map(str, PROCESSES)))
    parser.add_argument("--concurrency", type=int, default=None, help="each worker's --concurrency (default: the bench's 100)")
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    with database(args.database_url) as url:
        migrate(url)
        check_database(url)
        run_sql(url, RAW_CREATE_SCRATCH)
        log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-bench-drain-"))
        try:
            load = os.getloadavg()
            result = measure(url, log_dir, execute=run_sql, say=say, sizes=sizes, rounds=args.rounds,
                             processes=tuple(int(n) for n in args.processes.split(",")), concurrency=args.concurrency)
            result["loadavg_before_after"] = [load[0], os.getloadavg()[0]]
        finally:
            run_sql(url, RAW_DROP_SCRATCH)
            shutil.rmtree(log_dir, ignore_errors=True)
    for row in render_rows(result):
        print("  ".join(row).rstrip())
    print(f"load {result['loadavg_before_after'][0]:.1f} -> {result['loadavg_before_after'][1]:.1f}")
    if args.output:
        write_section(args.output, "drain" if args.concurrency is None else f"drain_concurrency_{args.concurrency}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
