"""Settings refuse impossible values at start: one ConfigError naming the variable and the rule,
one `error:` line and a non-zero exit from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.settings import AppSettings
from pgqueue.config import Settings
from pgqueue.errors import ConfigError
from pgqueue.queue import Queue
from pgqueue.worker import Worker
from tests.engine_fixtures import fast_settings
from tests.process_fixtures import REPO_ROOT, process_env

# Nothing listens here: every command below must fail on its settings before connecting.
NO_DATABASE = "postgresql://127.0.0.1:1/none"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("PGQUEUE_", "APP_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("variable", "value", "rule"), [
    ("PGQUEUE_LEASE_SECONDS", "-5", ">= 1"),
    ("PGQUEUE_LEASE_SECONDS", "0.5", ">= 1"),
    ("PGQUEUE_LEASE_SECONDS", "inf", ">= 1"),
    ("PGQUEUE_HEARTBEAT_SECONDS", "0", ">= 0.05"),
    ("PGQUEUE_HEARTBEAT_SECONDS", "nan", ">= 0.05"),
    ("PGQUEUE_HEARTBEAT_SECONDS", "20", "at most a third of PGQUEUE_LEASE_SECONDS"),
    ("PGQUEUE_POLL_SECONDS", "0", ">= 0.01"),
    ("PGQUEUE_MAINTENANCE_SECONDS", "-1", ">= 0.01"),
    ("PGQUEUE_KEEP_SUCCEEDED_SECONDS", "-1", ">= 0"),
    ("PGQUEUE_KEEP_EVENTS_SECONDS", "nan", ">= 0"),
])
def test_engine_settings_refuse_impossible_values(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                                  rule: str):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env()
    message = str(raised.value)
    assert variable in message and rule in message, message
    assert "\n" not in message


def test_constructed_settings_are_checked_too():
    with pytest.raises(ConfigError, match="PGQUEUE_LEASE_SECONDS"):
        Settings(lease_seconds=-5)


def test_the_timings_the_test_suite_uses_are_valid():
    # tests/process_fixtures.py (subprocesses) and tests/engine_fixtures.py (in-process workers)
    Settings(lease_seconds=2, heartbeat_seconds=0.5, poll_seconds=0.5, maintenance_seconds=1)
    fast_settings("postgresql://localhost/x", keep_succeeded_seconds=0, keep_failed_seconds=0, keep_events_seconds=0)
    assert Settings() == Settings.from_env()  # the defaults pass


@pytest.mark.parametrize("concurrency", [0, -3, 1001])
async def test_worker_refuses_a_concurrency_out_of_range(queue: Queue, concurrency: int):
    with pytest.raises(ConfigError, match="concurrency must be an integer from 1 to 1000"):
        Worker(queue, ["default"], concurrency)


@pytest.mark.parametrize(("variable", "value"), [
    ("APP_WORKER_CONCURRENCY", "0"),
    ("APP_POOL_SIZE", "0"),
    ("APP_STREAM_TOKEN_SECONDS", "0"),
    ("APP_SSE_KEEPALIVE_SECONDS", "0"),
    ("APP_SSE_RETRY_MS", "-1"),
    ("APP_SSE_QUEUE_SIZE", "0"),
    ("APP_WORKER_SHUTDOWN_GRACE", "-1"),
    ("APP_MAX_BODY_BYTES", "0"),
    ("APP_INGEST_LINE_DELAY_MAX_SECONDS", "nan"),
])
def test_app_settings_refuse_impossible_values(monkeypatch: pytest.MonkeyPatch, variable: str, value: str):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        AppSettings.from_env()


def _run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          env=process_env(NO_DATABASE, **env), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--concurrency", "0"], {}, "error: --concurrency must be an integer from 1 to 1000, got 0"),
    (["--grace", "-1"], {}, "error: --grace must be a finite number of seconds >= 0, got -1.0"),
    ([], {"PGQUEUE_LEASE_SECONDS": "-5"}, "error: PGQUEUE_LEASE_SECONDS must be a finite number of seconds >= 1"),
    ([], {"PGQUEUE_HEARTBEAT_SECONDS": "0"}, "error: PGQUEUE_HEARTBEAT_SECONDS must be a finite number"),
])
def test_the_worker_command_prints_one_line_and_exits_non_zero(args: list[str], env: dict[str, str], expected: str):
    done = _run("pgqueue", "worker", "--app", "tests.jobs", *args, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith(expected), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_app_command_refuses_a_zero_concurrency():
    done = _run("app", "run", "--concurrency", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: --concurrency must be an integer from 1 to 1000, got 0"
