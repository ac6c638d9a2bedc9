"""SSE delivery latency, NOTIFY to client: `python -m app bench-sse` or `run_sse_bench(url)`.

One app process (uvicorn, no worker) serves N concurrent `GET /jobs/{id}/events` clients
(500 by default) on one job; the bench then inserts events for that job at a modest rate, one
per transaction, and measures for every (event, client) pair the time from the inserting
transaction's commit (when Postgres sends the NOTIFY) to the moment the client's socket
received the event's `id:` line. Clients are raw asyncio protocols that only timestamp bytes
and find ids, so the client side adds as little as possible to what is measured. Clients and
emitter share this process's clock; the server is a separate process.

Without a database URL it starts a throwaway embedded PostgreSQL (durable settings). With one,
it adds a bench user and one job to that database (use a throwaway one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from pgqueue.bench import say, write_section
from pgqueue.config import Settings
from pgqueue.sql import QUERIES

ID_LINE = re.compile(rb"\nid: (\d+)\n")
END_MARKER = b"event: succeeded"
# Named here because it is bench-only: the app's LISTEN backend seen from pg_stat_activity.
HUB_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
)


@dataclass
class SseClient(asyncio.Protocol):
    """One raw HTTP/1.1 SSE connection that records (receive time, event id) and nothing else."""

    request: bytes
    received: list[tuple[float, int]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _tail: bytes = b""
    _headers_done: bool = False
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self._tail + data
        if not self._headers_done:
            if b"\r\n\r\n" not in buffer:
                self._tail = buffer
                return
            status_line = buffer.split(b"\r\n", 1)[0]
            if b" 200 " not in status_line:
                raise RuntimeError(f"SSE request refused: {status_line!r}")
            self._headers_done = True
        if not self.subscribed.is_set() and b"retry:" in buffer:
            # the server subscribes to the hub before it sends its first bytes (the retry hint)
            self.subscribed.set()
        last_end = 0
        for match in ID_LINE.finditer(buffer):
            self.received.append((now, int(match.group(1))))
            last_end = match.end()
        if END_MARKER in buffer:
            self.finished.set()
        # keep a little unparsed tail, so an id split across two reads is still found once
        self._tail = buffer[max(last_end, len(buffer) - 64):]

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished.set()
        self.subscribed.set()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


@contextlib.contextmanager
def app_server(database_url: str, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`uvicorn app.main:create_app` in its own process (no worker), until the block ends."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("APP_", "PGQUEUE_"))}
    env.update(PGQUEUE_DATABASE_URL=database_url, APP_RUN_WORKER="false", APP_SECRET=secrets.token_urlsafe(32))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "3"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the app server did not become healthy within 60 s")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _process_usage(pid: int) -> tuple[float | None, float | None]:
    """CPU seconds and resident MiB of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return None, None


def _prepare(database_url: str) -> tuple[str, int]:
    """Migrate, create a bench user, enqueue the bench job and claim it; returns (token, job id)."""
    from app.auth import hash_token, new_api_token
    from app.jobs import jobs as app_jobs
    from app.store import create_user_sync
    from pgqueue.db import connect_sync
    from pgqueue.migrate import migrate
    from pgqueue.queue import SyncQueue

    migrate(database_url)
    token = new_api_token()
    with connect_sync(database_url) as conn:
        user = create_user_sync(conn, f"sse-bench-{secrets.token_hex(4)}", False, hash_token(token), label="bench")
        conn.commit()
        job = SyncQueue(database_url, app_jobs).enqueue("external", {"data": "sse bench"}, conn=conn,
                                                        owner_id=user.owner_id)
        conn.commit()
    return token, job.id


def _emit_events(database_url: str, job_id: int, count: int, rate: float,
                 committed: dict[int, tuple[float, float]], done: threading.Event) -> None:
    """Insert `count` progress events at `rate` per second, one per transaction; record when each
    COMMIT was sent and when it returned (Postgres sends the NOTIFY in between, after the WAL flush)."""
    from pgqueue.db import connect_sync

    interval = 1.0 / rate
    with connect_sync(database_url) as conn:
        start = time.perf_counter()
        for index in range(count):
            pause = start + index * interval - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            data = {"percent": 100 * (index + 1) / count, "message": f"bench {index + 1}/{count}",
                    "sent_at": time.time()}
            row = conn.execute(QUERIES["insert_event"].sql,
                               {"job_id": job_id, "type": "progress", "data": msgspec.json.encode(data).decode()})
            inserted = row.fetchone()
            assert inserted is not None  # INSERT ... RETURNING id
            event_id = inserted[0]
            commit_sent = time.perf_counter()
            conn.commit()  # NOTIFY goes out here
            committed[event_id] = (commit_sent, time.perf_counter())
    done.set()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _measure(database_url: str, port: int, server_pid: int, token: str, job_id: int, clients: int,
                   events: int, rate: float) -> dict[str, Any]:
    from pgqueue.queue import Queue

    loop = asyncio.get_running_loop()
    request = (f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()
    connect_started = time.perf_counter()
    protocols: list[SseClient] = []
    for _ in range(clients):
        _, protocol = await loop.create_connection(lambda: SseClient(request), "127.0.0.1", port)
        protocols.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(p.subscribed.wait() for p in protocols)), 120)
    connect_seconds = time.perf_counter() - connect_started
    say(f"{clients} SSE clients connected and subscribed in {connect_seconds:.2f}s")

    queue = await Queue.connect(database_url, max_size=2)
    try:
        (listeners,) = await _one_row(queue, HUB_BACKENDS)
        (job,) = await queue.claim(["external"], 1, "sse-bench")
        cpu_before, _ = _process_usage(server_pid)
        committed: dict[int, tuple[float, float]] = {}
        done = threading.Event()
        say(f"emitting {events} events at {rate:g}/s ...")
        emitter = threading.Thread(target=_emit_events, args=(database_url, job_id, events, rate, committed, done),
                                   daemon=True)
        emitter_started = time.perf_counter()
        emitter.start()
        while not done.is_set():
            await asyncio.sleep(0.05)
        emit_seconds = time.perf_counter() - emitter_started
        cpu_after, rss = _process_usage(server_pid)
        assert job.lease_token is not None
        await queue.complete(job.id, job.lease_token, None)  # ends every stream
        await asyncio.wait_for(asyncio.gather(*(p.finished.wait() for p in protocols)), 60)
    finally:
        await queue.close()
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.close()

    # Measured from the moment COMMIT was sent: an upper bound that includes the commit's own
    # WAL flush (reported apart as commit_ms), never a flattering negative number.
    latencies = sorted(
        (received_at - committed[event_id][0]) * 1000
        for protocol in protocols for received_at, event_id in protocol.received if event_id in committed
    )
    commits = sorted((end - start) * 1000 for start, end in committed.values())
    expected = clients * events
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "clients": clients,
        "events": events,
        "rate_per_s": rate,
        "deliveries_expected": expected,
        "deliveries": len(latencies),
        "duplicates": sum(len(p.received) - len({i for _, i in p.received}) for p in protocols),
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50), 3),
            "p90": round(_percentile(latencies, 0.90), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
        "commit_ms": {"p50": round(_percentile(commits, 0.50), 3), "p99": round(_percentile(commits, 0.99), 3)},
        "connect_and_subscribe_s": round(connect_seconds, 3),
        "emit_s": round(emit_seconds, 3),
        "listen_connections": listeners,
        "server_cpu_s_while_emitting": None if server_cpu is None else round(server_cpu, 3),
        "server_rss_mib": None if rss is None else round(rss, 1),
    }


async def _one_row(queue: Any, sql: str) -> tuple[Any, ...]:
    async with queue.pool.connection() as conn:
        return await (await conn.execute(sql)).fetchone()


def run_sse_bench(database_url: str | None = None, *, clients: int = 500, events: int = 200,
                  rate: float = 20.0) -> dict[str, Any]:
    """Start the app on a free port against `database_url` (embedded when None) and measure."""
    import logging

    from pgqueue.bench import database

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    _raise_fd_limit(clients * 2 + 256)
    with database(database_url) as url:
        token, job_id = _prepare(url)
        port = _free_port()
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgqueue-sse-bench-{port}.log"
        say(f"app server on port {port} (log: {log_path})")
        with app_server(url, port, log_path) as server:
            return asyncio.run(_measure(url, port, server.pid, token, job_id, clients, events, rate))


def render(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    rows = [
        ("clients (one app process)", f"{result['clients']}"),
        ("events (one per transaction)", f"{result['events']} at {result['rate_per_s']:g}/s"),
        ("deliveries", f"{result['deliveries']} of {result['deliveries_expected']}"
                       + (f", {result['duplicates']} duplicates" if result["duplicates"] else ", no duplicates")),
        ("LISTEN connections", str(result["listen_connections"])),
        ("latency p50 (COMMIT sent -> client)", f"{latency['p50']:.2f} ms"),
        ("latency p90", f"{latency['p90']:.2f} ms"),
        ("latency p99", f"{latency['p99']:.2f} ms"),
        ("latency max", f"{latency['max']:.2f} ms"),
        ("  of which the commit itself, p50", f"{result['commit_ms']['p50']:.2f} ms"),
        ("connect + subscribe all clients", f"{result['connect_and_subscribe_s']:.2f} s"),
    ]
    if result["server_cpu_s_while_emitting"] is not None:
        share = result["server_cpu_s_while_emitting"] / result["emit_s"]
        rows.append(("app server CPU while emitting", f"{share:.0%} of one core"))
    if result["server_rss_mib"] is not None:
        rows.append(("app server memory (RSS)", f"{result['server_rss_mib']:.0f} MiB"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["SSE delivery latency (NOTIFY at commit -> event bytes at the client)", ""]
                     + [f"  {label.ljust(width)}  {value}" for label, value in rows])


def main(args: argparse.Namespace) -> int:
    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    clients, events = (min(args.clients, 100), min(args.events, 40)) if args.quick else (args.clients, args.events)
    result = run_sse_bench(url, clients=clients, events=events, rate=args.rate)
    print(render(result))
    if args.output:
        write_section(args.output, "sse", result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded PostgreSQL)")
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--quick", action="store_true", help="100 clients, 40 events (a smoke test)")
    parser.add_argument("--output", default="bench-results.json",
                        help="JSON file to add an 'sse' section to ('' to skip)")
