"""Webhook bench: `python -m app bench-webhooks` or `run_webhook_bench(url)`.

Each round starts a fresh worker process (``python -m pgqueue worker --app app.jobs --queues
webhooks``) and a local receiver (a threaded HTTP/1.1 server on 127.0.0.1 that verifies every
signature with pgqueue.webhooks and notes when each delivery arrived), then measures:

1. Throughput: ``--deliveries`` webhook jobs enqueued in one round trip; deliveries per second
   from the enqueue (the jobs' created_at) to the last delivery received.
2. Latency: ``--latency-deliveries`` jobs enqueued one at a time at ``--latency-rate`` per
   second (an idle worker each time, as in a quiet service); enqueue (created_at) -> received,
   p50 and p99.

The figures are the median of ``--rounds`` rounds (default 3), with each round's value as the
spread. Both clocks are this machine's (PostgreSQL's now() and time.time()).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from pgqueue.bench import say, write_section
from pgqueue.config import Settings
from pgqueue.webhooks import WebhookVerificationError, new_webhook_secret, verify_webhook

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class BenchReceiver:
    """Verifies each delivery and records when its Webhook-Id first arrived."""

    def __init__(self, secret: str) -> None:
        self.arrivals: dict[str, float] = {}
        self.bad = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.time()
                try:
                    msg_id = verify_webhook(secret, self.headers, body)
                    status = 204
                except WebhookVerificationError:
                    msg_id, status = "", 400
                with receiver.lock:
                    if msg_id:
                        receiver.arrivals.setdefault(msg_id, arrived)
                    else:
                        receiver.bad += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _worker(url: str, secret: str, concurrency: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGQUEUE_", "APP_"))}
    env.update(PGQUEUE_DATABASE_URL=url, PYTHONUNBUFFERED="1", APP_WEBHOOK_SECRET=secret,
               APP_WEBHOOK_ALLOW_HOSTS="127.0.0.1", PGQUEUE_LOG_LEVEL="WARNING")
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "pgqueue", "worker", "--app", "app.jobs", "--queues",
                                 "webhooks", "--concurrency", str(concurrency)], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def _wait(condition: Any, worker: subprocess.Popen[bytes], log_path: Path, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited early:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def _enqueue(url: str, hook_url: str, count: int, *, rate: float | None = None) -> list[int]:
    """``count`` webhook jobs: in one round trip, or one at a time at ``rate`` per second."""
    from app.jobs import jobs
    from pgqueue.queue import Queue

    async with await Queue.connect(url, jobs, max_size=2) as queue:
        if rate is None:
            return await queue.enqueue_many([("webhook", {"url": hook_url, "body": {"n": n, "event": "bench"}})
                                             for n in range(count)])
        ids = []
        started = time.monotonic()
        for n in range(count):
            ids.append((await queue.enqueue("webhook", {"url": hook_url, "body": {"n": n}})).id)
            await asyncio.sleep(max(0.0, started + (n + 1) / rate - time.monotonic()))
        return ids


def _created_at(url: str, ids: list[int]) -> dict[int, float]:
    rows = _query(url, "SELECT id, extract(epoch FROM created_at) FROM pgqueue.jobs WHERE id = ANY(%s)", [ids])
    return {job_id: float(epoch) for job_id, epoch in rows}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def one_round(url: str, work_dir: Path, number: int, *, deliveries: int, latency_deliveries: int,
              latency_rate: float, concurrency: int) -> dict[str, Any]:
    secret = new_webhook_secret()
    receiver = BenchReceiver(secret)
    log_path = work_dir / f"webhook-worker-{number}.log"
    worker = _worker(url, secret, concurrency, log_path)
    try:
        _wait(lambda: _query(url, "SELECT count(*) FROM pgqueue.workers WHERE pid = %s", [worker.pid])[0][0] > 0,
              worker, log_path, "the worker to start")
        ids = asyncio.run(_enqueue(url, receiver.url, deliveries))
        _wait(lambda: receiver.received() >= deliveries, worker, log_path, "every delivery")
        created = _created_at(url, ids)
        with receiver.lock:
            arrivals = dict(receiver.arrivals)
        seconds = max(arrivals[f"msg_{i}"] for i in ids) - min(created.values())
        before = receiver.received()
        latency_ids = asyncio.run(_enqueue(url, receiver.url, latency_deliveries, rate=latency_rate))
        _wait(lambda: receiver.received() >= before + latency_deliveries, worker, log_path, "the latency deliveries")
        created = _created_at(url, latency_ids)
        with receiver.lock:
            latencies = [(receiver.arrivals[f"msg_{i}"] - created[i]) * 1000 for i in latency_ids]
        _wait(lambda: _query(url, "SELECT count(*) FROM pgqueue.jobs WHERE kind = 'webhook' AND status <> "
                                  "'succeeded'")[0][0] == 0, worker, log_path, "every job to be recorded")
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    finally:
        if worker.returncode is None:
            worker.kill()
            worker.wait()
        receiver.close()
    if receiver.bad:
        raise RuntimeError(f"{receiver.bad} deliveries failed signature verification")
    _query(url, "DELETE FROM pgqueue.jobs WHERE kind = 'webhook'")
    return {"deliveries": deliveries, "seconds": round(seconds, 3), "deliveries_per_s": round(deliveries / seconds),
            "latency_deliveries": latency_deliveries, "latency_p50_ms": round(_percentile(latencies, 0.50), 2),
            "latency_p99_ms": round(_percentile(latencies, 0.99), 2)}


def run_webhook_bench(database_url: str | None = None, *, deliveries: int = 5000, latency_deliveries: int = 300,
                      latency_rate: float = 50.0, concurrency: int = 16, rounds: int = 3) -> dict[str, Any]:
    import tempfile

    from pgqueue.bench import database
    from pgqueue.migrate import migrate

    load_before = os.getloadavg()
    work_dir = Path(tempfile.mkdtemp(prefix="pgqueue-webhook-bench-"))
    results = []
    with database(database_url) as url:
        migrate(url)
        for number in range(1, rounds + 1):
            say(f"round {number}/{rounds}: {deliveries:,} webhooks, then {latency_deliveries} at "
                f"{latency_rate:g}/s, worker with {concurrency} slots ...")
            results.append(one_round(url, work_dir, number, deliveries=deliveries,
                                     latency_deliveries=latency_deliveries, latency_rate=latency_rate,
                                     concurrency=concurrency))
            say(f"  {results[-1]['deliveries_per_s']:,} deliveries/s; p50 {results[-1]['latency_p50_ms']} ms, "
                f"p99 {results[-1]['latency_p99_ms']} ms")

    def median(key: str) -> float:
        return statistics.median(result[key] for result in results)

    return {
        "deliveries_per_s": median("deliveries_per_s"),
        "latency_p50_ms": median("latency_p50_ms"),
        "latency_p99_ms": median("latency_p99_ms"),
        "rounds": results,
        "settings": {"deliveries": deliveries, "latency_deliveries": latency_deliveries,
                     "latency_rate_per_s": latency_rate, "concurrency": concurrency},
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before]},
    }


def render(result: dict[str, Any]) -> str:
    spread = lambda key: ", ".join(str(r[key]) for r in result["rounds"])  # noqa: E731
    settings = result["settings"]
    rows = [
        (f"deliveries/s ({settings['deliveries']:,} enqueued at once, {settings['concurrency']} slots)",
         f"{result['deliveries_per_s']:,.0f}  (rounds: {spread('deliveries_per_s')})"),
        (f"enqueue -> received p50 ({settings['latency_rate_per_s']:g}/s)",
         f"{result['latency_p50_ms']} ms  (rounds: {spread('latency_p50_ms')})"),
        (f"enqueue -> received p99 ({settings['latency_rate_per_s']:g}/s)",
         f"{result['latency_p99_ms']} ms  (rounds: {spread('latency_p99_ms')})"),
    ]
    load = result["machine"]["load_average_before"]
    rows.append(("machine", f"{result['machine']['cpus']} CPUs, load average before {load[0]:.2f}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["Webhook delivery (fresh worker process per round, median of the rounds)", ""]
                     + [f"  {label.ljust(width)}  {value}" for label, value in rows])


def main(args: argparse.Namespace) -> int:
    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    quick = args.quick
    result = run_webhook_bench(url, deliveries=500 if quick else args.deliveries,
                               latency_deliveries=50 if quick else args.latency_deliveries,
                               latency_rate=args.latency_rate, concurrency=args.concurrency,
                               rounds=1 if quick else args.rounds)
    print(render(result))
    if args.output:
        write_section(args.output, "webhooks", result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded PostgreSQL)")
    parser.add_argument("--deliveries", type=int, default=5000, help="webhooks enqueued at once per round")
    parser.add_argument("--latency-deliveries", type=int, default=300, help="webhooks enqueued one by one per round")
    parser.add_argument("--latency-rate", type=float, default=50.0, help="per second, for the latency phase")
    parser.add_argument("--concurrency", type=int, default=16, help="the worker's slots")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small round (a smoke test)")
    parser.add_argument("--output", default="bench-results.json",
                        help="JSON file to add a 'webhooks' section to ('' to skip)")
