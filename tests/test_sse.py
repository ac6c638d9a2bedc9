"""Event streams over a real uvicorn server: SSE replay + live with Last-Event-ID, exactly once;
one LISTEN connection for 200 clients; auth and ownership; keep-alives; slow clients; the
global stream; the WebSocket twin; and nothing left behind when a client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import websockets

from app.hub import HUB_APPLICATION_NAME, EventHub
from pgqueue.models import Job
from pgqueue.queue import Queue
from tests.helpers import wait_for
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

TIMEOUT = 30.0


class SseMessage(msgspec.Struct):
    id: int
    event: str
    data: Any


class SseReader:
    """A minimal EventSource: parses `id:`/`event:`/`data:` fields, remembers comments and `retry:`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry_ms: int | None = None
        self._lines = response.aiter_lines()

    async def next(self) -> SseMessage | None:
        """The next message, or None when the server ended the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            async for line in self._lines:
                if line == "":
                    if data:
                        return SseMessage(int(fields["id"]), fields.get("event", "message"), json.loads("\n".join(data)))
                    fields.clear()
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry_ms = int(value)
                else:
                    fields[name] = value
        return None

    async def take(self, count: int) -> list[SseMessage]:
        messages = []
        for _ in range(count):
            message = await self.next()
            assert message is not None, f"the stream ended after {len(messages)} of {count} messages"
            messages.append(message)
        return messages

    async def until_end(self) -> list[SseMessage]:
        messages = []
        while (message := await self.next()) is not None:
            messages.append(message)
        return messages


@contextlib.asynccontextmanager
async def sse(server: LiveServer, path: str, user: ApiUser | None = None, *, headers: dict[str, str] | None = None,
              client: httpx.AsyncClient | None = None) -> AsyncIterator[SseReader]:
    async with contextlib.AsyncExitStack() as stack:
        http = client or await stack.enter_async_context(server.client(user))
        response = await stack.enter_async_context(http.stream("GET", path, headers=headers or {}))
        assert response.status_code == 200, (response.status_code, await response.aread())
        yield SseReader(response)


def hub_of(server: LiveServer) -> EventHub:
    return server.state["hub"]


async def no_subscribers(server: LiveServer) -> None:
    async def gone() -> bool:
        return hub_of(server).subscriber_count == 0

    await wait_for(gone, TIMEOUT, message="the hub to drop every subscriber")


async def create_external_job(server: LiveServer, user: ApiUser) -> int:
    """A job only the test moves along (kind `external` has no Python handler): deterministic events."""
    async with server.client(user) as http:
        response = await http.post("/jobs", json={"kind": "external", "payload": {"data": "x"}})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def claim(queue: Queue, job_id: int) -> Job:
    (job,) = await queue.claim(["external"], 1, "test-worker")
    assert job.id == job_id
    return job


async def progress(queue: Queue, job_id: int, *percents: int) -> None:
    await queue.add_events([(job_id, "progress", {"percent": p, "message": f"{p}%"}) for p in percents])


async def table_ids(queue: Queue, job_id: int) -> list[int]:
    return [event.id for event in await queue.events(job_id)]


async def stream_token(server: LiveServer, user: ApiUser) -> str:
    async with server.client(user) as http:
        response = await http.post("/auth/stream-token")
    assert response.status_code == 200, response.text
    return response.json()["token"]


# -- replay, live, reconnect --------------------------------------------------------------------

async def test_reconnect_with_last_event_id_gets_every_event_exactly_once(live_server: LiveServer, alice: ApiUser,
                                                                          queue: Queue) -> None:
    job_id = await create_external_job(live_server, alice)
    job = await claim(queue, job_id)
    received: list[SseMessage] = []

    async with sse(live_server, f"/jobs/{job_id}/events", alice) as stream:
        received += await stream.take(1)  # 'started', replayed from the table
        await progress(queue, job_id, 10, 20, 30)
        received += await stream.take(3)  # live
        assert stream.retry_ms == live_server.settings.sse_retry_ms
    await no_subscribers(live_server)  # the client left: nothing of it remains in the hub

    await progress(queue, job_id, 40, 50)  # while nobody listens
    async with sse(live_server, f"/jobs/{job_id}/events", alice,
                   headers={"Last-Event-ID": str(received[-1].id)}) as stream:
        received += await stream.take(2)  # the gap, from the table
        await progress(queue, job_id, 60)
        await queue.complete(job_id, job.lease_token, {"ok": True})  # type: ignore[arg-type]
        received += await stream.until_end()  # live, up to the terminal event; then the server ends it

    ids = [message.id for message in received]
    assert ids == await table_ids(queue, job_id), "every event of the job, each once, in order"
    assert ids == sorted(set(ids))
    assert [m.event for m in received] == ["started"] + ["progress"] * 6 + ["succeeded"]
    assert [m.data["data"]["percent"] for m in received if m.event == "progress"] == [10, 20, 30, 40, 50, 60]
    assert all(m.data["job_id"] == job_id and m.data["type"] == m.event for m in received)
    await no_subscribers(live_server)


async def test_query_last_event_id_for_the_first_connect_header_wins_later(live_server: LiveServer, alice: ApiUser,
                                                                           queue: Queue) -> None:
    job_id = await create_external_job(live_server, alice)
    await claim(queue, job_id)
    await progress(queue, job_id, 1, 2, 3)
    first, second, third = (await table_ids(queue, job_id))[1:]
    async with sse(live_server, f"/jobs/{job_id}/events?last_event_id={first}", alice) as stream:
        assert [m.id for m in await stream.take(2)] == [second, third]
    # an EventSource reconnecting keeps its URL and adds the header: the header is the newer position
    async with sse(live_server, f"/jobs/{job_id}/events?last_event_id={first}", alice,
                   headers={"Last-Event-ID": str(second)}) as stream:
        assert [m.id for m in await stream.take(1)] == [third]


async def test_running_task_streams_progress_and_logs_to_a_reconnecting_client(
        live_server_with_worker: LiveServer, alice: ApiUser, queue: Queue) -> None:
    server = live_server_with_worker
    async with server.client(alice) as http:
        response = await http.post("/tasks", json={"title": "stream me", "fail_probability": 0,
                                                   "duration_seconds": 1.0, "steps": 5})
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    token = await stream_token(server, alice)
    received: list[SseMessage] = []
    # EventSource style: no Authorization header, the stream token in the URL
    async with sse(server, f"/jobs/{task_id}/events?stream_token={token}") as stream:
        while not any(m.event == "progress" for m in received):
            received += await stream.take(1)
    async with sse(server, f"/jobs/{task_id}/events?stream_token={token}",
                   headers={"Last-Event-ID": str(received[-1].id)}) as stream:
        received += await stream.until_end()

    assert [m.id for m in received] == await table_ids(queue, task_id)
    assert received[-1].event == "succeeded"
    percents = [m.data["data"]["percent"] for m in received if m.event == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100
    assert "task finished" in [m.data["data"]["line"] for m in received if m.event == "log"]


async def test_finished_job_replays_then_ends_and_then_answers_204(live_server: LiveServer, alice: ApiUser,
                                                                   queue: Queue) -> None:
    job_id = await create_external_job(live_server, alice)
    job = await claim(queue, job_id)
    await progress(queue, job_id, 50)
    await queue.complete(job_id, job.lease_token, None)  # type: ignore[arg-type]
    async with sse(live_server, f"/jobs/{job_id}/events", alice) as stream:
        messages = await stream.until_end()
    assert [m.event for m in messages] == ["started", "progress", "succeeded"]
    # reconnecting after the end: nothing more will come, and 204 tells EventSource to stop trying
    async with live_server.client(alice) as http:
        response = await http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(messages[-1].id)})
    assert response.status_code == 204
    await no_subscribers(live_server)


async def test_deleting_a_waiting_job_ends_its_open_stream(live_server: LiveServer, alice: ApiUser) -> None:
    job_id = await create_external_job(live_server, alice)
    async with sse(live_server, f"/jobs/{job_id}/events", alice) as stream:
        async with live_server.client(alice) as http:
            response = await http.post("/jobs/bulk", json={"action": "delete", "ids": [job_id]})
        assert response.status_code == 200, response.text
        messages = await stream.until_end()
    assert [m.event for m in messages] == ["deleted"]
    await no_subscribers(live_server)


async def test_slow_client_catches_up_from_the_table_and_misses_nothing(start_server: Callable[..., LiveServer],
                                                                       alice: ApiUser, queue: Queue) -> None:
    # a queue of 2 per subscriber: a burst of 40 events overflows it at once
    server = start_server(sse_queue_size=2)
    job_id = await create_external_job(server, alice)
    job = await claim(queue, job_id)
    async with sse(server, f"/jobs/{job_id}/events", alice) as stream:
        received = await stream.take(1)
        await progress(queue, job_id, *range(1, 41))

        async def overflowed() -> bool:
            return hub_of(server).dropped >= 1

        await wait_for(overflowed, TIMEOUT, message="the subscriber to overflow")
        await queue.complete(job_id, job.lease_token, None)  # type: ignore[arg-type]
        received += await stream.until_end()
    assert [m.id for m in received] == await table_ids(queue, job_id)
    assert [m.data["data"]["percent"] for m in received if m.event == "progress"] == list(range(1, 41))


async def test_keep_alive_comments_and_stream_headers(start_server: Callable[..., LiveServer], alice: ApiUser) -> None:
    server = start_server(sse_keepalive_seconds=0.05, sse_retry_ms=1234)
    job_id = await create_external_job(server, alice)  # queued: nothing happens on this stream
    async with server.client(alice) as http, http.stream(
            "GET", f"/jobs/{job_id}/events", headers={"Accept-Encoding": "gzip"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        lines = response.aiter_lines()
        first = [await anext(lines), await anext(lines)]
        assert first == ["retry: 1234", ""]
        keepalives = [await anext(lines) for _ in range(4)]
        assert keepalives == [": keep-alive", "", ": keep-alive", ""]


# -- one LISTEN connection for many clients ------------------------------------------------------

async def test_200_clients_share_one_listen_connection_and_all_see_the_end(live_server: LiveServer, alice: ApiUser,
                                                                          queue: Queue, db_url: str) -> None:
    clients = 200
    job_id = await create_external_job(live_server, alice)
    job = await claim(queue, job_id)
    endings: list[list[str]] = []

    async def watch(http: httpx.AsyncClient) -> None:
        async with sse(live_server, f"/jobs/{job_id}/events", client=http) as stream:
            endings.append([m.event for m in await stream.until_end()])

    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=0)
    async with live_server.client(alice, limits=limits) as http:
        watchers = [asyncio.create_task(watch(http)) for _ in range(clients)]

        async def all_subscribed() -> bool:
            return hub_of(live_server).subscriber_count == clients

        await wait_for(all_subscribed, TIMEOUT, message=f"{clients} subscribers")
        dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(db_url, autocommit=True) as conn:
            listeners = conn.execute(
                "SELECT application_name, query FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'LISTEN%%'",
                (dbname,)).fetchall()
            connections = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                       (dbname,)).fetchone()
        assert listeners == [(HUB_APPLICATION_NAME, "LISTEN pgqueue_events")]
        assert connections is not None and connections[0] < 20, "browsers never hold a Postgres connection"

        await progress(queue, job_id, 50)
        await queue.complete(job_id, job.lease_token, None)  # type: ignore[arg-type]
        async with asyncio.timeout(TIMEOUT * 2):
            await asyncio.gather(*watchers)
    assert len(endings) == clients
    assert all(events == ["started", "progress", "succeeded"] for events in endings)
    await no_subscribers(live_server)


# -- who may watch what ------------------------------------------------------------------------

async def test_stream_auth_and_ownership_errors(live_server: LiveServer, alice: ApiUser, bob: ApiUser,
                                                admin: ApiUser) -> None:
    job_id = await create_external_job(live_server, alice)
    async with live_server.client() as anonymous:
        response = await anonymous.get(f"/jobs/{job_id}/events")
        assert response.status_code == 401
        assert response.json() == {"error": {"code": "missing_token", "details": [],
                                             "message": "authentication required: send `Authorization: Bearer <token>`"}}
        response = await anonymous.get(f"/jobs/{job_id}/events?stream_token=1.9999999999.forged")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"
        response = await anonymous.get("/events")
        assert response.status_code == 401
    async with live_server.client(bob) as http:
        response = await http.get(f"/jobs/{job_id}/events")
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "details": [], "message": f"job {job_id} not found"}}
        for bad_id in ("0", "abc", "99999999999999999999", str(job_id + 1000)):
            response = await http.get(f"/jobs/{bad_id}/events")
            assert response.status_code == 404, bad_id
            assert response.json()["error"]["code"] == "not_found"
    async with live_server.client(alice) as http:
        response = await http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "soon"})
        assert response.status_code == 422
        assert response.json()["error"]["details"] == [
            {"field": "Last-Event-ID", "message": "must be a non-negative integer event id"}]
        response = await http.get(f"/jobs/{job_id}/events?last_event_id=-1")
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "last_event_id"
        response = await http.get(f"/jobs/{job_id}/events?colour=blue")
        assert response.status_code == 422
    # an admin may watch anyone's job
    async with sse(live_server, f"/jobs/{job_id}/events", admin) as stream:
        assert stream.response.status_code == 200
    await no_subscribers(live_server)


async def test_global_stream_shows_each_user_their_own_jobs_and_admins_everything(
        live_server: LiveServer, alice: ApiUser, bob: ApiUser, admin: ApiUser, queue: Queue) -> None:
    alice_job = await create_external_job(live_server, alice)
    bob_job = await create_external_job(live_server, bob)
    token = await stream_token(live_server, alice)
    async with (
        sse(live_server, f"/events?stream_token={token}") as alice_stream,
        sse(live_server, "/events", bob) as bob_stream,
        sse(live_server, "/events", admin) as admin_stream,
    ):
        async def three_subscribers() -> bool:
            return hub_of(live_server).subscriber_count == 3

        await wait_for(three_subscribers, TIMEOUT, message="three global subscribers")
        await progress(queue, alice_job, 1)
        await progress(queue, bob_job, 2)
        await progress(queue, alice_job, 3)
        alice_seen = await alice_stream.take(2)
        assert [(m.data["job_id"], m.data["data"]["percent"]) for m in alice_seen] == [(alice_job, 1), (alice_job, 3)]
        assert [(m.data["job_id"], m.data["data"]["percent"]) for m in await bob_stream.take(1)] == [(bob_job, 2)]
        admin_seen = await admin_stream.take(3)
        assert [m.data["job_id"] for m in admin_seen] == [alice_job, bob_job, alice_job]
    # reconnecting with Last-Event-ID replays what happened meanwhile, still only one's own
    await progress(queue, bob_job, 4)
    await progress(queue, alice_job, 5)
    async with sse(live_server, "/events", alice, headers={"Last-Event-ID": str(alice_seen[0].id)}) as stream:
        replayed = await stream.take(2)
    assert [m.data["data"]["percent"] for m in replayed] == [3, 5]
    await no_subscribers(live_server)


async def test_client_that_disconnects_leaves_nothing_behind(start_server: Callable[..., LiveServer],
                                                             alice: ApiUser) -> None:
    # no keep-alive write would ever fail: the server must notice the disconnect by itself
    server = start_server(sse_keepalive_seconds=3600)
    job_id = await create_external_job(server, alice)
    for path in (f"/jobs/{job_id}/events", "/events"):
        async with sse(server, path, alice):
            async def subscribed() -> bool:
                return hub_of(server).subscriber_count == 1

            await wait_for(subscribed, TIMEOUT, message="the subscription")
        await no_subscribers(server)


# -- WebSocket ----------------------------------------------------------------------------------

def ws_url(server: LiveServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def test_websocket_sends_the_same_messages_as_sse(live_server: LiveServer, alice: ApiUser,
                                                        queue: Queue) -> None:
    job_id = await create_external_job(live_server, alice)
    job = await claim(queue, job_id)
    token = await stream_token(live_server, alice)
    async with websockets.connect(ws_url(live_server, f"/ws/jobs/{job_id}?stream_token={token}")) as ws:
        messages = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))]
        await progress(queue, job_id, 30, 60)
        await queue.complete(job_id, job.lease_token, None)  # type: ignore[arg-type]
        async with asyncio.timeout(TIMEOUT):
            async for frame in ws:
                messages.append(json.loads(frame))
        assert ws.close_code == 1000
    async with sse(live_server, f"/jobs/{job_id}/events", alice) as stream:
        over_sse = await stream.until_end()
    assert messages == [m.data for m in over_sse]
    assert [m["type"] for m in messages] == ["started", "progress", "progress", "succeeded"]
    await no_subscribers(live_server)


async def test_websocket_auth_failures_close_with_a_policy_code(live_server: LiveServer, alice: ApiUser,
                                                                bob: ApiUser) -> None:
    job_id = await create_external_job(live_server, alice)
    for path, code in [
        (f"/ws/jobs/{job_id}", 1008),
        (f"/ws/jobs/{job_id}?stream_token=1.9999999999.forged", 1008),
        (f"/ws/jobs/{job_id}?stream_token={await stream_token(live_server, bob)}", 4404),
        (f"/ws/jobs/{job_id}?stream_token={await stream_token(live_server, alice)}&last_event_id=x", 4422),
    ]:
        async with websockets.connect(ws_url(live_server, path)) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == code, path


async def test_websocket_client_leaving_unsubscribes(live_server: LiveServer, alice: ApiUser) -> None:
    job_id = await create_external_job(live_server, alice)
    token = await stream_token(live_server, alice)
    async with websockets.connect(ws_url(live_server, f"/ws/jobs/{job_id}?stream_token={token}")):
        async def subscribed() -> bool:
            return hub_of(live_server).subscriber_count == 1

        await wait_for(subscribed, TIMEOUT, message="the subscription")
    await no_subscribers(live_server)


async def test_metrics_count_open_streams_and_slow_subscribers(start_server: Callable[..., LiveServer],
                                                               alice: ApiUser, queue: Queue) -> None:
    server = start_server(sse_queue_size=2, metrics_public=True)
    job_id = await create_external_job(server, alice)

    async def metric(name: str) -> int:
        async with server.client() as http:
            text = (await http.get("/metrics")).text
        (value,) = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
        return int(value)

    assert await metric("pgqueue_sse_subscribers") == 0
    assert await metric("pgqueue_sse_listening") == 1
    async with sse(server, f"/jobs/{job_id}/events", alice) as stream:
        async def one_open() -> bool:
            return await metric("pgqueue_sse_subscribers") == 1

        await wait_for(one_open, TIMEOUT, message="the open stream in /metrics")
        await progress(queue, job_id, *range(10))  # one burst, more than the queue of 2 holds
        assert len(await stream.take(10)) == 10
    assert await metric("pgqueue_sse_dropped_total") >= 1
    await no_subscribers(server)
    assert await metric("pgqueue_sse_subscribers") == 0


async def test_stream_survives_the_listen_connection_being_killed(live_server: LiveServer, alice: ApiUser,
                                                                 queue: Queue, db_url: str) -> None:
    job_id = await create_external_job(live_server, alice)
    job = await claim(queue, job_id)
    hub = hub_of(live_server)
    async with sse(live_server, f"/jobs/{job_id}/events", alice) as stream:
        received = await stream.take(1)
        with psycopg.connect(db_url, autocommit=True) as admin_conn:
            admin_conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = %s AND datname = current_database()",
                               (HUB_APPLICATION_NAME,))
        # committed while the hub may well be deaf: only the table has these
        await progress(queue, job_id, 10, 20)

        async def reconnected() -> bool:
            return hub.reconnects >= 1 and hub.listening.is_set()

        await wait_for(reconnected, TIMEOUT, message="the hub to listen again")
        await progress(queue, job_id, 30)
        await queue.complete(job_id, job.lease_token, None)  # type: ignore[arg-type]
        received += await stream.until_end()
    assert [m.id for m in received] == await table_ids(queue, job_id)
    assert [m.event for m in received] == ["started", "progress", "progress", "progress", "succeeded"]
