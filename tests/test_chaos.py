"""The chaos scenarios, small: each runs real worker processes against the suite's server
(restarting or crashing it when the scenario says so) through the harness's own functions, and
asserts what must hold after any fault: nothing lost, a job runs twice only if it was in flight
at a fault, no live worker loses a job to the rescuer, no innocent job dies, no deadlock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pgqueue.chaos.fleet import WorkerTimings
from pgqueue.chaos.harness import prepare_database
from pgqueue.chaos.scenarios import SCENARIOS, run_scenario
from pgqueue.chaos.server import ChaosServer
from tests.conftest import PgServer
from tests.process_fixtures import HEARTBEAT_SECONDS, LEASE_SECONDS, POLL_SECONDS, query, run_cli

# the suite's short timings (tests/process_fixtures.py): a lease expires within seconds
FAST = WorkerTimings(lease=LEASE_SECONDS, heartbeat=HEARTBEAT_SECONDS, poll=POLL_SECONDS, maintenance=0.5)


@pytest.fixture
def chaos_db(db_url: str) -> str:
    # The suite's server commits asynchronously (fast, not durable); a crash (immediate stop)
    # would then lose completions the workers saw commit, and their jobs would run again for a
    # reason that is the server's, not the engine's. Commits in this database wait for the WAL
    # write, which a server crash does not lose (fsync off only matters if the machine dies).
    name = query(db_url, "SELECT current_database()")[0][0]
    query(db_url, f"ALTER DATABASE {name} SET synchronous_commit = on")
    prepare_database(db_url)
    return db_url


@pytest.fixture
def server(pg_server: PgServer) -> ChaosServer | None:
    return ChaosServer.around(pg_server.embedded) if pg_server.embedded else None


@pytest.fixture
def own_server() -> Iterator[ChaosServer]:
    server = ChaosServer.own(max_connections=30)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def run(name: str, url: str, server: ChaosServer | None, **params: Any) -> dict[str, Any]:
    if SCENARIOS[name].needs_server and server is None:
        pytest.skip("needs the suite's embedded PostgreSQL (the scenario stops and starts the server)")
    report = run_scenario(name, url, server, say=print, **{"timings": FAST, **params})
    print(json.dumps(report, indent=2, default=sorted))
    return report


def assert_came_through(report: dict[str, Any]) -> None:
    assert report["lost"] == 0, report["not_terminal"]
    assert report["duplicated_outside_in_flight"] == [], "a job not in flight at any fault ran twice"
    assert report["live_worker_rescues"] == [], "the rescuer took jobs away from a live worker"
    assert report["innocent_dead"] == [], "jobs other than the poison job died"
    assert report["deadlocks"] in (0, None), "deadlock detected in the server log"


# -- the scenarios, scaled down ------------------------------------------------------------------


def test_sigkill_a_worker_every_second(chaos_db, server):
    report = run("sigkill", chaos_db, server, jobs=2000, fault_every=1.0, fault_seconds=3.0)
    assert [fault["kind"] for fault in report["faults"]].count("sigkill") >= 1
    assert report["succeeded"] == 2000
    assert_came_through(report)


def test_postgres_restart_fast_mid_drain(chaos_db, server):
    report = run("restart_fast", chaos_db, server, jobs=2000)
    assert [fault["kind"] for fault in report["faults"]] == ["restart -m fast"]
    assert report["succeeded"] == 2000
    assert_came_through(report)


def test_outage_longer_than_the_lease_keeps_the_results_finished_during_it(chaos_db, server):
    report = run("outage", chaos_db, server, jobs=80, workers=4, concurrency=5, work_after=1.0,
                 fault_seconds=LEASE_SECONDS * 2)
    assert report["faults"][0]["in_flight"] >= 20, "every slot busy when the server went down"
    assert report["outage"]["in_flight_past_side_effect"] > 0
    assert report["outage"]["of_those_run_again"] == 0, "work finished during the outage was thrown away and re-run"
    assert report["succeeded"] == 80
    assert_came_through(report)


def test_every_pgqueue_backend_terminated_twice(chaos_db, server):
    report = run("terminate", chaos_db, server, jobs=3000)
    assert len(report["faults"]) == 2
    assert all(fault.get("listen_back_seconds") is not None for fault in report["faults"]), "LISTEN came back"
    assert_came_through(report)


def test_xmin_pinned_by_an_idle_transaction(chaos_db, server):
    report = run("xmin_pin", chaos_db, server, jobs=3000, fault_seconds=2.0, bucket_seconds=1.0)
    pin = report["xmin_pin"]
    assert pin["throughput_per_window"], "throughput per window"
    assert pin["n_dead_tup"]["end_of_pin"] is not None
    assert report["succeeded"] == 3000
    assert_came_through(report)


def test_jobs_holding_their_transaction_for_seconds_keep_their_leases(chaos_db, server):
    # the scenario's own timings (lease 5 s, heartbeat 1 s, 50 slots): 50 jobs hold ctx.transaction() 2 s
    report = run("slow_tx", chaos_db, server, jobs=500, timings=WorkerTimings(lease=5.0, heartbeat=1.0, poll=0.5,
                                                                              maintenance=0.5))
    assert report["enqueued"] == 550
    assert report["rescues"] == 0, report["live_worker_rescues"]
    assert report["duplicated_jobs"] == 0
    assert report["succeeded"] == 550
    assert_came_through(report)


def test_a_poison_job_dies_alone(chaos_db, server):
    report = run("poison", chaos_db, server, jobs=500)
    assert report["poison_dead"] == 1
    assert report["dead"] == 1
    assert report["succeeded"] == 500
    assert report["worker_restarts"] >= 3, "the poison job crashed its worker on each of its 3 attempts"
    assert_came_through(report)


def test_exhausted_connection_slots(chaos_db, server):
    # far more than the suite server's max_connections, so the server refuses before the cap
    report = run("conn_exhaust", chaos_db, server, jobs=3000, fault_seconds=2.0, idle_connections=2000)
    assert report["faults"][0]["refused"], "the server should have run out of connection slots"
    assert report["succeeded"] == 3000
    assert_came_through(report)


# -- the harness itself --------------------------------------------------------------------------


def test_own_server_is_durable_restarts_and_logs_to_its_file(own_server: ChaosServer):
    settings = dict(query(own_server.url, "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                          [["fsync", "synchronous_commit", "logging_collector", "log_lock_waits", "deadlock_timeout",
                            "max_connections"]]))
    assert settings == {"fsync": "on", "synchronous_commit": "on", "logging_collector": "off", "log_lock_waits": "on",
                        "deadlock_timeout": "1000", "max_connections": "30"}
    started = query(own_server.url, "SELECT pg_postmaster_start_time()")[0][0]
    offset = own_server.log_size()
    own_server.restart("fast")
    assert query(own_server.url, "SELECT pg_postmaster_start_time()")[0][0] > started
    own_server.stop("immediate")
    assert not own_server.is_running()
    own_server.start()
    assert query(own_server.url, "SELECT current_setting('max_connections')") == [("30",)]
    log = own_server.log_since(offset)
    assert log is not None and "database system is ready to accept connections" in log


def test_cli_with_a_url_skips_the_scenarios_that_restart_the_server(chaos_db, tmp_path):
    output = tmp_path / "chaos.json"
    done = run_cli("chaos", "--database-url", chaos_db, "--scenarios", "restart_fast,outage", "--output", str(output))
    assert done.returncode == 0, done.stderr
    reports = json.loads(output.read_text())["scenarios"]
    assert set(reports) == {"restart_fast", "outage"}
    assert all("needs a server the harness starts itself" in report["skipped"] for report in reports.values())
    assert "skipped" in done.stdout


def test_cli_rejects_an_unknown_scenario(chaos_db):
    done = run_cli("chaos", "--database-url", chaos_db, "--scenarios", "sigkill,nope")
    assert done.returncode == 2
    assert "unknown scenario" in done.stderr
