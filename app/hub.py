"""The event hub: ONE `LISTEN pgqueue_events` connection per app process, fanned out in memory
to every SSE / WebSocket subscriber, so a browser never holds a Postgres connection.

Notifications carry ids only ("event_id job_id type"). The hub collects the ids of one burst,
keeps those somebody is subscribed to, fetches the rows once (not once per subscriber) through
the queue's pool, and routes each event to the subscribers of its job and to the global
subscribers allowed to see it (admins: everything; users: their own jobs, owner looked up once
and cached).

Slow subscribers: each has a bounded queue. When it overflows the hub does not block and does
not buffer more: it empties that queue and marks the subscriber *lagged*. Its stream then catches
up from the events table after the last id it sent (exactly what a reconnect with Last-Event-ID
does), so the client loses nothing, memory stays bounded by `queue_size` per subscriber, and
nobody else waits. A lost LISTEN connection is handled the same way: while reconnecting nothing
can be delivered, so once LISTEN is back every subscriber is marked lagged and replays the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Final, Literal

from pgqueue.db import CONNECTION_ERRORS, AsyncConnection, connect
from pgqueue.models import Event
from pgqueue.store import Store

log = logging.getLogger("app.hub")

EVENTS_CHANNEL: Final = "pgqueue_events"
HUB_APPLICATION_NAME: Final = "pgqueue-sse-hub"
# One events_by_ids round trip per this many ids of a burst.
FETCH_BATCH = 1000


class Lagged:
    """Put in a subscriber's queue in place of the events it could not hold: catch up from the table."""

    def __repr__(self) -> str:
        return "LAGGED"


LAGGED: Final = Lagged()

Offered = Literal["queued", "overflowed", "skipped"]


class Subscription:
    """One stream's view of the hub: a bounded queue of events, and whether it fell behind.

    A job subscription (`job_id`) sees that job's events; a global one sees everything
    (`see_all`, for admins) or the events of `owner_id`'s jobs.

    This runs once per event per client, so it is kept cheap: a deque and one waiter future
    instead of an asyncio.Queue, and a keep-alive timer that is not re-armed per event (it is set
    once per quiet period, and when it fires early, because events came meanwhile, it moves
    itself to the new deadline instead of waking the stream).
    """

    def __init__(self, *, job_id: int | None, owner_id: str | None, see_all: bool, capacity: int) -> None:
        self.job_id = job_id
        self.owner_id = owner_id
        self.see_all = see_all
        self.capacity = capacity
        self.lagged = False
        self._items: deque[Event | Lagged] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time at which the current get() gives up and returns None

    def offer(self, event: Event) -> Offered:
        """Queue an event without ever waiting; on overflow become lagged."""
        if self.lagged:
            return "skipped"  # it will read this event from the table when it catches up
        if len(self._items) >= self.capacity:
            self.mark_lagged()
            return "overflowed"
        self._items.append(event)
        self._wake()
        return "queued"

    def mark_lagged(self) -> None:
        """Forget the queued events (the table has them) and tell the reader to catch up."""
        if self.lagged:
            return
        self.lagged = True
        self._items.clear()
        self._items.append(LAGGED)
        self._wake()

    def resume(self) -> None:
        """Called by the reader right before it catches up from the table: queue live events again."""
        self.lagged = False

    def pending(self) -> int:
        return len(self._items)

    def get_nowait(self) -> Event | Lagged | None:
        """The next queued item, or None when the queue is empty."""
        return self._items.popleft() if self._items else None

    async def get(self, timeout: float | None = None) -> Event | Lagged | None:
        """The next event or LAGGED; None when nothing came within `timeout` seconds."""
        if self._items:
            return self._items.popleft()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if timeout is not None:
            self._deadline = loop.time() + timeout
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        """The stream is over: drop the keep-alive timer (it holds a reference to us)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the stream is busy sending; its next get() arms the timer again
        loop = waiter.get_loop()
        if self._deadline - loop.time() > 0.001:  # events came since it was set: not quiet yet
            self._timer = loop.call_at(self._deadline, self._on_timer)
        else:
            waiter.set_result(None)  # quiet for the whole timeout: get() returns None


class RenderCache:
    """The bytes of recently routed events, rendered once per (event, variant) however many
    streams send them: the hub hands the same Event object to all its subscribers, so a burst to
    1,000 clients costs one JSON encode per audience (admin or not), not 1,000.

    Entries are found by id and checked by identity, so an event read again from the table (a
    replay) is rendered afresh rather than trusted to equal the cached one.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: dict[tuple[int, Hashable], tuple[Event, bytes]] = {}

    def get(self, event: Event, variant: Hashable, render: Callable[[Event], bytes]) -> bytes:
        key = (event.id, variant)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is event:
            return entry[1]
        rendered = render(event)
        self._entries[key] = (event, rendered)
        if len(self._entries) > self.capacity:
            del self._entries[next(iter(self._entries))]  # the oldest (dicts keep insertion order)
        return rendered

    def __len__(self) -> int:
        return len(self._entries)


class OwnerCache:
    """job_id -> owner_id, least recently used first out. Owners never change after insert."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[int, str | None] = OrderedDict()

    def get(self, job_id: int) -> tuple[bool, str | None]:
        if job_id in self._owners:
            self._owners.move_to_end(job_id)
            return True, self._owners[job_id]
        return False, None

    def put(self, job_id: int, owner_id: str | None) -> None:
        self._owners[job_id] = owner_id
        self._owners.move_to_end(job_id)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def __len__(self) -> int:
        return len(self._owners)


class EventHub:
    """Open with `await hub.start()`, close with `await hub.close()` (the app's lifespan does both)."""

    def __init__(self, database_url: str, store: Store, *, queue_size: int = 256, owner_cache_size: int = 50_000,
                 application_name: str = HUB_APPLICATION_NAME, reconnect_max_seconds: float = 5.0,
                 liveness_check_seconds: float = 30.0) -> None:
        self.database_url = database_url
        self.store = store
        self.queue_size = queue_size
        self.application_name = application_name
        self.reconnect_max_seconds = reconnect_max_seconds
        self.liveness_check_seconds = liveness_check_seconds
        # Test signal and readiness: set while the LISTEN is established, cleared while reconnecting.
        self.listening = asyncio.Event()
        self._by_job: dict[int, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self._owners = OwnerCache(owner_cache_size)
        # What streams send of the events routed here, rendered once per event and audience.
        self.rendered = RenderCache()
        self._pending: deque[tuple[int, int]] = deque()  # (event_id, job_id) not yet dispatched
        self._pending_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for /metrics.
        self.notifications = 0
        self.delivered = 0
        self.dropped = 0  # times a subscriber overflowed and had to catch up from the table
        self.reconnects = 0
        # Test signal: the highest event id whose notification has been handled (routed or skipped).
        self.handled_through = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="hub-listen"),
            asyncio.create_task(self._dispatch_loop(), name="hub-dispatch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.listening.clear()

    async def wait_listening(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.listening.wait(), timeout)

    # -- subscribers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, *, job_id: int | None = None, owner_id: str | None = None,
                  see_all: bool = False) -> Iterator[Subscription]:
        """A subscription for the duration of the `with` block; removed however the block ends."""
        if job_id is None and owner_id is None and not see_all:
            raise ValueError("subscribe to a job, an owner's jobs, or everything")
        sub = Subscription(job_id=job_id, owner_id=owner_id, see_all=see_all, capacity=self.queue_size)
        if job_id is not None:
            self._by_job.setdefault(job_id, set()).add(sub)
        else:
            self._global.add(sub)
        try:
            yield sub
        finally:
            sub.close()
            if job_id is not None:
                subs = self._by_job.get(job_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_job[job_id]
            else:
                self._global.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._by_job.values()) + len(self._global)

    def metrics(self) -> dict[str, int]:
        return {
            "subscribers": self.subscriber_count,
            "listening": int(self.listening.is_set()),
            "notifications": self.notifications,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "owner_cache": len(self._owners),
        }

    def _all_subscribers(self) -> list[Subscription]:
        return [sub for subs in self._by_job.values() for sub in subs] + list(self._global)

    # -- LISTEN ----------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = 0.1
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await connect(self.database_url, application_name=self.application_name,
                                     session_for="the event hub's LISTEN")
                await self.store.listen(conn, EVENTS_CHANNEL)
                delay = 0.1
                # Whatever was committed while we were not listening is only in the table:
                # every current subscriber replays from its last id.
                for sub in self._all_subscribers():
                    sub.mark_lagged()
                self.listening.set()
                while True:
                    async for note in conn.notifies(timeout=self.liveness_check_seconds):
                        self._on_notify(note.payload)
                    await conn.execute("SELECT 1")  # quiet for a while: make sure the connection still lives
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                self.listening.clear()
                self.reconnects += 1
                log.warning("hub LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.reconnect_max_seconds)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _on_notify(self, payload: str) -> None:
        # one line "event_id job_id type" per event; a statement's events arrive together
        for line in payload.splitlines():
            try:
                event_id, job_id = (int(part) for part in line.split(" ", 2)[:2])
            except ValueError:
                log.warning("ignoring malformed %s line %r", EVENTS_CHANNEL, line)
                continue
            self.notifications += 1
            self._pending.append((event_id, job_id))
        self._pending_ready.set()

    # -- fetch and fan out -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            # Everything announced since the last round: one burst, fetched together.
            burst = list(self._pending)
            self._pending.clear()
            if not burst:
                continue
            try:
                await self._dispatch(burst)
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:  # DatabaseUnavailable included
                log.warning("hub could not fetch %d events (%s); subscribers will catch up", len(burst), exc)
                self._mark_interested_lagged(burst)
            except Exception:
                log.exception("hub failed to dispatch %d events; subscribers will catch up", len(burst))
                self._mark_interested_lagged(burst)
            self.handled_through = max(self.handled_through, max(event_id for event_id, _ in burst))

    def _wanted(self, job_id: int) -> bool:
        return bool(self._global) or job_id in self._by_job

    def _mark_interested_lagged(self, burst: Sequence[tuple[int, int]]) -> None:
        job_ids = {job_id for _, job_id in burst}
        for sub in self._all_subscribers():
            if sub.job_id is None or sub.job_id in job_ids:
                sub.mark_lagged()

    async def _dispatch(self, burst: Sequence[tuple[int, int]]) -> None:
        ids = [event_id for event_id, job_id in burst if self._wanted(job_id)]
        for start in range(0, len(ids), FETCH_BATCH):
            events = await self.store.events_by_ids(ids[start : start + FETCH_BATCH])
            owners = await self._owners_of(events)
            for event in events:
                self._route(event, owners)

    def _route(self, event: Event, owners: dict[int, str | None]) -> None:
        targets = list(self._by_job.get(event.job_id, ()))
        owner = owners.get(event.job_id)
        targets.extend(sub for sub in self._global if sub.see_all or (owner is not None and sub.owner_id == owner))
        for sub in targets:
            offered = sub.offer(event)
            if offered == "queued":
                self.delivered += 1
            elif offered == "overflowed":
                self.dropped += 1

    async def _owners_of(self, events: Sequence[Event]) -> dict[int, str | None]:
        """Owners of the events' jobs, from the cache or one query; only when someone filters by owner."""
        if not any(sub.owner_id is not None and not sub.see_all for sub in self._global):
            return {}
        owners: dict[int, str | None] = {}
        missing: set[int] = set()
        for event in events:
            known, owner = self._owners.get(event.job_id)
            if known:
                owners[event.job_id] = owner
            else:
                missing.add(event.job_id)
        if missing:
            found = await self.store.job_owners(sorted(missing))
            for job_id, owner in found.items():
                self._owners.put(job_id, owner)
                owners[job_id] = owner
        return owners
