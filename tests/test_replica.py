"""A streaming read replica of the suite's server (tests/scaleout_fixtures.py): with
APP_READ_DATABASE_URL the job list, the stats and the dashboard's overview are read there, while
writes, single jobs and event streams stay on the primary (LISTEN is refused during recovery)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgqueue.db import behind_pooler
from pgqueue.queue import Queue
from pgqueue.scaleout import EmbeddedReplica
from tests.helpers import wait_for
from tests.scaleout_fixtures import replica_caught_up
from tests.test_sse import claim, create_external_job, progress, sse
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer


@contextlib.contextmanager
def replay_paused(replica_url: str) -> Iterator[None]:
    """The replica stops applying WAL (it still receives it): what the primary commits meanwhile
    is visible on the primary only."""
    with psycopg.connect(replica_url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with psycopg.connect(replica_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")


async def test_lists_and_stats_come_from_the_replica_while_writes_and_streams_stay_on_the_primary(
        replica: EmbeddedReplica, db_url: str, start_server: Callable[..., LiveServer], admin: ApiUser,
        queue: Queue) -> None:
    replica_url = replica.url_for(db_url)
    replica_caught_up(db_url, replica_url)  # this test's database (and its users) exist there
    server = start_server(read_database_url=replica_url)
    read_pool = server.state["read_store"].pool
    async with read_pool.connection() as conn:
        [(in_recovery,)] = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchall()
        assert in_recovery is True and not await behind_pooler(conn)
    async with server.state["store"].pool.connection() as conn:
        [(in_recovery,)] = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchall()
        assert in_recovery is False

    with replay_paused(replica_url):
        job_id = await create_external_job(server, admin)  # a write: on the primary
        async with server.client(admin) as http:
            one = await http.get(f"/jobs/{job_id}")  # a single job: the primary, never stale
            listed = await http.get("/jobs")
            stats = await http.get("/stats")
            overview = await http.get("/dashboard/api/overview")
            # a live stream while the primary takes writes and the replica applies none of them
            async with sse(server, f"/jobs/{job_id}/events", client=http) as stream:
                job = await claim(queue, job_id)
                await progress(queue, job_id, 50)
                await queue.complete(job_id, job.lease_token, {"ok": True})
                live = await stream.until_end()
        assert one.status_code == 200 and one.json()["job"]["status"] == "queued"
        # served by the replica, which has not replayed the job's insert
        assert listed.status_code == 200 and listed.json()["total"] == 0, listed.text
        assert stats.status_code == 200 and sum(stats.json()["by_status"].values()) == 0, stats.text
        assert overview.status_code == 200, overview.text
        assert [m.event for m in live][-3:] == ["started", "progress", "succeeded"]

    replica_caught_up(db_url, replica_url)
    async with server.client(admin) as http:
        listed = await http.get("/jobs")
        stats = await http.get("/stats")
    assert [(job["id"], job["status"]) for job in listed.json()["jobs"]] == [(job_id, "succeeded")]
    assert stats.json()["by_status"]["succeeded"] == 1


async def test_without_a_replica_reads_use_the_primary(live_server: LiveServer) -> None:
    assert live_server.state["read_store"] is live_server.state["store"]


async def test_listen_is_refused_on_the_replica(replica: EmbeddedReplica, db_url: str) -> None:
    """Why the event hub never follows APP_READ_DATABASE_URL."""
    replica_url = replica.url_for(db_url)
    replica_caught_up(db_url, replica_url)
    async with await psycopg.AsyncConnection.connect(replica_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="cannot execute LISTEN during recovery"):
            await conn.execute("LISTEN pgqueue_events")


async def test_a_read_the_replica_cannot_answer_is_answered_by_the_primary(
        replica: EmbeddedReplica, db_url: str, start_server: Callable[..., LiveServer], admin: ApiUser) -> None:
    replica_url = replica.url_for(db_url)
    replica_caught_up(db_url, replica_url)
    server = start_server(read_database_url=replica_url)
    with replay_paused(replica_url):
        job_id = await create_external_job(server, admin)
        # the replica's connections of this app die (as in a restart of the standby)
        with psycopg.connect(replica_url, autocommit=True) as conn:
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND application_name = 'app-read'").fetchone()
        assert killed is not None and killed[0] >= 1
        async with server.client(admin) as http:
            listed = await http.get("/jobs")
    # answered, and by the primary: the replica has not replayed the job yet
    assert listed.status_code == 200, listed.text
    assert [job["id"] for job in listed.json()["jobs"]] == [job_id]
    assert server.state["read_store"].fallbacks == 1


async def _queued_total(http: Any, path: str = "/jobs") -> int:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


async def test_a_replica_lagging_past_the_bound_hands_lists_and_the_overview_to_the_primary(
        replica: EmbeddedReplica, db_url: str, start_server: Callable[..., LiveServer], admin: ApiUser) -> None:
    replica_url = replica.url_for(db_url)
    replica_caught_up(db_url, replica_url)
    server = start_server(read_database_url=replica_url, read_max_lag_seconds=0.5)
    reads = server.state["read_store"]
    async with server.client(admin) as http:
        assert await _queued_total(http) == 0
        assert reads.verdict.source == "replica"
        with replay_paused(replica_url):
            job_id = await create_external_job(server, admin)  # WAL the replica receives and does not apply

            async def listed_from_the_primary() -> bool:
                return await _queued_total(http) == 1  # the replica cannot have it: it replays nothing

            await wait_for(listed_from_the_primary, timeout=30, message="the list to come from the primary")
            assert reads.verdict.source == "primary" and "behind" in (reads.verdict.reason or ""), reads.verdict
            overview = await http.get("/dashboard/api/overview")
            assert overview.status_code == 200, overview.text
            assert overview.json()["counts"]["queued"] == {"jobs": 1, "estimated": False}
            stats = await http.get("/stats")
            assert stats.status_code == 200 and stats.json()["by_status"]["queued"] == 1, stats.text
        # replay resumed: once the replica has caught up, the reads go back to it
        replica_caught_up(db_url, replica_url)

        async def back_on_the_replica() -> bool:
            return await _queued_total(http) == 1 and reads.verdict.source == "replica"

        await wait_for(back_on_the_replica, timeout=30, message="reads to return to the replica")
        assert [job["id"] for job in (await http.get("/jobs")).json()["jobs"]] == [job_id]


async def test_a_stopped_replica_hands_lists_and_the_overview_to_the_primary_until_it_is_back(
        replica: EmbeddedReplica, db_url: str, start_server: Callable[..., LiveServer], admin: ApiUser) -> None:
    replica_url = replica.url_for(db_url)
    replica_caught_up(db_url, replica_url)
    server = start_server(read_database_url=replica_url)
    reads = server.state["read_store"]
    async with server.client(admin, timeout=20) as http:  # a hang fails the request, not the suite
        assert await _queued_total(http) == 0
        overview = await http.get("/dashboard/api/overview")
        assert overview.status_code == 200 and reads.verdict.source == "replica", overview.text
        replica.server.stop()  # fast shutdown: the app's replica connections die with it
        try:
            job_id = await create_external_job(server, admin)
            # every lagging read, right after the stop and again while the replica stays down
            for _ in range(3):
                listed = await http.get("/jobs")
                assert listed.status_code == 200, listed.text
                assert [job["id"] for job in listed.json()["jobs"]] == [job_id]
                overview = await http.get("/dashboard/api/overview")
                assert overview.status_code == 200, overview.text
                assert overview.json()["counts"]["queued"]["jobs"] == 1 and not overview.json()["unavailable"]
                stats = await http.get("/stats")
                assert stats.status_code == 200 and stats.json()["by_status"]["queued"] == 1, stats.text
            assert reads.verdict.source == "primary" and reads.fallbacks >= 9, reads.verdict
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text  # the replica is not what the app needs to serve
        finally:
            replica.server.start()
        reads.retry_seconds = 0.1  # look at the replica again soon (the default leaves it alone 5 s)
        replica_caught_up(db_url, replica_url)

        async def back_on_the_replica() -> bool:
            return await _queued_total(http) == 1 and reads.verdict.source == "replica"

        await wait_for(back_on_the_replica, timeout=60, message="reads to return to the restarted replica")
