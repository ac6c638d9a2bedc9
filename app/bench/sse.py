"""SSE at scale, NOTIFY to client: `python -m app bench-sse` or `run_sse_bench(url, plans)`.

Two scenarios by default, each over fresh app processes, 3 rounds: 1,000 clients on one app
process (`python -m app serve --workers 1`) and 5,000 across `serve --workers 4`. The clients are
spread over several jobs (`GET /jobs/{id}/events`, round robin) and the global stream (`GET
/events`, a share of them); they run in several client processes of their own (raw asyncio
protocols that only timestamp bytes and find `id:` lines), so the client side is not what is
measured on a small machine: its CPU is reported beside the figures.

The bench then inserts progress events round robin over the jobs, one per transaction, at a modest
rate, and for every (event, client that should see it) pair takes the time from the moment the
inserting transaction's COMMIT was sent (Postgres sends the NOTIFY at commit) to the moment the
client's socket received the event's `id:` line. Emitter and clients read CLOCK_MONOTONIC, one clock
for every process of the machine. Per round it also reports events lost (a pair never delivered)
and duplicates, the LISTEN connections in pg_stat_activity sampled while emitting (one per app
process), the app processes' RSS before and after the clients connected (divided by the clients:
memory per client), and server and client CPU while emitting.

The bench process and its client processes raise their open-file soft limit (RLIMIT_NOFILE) to what
the clients need, up to the hard limit; the app processes inherit the bench's limit.

Without a database URL it starts a throwaway embedded PostgreSQL (durable settings). With one,
it adds a bench user and a few jobs per round to that database (use a throwaway one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import msgspec

from pgqueue.bench import say, write_section
from pgqueue.config import Settings
from pgqueue.sql import QUERIES

ID_LINE = re.compile(rb"\nid: (\d+)\n")
END_MARKER = b"event: succeeded"
TARGET_P99_MS = 100.0
# Named here because they are bench-only: the app's LISTEN backends seen from pg_stat_activity
# (the hub's application_name, and any backend whose last statement was a LISTEN).
BACKENDS = (
    "SELECT count(*) FILTER (WHERE application_name = %(hub)s),"
    " count(*) FILTER (WHERE query ILIKE 'LISTEN%%'),"
    " count(*) FILTER (WHERE pid <> pg_backend_pid() AND backend_type = 'client backend')"
    " FROM pg_stat_activity WHERE datname = current_database()"
)
LAST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM pgqueue.events"


def clock() -> float:
    """CLOCK_MONOTONIC: one clock for the emitter (this process) and every client process."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Plan:
    """One scenario: how many clients on how many app processes, and what they watch."""

    clients: int
    workers: int
    jobs: int = 10
    global_share: float = 0.1  # of the clients on GET /events (every event), the rest on one job each
    events: int = 200
    rate: float = 20.0  # events per second, over all jobs
    client_processes: int = 2

    @property
    def name(self) -> str:
        return f"{self.clients}_clients_{self.workers}_process{'es' if self.workers > 1 else ''}"

    @property
    def global_clients(self) -> int:
        return round(self.clients * self.global_share)


SCENARIOS = (
    Plan(clients=1000, workers=1, jobs=10, client_processes=2),
    Plan(clients=5000, workers=4, jobs=50, client_processes=4),
)
QUICK = (
    Plan(clients=100, workers=1, jobs=4, events=40, client_processes=1),
    Plan(clients=200, workers=2, jobs=4, events=40, client_processes=2),
)


# -- the client side (runs in client processes) -------------------------------------------------


@dataclass
class SseClient(asyncio.Protocol):
    """One raw HTTP/1.1 SSE connection that records (receive time, event id) and nothing else."""

    request: bytes
    ids: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    _tail: bytes = b""
    _headers_done: bool = False
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = clock()
        buffer = self._tail + data
        if not self._headers_done:
            if b"\r\n\r\n" not in buffer:
                self._tail = buffer
                return
            status_line = buffer.split(b"\r\n", 1)[0]
            if b" 200 " not in status_line:
                self.error = f"SSE request refused: {status_line.decode(errors='replace')}"
                self.subscribed.set()
                self.finished.set()
                assert self.transport is not None
                self.transport.close()
                return
            self._headers_done = True
        if not self.subscribed.is_set() and b"retry:" in buffer:
            # the server subscribes to the hub before it sends its first bytes (the retry hint)
            self.subscribed.set()
        last_end = 0
        for match in ID_LINE.finditer(buffer):
            self.ids.append(int(match.group(1)))
            self.times.append(now)
            last_end = match.end()
        if END_MARKER in buffer:
            self.finished.set()
        # keep a little unparsed tail, so an id split across two reads is still found once
        self._tail = buffer[max(last_end, len(buffer) - 64):]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.is_set() and self.error is None:
            self.error = f"connection lost: {exc}"
        self.finished.set()
        self.subscribed.set()


def _raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file soft limit to `needed` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


async def _run_clients(pipe: Connection, port: int, token: str, paths: list[str]) -> None:
    loop = asyncio.get_running_loop()
    clients: list[SseClient] = []
    opening = asyncio.Semaphore(100)  # connection attempts in flight: stay under the listen backlog

    async def open_one(path: str) -> None:
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()
        async with opening:
            _, client = await loop.create_connection(lambda: SseClient(request), "127.0.0.1", port)
            clients.append(client)
            await client.subscribed.wait()

    try:
        await asyncio.wait_for(asyncio.gather(*(open_one(path) for path in paths)), 180)
        # The client is the measuring instrument: no collector pauses of its own in the figures
        # (what it allocates from here on is freed by reference counting).
        gc.collect()
        gc.freeze()
        gc.disable()
        pipe.send(("ready", len(clients), sum(c.error is not None for c in clients)))
        # the parent emits, then says which id was the last one
        message = await loop.run_in_executor(None, pipe.recv)
        last_id = message[1]
        deadline = clock() + 60

        def done(client: SseClient) -> bool:
            if client.error is not None or client.finished.is_set():
                return True
            return bool(client.ids) and max(client.ids[-8:]) >= last_id

        while not all(done(client) for client in clients) and clock() < deadline:
            await asyncio.sleep(0.05)
        # clients are in path order only once gathered: report each with its path
        pipe.send(("done", [(c.request.split(b" ", 2)[1].decode(), c.ids, c.times, c.error) for c in clients]))
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()


def _client_process(pipe: Connection, port: int, token: str, paths: list[str]) -> None:
    """Entry point of one client process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _raise_fd_limit(len(paths) + 256)
    try:
        asyncio.run(_run_clients(pipe, port, token, paths))
    except Exception as exc:  # reported to the parent, which fails the round with it
        pipe.send(("error", repr(exc)))


# -- the server side ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants (uvicorn --workers N: a supervisor and N spawned workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _usage(pids: Sequence[int]) -> tuple[float, float]:
    """CPU seconds and resident MiB of these processes together (Linux /proc)."""
    cpu = rss = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


@contextlib.contextmanager
def app_server(database_url: str, port: int, workers: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m app serve --workers N` in its own process group, until the block ends."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("APP_", "PGQUEUE_"))}
    env.update(PGQUEUE_DATABASE_URL=database_url, APP_SECRET=secrets.token_urlsafe(32))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--log-level", "warning", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the app server did not become healthy within 90 s")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _machine_cpu() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (clock ticks)."""
    with contextlib.suppress(OSError, ValueError):
        return [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return [0] * 8


def _open_files(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def _backends(database_url: str) -> tuple[int, int, int]:
    """(hub connections, LISTEN connections, client backends) of this database, now."""
    from app.hub import HUB_APPLICATION_NAME
    from pgqueue.db import connect_sync

    with connect_sync(database_url, autocommit=True) as conn:
        row = conn.execute(BACKENDS, {"hub": HUB_APPLICATION_NAME}).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _wait_for_hubs(database_url: str, workers: int, process: subprocess.Popen[bytes]) -> None:
    """Every app process is up once its hub holds its LISTEN connection."""
    deadline = time.monotonic() + 90
    while (found := _backends(database_url)[0]) < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{found} of {workers} app processes are listening")
        time.sleep(0.1)


# -- one round ----------------------------------------------------------------------------------


@dataclass
class Prepared:
    token: str
    jobs: list[tuple[int, UUID]]  # (job id, lease token): claimed, so the bench can complete them


def _prepare(database_url: str, jobs: int) -> Prepared:
    """Migrate, create a bench user, enqueue and claim `jobs` jobs (one bench owner)."""
    from app.auth import hash_token, new_api_token
    from app.jobs import jobs as app_jobs
    from app.store import create_user_sync
    from pgqueue.db import connect_sync
    from pgqueue.migrate import migrate
    from pgqueue.queue import SyncQueue

    migrate(database_url)
    token = new_api_token()
    queue = SyncQueue(database_url, app_jobs)
    with connect_sync(database_url) as conn:
        user = create_user_sync(conn, f"sse-bench-{secrets.token_hex(4)}", False, hash_token(token), label="bench")
        conn.commit()
        ids = [queue.enqueue("external", {"data": f"sse bench {n}"}, conn=conn, owner_id=user.owner_id).id
               for n in range(jobs)]
        conn.commit()
    claimed = asyncio.run(_claim(database_url, jobs))
    return Prepared(token, [(job_id, claimed[job_id]) for job_id in ids])


async def _claim(database_url: str, jobs: int) -> dict[int, UUID]:
    """The bench's jobs, running (their streams stay open until the bench completes them)."""
    from pgqueue.queue import Queue

    queue = await Queue.connect(database_url, max_size=2)
    try:
        claimed: dict[int, UUID] = {}
        while len(claimed) < jobs:
            for job in await queue.claim(["external"], jobs - len(claimed), "sse-bench"):
                assert job.lease_token is not None
                claimed[job.id] = job.lease_token
        return claimed
    finally:
        await queue.close()


async def _complete(database_url: str, jobs: list[tuple[int, UUID]]) -> int:
    """Complete the bench's jobs (ends every job stream); the id of the last event then."""
    from pgqueue.queue import Queue

    queue = await Queue.connect(database_url, max_size=2)
    try:
        for job_id, lease in jobs:
            await queue.complete(job_id, lease, None)
        async with queue.pool.connection() as conn:
            row = await (await conn.execute(LAST_EVENT_ID)).fetchone()
        assert row is not None
        return int(row[0])
    finally:
        await queue.close()


def _emit_events(database_url: str, job_ids: list[int], count: int, rate: float,
                 committed: dict[int, tuple[float, int]], done: threading.Event) -> None:
    """Insert `count` progress events round robin over the jobs at `rate` per second, one per
    transaction; record when each COMMIT was sent (Postgres sends the NOTIFY at commit)."""
    from pgqueue.db import connect_sync

    interval = 1.0 / rate
    try:
        with connect_sync(database_url) as conn:
            start = clock()
            for index in range(count):
                pause = start + index * interval - clock()
                if pause > 0:
                    time.sleep(pause)
                job_id = job_ids[index % len(job_ids)]
                data = {"percent": 100 * (index + 1) / count, "message": f"bench {index + 1}/{count}"}
                row = conn.execute(QUERIES["insert_event"].sql,
                                   {"job_id": job_id, "type": "progress", "data": msgspec.json.encode(data).decode()})
                inserted = row.fetchone()
                assert inserted is not None  # INSERT ... RETURNING id
                commit_sent = clock()
                conn.commit()  # NOTIFY goes out here
                committed[inserted[0]] = (commit_sent, job_id)
    finally:
        done.set()


def _paths(plan: Plan, job_ids: list[int]) -> list[str]:
    job_clients = plan.clients - plan.global_clients
    return ["/events"] * plan.global_clients + [f"/jobs/{job_ids[n % len(job_ids)]}/events"
                                                for n in range(job_clients)]


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_round(database_url: str, plan: Plan) -> dict[str, Any]:
    """Fresh app processes, fresh clients, one emission; the figures of that round."""
    prepared = _prepare(database_url, plan.jobs)
    job_ids = [job_id for job_id, _ in prepared.jobs]
    port = _free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgqueue-sse-bench-{port}.log"
    say(f"{plan.name}: app on port {port} (log: {log_path})")
    paths = _paths(plan, job_ids)
    shares = [paths[n::plan.client_processes] for n in range(plan.client_processes)]
    context = multiprocessing.get_context("spawn")
    with app_server(database_url, port, plan.workers, log_path) as server:
        _wait_for_hubs(database_url, plan.workers, server)
        server_pids = _process_tree(server.pid)
        _, rss_before = _usage(server_pids)
        pipes: list[Connection] = []
        clients: list[Any] = []
        try:
            connect_started = clock()
            for share in shares:
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_client_process, args=(child_end, port, prepared.token, share),
                                          daemon=True)
                process.start()
                child_end.close()
                pipes.append(parent_end)
                clients.append(process)
            refused = 0
            for pipe in pipes:
                message = pipe.recv()
                if message[0] == "error":
                    raise RuntimeError(f"a client process failed: {message[1]}")
                refused += message[2]
            connect_seconds = clock() - connect_started
            if refused:
                raise RuntimeError(f"{refused} SSE requests were refused (log: {log_path})")
            say(f"{plan.clients} SSE clients connected and subscribed in {connect_seconds:.2f}s")
            server_pids = _process_tree(server.pid)
            _, rss_after = _usage(server_pids)

            committed: dict[int, tuple[float, int]] = {}
            done = threading.Event()
            server_cpu_before, _ = _usage(server_pids)
            per_process_before = {pid: _usage([pid])[0] for pid in server_pids}
            machine_before = _machine_cpu()
            open_files = sorted((_open_files(pid) for pid in server_pids), reverse=True)
            client_cpu_before = [_usage([p.pid])[0] for p in clients]
            emit_started = clock()
            emitter = threading.Thread(target=_emit_events, daemon=True,
                                       args=(database_url, job_ids, plan.events, plan.rate, committed, done))
            emitter.start()
            samples = [_backends(database_url)]  # and again every 0.5 s while emitting
            while not done.wait(0.5):
                samples.append(_backends(database_url))
            emitter.join()
            emit_seconds = clock() - emit_started
            server_cpu, _ = _usage(server_pids)
            ticks = [after - before for after, before in zip(_machine_cpu(), machine_before, strict=True)]
            tick = os.sysconf("SC_CLK_TCK") * emit_seconds
            machine = {"busy_cores": round((sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / tick, 2),
                       "idle_cores": round((ticks[3] + ticks[4]) / tick, 2), "steal_cores": round(ticks[7] / tick, 2),
                       "softirq_cores": round(ticks[6] / tick, 2)}
            client_cpu = [_usage([p.pid])[0] - before for p, before in zip(clients, client_cpu_before, strict=True)]
            server_cpu -= server_cpu_before
            per_process = sorted((round((_usage([pid])[0] - before) / emit_seconds, 3)
                                  for pid, before in per_process_before.items()), reverse=True)
            if len(committed) != plan.events:
                raise RuntimeError(f"the emitter committed {len(committed)} of {plan.events} events")

            last_id = asyncio.run(_complete(database_url, prepared.jobs))
            for pipe in pipes:
                pipe.send(("finish", last_id))
            received: list[tuple[str, array[int], array[float], str | None]] = []
            for pipe in pipes:
                message = pipe.recv()
                if message[0] == "error":
                    raise RuntimeError(f"a client process failed: {message[1]}")
                received.extend(message[1])
        finally:
            for process in clients:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
    return _figures(plan, committed, received, samples=samples, connect_seconds=connect_seconds,
                    emit_seconds=emit_seconds, server_cpu=server_cpu, client_cpu=client_cpu,
                    server_cpu_per_process=per_process, machine_cpu=machine, server_open_files=open_files[:plan.workers + 1],
                    rss_before=rss_before, rss_after=rss_after)


def _figures(plan: Plan, committed: dict[int, tuple[float, int]],
             received: list[tuple[str, array[int], array[float], str | None]], *, samples: list[tuple[int, int, int]],
             connect_seconds: float, emit_seconds: float, server_cpu: float, client_cpu: list[float],
             server_cpu_per_process: list[float], machine_cpu: dict[str, float], server_open_files: list[int], rss_before: float, rss_after: float) -> dict[str, Any]:
    per_job: dict[int, int] = {}
    for _, job_id in committed.values():
        per_job[job_id] = per_job.get(job_id, 0) + 1
    latencies: list[float] = []
    expected = lost = duplicates = wrong = 0
    errors = [error for *_, error in received if error is not None]
    for path, ids, times, _ in received:
        watched = None if path == "/events" else int(path.split("/")[2])
        should = len(committed) if watched is None else per_job.get(watched, 0)
        expected += should
        seen: set[int] = set()
        for event_id, received_at in zip(ids, times, strict=True):
            if event_id not in committed:
                continue  # created / started / succeeded: not timed
            if event_id in seen:
                duplicates += 1
                continue
            seen.add(event_id)
            sent_at, job_id = committed[event_id]
            if watched is not None and job_id != watched:
                wrong += 1
                continue
            latencies.append((received_at - sent_at) * 1000)
        lost += should - len(seen)
    latencies.sort()
    listeners = [hub for hub, _, _ in samples] or [0]
    listen_any = [listen for _, listen, _ in samples] or [0]
    backends = [total for _, _, total in samples] or [0]
    return {
        "plan": asdict(plan),
        "deliveries_expected": expected,
        "deliveries": len(latencies),
        "lost": lost,
        "duplicates": duplicates,
        "misrouted": wrong,
        "client_errors": len(errors),
        "first_client_error": errors[0] if errors else None,
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50), 2),
            "p90": round(_percentile(latencies, 0.90), 2),
            "p99": round(_percentile(latencies, 0.99), 2),
            "max": round(latencies[-1], 2) if latencies else None,
        },
        "listen_connections": {"hub_min": min(listeners), "hub_max": max(listeners),
                               "listen_statements_max": max(listen_any), "per_process": max(listeners) / plan.workers},
        "database_backends_max": max(backends),
        "connect_and_subscribe_s": round(connect_seconds, 2),
        "emit_s": round(emit_seconds, 2),
        "server_cpu_cores": round(server_cpu / emit_seconds, 3),
        "server_cpu_cores_per_process": server_cpu_per_process[:plan.workers + 1],
        # busy cores not accounted for by the app processes and the clients (PostgreSQL, the
        # emitter, and whatever else shares the machine): how contended the round was
        "machine_cpu_while_emitting": {**machine_cpu, "other_than_app_and_clients_cores": round(
            machine_cpu["busy_cores"] - server_cpu / emit_seconds - sum(client_cpu) / emit_seconds, 2)},
        "server_open_files_per_process": server_open_files,
        "client_cpu_cores": round(sum(client_cpu) / emit_seconds, 3),
        "client_cpu_busiest_process": round(max(client_cpu) / emit_seconds, 3),
        "server_rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "server_kib_per_client": round((rss_after - rss_before) * 1024 / plan.clients, 1),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def _uptime() -> str:
    with contextlib.suppress(OSError):
        return "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def run_scenario(database_url: str, plan: Plan, rounds: int) -> dict[str, Any]:
    load_before = _uptime()
    results = []
    for number in range(1, rounds + 1):
        result = run_round(database_url, plan)
        say(f"{plan.name} round {number}: p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms,"
            f" max {result['latency_ms']['max']} ms, lost {result['lost']}, server {result['server_cpu_cores']:.2f}"
            f" cores, clients {result['client_cpu_cores']:.2f} cores ({_uptime()})")
        results.append(result)
    p99 = _spread([r["latency_ms"]["p99"] for r in results])
    return {
        "plan": asdict(plan),
        "rounds": results,
        "latency_ms": {"p50": _spread([r["latency_ms"]["p50"] for r in results]), "p99": p99,
                       "max": _spread([r["latency_ms"]["max"] for r in results])},
        "lost": sum(r["lost"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "deliveries_per_round": results[0]["deliveries_expected"],
        "listen_connections_per_process": max(r["listen_connections"]["per_process"] for r in results),
        "server_kib_per_client": _spread([r["server_kib_per_client"] for r in results]),
        "server_cpu_cores": _spread([r["server_cpu_cores"] for r in results]),
        "client_cpu_cores": _spread([r["client_cpu_cores"] for r in results]),
        "client_cpu_busiest_process": max(r["client_cpu_busiest_process"] for r in results),
        "machine_busy_cores": _spread([r["machine_cpu_while_emitting"]["busy_cores"] for r in results]),
        "other_busy_cores": _spread([r["machine_cpu_while_emitting"]["other_than_app_and_clients_cores"]
                                     for r in results]),
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99["median"] <= TARGET_P99_MS,
        "load_before": load_before,
        "load_after": _uptime(),
    }


def run_sse_bench(database_url: str | None = None, plans: Sequence[Plan] = SCENARIOS,
                  rounds: int = 3) -> dict[str, Any]:
    """Each plan `rounds` times against `database_url` (embedded when None)."""
    import logging

    from pgqueue.bench import database

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    limit = _raise_fd_limit(max(plan.clients for plan in plans) + 1024)
    with database(database_url) as url:
        scenarios = {plan.name: run_scenario(url, plan, rounds) for plan in plans}
    return {"cores": os.cpu_count(), "open_files_limit": limit, "rounds": rounds, "scenarios": scenarios}


def render(result: dict[str, Any]) -> str:
    lines = ["SSE at scale (COMMIT sent -> event bytes at the client), median of "
             f"{result['rounds']} round(s) [min-max], {result['cores']} cores", ""]
    for name, scenario in result["scenarios"].items():
        plan = scenario["plan"]

        def spread(values: dict[str, float], unit: str = " ms") -> str:
            return f"{values['median']:g}{unit} [{values['min']:g}-{values['max']:g}]"

        latency = scenario["latency_ms"]
        rows = [
            ("clients", f"{plan['clients']} on {plan['workers']} app process(es): {plan['jobs']} jobs, "
                        f"{round(plan['clients'] * plan['global_share'])} on GET /events"),
            ("events", f"{plan['events']} at {plan['rate']:g}/s, {scenario['deliveries_per_round']} deliveries a round"),
            ("lost / duplicates", f"{scenario['lost']} / {scenario['duplicates']}"),
            ("latency p50", spread(latency["p50"])),
            ("latency p99", spread(latency["p99"]) + f"  (target <= {scenario['target_p99_ms']:g} ms: "
                                                     + ("met)" if scenario["target_met"] else "MISSED)")),
            ("latency max", spread(latency["max"])),
            ("LISTEN connections per process", f"{scenario['listen_connections_per_process']:g}"),
            ("server memory per client", spread(scenario["server_kib_per_client"], " KiB")),
            ("server CPU while emitting", spread(scenario["server_cpu_cores"], " cores")),
            ("client CPU while emitting", spread(scenario["client_cpu_cores"], " cores")
             + f" over {plan['client_processes']} processes (busiest {scenario['client_cpu_busiest_process']:g})"),
            ("machine busy while emitting", spread(scenario["machine_busy_cores"], " cores")
             + f", of which not the app or the clients {spread(scenario['other_busy_cores'], ' cores')}"),
            ("machine load", f"{scenario['load_before']} -> {scenario['load_after']}"),
        ]
        width = max(len(label) for label, _ in rows)
        lines += [name] + [f"  {label.ljust(width)}  {value}" for label, value in rows] + [""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    url = Settings.from_env(database_url=getattr(args, "database_url", None)).database_url
    if args.quick:
        plans: Sequence[Plan] = QUICK
    elif args.clients is not None:
        plans = [Plan(clients=args.clients, workers=args.workers, jobs=args.jobs, global_share=args.global_share,
                      events=args.events, rate=args.rate,
                      client_processes=args.client_processes or max(1, math.ceil(args.clients / 1250)))]
    else:
        plans = [Plan(clients=p.clients, workers=p.workers, jobs=p.jobs, global_share=p.global_share,
                      events=args.events, rate=args.rate, client_processes=p.client_processes) for p in SCENARIOS]
    result = run_sse_bench(url, plans, rounds=1 if args.quick else args.rounds)
    result["command"] = "python -m app bench-sse " + " ".join(sys.argv[2:])
    print(render(result))
    if args.output:
        write_section(args.output, "sse", result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="a throwaway database (default: an embedded PostgreSQL)")
    parser.add_argument("--clients", type=int, help="one scenario of this many clients (default: 1,000 on one "
                                                    "process and 5,000 on four)")
    parser.add_argument("--workers", type=int, default=1, help="app processes for --clients")
    parser.add_argument("--jobs", type=int, default=10, help="jobs the --clients watch")
    parser.add_argument("--global-share", type=float, default=0.1, help="share of --clients on GET /events")
    parser.add_argument("--client-processes", type=int, help="processes running the --clients")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 and 200 clients, 40 events, one round")
    parser.add_argument("--output", default="bench-results.json",
                        help="JSON file to put the 'sse' section in ('' to skip)")
