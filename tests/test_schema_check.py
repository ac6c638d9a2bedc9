"""A worker on a database whose schema is missing or behind says so in one line and exits
non-zero, instead of a traceback from the first statement that meets a missing table."""

from __future__ import annotations

import subprocess
import sys

from tests.process_fixtures import REPO_ROOT, empty_db, process_env, run_cli  # noqa: F401 - a fixture

MIGRATE_HINT = "run `python -m pgqueue migrate` first"


def run_worker_once(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqueue", "worker", "--app", "tests.jobs", "--grace", "1"],
                          cwd=REPO_ROOT, env=process_env(url), capture_output=True, text=True, timeout=60)


def assert_one_error_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 4, done.stderr  # README: 4, database unreachable or not migrated
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and MIGRATE_HINT in errors[0], done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]


def test_a_worker_on_an_empty_database_says_to_migrate(empty_db: str):  # noqa: F811
    assert_one_error_line(run_worker_once(empty_db), "error: the database schema is missing")


def test_a_worker_on_a_database_behind_the_shipped_migrations_names_them(empty_db: str):  # noqa: F811
    assert run_cli("migrate", database_url=empty_db).returncode == 0
    rolled_back = run_cli("migrate", "--rollback", "1", database_url=empty_db)
    assert rolled_back.returncode == 0, rolled_back.stderr
    last = rolled_back.stdout.strip().removeprefix("rolled back: ")
    assert_one_error_line(run_worker_once(empty_db), f"error: the database schema is behind (1 migration(s) not applied: {last})")
