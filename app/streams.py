"""Live event streams: `GET /jobs/{id}/events` and `GET /events` (Server-Sent Events) and
`WS /ws/jobs/{id}` (the same messages as JSON over a WebSocket), all fed by the app's EventHub.

Every stream follows the same recipe, so nothing is lost and nothing is sent twice:
subscribe to the hub first, then replay the events table after the client's last id
(`Last-Event-ID`, or `?last_event_id=` on the first connect), then forward live events,
skipping ids already sent. When the hub marks the subscriber lagged (it read too slowly,
or the LISTEN connection was lost), the stream replays the table again from its last id.
A job stream ends after the job's terminal event; a global stream runs until the client leaves.

Ids come from an identity column, so two transactions can commit out of id order. Live, that
costs nothing (every notification is forwarded, deduplicated by id, not by "greater than").
Across a reconnect, an event that committed after a later-numbered one the client already
has would be skipped by the `id > Last-Event-ID` replay; engine writes of one job are
sequential in practice (one worker holds the lease), so this is a documented edge, not a gap
we have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.api import parse_job_id, read_query
from app.auth import authenticate_stream, may_see
from app.errors import ApiError, not_found, validation_error
from app.hub import LAGGED, EventHub, RenderCache, Subscription
from app.openapi import operation
from app.redact import event_for
from app.store import User
from pgqueue.db import CONNECTION_ERRORS
from pgqueue.errors import JobNotFound
from pgqueue.models import FINISHED_STATUSES, TERMINAL_EVENTS, Event
from pgqueue.queue import Queue

REPLAY_PAGE = 500
# Ids remembered to drop duplicates between the replay and the live queue; larger than any
# subscriber queue, so every live event that the replay also covered is still remembered.
RECENT_IDS = 4096
BIGINT_MAX: Final = 2**63 - 1
# WebSocket close codes: 1008 policy violation (authentication); in the app range 4000-4999,
# 4404 no such job and 4422 a bad query parameter (the HTTP statuses plus 4000).
WS_POLICY_VIOLATION, WS_NOT_FOUND, WS_INVALID = 1008, 4404, 4422
WS_TRY_AGAIN_LATER = 1013

log = logging.getLogger("app.streams")

FetchAfter = Callable[[int, int], Awaitable[list[Event]]]


class RecentIds:
    """The last `capacity` ids sent on a stream, to drop an event the replay already delivered."""

    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self._order: deque[int] = deque()
        self._ids: set[int] = set()
        self.capacity = capacity

    def add(self, event_id: int) -> bool:
        """Remember an id; False when it was already sent."""
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True


async def follow(sub: Subscription, fetch_after: FetchAfter, after_id: int, *, keepalive_seconds: float,
                 ends_stream: Callable[[Event], bool] = lambda event: False,
                 finished: bool = False) -> AsyncGenerator[list[Event] | None, None]:
    """Replay then live, deduplicated: yields batches of events in the order to send them,
    or None after `keepalive_seconds` of silence.

    `sub` must have been subscribed before this starts (so the replay overlaps the live queue
    instead of leaving a gap). `finished`: the job was already over when the stream began,
    so the stream ends after the replay. After an event for which `ends_stream` is true the
    stream ends, unless the replay shows later events (a dead job that was retried).
    A live batch is everything the subscriber has queued: a client that fell a little behind
    gets it in one write instead of many.
    """
    sent = RecentIds()
    last_id = after_id
    catching_up = True
    while True:
        if catching_up:
            sub.resume()  # queue live events again before reading the table: overlap, not gap
            last_replayed: Event | None = None
            while True:
                page = await fetch_after(last_id, REPLAY_PAGE)
                fresh = [event for event in page if sent.add(event.id)]
                if page:
                    last_id = max(last_id, page[-1].id)
                if fresh:
                    last_replayed = fresh[-1]
                    yield fresh
                if len(page) < REPLAY_PAGE:
                    break
            if finished or (last_replayed is not None and ends_stream(last_replayed)):
                return
            catching_up = False
        item = await sub.get(keepalive_seconds)
        if item is None:
            yield None
            continue
        batch: list[Event] = []
        while item is not None:
            if item is LAGGED:
                catching_up = True  # LAGGED is always alone in the queue: nothing is skipped here
                break
            if isinstance(item, Event):
                if item.id > last_id:
                    # Newer than anything sent: no duplicate (the hub queues an event once, and a
                    # replay reads only ids above last_id), so it need not be remembered either.
                    last_id = item.id
                elif not sent.add(item.id):
                    item = sub.get_nowait()  # the replay sent it already
                    continue
                # else: an older id not sent yet (transactions commit out of id order): still new,
                # so it is sent, and last_id only moves up.
                batch.append(item)
                if ends_stream(item):
                    yield batch
                    return
            item = sub.get_nowait()
        if batch:
            yield batch


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL_EVENTS


# -- request helpers ----------------------------------------------------------------------------

class StreamQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    stream_token: Annotated[str, msgspec.Meta(max_length=200, description=(
        "a token from POST /auth/stream-token, for clients that cannot send headers (EventSource)"))] | None = None
    last_event_id: Annotated[int, msgspec.Meta(ge=0, le=BIGINT_MAX, description=(
        "replay the events after this id (first connect; on reconnects the Last-Event-ID header wins)"))] | None = None


def last_event_id(connection: Request | WebSocket) -> int | None:
    """The client's position: the Last-Event-ID header (EventSource reconnects), else the query."""
    query = read_query(connection, StreamQuery)  # type: ignore[arg-type]
    header = connection.headers.get("last-event-id")
    if header is None or header.strip() == "":
        return query.last_event_id
    header = header.strip()
    if not header.isascii() or not header.isdigit() or int(header) > BIGINT_MAX:
        raise validation_error([{"field": "Last-Event-ID", "message": "must be a non-negative integer event id"}])
    return int(header)


async def visible_job(queue: Queue, user: User, raw_id: str) -> tuple[int, str]:
    """The job's id and status when it exists and the user may see it; another user's job is a 404."""
    job_id = parse_job_id(raw_id)
    try:
        job = await queue.get(job_id)
    except JobNotFound:
        raise not_found(f"job {job_id} not found") from None
    if not may_see(user, job.owner_id):
        raise not_found(f"job {job_id} not found")
    return job.id, job.status


def encode_event(event: Event) -> bytes:
    return msgspec.json.encode(event)


def sse_message(event: Event) -> bytes:
    # The JSON document is one line, so a single data: field carries it.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), encode_event(event))


def _sse_for_admin(event: Event) -> bytes:
    return sse_message(event)


def _sse_for_user(event: Event) -> bytes:
    return sse_message(event_for(event, admin=False))


def sse_messages(batch: list[Event], *, admin: bool, rendered: RenderCache | None = None) -> bytes:
    """One write's worth of SSE messages, each rendered once for all streams (`rendered`)."""
    render = _sse_for_admin if admin else _sse_for_user
    if rendered is None:
        return b"".join(render(event) for event in batch)
    if len(batch) == 1:
        return rendered.get(batch[0], admin, render)
    return b"".join(rendered.get(event, admin, render) for event in batch)


KEEPALIVE: Final = b": keep-alive\n\n"
SSE_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}


class EventStreamResponse(Response):
    """A text/event-stream response that stops, and cleans up, as soon as the client leaves.

    Starlette's StreamingResponse only notices a departed client on its next write under
    ASGI 2.4; this one watches for `http.disconnect` the whole time, so a subscriber is
    removed right away rather than at the next keep-alive.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope.get("method") == "HEAD":
                # Headers only: streaming a body that is never sent would hold the connection forever.
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._stream_until_disconnect(scope, receive, send)
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # runs the stream's `finally` blocks: unsubscribe from the hub

    async def _stream_until_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream in this task while a second one waits for `http.disconnect` and cancels this
        one when it comes. Plain asyncio rather than a task group: one task and one coroutine
        frame fewer per client, and nothing extra on each write (this runs once per event per
        client)."""
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"streaming": True, "left": False}

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if state["streaming"]:
                state["left"] = True
                streaming.cancel()

        watcher = asyncio.create_task(watch_disconnect(), name="sse-disconnect-watch")
        try:
            await self._stream(scope, send)
        except asyncio.CancelledError:
            if not state["left"]:
                raise  # cancelled from outside (server shutdown): not ours to swallow
            streaming.uncancel()  # the client left: the stream is simply over
        finally:
            state["streaming"] = False
            watcher.cancel()

    async def _stream(self, scope: Scope, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        except CONNECTION_ERRORS as exc:
            # Headers are out, so no 503 now: end the stream; EventSource reconnects after
            # `retry:` with its Last-Event-ID and loses nothing.
            log.warning("event stream %s ended: database unavailable (%s)", scope.get("path"), exc)
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def sse_body(subscription: contextlib.AbstractContextManager[Subscription],
                   follow_from: Callable[[Subscription], Awaitable[AsyncGenerator[list[Event] | None, None]]],
                   retry_ms: int, *, admin: bool, rendered: RenderCache | None = None) -> AsyncIterator[bytes]:
    """The event-stream bytes of a stream: subscribe, let `follow_from` start `follow()` on the
    subscription, send the `retry:` hint, then each batch; unsubscribes and closes the generator
    however the stream ends. Non-admins get each error as its message, not its traceback
    (app/redact.py). One generator between `follow()` and the response, not two: this runs once
    per event per client."""
    with subscription as sub:
        batches = await follow_from(sub)
        try:
            yield b"retry: %d\n\n" % retry_ms
            async for batch in batches:
                yield KEEPALIVE if batch is None else sse_messages(batch, admin=admin, rendered=rendered)
        finally:
            await batches.aclose()


# -- routes -------------------------------------------------------------------------------------

@operation(summary="A job's events as Server-Sent Events", tag="streams", auth="stream", query=StreamQuery,
           media_type="text/event-stream", path_params={"job_id": "the job's id"}, errors=(404,),
           extra_statuses={204: "The job is finished and the client has every event: stop reconnecting"},
           description="Replays the events after `Last-Event-ID` (or `last_event_id`), then streams live ones. "
                       "Each message has `id:`, `event: <type>` and `data: <the event as JSON>`; `: keep-alive` "
                       "comments keep proxies from closing an idle stream. Ends after the job's terminal event.")
async def job_events(request: Request) -> Response:
    """GET /jobs/{job_id}/events: one job's events as Server-Sent Events, replay then live."""
    user = await authenticate_stream(request)
    queue: Queue = request.state.queue
    job_id, status = await visible_job(queue, user, request.path_params["job_id"])
    after_id = last_event_id(request) or 0
    finished = status in FINISHED_STATUSES
    if finished and not await queue.events(job_id, after_id, limit=1):
        # Over, and the client has seen everything: 204 tells an EventSource to stop reconnecting.
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    settings = request.state.settings
    hub: EventHub = request.state.hub

    async def fetch_after(after: int, limit: int) -> list[Event]:
        return await queue.events(job_id, after, limit)

    async def follow_from(sub: Subscription) -> AsyncGenerator[list[Event] | None, None]:
        return follow(sub, fetch_after, after_id, keepalive_seconds=settings.sse_keepalive_seconds,
                      ends_stream=is_terminal, finished=finished)

    return EventStreamResponse(sse_body(hub.subscribe(job_id=job_id), follow_from, settings.sse_retry_ms,
                                        admin=user.is_admin, rendered=hub.rendered))


@operation(summary="Every event you may see, as Server-Sent Events", tag="streams", auth="stream",
           query=StreamQuery, media_type="text/event-stream",
           description="Admins see every job's events, others their own jobs'. Without a position the stream "
                       "starts with the next event; with `Last-Event-ID` it replays what was missed first.")
async def all_events(request: Request) -> Response:
    """GET /events: every event the caller may see (admin: all; others: their own jobs)."""
    user = await authenticate_stream(request)
    store = request.state.queue.store
    settings = request.state.settings
    hub: EventHub = request.state.hub
    requested = last_event_id(request)

    if user.is_admin:
        async def fetch_after(after: int, limit: int) -> list[Event]:
            return await store.events_after(after, limit)
    else:
        async def fetch_after(after: int, limit: int) -> list[Event]:
            return await store.owner_events_after(user.owner_id, after, limit)

    async def follow_from(sub: Subscription) -> AsyncGenerator[list[Event] | None, None]:
        # Subscribed first; without a position the stream is live only: it starts at the newest event.
        after_id = requested if requested is not None else await store.latest_event_id()
        return follow(sub, fetch_after, after_id, keepalive_seconds=settings.sse_keepalive_seconds)

    subscription = hub.subscribe(see_all=True) if user.is_admin else hub.subscribe(owner_id=user.owner_id)
    return EventStreamResponse(sse_body(subscription, follow_from, settings.sse_retry_ms, admin=user.is_admin,
                                        rendered=hub.rendered))


async def job_events_ws(websocket: WebSocket) -> None:
    """WS /ws/jobs/{job_id}?stream_token=...: the job stream's messages as JSON text frames.

    Closes with 1008 when the token is missing or bad, 4404 for a job the caller cannot see,
    1000 after the terminal event.
    """
    await websocket.accept()
    queue: Queue = websocket.state.queue
    try:
        user = await authenticate_stream(websocket)
        job_id, status = await visible_job(queue, user, websocket.path_params["job_id"])
        after_id = last_event_id(websocket) or 0
    except ApiError as exc:
        code = {401: WS_POLICY_VIOLATION, 404: WS_NOT_FOUND, 422: WS_INVALID}.get(exc.status, WS_POLICY_VIOLATION)
        await websocket.close(code=code, reason=exc.message[:120])
        return
    hub: EventHub = websocket.state.hub
    settings = websocket.state.settings

    async def fetch_after(after: int, limit: int) -> list[Event]:
        return await queue.events(job_id, after, limit)

    async def send_events() -> None:
        with hub.subscribe(job_id=job_id) as sub:
            events = follow(sub, fetch_after, after_id, keepalive_seconds=settings.sse_keepalive_seconds,
                            ends_stream=is_terminal, finished=status in FINISHED_STATUSES)
            try:
                async for batch in events:
                    for event in batch or ():  # no keep-alives: the WebSocket protocol has its own pings
                        await websocket.send_text(encode_event(event_for(event, admin=user.is_admin)).decode())
            finally:
                await events.aclose()
        await websocket.close(code=1000)

    async def watch_disconnect() -> None:
        # Clients have nothing to say on this socket; whatever they send is ignored.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(send_events())
    watcher = asyncio.create_task(watch_disconnect())
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        for task in (sender, watcher):
            try:
                await task
            except (asyncio.CancelledError, WebSocketDisconnect, OSError):
                pass  # the client left first: nothing to report
            except CONNECTION_ERRORS as exc:
                log.warning("WebSocket stream of job %s ended: database unavailable (%s)", job_id, exc)
                with contextlib.suppress(Exception):
                    await websocket.close(code=WS_TRY_AGAIN_LATER, reason="database unavailable")
            except Exception:
                log.exception("WebSocket stream of job %s failed", job_id)


ROUTES = [
    Route("/jobs/{job_id}/events", job_events, methods=["GET"], name="job_events"),
    Route("/events", all_events, methods=["GET"], name="all_events"),
    WebSocketRoute("/ws/jobs/{job_id}", job_events_ws, name="job_events_ws"),
]
