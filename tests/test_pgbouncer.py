"""PgBouncer in transaction-pooling mode in front of the suite's server (tests/scaleout_fixtures.py):
why pooled connections must not prepare statements, how pgqueue finds out it is behind a pooler,
a worker process whose jobs go through PgBouncer while its LISTEN, heartbeat and leader lock go
direct, and the app serving and streaming through it.

The contract suite (tests/test_contract.py) and the worker-process tests
(tests/test_worker_processes.py, `through_pgbouncer_too`) run through PgBouncer as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
import pytest

from app.hub import HUB_APPLICATION_NAME
from pgqueue.db import behind_pooler, connect, connect_sync, open_pool
from pgqueue.queue import Queue
from tests.helpers import wait_for, wait_for_sync
from tests.process_fixtures import WorkerProcess, enqueue_marks, query, scalar
from tests.scaleout_fixtures import Bouncer, Route, pgbouncer_clients
from tests.test_sse import sse
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

pytestmark = pytest.mark.parametrize("route", ["pgbouncer"], indirect=True)

STATEMENT = "SELECT count(*) FROM pgqueue.jobs WHERE queue = %s"


async def test_a_prepared_statement_is_lost_between_transactions_so_pooled_connections_never_prepare(
        route: Route) -> None:
    # Two clients of one PgBouncer pool. A prepares a statement on server connection S1; while
    # B holds S1 in a transaction, A's next transaction runs on a new server connection S2,
    # where that statement does not exist.
    async def interleave(a: psycopg.AsyncConnection) -> None:
        await a.execute(STATEMENT, ["default"])  # on S1 (prepared if A prepares)
        async with await psycopg.AsyncConnection.connect(route.url, prepare_threshold=None) as b:
            await b.execute("SELECT 1")  # B's transaction stays open on S1
            await a.execute(STATEMENT, ["default"])  # on S2
            await b.rollback()

    async with await psycopg.AsyncConnection.connect(route.url, autocommit=True, prepare_threshold=0) as naive:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            await interleave(naive)

    pooled = await connect(route.url)
    direct = await connect(route.direct_url)
    try:
        assert await behind_pooler(pooled) and not await behind_pooler(direct)
        assert pooled.prepare_threshold is None and direct.prepare_threshold == 5
        for _ in range(3):  # again and again: never prepared, so never lost
            await interleave(pooled)
    finally:
        await pooled.close()
        await direct.close()

    pool = await open_pool(route.url, max_size=2)
    try:
        async with pool.connection() as conn:
            assert conn.prepare_threshold is None
    finally:
        await pool.close()
    with connect_sync(route.url) as sync_conn, connect_sync(route.direct_url) as sync_direct:
        assert sync_conn.prepare_threshold is None and sync_direct.prepare_threshold == 5
    # PGQUEUE_POOLER=none trusts the user and skips the probe; =pgbouncer needs no probe either
    none, forced = await connect(route.url, pooler="none"), await connect(route.direct_url, pooler="pgbouncer")
    try:
        assert none.prepare_threshold == 5 and forced.prepare_threshold is None
    finally:
        await none.close()
        await forced.close()


async def test_a_session_through_the_pooler_is_named_in_a_warning(route: Route,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgqueue.db"):
        await (await connect(route.direct_url, session_for="the test's LISTEN")).close()
        assert caplog.records == []
        await (await connect(route.url, session_for="the test's LISTEN")).close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "the test's LISTEN goes through a connection pooler"]
    assert "PGQUEUE_DIRECT_DATABASE_URL" in caplog.records[0].getMessage()


def _client_names(bouncer: Bouncer, database_url: str) -> set[str]:
    return {client["application_name"] for client in pgbouncer_clients(bouncer, database_url)}


def test_a_worker_runs_its_jobs_through_pgbouncer_and_hears_notify_on_its_direct_connection(
        route: Route, proc_db: str, spawn_worker: Callable[..., WorkerProcess]) -> None:
    # A one-minute poll: within the deadline below only a NOTIFY, heard on the direct LISTEN
    # connection, can wake the idle worker (through PgBouncer a LISTEN hears nothing).
    worker = spawn_worker(proc_db, concurrency=4, env={"PGQUEUE_POLL_SECONDS": "60"})
    worker_id = worker.worker_id()
    wait_for_sync(lambda: scalar(proc_db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND application_name = 'pgqueue-worker-listen'") == 1,
                  message="the worker's LISTEN connection on the server")
    wait_for_sync(lambda: "is the maintenance leader" in worker.output(), message="the worker to lead maintenance")

    [job_id] = enqueue_marks(proc_db, 1)
    wait_for_sync(lambda: scalar(proc_db, "SELECT status FROM pgqueue.jobs WHERE id = %s", [job_id]) == "succeeded",
                  timeout=20, interval=0.05, message="the job to be woken by NOTIFY and succeed")
    assert query(proc_db, "SELECT job_id FROM test_runs") == [(job_id,)]
    assert scalar(proc_db, "SELECT lease_owner FROM pgqueue.jobs WHERE id = %s", [job_id]) == worker_id

    # the pool (application_name "pgqueue") and the scheduler use PgBouncer; the connections
    # that need a session, or must never wait for one of its server connections, do not
    assert route.bouncer is not None
    names = _client_names(route.bouncer, proc_db)
    assert {"pgqueue", "pgqueue-worker-scheduler"} <= names, names
    assert not names & {"pgqueue-worker-listen", "pgqueue-worker-heartbeat", "pgqueue-worker-maintenance"}, names
    direct = {row[0] for row in query(proc_db, "SELECT application_name FROM pg_stat_activity "
                                               "WHERE datname = current_database()")}
    assert {"pgqueue-worker-listen", "pgqueue-worker-heartbeat", "pgqueue-worker-maintenance"} <= direct, direct


async def test_the_app_serves_and_streams_through_pgbouncer(route: Route, start_server: Callable[..., LiveServer],
                                                            alice: ApiUser) -> None:
    server = start_server(database_url=route.url, direct_database_url=route.direct_url, run_worker=True,
                          worker_concurrency=4, worker_shutdown_grace=2.0)
    async with server.client(alice) as http:
        response = await http.post("/tasks", json={"title": "through the pooler", "fail_probability": 0,
                                                   "duration_seconds": 0.3, "steps": 3})
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        async with sse(server, f"/jobs/{task_id}/events", client=http) as stream:
            events = [message.event for message in await stream.until_end()]
        listed = await http.get("/jobs")
    assert events[-1] == "succeeded", events
    assert "progress" in events
    assert listed.status_code == 200 and [job["id"] for job in listed.json()["jobs"]] == [task_id]

    queue: Queue = server.state["queue"]
    assert queue.session_url == route.direct_url
    assert route.bouncer is not None
    names = _client_names(route.bouncer, route.direct_url)
    assert "pgqueue" in names and HUB_APPLICATION_NAME not in names, names

    async def hub_listens_directly() -> bool:
        rows = query(route.direct_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND application_name = %s", [HUB_APPLICATION_NAME])
        return rows[0][0] == 1

    await wait_for(hub_listens_directly, message="the hub's LISTEN connection on the server itself")
