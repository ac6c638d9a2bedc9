"""Ingest bench: `python -m app bench-ingest` or `run_ingest_bench(url)`.

1. Rate: a generated 1,000,000-line .jsonl file (about 175 MB) is put in local storage, its
   ``ingest_file`` job enqueued, and one worker process (``python -m pgqueue worker --app
   app.jobs``, delay off, default batch size) ingests it. Lines per second are timed by the
   database from the job's start to its end (worker start-up excluded).
2. Memory: the same for a 100 MB and a 1 GB file, each in a fresh worker process whose peak
   resident memory (``ru_maxrss`` from ``wait4``) is reported: it must not grow with the file.

Files are generated in a temporary directory and deleted afterwards, and so are their rows.
Without a database URL a throwaway embedded PostgreSQL (durable settings) is started; with
one, use a throwaway database: the bench adds files and jobs to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from pgqueue.bench import say, write_section
from pgqueue.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_LINES_PER_S = 100_000
MIB = 1024 * 1024
LEVELS = (b"info", b"warn", b"ERROR", b"debug", b"critical")


def write_log_file(path: Path, *, lines: int | None = None, size_bytes: int | None = None) -> tuple[int, int]:
    """A .jsonl file of realistic log lines, ``lines`` long or about ``size_bytes`` big;
    returns (lines, bytes). Written in 1 MiB blocks, so generating 1 GB takes seconds."""
    written = count = 0
    with path.open("wb") as file:
        while (lines is None or count < lines) and (size_bytes is None or written < size_bytes):
            block = []
            for number in range(count + 1, count + 1 + 4096):
                if lines is not None and number > lines:
                    break
                block.append(b'{"timestamp": "2024-05-01T%02d:%02d:%02d.%03d+02:00", "level": "%s", "service": "api", '
                             b'"message": "GET /items/%d answered 200 in %d ms", '
                             b'"attributes": {"path": "/items/%d", "status": 200, "user": %d}}\n'
                             % (number // 3600 % 24, number // 60 % 60, number % 60, number % 1000,
                                LEVELS[number % 5], number, number % 300, number, number % 977))
            data = b"".join(block)
            file.write(data)
            written += len(data)
            count += len(block)
    return count, written


def _worker_env(url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGQUEUE_", "APP_"))}
    env.update(PGQUEUE_DATABASE_URL=url, PYTHONUNBUFFERED="1")
    return env


async def _enqueue(url: str, storage_url: str, path: Path) -> tuple[int, int]:
    """Store the file and enqueue its ingest job, as the upload route does."""
    from app.ingest import enqueue_ingest
    from app.jobs import jobs
    from pgqueue.db import transaction
    from pgqueue.queue import Queue
    from pgqueue.storage import open_storage

    storage = open_storage(storage_url)

    def chunks() -> Any:
        with path.open("rb") as file:
            while chunk := file.read(MIB):
                yield chunk

    stored = await storage.awrite(f"bench/{path.name}", chunks())
    async with await Queue.connect(url, jobs, max_size=2) as queue, transaction(queue.pool) as conn:
        return await enqueue_ingest(queue, conn, storage, stored, owner_id="bench", name=path.name,
                                    content_type="application/x-ndjson")


def _query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def run_worker_until_finished(url: str, job_id: int, queue: str, env: dict[str, str], log_path: Path) -> Any:
    """A fresh `python -m pgqueue worker` for ``queue`` until job ``job_id`` has finished, then
    stopped with SIGTERM; returns its resource usage (peak RSS in ru_maxrss). Shared by the benches."""
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "pgqueue", "worker", "--app", "app.jobs", "--queues",
                                   queue, "--concurrency", "1"], cwd=REPO_ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        while True:
            (status,) = _query(url, "SELECT status FROM pgqueue.jobs WHERE id = %s", [job_id])[0]
            if status in ("succeeded", "dead", "cancelled"):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited early:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        _, exit_status, usage = os.wait4(worker.pid, 0)
        worker.returncode = os.waitstatus_to_exitcode(exit_status)
    finally:
        if worker.returncode is None:
            worker.kill()
            worker.wait()
    return usage


def ingest_once(url: str, work_dir: Path, path: Path, lines: int) -> dict[str, Any]:
    """Ingest one file with a fresh worker process; its rate and peak memory."""
    file_id, job_id = asyncio.run(_enqueue(url, (work_dir / "storage").as_uri(), path))
    usage = run_worker_until_finished(url, job_id, "ingest", _worker_env(url), work_dir / f"worker-{job_id}.log")
    ((status, seconds, result, error),) = _query(
        url, "SELECT status, extract(epoch FROM finished_at - started_at), result, last_error "
             "FROM pgqueue.jobs WHERE id = %s", [job_id])
    if status != "succeeded":
        raise RuntimeError(f"ingest job {job_id} ended {status}: {error}")
    if result["lines_valid"] != lines:
        raise RuntimeError(f"ingested {result['lines_valid']} valid lines of {lines}")
    # the rows go, so the database does not grow by gigabytes (the trigger takes the entries)
    _query(url, "DELETE FROM app.files WHERE id = %s", [file_id])
    _query(url, "DELETE FROM pgqueue.jobs WHERE id = %s", [job_id])
    return {
        "lines": lines,
        "bytes": path.stat().st_size,
        "seconds": round(float(seconds), 3),
        "lines_per_s": round(lines / float(seconds)),
        "mib_per_s": round(path.stat().st_size / MIB / float(seconds), 1),
        "worker_peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
    }


def run_ingest_bench(database_url: str | None = None, *, lines: int = 1_000_000,
                     memory_sizes_mb: tuple[int, ...] = (100, 1000)) -> dict[str, Any]:
    from pgqueue.bench import database
    from pgqueue.migrate import migrate

    load_before = os.getloadavg()
    work_dir = Path(tempfile.mkdtemp(prefix="pgqueue-ingest-bench-"))
    try:
        with database(database_url) as url:
            migrate(url)
            path = work_dir / f"{lines}-lines.jsonl"
            count, size = write_log_file(path, lines=lines)
            say(f"ingesting {count:,} lines ({size / MIB:.0f} MiB) ...")
            rate = ingest_once(url, work_dir, path, count)
            path.unlink()
            say(f"  {rate['lines_per_s']:,} lines/s")
            memory = []
            for size_mb in memory_sizes_mb:
                path = work_dir / f"{size_mb}MB.jsonl"
                count, size = write_log_file(path, size_bytes=size_mb * 1000 * 1000)
                say(f"ingesting a {size_mb} MB file ({count:,} lines) for the worker's peak memory ...")
                memory.append({"file_mb": size_mb, **ingest_once(url, work_dir, path, count)})
                path.unlink()
                say(f"  peak RSS {memory[-1]['worker_peak_rss_mib']:.0f} MiB")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "rate": rate,
        "target_lines_per_s": TARGET_LINES_PER_S,
        "meets_target": rate["lines_per_s"] >= TARGET_LINES_PER_S,
        "memory": memory,
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before]},
    }


def render(result: dict[str, Any]) -> str:
    rate = result["rate"]
    rows = [
        (f"ingest rate, {rate['lines']:,} lines ({rate['bytes'] / MIB:.0f} MiB)",
         f"{rate['lines_per_s']:,} lines/s ({rate['mib_per_s']} MiB/s, {rate['seconds']:.2f} s)"
         f"  target {result['target_lines_per_s']:,}: {'met' if result['meets_target'] else 'NOT met'}"),
    ]
    for run in result["memory"]:
        rows.append((f"worker peak RSS, {run['file_mb']:,} MB file ({run['lines']:,} lines)",
                     f"{run['worker_peak_rss_mib']:.0f} MiB  ({run['lines_per_s']:,} lines/s)"))
    load = result["machine"]["load_average_before"]
    rows.append(("machine", f"{result['machine']['cpus']} CPUs, load average before {load[0]:.2f}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["Log-file ingestion (one worker process, delay off)", ""]
                     + [f"  {label.ljust(width)}  {value}" for label, value in rows])


def main(args: argparse.Namespace) -> int:
    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    sizes = tuple(args.memory_mb) if not args.quick else (10, 50)
    result = run_ingest_bench(url, lines=100_000 if args.quick else args.lines, memory_sizes_mb=sizes)
    print(render(result))
    if args.output:
        write_section(args.output, "ingest", result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded PostgreSQL)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the rate file (default 1,000,000)")
    parser.add_argument("--memory-mb", type=int, nargs="*", default=[100, 1000],
                        help="file sizes (MB) for the peak-memory runs (default 100 1000)")
    parser.add_argument("--quick", action="store_true", help="100,000 lines, 10 and 50 MB (a smoke test)")
    parser.add_argument("--output", default="bench-results.json",
                        help="JSON file to add an 'ingest' section to ('' to skip)")
