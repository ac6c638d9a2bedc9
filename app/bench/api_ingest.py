"""API-ingest bench: ``python -m app bench-api-ingest [--output bench-results.json]``.

Against the local simulator (app/bench/api_simulator.py, its own process, events encoded once at
start so it is not the bottleneck), each run in a fresh process, median and spread of
``--rounds`` rounds:

1. unlimited: ``--events`` (1,000,000) events, no faults, cursor mode, page ``--page-size``:
   - the job: a sync enqueued with the default config (three pages written at once, each in
     its own transaction, committed in page order), one ``python -m pgqueue worker --app
     app.jobs`` process runs it; events/s timed by the database from the job's start to its end;
   - the bare loop (``python -m app.bench.api_ingest bare``): the same per-row work (the same
     client and page decoding with timestamps normalised, COPY into staging, the dedup insert
     into a logged target with its primary key, a commit per page), the next page fetched while
     the last is written, on one connection, without the job (no lease, checkpoint, counts,
     progress): the ceiling a job is compared with.
2. paced: a rate limit of ``--rate`` requests/s, page ``--page-size``, ``--fault-rate`` (1 %) of
   requests failing (500, 503 HTML, dropped, truncated, invalid JSON), cursor mode:
   events/s as a fraction of rate x page size; lost and duplicated rows counted against the
   simulator's ids.
3. memory: ``--memory-events`` (3,000,000; 0 skips) events through a fresh worker process; its
   peak resident memory (``ru_maxrss`` from ``wait4``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from app.bench_ingest import run_worker_until_finished
from pgqueue.bench import say, write_section

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TARGET_EVENTS_PER_S = 100_000
TARGET_SHARE_OF_BARE = 0.70
TARGET_SHARE_OF_LIMIT = 0.90
BENCH_FAULTS = "500,503,drop,truncate,badjson"


def _env(url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGQUEUE_", "APP_"))}
    env.update(PGQUEUE_DATABASE_URL=url, PYTHONUNBUFFERED="1")
    return env


def _query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


class Simulator:
    """The simulator in a process of its own."""

    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "app.bench.api_simulator", "--port", "0",
                                         "--pregenerate", *flags], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "simulated API at" not in line:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = line.split(" at ", 1)[1].split()[0]
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep its pipe drained

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class CpuMeter:
    """CPU seconds of the simulator and of the whole PostgreSQL server (postmaster and every
    child: backends, WAL writer, checkpointer; sampled every 50 ms so backends that exit are
    counted up to their last sample) between ``start()`` and ``stop()``. Linux /proc and a
    server on this machine only; the figures are None otherwise."""

    def __init__(self, url: str, simulator_pid: int) -> None:
        self.simulator_pid = simulator_pid
        self.postmaster: int | None = None
        with contextlib.suppress(Exception):
            ((data_dir,),) = _query(url, "SELECT current_setting('data_directory')")
            self.postmaster = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _server_pids(self) -> list[int]:
        assert self.postmaster is not None
        pids = [self.postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == self.postmaster:
                        pids.append(int(entry))
        return pids

    def _sample(self, first: bool = False) -> None:
        while True:
            for pid in self._server_pids() if self.postmaster else []:
                if (value := self._cpu(pid)) is not None:
                    self.last[pid] = value
                    self.first.setdefault(pid, value if first else 0.0)
            if first or self.stopping.wait(0.05):
                return

    def start(self) -> CpuMeter:
        self.simulator_start = self._cpu(self.simulator_pid)
        self._sample(first=True)
        self.thread.start()
        return self

    def stop(self) -> dict[str, float | None]:
        self.stopping.set()
        self.thread.join()
        simulator = self._cpu(self.simulator_pid)
        postgres = sum(self.last[pid] - self.first[pid] for pid in self.last) if self.postmaster else None
        return {"simulator_cpu_s": None if simulator is None or self.simulator_start is None
                else round(simulator - self.simulator_start, 2),
                "postgres_cpu_s": None if postgres is None else round(postgres, 2)}


def _per_event(cpu: dict[str, float | None], events: int) -> dict[str, float | None]:
    """CPU microseconds per event of each process, and the rate two cores could give at most."""
    out = {name.replace("_cpu_s", "_us_per_event"): None if value is None else round(value * 1e6 / events, 2)
           for name, value in cpu.items()}
    if all(value is not None for value in cpu.values()):
        total = sum(value for value in cpu.values() if value is not None)
        out["total_us_per_event"] = round(total * 1e6 / events, 2)
        out["two_core_bound_events_per_s"] = round(2 * events / total) if total else None
    return out


def _fresh_target(url: str, target: str) -> None:
    _query(url, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("app", target)))
    _query(url, "DELETE FROM app.api_syncs WHERE target = %s", [target])


async def _enqueue(url: str, config: dict[str, Any]) -> tuple[int, list[int]]:
    import msgspec

    from app.jobs import jobs
    from app.kinds.api_ingest import SourceConfig, create_sync
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, jobs, max_size=2)
    try:
        return await create_sync(queue, msgspec.convert(config, SourceConfig))
    finally:
        await queue.close()


def run_job(url: str, config: dict[str, Any], log_dir: Path, simulator: Simulator | None = None) -> dict[str, Any]:
    """One sync through a fresh worker process: events/s between the job's start and end, peak RSS,
    and (given the simulator) the CPU each process used per event."""
    _fresh_target(url, config["target"])
    sync_id, (job_id,) = asyncio.run(_enqueue(url, config))
    meter = CpuMeter(url, simulator.process.pid).start() if simulator is not None else None
    usage = run_worker_until_finished(url, job_id, "api_ingest", _env(url), log_dir / f"worker-{job_id}.log")
    cpu = meter.stop() if meter is not None else {}
    ((status, seconds, error),) = _query(url, "SELECT status, extract(epoch FROM finished_at - started_at), "
                                              "last_error FROM pgqueue.jobs WHERE id = %s", [job_id])
    if status != "succeeded":
        raise RuntimeError(f"api_ingest job {job_id} ended {status}: {error}")
    ((events, inserted, retries, limited),) = _query(
        url, "SELECT events, inserted, retries, rate_limited FROM app.api_sync_parts WHERE sync_id = %s", [sync_id])
    seconds = float(seconds)
    result = {"seconds": round(seconds, 3), "events": events, "inserted": inserted, "retries": retries,
              "rate_limited": limited, "events_per_s": round(inserted / seconds),
              "worker_peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if cpu:
        # the worker's figure includes its start-up (imports, connecting): about a second
        cpu["worker_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
        result["cpu"] = _per_event(cpu, events)
    return result


def run_bare(url: str, simulator: Simulator, page_size: int) -> dict[str, Any]:
    meter = CpuMeter(url, simulator.process.pid).start()
    process = subprocess.Popen([sys.executable, "-m", "app.bench.api_ingest", "bare", "--url", simulator.url,
                                "--page-size", str(page_size)], cwd=REPO_ROOT, env=_env(url), stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = meter.stop()
    if process.returncode != 0:
        raise RuntimeError(f"the bare loop exited with {process.returncode}")
    seconds, events = output.split()
    cpu["loop_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    return {"seconds": round(float(seconds), 3), "events": int(events),
            "events_per_s": round(int(events) / float(seconds)), "cpu": _per_event(cpu, int(events))}


def bare_loop(database_url: str, api_url: str, page_size: int) -> tuple[float, int]:
    """The same per-row work as the job, without the job: fetch every page with the same client
    and decoder (timestamps normalised), and per page, on one connection, the job's own
    statements: binary COPY into the staging table, the DISTINCT ON / ON CONFLICT insert into a
    target shaped like the job's, commit; the next page is fetched meanwhile. No lease check,
    no checkpoint, no counts, no progress, one transaction at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from app.kinds.api_ingest import PageReader, PartSpec, SourceConfig, check_config, statement

    target = "bench_bare"
    cfg = check_config(SourceConfig(url=api_url + "/events", source="bare", target=target, page_size=page_size))
    reader = PageReader(cfg, PartSpec())
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("app", target)))
        conn.execute(statement("create_target", target))
        conn.execute(statement("create_stage"))
        conn.commit()
        started = time.monotonic()
        events = 0
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(reader.cursor_page, None)
            while True:
                page = future.result()
                if page.more:
                    future = pool.submit(reader.cursor_page, page.next_cursor)
                with conn.cursor().copy(statement("copy_stage")) as copy:
                    copy.write(page.stage)
                events += conn.execute(statement("insert_from_stage", target), {"source": "bare"}).rowcount
                conn.commit()
                if not page.more:
                    break
        seconds = time.monotonic() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("app", target)))
        conn.commit()
    reader.close()
    return seconds, events


def check_against_simulator(url: str, target: str, events: int) -> dict[str, int]:
    """Lost and duplicated ids (the simulator's ids are ev-<seed>-<seq>-<hash>; seed 1)."""
    ((count, distinct, lowest, highest),) = _query(url, sql.SQL(
        "SELECT count(*), count(DISTINCT id), min(split_part(id, '-', 3)::int), max(split_part(id, '-', 3)::int) "
        "FROM {}").format(sql.Identifier("app", target)))
    return {"rows": count, "lost": events - distinct, "duplicated": count - distinct,
            "seq_range_ok": int(lowest == 0 and highest == events - 1)}


def _median_cpu(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    names = {name for run in runs for name in run.get("cpu", {})}
    out: dict[str, float | None] = {}
    for name in sorted(names):
        values = [run["cpu"][name] for run in runs if run.get("cpu", {}).get(name) is not None]
        out[name] = round(statistics.median(values), 2) if values else None
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["events_per_s"] for r in runs]
    return {"median_events_per_s": round(statistics.median(rates)), "min": min(rates), "max": max(rates),
            "rounds": runs}


def run_api_ingest_bench(database_url: str | None, *, events: int, page_size: int, rate: float, paced_seconds: float,
                         fault_rate: float, memory_events: int, rounds: int) -> dict[str, Any]:
    import tempfile

    from pgqueue.bench import database
    from pgqueue.migrate import migrate

    load_before = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-api-bench-"))
    result: dict[str, Any] = {}
    with database(database_url) as url:
        migrate(url)
        say(f"simulator with {events:,} events ...")
        sim = Simulator("--events", str(events), "--page-max", str(page_size))
        try:
            base = {"url": sim.url + "/events", "source": "bench", "target": "bench_events", "page_size": page_size}
            job_runs, bare_runs = [], []
            for number in range(rounds):
                job_runs.append(run_job(url, base, log_dir, sim))
                say(f"  job round {number + 1}: {job_runs[-1]['events_per_s']:,} events/s")
                bare_runs.append(run_bare(url, sim, page_size))
                say(f"  bare loop round {number + 1}: {bare_runs[-1]['events_per_s']:,} events/s")
            check = check_against_simulator(url, "bench_events", events)
        finally:
            sim.stop()
        job, bare = _summary(job_runs), _summary(bare_runs)
        share = job["median_events_per_s"] / bare["median_events_per_s"]
        result["unlimited"] = {"events": events, "page_size": page_size, "job": job, "bare_loop": bare,
                               "share_of_bare": round(share, 3), "check": check,
                               "cpu_us_per_event": {"job": _median_cpu(job_runs), "bare_loop": _median_cpu(bare_runs)},
                               "meets_target": job["median_events_per_s"] >= TARGET_EVENTS_PER_S
                               and share >= TARGET_SHARE_OF_BARE}

        paced_events = int(rate * page_size * paced_seconds)
        say(f"paced: {rate:g} requests/s x {page_size} per page, {fault_rate:.0%} faults, {paced_events:,} events ...")
        sim = Simulator("--events", str(paced_events), "--page-max", str(page_size), "--rate", str(rate),
                        "--fault-rate", str(fault_rate), "--faults", BENCH_FAULTS, "--penalty", "1")
        try:
            paced_runs = []
            for number in range(rounds):
                paced_runs.append(run_job(url, {**base, "url": sim.url + "/events", "target": "bench_paced"}, log_dir))
                paced_runs[-1]["check"] = check_against_simulator(url, "bench_paced", paced_events)
                paced_runs[-1]["share_of_limit"] = round(paced_runs[-1]["events_per_s"] / (rate * page_size), 3)
                say(f"  round {number + 1}: {paced_runs[-1]['events_per_s']:,} events/s = "
                    f"{paced_runs[-1]['share_of_limit']:.1%} of the limit; {paced_runs[-1]['rate_limited']} 429s, "
                    f"lost {paced_runs[-1]['check']['lost']}, duplicated {paced_runs[-1]['check']['duplicated']}")
        finally:
            sim.stop()
        paced = _summary(paced_runs)
        shares = [r["share_of_limit"] for r in paced_runs]
        result["paced"] = {"rate_limit_rps": rate, "page_size": page_size, "limit_events_per_s": rate * page_size,
                           "fault_rate": fault_rate, "faults": BENCH_FAULTS.split(","), "events": paced_events,
                           **paced, "median_share_of_limit": statistics.median(shares),
                           "lost": sum(r["check"]["lost"] for r in paced_runs),
                           "duplicated": sum(r["check"]["duplicated"] for r in paced_runs),
                           "meets_target": statistics.median(shares) >= TARGET_SHARE_OF_LIMIT
                           and all(r["check"]["lost"] == 0 and r["check"]["duplicated"] == 0 for r in paced_runs)}

        if memory_events:
            say(f"memory: {memory_events:,} events through a fresh worker ...")
            sim = Simulator("--events", str(memory_events), "--page-max", str(page_size))
            try:
                run = run_job(url, {**base, "url": sim.url + "/events", "target": "bench_memory"}, log_dir)
                run["check"] = check_against_simulator(url, "bench_memory", memory_events)
            finally:
                sim.stop()
            say(f"  peak RSS {run['worker_peak_rss_mib']:.0f} MiB ({run['events_per_s']:,} events/s)")
            result["memory"] = {"events": memory_events, **run}
        for target in ("bench_events", "bench_paced", "bench_memory"):
            _fresh_target(url, target)
    result["targets"] = {"events_per_s": TARGET_EVENTS_PER_S, "share_of_bare": TARGET_SHARE_OF_BARE,
                         "share_of_limit": TARGET_SHARE_OF_LIMIT}
    result["machine"] = {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before]}
    return result


def render(result: dict[str, Any]) -> str:
    un, paced = result["unlimited"], result["paced"]
    rows = [
        (f"job, {un['events']:,} events, unlimited", f"{un['job']['median_events_per_s']:,} events/s "
         f"(min {un['job']['min']:,}, max {un['job']['max']:,})"),
        ("bare loop (same per-row work, no job)", f"{un['bare_loop']['median_events_per_s']:,} events/s "
         f"(min {un['bare_loop']['min']:,}, max {un['bare_loop']['max']:,})"),
        ("job / bare loop", f"{un['share_of_bare']:.0%}  targets >= 100,000/s and >= 70%: "
         f"{'met' if un['meets_target'] else 'NOT met'}"),
        (f"paced {paced['rate_limit_rps']:g} req/s x {paced['page_size']}, {paced['fault_rate']:.0%} faults",
         f"{paced['median_events_per_s']:,} events/s = {paced['median_share_of_limit']:.1%} of the limit, "
         f"lost {paced['lost']}, duplicated {paced['duplicated']}; target >= 90%: "
         f"{'met' if paced['meets_target'] else 'NOT met'}"),
    ]
    for name, cpu in un.get("cpu_us_per_event", {}).items():
        if cpu.get("total_us_per_event") is not None:
            rows.append((f"CPU per event, {name.replace('_', ' ')}",
                         f"{cpu.get('simulator_us_per_event')} us simulator + {cpu.get('postgres_us_per_event')} us "
                         f"PostgreSQL + {cpu.get('worker_us_per_event', cpu.get('loop_us_per_event'))} us Python = "
                         f"{cpu['total_us_per_event']} us: two cores give at most "
                         f"{cpu['two_core_bound_events_per_s']:,} events/s"))
    if "memory" in result:
        rows.append((f"worker peak RSS, {result['memory']['events']:,} events",
                     f"{result['memory']['worker_peak_rss_mib']:.0f} MiB"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["API ingest (local simulator, cursor mode)", ""]
                     + [f"  {label.ljust(width)}  {value}" for label, value in rows])


def main(args: argparse.Namespace) -> int:
    from pgqueue.config import Settings

    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    quick = args.quick
    result = run_api_ingest_bench(url, events=100_000 if quick else args.events, page_size=args.page_size,
                                  rate=args.rate, paced_seconds=5 if quick else args.paced_seconds,
                                  fault_rate=args.fault_rate, memory_events=0 if quick else args.memory_events,
                                  rounds=1 if quick else args.rounds)
    print(render(result))
    if args.output:
        write_section(args.output, "api_ingest", result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded PostgreSQL)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the unlimited run")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s of the paced run")
    parser.add_argument("--paced-seconds", type=float, default=20.0, help="length of the paced run at the limit")
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--memory-events", type=int, default=3_000_000, help="events of the memory run (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 events, one round, no memory run")
    parser.add_argument("--output", default="bench-results.json",
                        help="JSON file to add an 'api_ingest' section to ('' to skip)")


if __name__ == "__main__":  # the bare loop, in a process of its own
    bare = argparse.ArgumentParser()
    bare.add_argument("mode", choices=["bare"])
    bare.add_argument("--url", required=True)
    bare.add_argument("--page-size", type=int, default=1000)
    options = bare.parse_args()
    took, count = bare_loop(os.environ["PGQUEUE_DATABASE_URL"], options.url, options.page_size)
    print(f"{took:.6f} {count}")
