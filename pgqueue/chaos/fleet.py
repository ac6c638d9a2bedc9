"""Worker processes of a chaos run: `python -m pgqueue worker --app pgqueue.chaos.jobs`
subprocesses, each logging to its own file, watched by a thread that restarts the ones that
die and remembers when each process lived (to tell a rescue of a live worker from a dead one's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgqueue.chaos.jobs import CHAOS_QUEUE

WATCH_INTERVAL = 0.05


@dataclass
class WorkerTimings:
    """Short timings for the worker processes (PGQUEUE_* environment variables)."""

    lease: float = 5.0
    heartbeat: float = 1.0
    poll: float = 1.0
    maintenance: float = 1.0

    def env(self, url: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PGQUEUE_")}
        env.update(PGQUEUE_DATABASE_URL=url, PGQUEUE_LEASE_SECONDS=str(self.lease),
                   PGQUEUE_HEARTBEAT_SECONDS=str(self.heartbeat), PGQUEUE_POLL_SECONDS=str(self.poll),
                   PGQUEUE_MAINTENANCE_SECONDS=str(self.maintenance), PYTHONUNBUFFERED="1")
        return env


@dataclass
class WorkerRecord:
    """One worker process: when it lived (wall clock, time.time()) and how it ended."""

    pid: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    ended_at: float | None = None
    returncode: int | None = None
    killed: bool = False  # by the harness (SIGKILL), as opposed to dying on its own

    def alive_at(self, moment: float) -> bool:
        return self.started_at <= moment and (self.ended_at is None or moment < self.ended_at)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


@dataclass
class Fleet:
    """`count` worker processes kept running: a dead one is replaced (and reported to on_death)."""

    url: str
    log_dir: Path
    count: int
    concurrency: int
    timings: WorkerTimings
    on_death: Callable[[WorkerRecord], None] | None = None
    records: list[WorkerRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for _ in range(self.count):
                self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="chaos-fleet", daemon=True)
        self._watcher.start()

    def _spawn(self) -> WorkerRecord:
        log_path = self.log_dir / f"worker-{len(self.records)}.log"
        args = [sys.executable, "-m", "pgqueue", "--log-level", "WARNING", "worker", "--app", "pgqueue.chaos.jobs",
                "--queues", CHAOS_QUEUE, "--concurrency", str(self.concurrency), "--grace", "10"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, env=self.timings.env(self.url), stdout=log, stderr=subprocess.STDOUT)
        record = WorkerRecord(process.pid, process, log_path, time.time())
        self.records.append(record)
        return record

    def alive(self) -> list[WorkerRecord]:
        with self._lock:
            return [record for record in self.records if record.ended_at is None]

    @property
    def restarts(self) -> int:
        return len(self.records) - self.count

    def kill(self, record: WorkerRecord) -> WorkerRecord:
        """SIGKILL one worker and start its replacement; returns the replacement."""
        with self._lock:
            record.killed = True
            record.ended_at = time.time()
            record.process.send_signal(signal.SIGKILL)
            record.returncode = record.process.wait(30)
            return self._spawn()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            died: list[WorkerRecord] = []
            with self._lock:
                for record in self.records:
                    if record.ended_at is None and record.process.poll() is not None:
                        record.ended_at = time.time()
                        record.returncode = record.process.returncode
                        died.append(record)
                        if not self._stop.is_set():
                            self._spawn()
            for record in died:
                if self.on_death is not None:
                    self.on_death(record)

    def stop(self) -> None:
        """SIGTERM the live workers (their running jobs finish or are released), then reap them."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        with self._lock:
            live = [record for record in self.records if record.ended_at is None]
            for record in live:
                if record.process.poll() is None:
                    record.process.send_signal(signal.SIGTERM)
            for record in live:
                try:
                    record.returncode = record.process.wait(30)
                except subprocess.TimeoutExpired:
                    record.process.kill()
                    record.returncode = record.process.wait(10)
                record.ended_at = time.time()
