"""Real `python -m pgqueue` processes against a real PostgreSQL: two workers sharing 2,000 jobs,
kill -9, a database restart, graceful shutdown, the CLI's bad-input handling, and heartbeats
while a sync handler burns CPU."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from pgqueue.__main__ import build_parser
from pgqueue.embedded import EmbeddedPostgres, free_port
from pgqueue.migrate import schema_dir
from tests.conftest import PgServer
from tests.helpers import wait_for_sync
from tests.process_fixtures import (  # noqa: F401 - fixtures
    LEASE_SECONDS,
    REPO_ROOT,
    WorkerProcess,
    empty_db,
    enqueue_marks,
    proc_db,
    process_env,
    query,
    run_cli,
    scalar,
    shared_db,
    spawn_worker,
    status_counts,
    try_scalar,
)


def running_on(url: str, worker_id: str) -> list[int]:
    rows = query(url, "SELECT id FROM pgqueue.jobs WHERE status = 'running' AND lease_owner = %s ORDER BY id",
                 [worker_id])
    return [row[0] for row in rows]


def runs_per_job(url: str) -> dict[int, int]:
    return dict(query(url, "SELECT job_id, count(*) FROM test_runs GROUP BY job_id"))


# Each test so marked runs twice: workers connected directly, then through PgBouncer in
# transaction-pooling mode (their LISTEN, heartbeat and leader lock on the direct URL).
through_pgbouncer_too = pytest.mark.parametrize("route", ["direct", "pgbouncer"], indirect=True)


def all_succeeded(url: str, expected: int) -> bool:
    return status_counts(url) == {"succeeded": expected}


# -- many jobs, two processes ------------------------------------------------------------------


@through_pgbouncer_too
def test_two_worker_processes_run_each_of_2000_jobs_exactly_once(proc_db, spawn_worker, route):  # noqa: F811
    workers = [spawn_worker(proc_db, concurrency=10) for _ in range(2)]
    for worker in workers:
        worker.worker_id()

    ids = enqueue_marks(proc_db, 2000)
    wait_for_sync(lambda: all_succeeded(proc_db, 2000), timeout=90, interval=0.2,
                  message="2,000 jobs to succeed")

    runs = runs_per_job(proc_db)
    assert set(runs) == set(ids)
    assert {job_id: n for job_id, n in runs.items() if n != 1} == {}, "some jobs ran more than once"
    pids = dict(query(proc_db, "SELECT worker_pid, count(*) FROM test_runs GROUP BY worker_pid"))
    assert set(pids) == {w.pid for w in workers}, f"both processes should have worked: {pids}"
    assert scalar(proc_db, "SELECT max(attempts) FROM pgqueue.jobs") == 1
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.job_errors") == 0

    for worker in workers:
        worker.terminate()
    assert [worker.wait(30) for worker in workers] == [0, 0]


# -- kill -9 -----------------------------------------------------------------------------------


@through_pgbouncer_too
def test_jobs_of_a_worker_killed_with_sigkill_are_rescued_and_finished(proc_db, spawn_worker, route):  # noqa: F811
    victim = spawn_worker(proc_db, concurrency=3)
    victim_id = victim.worker_id()
    ids = enqueue_marks(proc_db, 6, sleep=3.0)
    wait_for_sync(lambda: len(running_on(proc_db, victim_id)) == 3, message="the victim to run 3 jobs")

    victim.kill()
    killed = running_on(proc_db, victim_id)
    assert len(killed) == 3, "the worker should have died in the middle of its jobs"

    rescuer = spawn_worker(proc_db, concurrency=3)
    wait_for_sync(lambda: all_succeeded(proc_db, 6), timeout=60, interval=0.1, message="every job to succeed")

    assert runs_per_job(proc_db) == dict.fromkeys(ids, 1), "each job must have run exactly once"
    rescued_runs = query(proc_db, "SELECT job_id, worker_pid FROM test_runs WHERE job_id = ANY(%s)", [killed])
    assert {pid for _, pid in rescued_runs} == {rescuer.pid}
    errors = query(proc_db, "SELECT job_id, attempt, worker_id, error FROM pgqueue.job_errors ORDER BY job_id")
    assert [(job_id, attempt, worker) for job_id, attempt, worker, _ in errors] == [(i, 1, victim_id) for i in killed]
    assert all(error.startswith("lease expired") for *_, error in errors), errors
    # three jobs were running beside each other when the worker died: which one (if any) killed it
    # cannot be told, so the crash costs none of them an attempt; each then ran alone
    attempts = dict(query(proc_db, "SELECT id, attempts FROM pgqueue.jobs"))
    assert {i: attempts[i] for i in killed} == dict.fromkeys(killed, 1)
    rescued_events = query(proc_db, "SELECT job_id, data->>'counted' FROM pgqueue.events WHERE type = 'rescued' "
                                    "ORDER BY job_id")
    assert rescued_events == [(i, "false") for i in killed]
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s) AND lease_charged", [killed]) == 3


# -- database restart --------------------------------------------------------------------------


def marks_partway(pg_server: PgServer, proc_db: str, spawn_worker: Callable[..., WorkerProcess], *,  # noqa: F811
                  concurrency: int, count: int, sleep: float,
                  finished: int) -> tuple[EmbeddedPostgres, WorkerProcess, list[int]]:
    """The suite's embedded server (skip without one: the outage tests stop it), and a worker
    that has finished `finished` of `count` mark jobs."""
    server = pg_server.embedded
    if server is None:
        pytest.skip("needs the suite's embedded PostgreSQL (it stops and starts the server)")
    worker = spawn_worker(proc_db, concurrency=concurrency)
    worker.worker_id()
    ids = enqueue_marks(proc_db, count, sleep=sleep)
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM test_runs") >= finished, message="some jobs to finish")
    return server, worker, ids


def test_worker_survives_a_postgres_restart_and_loses_nothing(pg_server: PgServer, proc_db, spawn_worker):  # noqa: F811
    server, worker, ids = marks_partway(pg_server, proc_db, spawn_worker, concurrency=4, count=30, sleep=0.3,
                                        finished=4)

    failures_before = worker.output().count("heartbeat failed")
    try:
        server.stop()
        # keep the server down (longer than a lease) until the worker has failed to reach it again and again
        wait_for_sync(lambda: worker.output().count("heartbeat failed") >= failures_before + 6, timeout=30,
                      interval=0.1, message="the worker to notice the outage and retry")
        assert worker.is_alive(), "the worker must not exit when the database goes away"
    finally:
        if not server.is_running():
            server.start()

    # the LISTEN connection comes back by itself
    wait_for_sync(
        lambda: try_scalar(proc_db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND application_name = 'pgqueue-worker-listen'"),
        timeout=30, interval=0.1, message="the worker to LISTEN again")
    later = enqueue_marks(proc_db, 1, prefix="after-restart")
    wait_for_sync(lambda: all_succeeded(proc_db, 31), timeout=60, interval=0.2,
                  message="every job (before and after the restart) to succeed")

    # at least once: a job whose work committed just before the outage may run again after it
    assert set(runs_per_job(proc_db)) == set(ids + later)
    assert worker.is_alive()
    assert "LISTEN connection lost" in worker.output()
    worker.terminate()
    assert worker.wait(30) == 0


def test_worker_survives_a_postgres_crash_and_loses_nothing(pg_server: PgServer, proc_db, spawn_worker):  # noqa: F811
    """An immediate stop is a crash: commits not yet flushed are gone (the worker's claims do
    not wait for the flush). A claim lost that way puts its job back in the queue; every job
    still ends up succeeded, having run at least once. The database commits durably here, as
    in production: with the suite's asynchronous commits, a handler's side effect acknowledged
    just before the crash could be lost while its completion, retried after the restart, is not."""
    query(proc_db, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', "
                   "current_database()); END $$")
    server, worker, ids = marks_partway(pg_server, proc_db, spawn_worker, concurrency=8, count=200, sleep=0.05,
                                        finished=20)
    try:
        server.stop("immediate")
        assert not server.is_running()
    finally:
        if not server.is_running():
            server.start()
    wait_for_sync(lambda: try_scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'") == 200,
                  timeout=90, interval=0.2, message="every job to succeed after the crash")
    assert status_counts(proc_db) == {"succeeded": 200}
    assert set(runs_per_job(proc_db)) == set(ids)  # each ran, some perhaps twice (at least once)
    assert worker.is_alive()
    worker.terminate()
    assert worker.wait(30) == 0


# -- graceful shutdown -------------------------------------------------------------------------


@through_pgbouncer_too
def test_sigterm_lets_running_jobs_finish_and_claims_nothing_new(proc_db, spawn_worker, route):  # noqa: F811
    worker = spawn_worker(proc_db, concurrency=4, grace=30)
    worker_id = worker.worker_id()
    ids = enqueue_marks(proc_db, 6, sleep=2.0)
    wait_for_sync(lambda: len(running_on(proc_db, worker_id)) == 4, message="4 running jobs")
    running = running_on(proc_db, worker_id)

    worker.terminate()
    assert worker.wait(30) == 0

    jobs = {job_id: (status, attempts) for job_id, status, attempts
            in query(proc_db, "SELECT id, status, attempts FROM pgqueue.jobs")}
    assert {i: jobs[i] for i in running} == dict.fromkeys(running, ("succeeded", 1))
    waiting = [i for i in ids if i not in running]
    assert {i: jobs[i] for i in waiting} == dict.fromkeys(waiting, ("queued", 0)), "no job claimed after SIGTERM"
    assert runs_per_job(proc_db) == dict.fromkeys(running, 1)
    assert "SIGTERM received" in worker.output()


@through_pgbouncer_too
def test_sigterm_releases_jobs_that_outlast_the_grace_period(proc_db, spawn_worker, route):  # noqa: F811
    worker = spawn_worker(proc_db, concurrency=2, grace=0.5)
    worker_id = worker.worker_id()
    ids = enqueue_marks(proc_db, 1, sleep=60) + enqueue_marks(proc_db, 1, sleep=60, kind="sync_mark")
    wait_for_sync(lambda: running_on(proc_db, worker_id) == ids, message="both jobs running")

    worker.terminate()
    assert worker.wait(20) == 0

    jobs = query(proc_db, "SELECT id, status, attempts, lease_token FROM pgqueue.jobs ORDER BY id")
    assert jobs == [(i, "queued", 0, None) for i in ids], "unfinished jobs go back to the queue, attempt not counted"
    released = query(proc_db, "SELECT job_id FROM pgqueue.events WHERE type = 'released' ORDER BY job_id")
    assert [row[0] for row in released] == ids
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.job_errors") == 0
    assert scalar(proc_db, "SELECT count(*) FROM test_runs") == 0


# -- sync handler burning CPU ------------------------------------------------------------------


@through_pgbouncer_too
def test_cpu_bound_sync_handler_keeps_its_lease(proc_db, spawn_worker, route):  # noqa: F811
    # An idle worker on another queue holds the maintenance lock, so a rescue would happen even
    # if the busy worker's own loop were starved.
    watchdog = spawn_worker(proc_db, queues="watchdog", concurrency=1)
    wait_for_sync(lambda: "is the maintenance leader" in watchdog.output(), message="the watchdog to lead")
    busy = spawn_worker(proc_db, concurrency=2)
    busy.worker_id()

    burn_seconds = LEASE_SECONDS * 3  # without heartbeats the lease would lapse long before the job ends
    from pgqueue.queue import SyncQueue
    from tests.jobs import jobs

    job_id = SyncQueue(proc_db, jobs).enqueue("busy", {"seconds": burn_seconds}).id
    # the lease moves forward while the handler is still burning CPU
    wait_for_sync(
        lambda: scalar(proc_db, "SELECT status = 'running' AND lease_expires_at > started_at + make_interval(secs => %s) "
                                "FROM pgqueue.jobs WHERE id = %s", [LEASE_SECONDS * 1.75, job_id]),
        timeout=30, interval=0.05, message="a heartbeat to extend the busy job's lease")
    wait_for_sync(lambda: all_succeeded(proc_db, 1), timeout=60, interval=0.1, message="the busy job to succeed")

    attempts, result = query(proc_db, "SELECT attempts, result FROM pgqueue.jobs WHERE id = %s", [job_id])[0]
    assert attempts == 1
    assert isinstance(result, int) and result > 0
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.job_errors") == 0
    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.events WHERE type IN ('rescued', 'started')") == 1
    assert "lease lost" not in busy.output()
    assert watchdog.is_alive()


# -- the CLI -----------------------------------------------------------------------------------

SUBCOMMANDS = ["migrate", "worker", "enqueue", "queues", "schedules", "stats", "dev", "bench", "chaos"]


def test_subcommand_list_is_complete():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("args", [[], *[[name] for name in SUBCOMMANDS]], ids=["main", *SUBCOMMANDS])
def test_every_subcommand_has_help(args):
    done = run_cli(*args, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m pgqueue")
    assert done.stderr == ""


def unreachable_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


BAD_ENQUEUES = {
    "unknown kind": (["enqueue", "no_such_kind", "{}", "--app", "tests.jobs"], "unknown job kind 'no_such_kind'"),
    "wrong field type": (["enqueue", "email", '{"to": 42}', "--app", "tests.jobs"], "payload.to"),
    "missing field": (["enqueue", "email", '{"subject": "hi"}', "--app", "tests.jobs"], "missing required field `to`"),
    "priority too high": (["enqueue", "email", '{"to": "a@b.c"}', "--app", "tests.jobs", "--priority", "9"],
                          "priority: must be an integer from 1 to 5"),
    "priority too low": (["enqueue", "noop", "--app", "tests.jobs", "--priority", "0"], "priority"),
    "malformed JSON": (["enqueue", "email", '{"to": ', "--app", "tests.jobs"], "not valid JSON"),
    "bad run_at": (["enqueue", "noop", "--app", "tests.jobs", "--run-at", "tomorrow"], "run_at"),
    "unknown app": (["enqueue", "noop", "--app", "tests.no_such_module"], "cannot import --app module"),
}


@pytest.mark.parametrize("case", list(BAD_ENQUEUES))
def test_enqueue_rejects_bad_input_and_writes_nothing(shared_db, case):  # noqa: F811
    # one database for every case: each checks that the table is still empty after it ran
    args, expected = BAD_ENQUEUES[case]
    done = run_cli(*args, database_url=shared_db)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert done.stderr.startswith("error:"), "a one-line message, not a traceback"
    assert "Traceback" not in done.stderr
    assert scalar(shared_db, "SELECT count(*) FROM pgqueue.jobs") == 0


BAD_DATABASES = {
    "wrong scheme": ("mysql://user@localhost/db", "scheme must be postgresql://"),
    "bad port": ("postgresql://user@localhost:notaport/db", "malformed database URL"),
    "not a URL": ("just-a-hostname", "malformed database URL"),
    "nothing listening": (None, "cannot connect to PostgreSQL"),
}


@pytest.mark.parametrize("command", [["enqueue", "--untyped", "noop", "{}"], ["migrate"], ["stats"], ["worker", "--app", "tests.jobs"]],
                         ids=["enqueue", "migrate", "stats", "worker"])
@pytest.mark.parametrize("case", list(BAD_DATABASES))
def test_bad_or_unreachable_database_gives_a_clear_error(case, command):
    url, expected = BAD_DATABASES[case]
    done = run_cli(*command, "--database-url", url or unreachable_url())
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_missing_database_url_is_named():
    done = run_cli("enqueue", "--untyped", "noop")
    assert done.returncode != 0
    assert "no database URL" in done.stderr


def test_enqueue_then_stats_prints_the_depth_table(db_url):
    assert run_cli("stats", database_url=db_url).stdout.splitlines()[-1] == "(no jobs)"
    first = run_cli("enqueue", "email", '{"to": "a@b.c"}', "--app", "tests.jobs", "--count", "2", database_url=db_url)
    second = run_cli("enqueue", "noop", "--app", "tests.jobs", "--priority", "5", "--count", "3", database_url=db_url)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "email on mail, priority 3, queued" in first.stdout

    done = run_cli("stats", database_url=db_url)
    assert done.returncode == 0, done.stderr
    header, *rows = [line.split() for line in done.stdout.splitlines()]
    assert header == ["queue", "waiting", "queued", "running", "failed", "succeeded", "dead", "cancelled"]
    table = {row[0]: dict(zip(header[1:], map(int, row[1:]), strict=True)) for row in rows}
    assert table == {
        "default": {"waiting": 0, "queued": 3, "running": 0, "failed": 0, "succeeded": 0, "dead": 0, "cancelled": 0},
        "mail": {"waiting": 0, "queued": 2, "running": 0, "failed": 0, "succeeded": 0, "dead": 0, "cancelled": 0},
    }
    assert query(db_url, "SELECT DISTINCT kind, priority FROM pgqueue.jobs ORDER BY kind") == [("email", 3), ("noop", 5)]


# -- migrate -----------------------------------------------------------------------------------


def migration_ids() -> list[str]:
    from yoyo import read_migrations

    return [m.id for m in read_migrations(str(schema_dir()))]


def applied_migrations(url: str) -> list[str]:
    return [row[0] for row in query(url, "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]


def user_tables(url: str) -> set[str]:
    rows = query(url, "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                      "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_name NOT LIKE '%yoyo%'")
    return {row[0] for row in rows}


EVENT_TYPE_CHECK = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_type_check'"


def test_migrate_is_idempotent_and_rolls_back_and_reapplies(empty_db):  # noqa: F811
    ids = migration_ids()
    first = run_cli("migrate", database_url=empty_db)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "applied: " + ", ".join(ids)
    tables = user_tables(empty_db)
    assert "pgqueue.jobs" in tables

    again = run_cli("migrate", database_url=empty_db)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied: nothing (up to date)"
    assert applied_migrations(empty_db) == ids

    # back to 0002: through 0004, which changes a constraint, and 0003, which made tables
    later = ids[2:]
    back = run_cli("migrate", "--rollback", str(len(later)), database_url=empty_db)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "rolled back: " + ", ".join(reversed(later))
    assert applied_migrations(empty_db) == ids[:2]
    assert user_tables(empty_db) < tables, "the rollback should have removed tables"
    assert "~" in query(empty_db, EVENT_TYPE_CHECK)[0][0], "0004 rolled back: the pattern check again"

    redo = run_cli("migrate", database_url=empty_db)
    assert redo.returncode == 0, redo.stderr
    assert redo.stdout.strip() == "applied: " + ", ".join(later)
    assert "'progress'" in query(empty_db, EVENT_TYPE_CHECK)[0][0]
    assert user_tables(empty_db) == tables
    assert applied_migrations(empty_db) == ids


def test_four_concurrent_migrates_apply_the_schema_once(empty_db):  # noqa: F811
    runs = [
        subprocess.Popen([sys.executable, "-m", "pgqueue", "migrate"], cwd=REPO_ROOT, env=process_env(empty_db),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in outputs]
    summaries = sorted(out.strip() for out, _ in outputs)
    assert summaries == sorted(["applied: " + ", ".join(migration_ids())] + ["applied: nothing (up to date)"] * 3)
    assert applied_migrations(empty_db) == migration_ids()
    assert "pgqueue.jobs" in user_tables(empty_db)

