"""Helpers for tests that run real `python -m pgqueue` processes: worker subprocesses with short
leases and their own log files, one-shot CLI runs, and small SQL helpers that survive outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PgServer, scratch_database
from tests.helpers import wait_for_sync

REPO_ROOT = Path(__file__).resolve().parent.parent

# Short timings so lease expiry and rescue happen within seconds, not minutes.
LEASE_SECONDS = 2.0
HEARTBEAT_SECONDS = 0.5
POLL_SECONDS = 0.5

TEST_TABLES = (
    "CREATE TABLE IF NOT EXISTS test_runs (job_id bigint, key text, worker_pid int, at timestamptz DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS test_items (job_id bigint, item int)",
)


def process_env(database_url: str | None, **overrides: str) -> dict[str, str]:
    """The environment of a pgqueue subprocess: our short timings, unbuffered output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PGQUEUE_")}
    env.update(
        PGQUEUE_LEASE_SECONDS=str(LEASE_SECONDS),
        PGQUEUE_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        PGQUEUE_POLL_SECONDS=str(POLL_SECONDS),
        PGQUEUE_MAINTENANCE_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["PGQUEUE_DATABASE_URL"] = database_url
    env.update(overrides)
    return env


def query(url: str, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection (so a server restart never leaves us a dead one)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def scalar(url: str, sql: str, params: Sequence[Any] | None = None) -> Any:
    return query(url, sql, params)[0][0]


def try_scalar(url: str, sql: str, params: Sequence[Any] | None = None) -> Any:
    """Like scalar(), but None while the server is unreachable (for polling through an outage)."""
    try:
        return scalar(url, sql, params)
    except psycopg.OperationalError:
        return None


def status_counts(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs GROUP BY status"))


def enqueue_marks(url: str, count: int, *, sleep: float = 0.0, kind: str = "mark", prefix: str = "m") -> list[int]:
    """Enqueue `count` mark-like jobs in one round trip (through the library's sync enqueue)."""
    from pgqueue.queue import SyncQueue
    from tests.jobs import jobs

    created = SyncQueue(url, jobs).enqueue_many([(kind, {"key": f"{prefix}{i}", "sleep": sleep}) for i in range(count)])
    return [job.id for job in created]


class WorkerProcess:
    """One `python -m pgqueue worker --app tests.jobs` subprocess logging to its own file."""

    def __init__(self, database_url: str, log_path: Path, *, app: str = "tests.jobs", queues: str = "default",
                 concurrency: int = 4, grace: float = 10.0, env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.env = env or {}
        self.log_path = log_path
        self.args = [
            sys.executable, "-m", "pgqueue", "worker", "--app", app,
            "--queues", queues, "--concurrency", str(concurrency), "--grace", str(grace),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, env=process_env(self.database_url, **self.env),
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_id(self, timeout: float = 30.0) -> str:
        """Wait until the worker registered itself in pgqueue.workers; returns its id."""

        def registered() -> str | None:
            assert self.is_alive(), f"worker exited early:\n{self.output()}"
            return try_scalar(self.database_url, "SELECT max(id) FROM pgqueue.workers WHERE pid = %s", [self.pid])

        return wait_for_sync(registered, timeout=timeout, interval=0.05, message=f"worker {self.pid} to register")

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.wait(10)

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} still running after {timeout}s:\n{self.output()}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ensure_stopped(self) -> None:
        if self.is_alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def spawn_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses; all are killed at teardown and their logs printed
    (pytest shows that output only when the test failed).

    A test parametrised with ``route`` (tests/scaleout_fixtures.py) runs its workers on that
    route: through PgBouncer, with PGQUEUE_DIRECT_DATABASE_URL for their sessions. The test's
    own queries stay direct."""
    log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-workers-"))
    started: list[WorkerProcess] = []
    route = request.getfixturevalue("route") if "route" in request.fixturenames else None

    def spawn(database_url: str, **options: Any) -> WorkerProcess:
        if route is not None and route.pooled and database_url == route.direct_url:
            options["env"] = {**route.env(), **options.get("env", {})}
        worker = WorkerProcess(database_url, log_dir / f"worker-{len(started)}.log", **options)
        started.append(worker)
        return worker.start()

    try:
        yield spawn
    finally:
        for worker in started:
            worker.ensure_stopped()
        for worker in started:
            print(f"\n----- worker pid {worker.process.pid if worker.process else '?'} "
                  f"(exit {worker.process.returncode if worker.process else '?'}) -----\n{worker.output()[-20000:]}")


@pytest.fixture
def proc_db(db_url: str) -> str:
    """A fresh migrated database with the tables the test job kinds write to."""
    for statement in TEST_TABLES:
        query(db_url, statement)
    return db_url


@pytest.fixture(scope="module")
def shared_db(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """One migrated database for a whole module of tests that only read it or must leave it untouched."""
    with scratch_database(pg_server, "s", template_db) as url:
        yield url


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    with scratch_database(pg_server, "m") as url:
        yield url


def run_cli(*args: str, database_url: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m pgqueue ARGS` to completion, output captured."""
    return subprocess.run([sys.executable, "-m", "pgqueue", *args], cwd=REPO_ROOT, env=process_env(database_url),
                          capture_output=True, text=True, timeout=timeout)
