"""One chaos run: the worker fleet, the faults it records (each with the jobs in flight at it),
progress while it waits, and the report it draws from the database afterwards.

Counts come from the engine's tables and the ledger the handlers write, never from the workers'
logs: lost = enqueued jobs not in a terminal state at the deadline; a duplicate = a job whose
side effect committed more than once; a rescue of a live worker = a 'lease expired' error row
whose worker process (its id is host:pid:random) was alive at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgqueue.chaos.fleet import Fleet, WorkerRecord, WorkerTimings
from pgqueue.chaos.jobs import CHAOS_QUEUE, POISON, WORK, chaos_jobs
from pgqueue.chaos.server import ChaosServer
from pgqueue.chaos.sql import CHAOS_QUERIES
from pgqueue.db import CONNECTION_ERRORS, Connection, connect_sync
from pgqueue.errors import PgQueueError

HARNESS_APPLICATION = "chaos-harness"  # not 'pgqueue%': the terminate scenario must spare it
ENQUEUE_CHUNK = 50_000
PROGRESS_EVERY = 1.0


class ChaosError(PgQueueError):
    """The harness itself could not run (not a finding about the engine)."""


def harness_url(url: str) -> str:
    """The URL with our application_name, so our sessions are told apart from the workers'."""
    if "://" not in url:
        return f"{url} application_name={HARNESS_APPLICATION}"
    return url + ("&" if "?" in url else "?") + f"application_name={HARNESS_APPLICATION}"


def connect(url: str) -> Connection:
    return connect_sync(harness_url(url), autocommit=True)


class Probe:
    """The harness's own connection (reconnected after a fault), shared by its threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def rows(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.url)
                cursor = self._conn.execute(CHAOS_QUERIES[name], params)
                return cursor.fetchall() if cursor.description else []
            except CONNECTION_ERRORS:
                self.close()
                raise

    def one(self, name: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
        return self.rows(name, params)[0]

    def ids(self, name: str, params: dict[str, Any] | None = None) -> set[int]:
        return {row[0] for row in self.rows(name, params)}

    def try_rows(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]] | None:
        """rows(), or None while the server cannot be reached (polling through an outage)."""
        try:
            return self.rows(name, params)
        except CONNECTION_ERRORS:
            return None

    def retrying(self, name: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.try_rows(name, params)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise ChaosError(f"database unreachable for {timeout:.0f}s (running {name})")
            time.sleep(0.2)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


def prepare_database(url: str) -> None:
    """Migrate, create the ledger, and refuse a database whose jobs or workers are not ours."""
    from pgqueue.migrate import migrate

    migrate(url)
    probe = Probe(url)
    try:
        probe.rows("create_ledger")
        if foreign := probe.one("foreign_jobs", {"queue": CHAOS_QUEUE})[0]:
            raise ChaosError(f"the database holds {foreign} job(s) outside the {CHAOS_QUEUE!r} queue and the chaos "
                             "harness empties pgqueue.jobs: point --database-url at a throwaway database, or leave "
                             "it out for a server of the harness's own")
        if live := probe.one("live_workers")[0]:
            raise ChaosError(f"{live} worker(s) are running against this database; stop them first")
    finally:
        probe.close()


@dataclass
class Params:
    """One scenario's sizes and timings (the defaults are its full-scale figures)."""

    jobs: int
    workers: int = 2
    concurrency: int = 20
    timings: WorkerTimings = field(default_factory=WorkerTimings)
    work_after: float = 0.0  # seconds a chaos.work job works after its side effect
    fault_every: float = 3.0
    fault_seconds: float = 30.0  # how long the fault lasts: kill window, outage, pin, exhaustion
    slow_jobs: int = 0
    hold: float = 2.0  # seconds a chaos.slow_tx job keeps ctx.transaction() open
    idle_connections: int = 300
    bucket_seconds: float = 10.0
    settle_timeout: float = 180.0  # after the last fault, how long every job gets to end


@dataclass
class Fault:
    kind: str
    started: float  # time.time()
    ended: float | None = None
    in_flight: set[int] = field(default_factory=set)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    succeeded: int
    dead: int
    cancelled: int
    running: int
    waiting: int

    @property
    def terminal(self) -> int:
        return self.succeeded + self.dead + self.cancelled


class Run:
    """The state of one scenario while it runs; scenarios drive it, report() sums it up."""

    def __init__(self, name: str, url: str, server: ChaosServer | None, params: Params,
                 say: Callable[[str], None]) -> None:
        self.name = name
        self.url = url
        self.server = server
        self.params = params
        self.say = say
        self.probe = Probe(url)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"pgqueue-chaos-{name}-"))
        self.fleet = Fleet(url, self.log_dir, params.workers, params.concurrency, params.timings,
                           on_death=self._worker_died)
        self.faults: list[Fault] = []
        self.ids: list[int] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self.begun = time.time()
        self.enqueued_at = self.begun
        self.settled_at: float | None = None
        self._last_progress: Progress | None = None
        self._last_said = 0.0
        self._log_offset = server.log_size() if server else 0

    # -- set-up --------------------------------------------------------------------------------

    def start_fleet(self, timeout: float = 60.0) -> None:
        """Start the workers and wait until each is registered and (for a few seconds) listening."""
        self.probe.rows("reset_engine")
        self.fleet.start()
        deadline = time.monotonic() + timeout
        while True:
            pids = [record.pid for record in self.fleet.alive()]
            if self.probe.one("workers_registered", {"pids": pids})[0] >= self.params.workers:
                break
            if time.monotonic() > deadline:
                raise ChaosError(f"workers not registered after {timeout:.0f}s:\n{self.fleet.records[0].log_tail()}")
            time.sleep(0.05)
        listen_deadline = time.monotonic() + 5
        while self.probe.one("listeners")[0] < self.params.workers and time.monotonic() < listen_deadline:
            time.sleep(0.05)

    def enqueue(self, items: list[tuple[str, Any]]) -> None:
        """Enqueue through the library (COPY), then ANALYZE so the claim plan fits the table."""
        self.ids += asyncio.run(_enqueue(self.url, items))
        self.probe.rows("analyze_jobs")
        self.enqueued_at = time.time()
        self.say(f"  [{self.name}] {len(self.ids)} jobs enqueued; {self.params.workers} worker(s) "
                 f"x {self.params.concurrency} slots")

    def work_items(self, count: int, **payload: float) -> list[tuple[str, Any]]:
        return [(WORK, payload)] * count

    # -- faults --------------------------------------------------------------------------------

    def begin_fault(self, kind: str, in_flight_query: str | None = "running_jobs") -> Fault:
        fault = Fault(kind, time.time())
        if in_flight_query:
            fault.in_flight |= self.probe.ids(in_flight_query)
        self.faults.append(fault)
        return fault

    def end_fault(self, fault: Fault, note: str = "") -> None:
        fault.ended = time.time()
        fault.note = note or fault.note
        self.say(f"  [{self.name}] fault {len(self.faults)}: {fault.kind} ({fault.ended - fault.started:.1f}s, "
                 f"{len(fault.in_flight)} job(s) in flight){': ' + fault.note if fault.note else ''}")

    @contextlib.contextmanager
    def fault(self, kind: str, in_flight_query: str | None = "running_jobs") -> Iterator[Fault]:
        fault = self.begin_fault(kind, in_flight_query)
        yield fault
        self.end_fault(fault)

    def _worker_died(self, record: WorkerRecord) -> None:
        """A worker exited on its own (not killed by us): a fault, with the jobs it held."""
        fault = Fault(f"worker exited ({record.returncode})", record.ended_at or time.time())
        with contextlib.suppress(*CONNECTION_ERRORS):
            fault.in_flight = self.probe.ids("running_jobs_of_pid", {"pid": str(record.pid)})
        fault.note = f"pid {record.pid}; restarted"
        self.faults.append(fault)
        self.end_fault(fault)

    # -- waiting -------------------------------------------------------------------------------

    def progress(self) -> Progress | None:
        row = self.probe.try_rows("progress", {"queue": CHAOS_QUEUE})
        if row is not None:
            self._last_progress = Progress(*row[0])
        return self._last_progress if row is not None else None

    def tick(self) -> Progress | None:
        current = self.progress()
        if time.monotonic() - self._last_said >= PROGRESS_EVERY:
            self._last_said = time.monotonic()
            shown = current or self._last_progress
            state = (f"succeeded {shown.succeeded}/{len(self.ids)} dead {shown.dead} running {shown.running}"
                     if shown else "")
            self.say(f"  [{self.name}] {time.time() - self.enqueued_at:6.1f}s {state}"
                     f"{'' if current else ' (database unreachable)'} faults {len(self.faults)} "
                     f"worker restarts {self.fleet.restarts}")
        return current

    def settled(self, current: Progress | None = None) -> bool:
        current = current or self._last_progress
        return current is not None and current.terminal >= len(self.ids)

    def wait(self, until: Callable[[Progress], bool], timeout: float, what: str) -> bool:
        """Poll until `until(progress)` holds; False (and a note) at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.tick()
            if current is not None and until(current):
                return True
            time.sleep(0.05)
        self.notes.append(f"timed out after {timeout:.0f}s waiting for {what}")
        return False

    def pause(self, seconds: float, stop_when_settled: bool = True) -> None:
        """Let the fault last `seconds` (showing progress); sooner once every job has ended."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop_when_settled and self.settled(self.tick()):
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def wait_for_share(self, share: float) -> bool:
        target = int(len(self.ids) * share)
        return self.wait(lambda p: p.terminal >= target, self.params.settle_timeout, f"{target} jobs to end")

    def wait_settled(self) -> None:
        if self.wait(self.settled, self.params.settle_timeout, "every job to end"):
            self.settled_at = time.time()

    # -- the report ----------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        self.fleet.stop()
        try:
            return self.report()
        finally:
            self.probe.close()

    def report(self) -> dict[str, Any]:
        probe = self.probe
        counts = dict(probe.retrying("status_counts", {"queue": CHAOS_QUEUE}))
        succeeded, dead, cancelled = counts.get("succeeded", 0), counts.get("dead", 0), counts.get("cancelled", 0)
        in_flight = set().union(*(fault.in_flight for fault in self.faults))
        repeated = dict(probe.retrying("repeated_side_effects"))
        dead_jobs = probe.retrying("dead_jobs", {"queue": CHAOS_QUEUE})
        finish_times = [row[0] for row in probe.retrying("finish_times", {"queue": CHAOS_QUEUE})]
        rescues = probe.retrying("lease_rescues")
        live_rescues = [{"job_id": job_id, "attempt": attempt, "worker_id": worker, "at": round(at - self.enqueued_at, 2)}
                        for job_id, attempt, worker, at in rescues if self._was_alive(worker, at)]
        log = self.server.log_since(self._log_offset) if self.server else None
        faults = [self._fault_report(fault, finish_times) for fault in self.faults]
        recoveries = [f["recovery_seconds"] for f in faults if f["recovery_seconds"] is not None]
        settles = [f["in_flight_settled_seconds"] for f in faults if f["in_flight_settled_seconds"] is not None]
        poison_ids = {job_id for job_id, kind in dead_jobs if kind == POISON}
        return {
            "scenario": self.name,
            "params": _params_report(self.params),
            "enqueued": len(self.ids),
            "succeeded": succeeded,
            "dead": dead,
            "cancelled": cancelled,
            "lost": len(self.ids) - succeeded - dead - cancelled,
            "not_terminal": {status: n for status, n in counts.items()
                             if status not in ("succeeded", "dead", "cancelled")},
            "side_effects": probe.retrying("side_effects")[0][0],
            "duplicated_jobs": len(repeated),
            "duplicated_runs": sum(n - 1 for n in repeated.values()),
            "duplicated_outside_in_flight": sorted(set(repeated) - in_flight),
            "in_flight_at_faults": len(in_flight),
            "faults": faults,
            "recovery_seconds": max(recoveries) if recoveries else None,
            "in_flight_settled_seconds": max(settles) if settles else None,
            "throughput": self._throughput(finish_times),
            "rescues": len(rescues),
            "rescues_of_live_worker": len(live_rescues),
            "live_worker_rescues": live_rescues[:20],
            "innocent_dead": [job_id for job_id, kind in dead_jobs if kind != POISON],
            "poison_dead": len(poison_ids),
            "deadlocks": None if log is None else log.count("deadlock detected"),
            "lock_waits": None if log is None else log.count("still waiting for"),
            "worker_restarts": self.fleet.restarts,
            "worker_exits": sum(1 for r in self.fleet.records if r.ended_at and not r.killed and r.returncode),
            "settled_seconds": round(self.settled_at - self.enqueued_at, 2) if self.settled_at else None,
            "notes": self.notes,
            "worker_logs": str(self.log_dir),
            **self.extra,
        }

    def _was_alive(self, worker_id: str, at: float) -> bool:
        parts = worker_id.rsplit(":", 2)  # host:pid:random
        pid = parts[1] if len(parts) == 3 else ""
        return any(str(record.pid) == pid and record.alive_at(at) for record in self.fleet.records)

    def _fault_report(self, fault: Fault, finish_times: list[float]) -> dict[str, Any]:
        ended = fault.ended or fault.started
        after = [t for t in finish_times if t >= ended]
        settled = None
        if fault.in_flight:
            row = self.probe.retrying("last_settled", {"ids": sorted(fault.in_flight)})[0]
            settled = None if row[0] is None else round(max(0.0, row[0] - ended), 2)
        return {
            "kind": fault.kind,
            "at": round(fault.started - self.enqueued_at, 2),
            "seconds": round(ended - fault.started, 2),
            "in_flight": len(fault.in_flight),
            # the queue moving again: the first completion after the fault ended
            "recovery_seconds": round(after[0] - ended, 2) if after else None,
            # every job in flight at the fault in a terminal state again
            "in_flight_settled_seconds": settled,
            "note": fault.note,
            **fault.details,
        }

    def _throughput(self, finish_times: list[float]) -> dict[str, float | None]:
        """Jobs per second before the first fault, during the faults, after the last one."""
        def rate(start: float, end: float) -> float | None:
            if end - start <= 0:
                return None
            return round(sum(1 for t in finish_times if start <= t < end) / (end - start), 1)

        if not finish_times:
            return {"before": None, "during": None, "after": None}
        last = finish_times[-1] + 1e-6
        if not self.faults:
            return {"overall": rate(self.enqueued_at, last)}
        first_start = min(fault.started for fault in self.faults)
        last_end = max(fault.ended or fault.started for fault in self.faults)
        return {"before": rate(self.enqueued_at, first_start), "during": rate(first_start, last_end),
                "after": rate(last_end, last)}

    def buckets(self, finish_times: list[float], width: float, since: float) -> list[dict[str, float]]:
        """Completions per second in windows of `width` seconds from `since`."""
        counts: dict[int, int] = {}
        for t in finish_times:
            if t >= since:
                counts[int((t - since) // width)] = counts.get(int((t - since) // width), 0) + 1
        return [{"from": round(index * width, 1), "jobs_per_second": round(counts.get(index, 0) / width, 1)}
                for index in range(max(counts) + 1 if counts else 0)]


def _params_report(params: Params) -> dict[str, Any]:
    return asdict(params)


async def _enqueue(url: str, items: list[tuple[str, Any]]) -> list[int]:
    from pgqueue.queue import Queue

    ids: list[int] = []
    queue = await Queue.connect(url, chaos_jobs, max_size=1)
    try:
        for start in range(0, len(items), ENQUEUE_CHUNK):
            ids += await queue.enqueue_many(items[start:start + ENQUEUE_CHUNK])
    finally:
        await queue.close()
    return ids
