"""The SSE hub on a real PostgreSQL: one LISTEN connection, routing by job and by owner,
bounded queues for slow subscribers, reconnects that lose nothing, cleanup of subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from app.hub import HUB_APPLICATION_NAME, LAGGED, EventHub, Subscription
from pgqueue.models import Event
from pgqueue.queue import Queue
from tests.helpers import wait_for

TIMEOUT = 15.0


@pytest.fixture
async def hub(db_url: str, queue: Queue) -> AsyncIterator[EventHub]:
    hub = EventHub(db_url, queue.store, queue_size=8)
    await hub.start()
    await hub.wait_listening()
    try:
        yield hub
    finally:
        await hub.close()


async def receive(sub: Subscription, count: int) -> list[Event]:
    received: list[Event] = []
    while len(received) < count:
        item = await sub.get(TIMEOUT)
        assert item is not None, f"nothing within {TIMEOUT}s after {len(received)} of {count} events"
        assert item is not LAGGED, "a subscriber that reads in time must not lag"
        assert isinstance(item, Event)
        received.append(item)
    return received


async def settle(hub: EventHub, db_url: str) -> None:
    """Wait until the hub has handled every event in the table (so older ones reach no new subscriber)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        (latest,) = conn.execute("SELECT coalesce(max(id), 0) FROM pgqueue.events").fetchone() or (0,)

    async def handled() -> bool:
        return hub.handled_through >= latest

    await wait_for(handled, TIMEOUT, message=f"the hub to handle event {latest}")


def hub_backends(db_url: str) -> list[tuple[int, str]]:
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (HUB_APPLICATION_NAME, dbname),
        ).fetchall()


async def test_routes_events_by_job_and_by_owner(hub: EventHub, queue: Queue, db_url: str) -> None:
    alice_job = await queue.enqueue("noop", {}, owner_id="alice")
    bob_job = await queue.enqueue("noop", {}, owner_id="bob")
    await settle(hub, db_url)
    with (
        hub.subscribe(job_id=alice_job.id) as alice_job_sub,
        hub.subscribe(owner_id="alice") as alice_sub,
        hub.subscribe(owner_id="bob") as bob_sub,
        hub.subscribe(see_all=True) as admin_sub,
    ):
        await queue.add_events([(alice_job.id, "log", {"line": "a1"}), (bob_job.id, "log", {"line": "b1"})])
        await queue.add_events([(alice_job.id, "progress", {"percent": 50, "message": None})])

        assert [e.data for e in await receive(alice_job_sub, 2)] == [{"line": "a1"}, {"percent": 50, "message": None}]
        assert [(e.job_id, e.type) for e in await receive(alice_sub, 2)] == [
            (alice_job.id, "log"), (alice_job.id, "progress")]
        assert [(e.job_id, e.type) for e in await receive(bob_sub, 1)] == [(bob_job.id, "log")]
        admin_events = await receive(admin_sub, 3)
        assert [e.job_id for e in admin_events] == [alice_job.id, bob_job.id, alice_job.id]
        assert [e.id for e in admin_events] == sorted(e.id for e in admin_events)
        # nothing else arrived for anyone: the next item for bob is no item at all
        assert bob_sub.pending() == 0 and alice_job_sub.pending() == 0


async def test_one_fetch_per_burst_not_per_event_or_subscriber(hub: EventHub, queue: Queue, db_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    job = await queue.enqueue("noop", {})
    await settle(hub, db_url)
    fetches: list[int] = []
    real_fetch = queue.store.events_by_ids

    async def counting_fetch(ids, conn=None):  # type: ignore[no-untyped-def]
        fetches.append(len(ids))
        return await real_fetch(ids, conn)

    monkeypatch.setattr(queue.store, "events_by_ids", counting_fetch)
    hub.queue_size = 500
    with hub.subscribe(job_id=job.id) as first, hub.subscribe(job_id=job.id) as second:
        # one statement, 200 rows: 200 notifications delivered together
        await queue.add_events([(job.id, "log", {"line": str(n)}) for n in range(200)])
        assert [e.data["line"] for e in await receive(first, 200)] == [str(n) for n in range(200)]
        assert [e.data["line"] for e in await receive(second, 200)] == [str(n) for n in range(200)]
    assert sum(fetches) == 200, "each event is fetched once, whatever the number of subscribers"
    assert len(fetches) < 20, f"events are fetched in bursts, not one by one: {len(fetches)} fetches"


async def test_events_nobody_listens_to_are_not_fetched(hub: EventHub, queue: Queue, db_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    watched, unwatched = await queue.enqueue("noop", {}), await queue.enqueue("noop", {})
    await settle(hub, db_url)
    fetched: list[int] = []
    real_fetch = queue.store.events_by_ids

    async def recording_fetch(ids, conn=None):  # type: ignore[no-untyped-def]
        fetched.extend(ids)
        return await real_fetch(ids, conn)

    monkeypatch.setattr(queue.store, "events_by_ids", recording_fetch)
    with hub.subscribe(job_id=watched.id) as sub:
        await queue.add_events([(unwatched.id, "log", {"line": "ignored"})])
        await queue.add_events([(watched.id, "log", {"line": "seen"})])
        (event,) = await receive(sub, 1)
    assert event.data == {"line": "seen"}
    assert fetched == [event.id]


async def test_slow_subscriber_is_marked_lagged_and_others_keep_receiving(hub: EventHub, queue: Queue,
                                                                         db_url: str) -> None:
    job = await queue.enqueue("noop", {})
    await settle(hub, db_url)
    with hub.subscribe(job_id=job.id) as stuck, hub.subscribe(job_id=job.id) as reader:
        received: list[Event] = []
        for batch in range(10):  # 50 events, far more than the 8 a queue may hold
            await queue.add_events([(job.id, "log", {"line": f"{batch}.{n}"}) for n in range(5)])
            received += await receive(reader, 5)
        assert [e.data["line"] for e in received] == [f"{b}.{n}" for b in range(10) for n in range(5)]

        # the stuck one holds no more than its bound: just the marker that tells it to catch up
        assert stuck.lagged
        assert stuck.pending() == 1
        assert await stuck.get(0) is LAGGED
        assert hub.dropped == 1, "overflowing once counts once"

        # after catching up (from the table) it receives live events again
        stuck.resume()
        await queue.add_events([(job.id, "log", {"line": "after"})])
        (event,) = await receive(stuck, 1)
        assert event.data == {"line": "after"}
        assert reader.pending() == 1


async def test_exactly_one_listen_connection_however_many_subscribers(hub: EventHub, queue: Queue,
                                                                      db_url: str) -> None:
    job = await queue.enqueue("noop", {})
    await settle(hub, db_url)
    with hub.subscribe(job_id=job.id) as sub:
        subs = [hub.subscribe(job_id=job.id) for _ in range(50)]
        opened = [s.__enter__() for s in subs]
        try:
            assert hub.subscriber_count == 51
            backends = hub_backends(db_url)
            assert len(backends) == 1
            assert backends[0][1].startswith("LISTEN")
            await queue.add_events([(job.id, "log", {"line": "x"})])
            for each in [sub, *opened]:
                assert [e.data for e in await receive(each, 1)] == [{"line": "x"}]
        finally:
            for s in subs:
                s.__exit__(None, None, None)
    assert hub.subscriber_count == 0


async def test_subscriber_removed_however_the_stream_ends(hub: EventHub, queue: Queue) -> None:
    with pytest.raises(RuntimeError), hub.subscribe(job_id=1):
        assert hub.subscriber_count == 1
        raise RuntimeError("client went away")
    with hub.subscribe(see_all=True):
        assert hub.subscriber_count == 1
    assert hub.subscriber_count == 0
    assert hub.metrics()["subscribers"] == 0
    with pytest.raises(ValueError):
        hub.subscribe().__enter__()


async def test_lost_listen_connection_reconnects_and_subscribers_catch_up(hub: EventHub, queue: Queue,
                                                                         db_url: str) -> None:
    job = await queue.enqueue("noop", {})
    await settle(hub, db_url)
    with hub.subscribe(job_id=job.id) as sub:
        ((pid, _query),) = hub_backends(db_url)
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # the hub notices, reconnects, and tells its subscribers to replay the gap
        assert await sub.get(TIMEOUT) is LAGGED
        await hub.wait_listening()
        assert hub.reconnects >= 1
        assert [p for p, _ in await wait_for(lambda: _one_backend(db_url), TIMEOUT)] != [pid]

        sub.resume()
        await queue.add_events([(job.id, "log", {"line": "after reconnect"})])
        (event,) = await receive(sub, 1)
        assert event.data == {"line": "after reconnect"}


async def _one_backend(db_url: str) -> list[tuple[int, str]]:
    backends = hub_backends(db_url)
    return backends if len(backends) == 1 else []


async def test_global_owner_routing_looks_owners_up_once(hub: EventHub, queue: Queue, db_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # jobs created before anyone subscribed by owner: their owners must be looked up
    jobs = [await queue.enqueue("noop", {}, owner_id="carol") for _ in range(3)]
    await settle(hub, db_url)
    lookups: list[list[int]] = []
    real_lookup = queue.store.job_owners

    async def counting_lookup(ids, conn=None):  # type: ignore[no-untyped-def]
        lookups.append(list(ids))
        return await real_lookup(ids, conn)

    monkeypatch.setattr(queue.store, "job_owners", counting_lookup)
    with hub.subscribe(owner_id="carol") as carol, hub.subscribe(owner_id="dave") as dave:
        for _round in range(3):
            await queue.add_events([(job.id, "log", {"line": "tick"}) for job in jobs])
            received = await receive(carol, 3)
            assert sorted(e.job_id for e in received) == sorted(job.id for job in jobs)
        # a job never seen before: one more lookup, for it alone
        newcomer = await queue.enqueue("noop", {}, owner_id="carol")
        await queue.add_events([(newcomer.id, "progress", {"percent": 1, "message": None})])
        (event,) = await receive(carol, 1)
        assert event.job_id == newcomer.id
    assert dave.pending() == 0
    assert lookups == [sorted(job.id for job in jobs), [newcomer.id]]


async def test_follow_sends_events_in_both_replay_and_live_queue_once(hub: EventHub, queue: Queue,
                                                                      db_url: str) -> None:
    from app.streams import follow, is_terminal

    job = await queue.enqueue("noop", {})
    await settle(hub, db_url)
    with hub.subscribe(job_id=job.id) as sub:
        # committed after subscribing: in the live queue AND in the table the replay reads
        await queue.add_events([(job.id, "progress", {"percent": p, "message": None}) for p in (10, 20, 30)])

        async def queued() -> bool:
            return sub.pending() == 3

        await wait_for(queued, TIMEOUT, message="three queued events")

        async def fetch_after(after: int, limit: int) -> list[Event]:
            return await queue.events(job.id, after, limit)

        batches = follow(sub, fetch_after, 0, keepalive_seconds=TIMEOUT, ends_stream=is_terminal)
        seen = await anext(batches)  # the replay: all three
        assert seen is not None and len(seen) == 3
        await queue.add_events([(job.id, "succeeded", {})])
        seen += [event async for batch in batches for event in batch or ()]
    assert [e.type for e in seen] == ["progress"] * 3 + ["succeeded"]
    assert [e.id for e in seen] == [e.id for e in await queue.events(job.id)]


def _event(event_id: int, job_id: int = 1) -> Event:
    from datetime import UTC, datetime

    return Event(id=event_id, job_id=job_id, type="progress", data={"percent": 1}, created_at=datetime.now(UTC))


async def test_a_quiet_subscription_times_out_at_its_own_deadline_after_events_moved_it() -> None:
    import asyncio

    sub = Subscription(job_id=1, owner_id=None, see_all=False, capacity=4)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(sub.get(0.3))  # arms the keep-alive timer for now + 0.3 s
    await asyncio.sleep(0)
    sub.offer(_event(1))
    first = await waiting
    assert isinstance(first, Event) and first.id == 1
    # the timer armed above is still pending at the old deadline (0.3 s after the start); this
    # get's deadline is 0.15 s later, so when the old timer fires it must move itself instead of
    # waking this get early
    await asyncio.sleep(0.15)  # not a wait for anything: the gap between the two deadlines
    deadline = loop.time() + 0.3
    assert await sub.get(0.3) is None
    assert loop.time() >= deadline - 0.002
    sub.offer(_event(2))
    got = await sub.get(0.3)
    assert isinstance(got, Event) and got.id == 2
    sub.close()
    assert sub._timer is None


async def test_a_subscription_returns_an_event_offered_while_it_waits(hub: EventHub) -> None:
    import asyncio

    with hub.subscribe(job_id=7) as sub:
        waiting = asyncio.ensure_future(sub.get(TIMEOUT))
        await asyncio.sleep(0)
        assert not waiting.done()
        sub.offer(_event(5, job_id=7))
        got = await waiting
        assert isinstance(got, Event) and got.id == 5
        assert sub.get_nowait() is None
    assert sub._timer is None, "leaving the subscription drops its keep-alive timer"


def test_render_cache_renders_each_live_event_once_per_variant_and_a_replayed_copy_afresh() -> None:
    from app.hub import RenderCache

    calls: list[tuple[int, str]] = []

    def render(variant: str):  # type: ignore[no-untyped-def]
        def inner(event: Event) -> bytes:
            calls.append((event.id, variant))
            return f"{variant}:{event.id}".encode()
        return inner

    cache = RenderCache(capacity=2)
    live = _event(1)
    for _ in range(1000):  # one burst to 1,000 subscribers: one render per audience
        assert cache.get(live, True, render("admin")) == b"admin:1"
        assert cache.get(live, False, render("user")) == b"user:1"
    assert calls == [(1, "admin"), (1, "user")]
    replayed = _event(1)  # the same id read again from the table: a different object
    assert cache.get(replayed, True, render("admin")) == b"admin:1"
    assert calls[-1] == (1, "admin") and len(calls) == 3
    cache.get(_event(2), True, render("admin"))
    assert len(cache) == 2, "bounded: the oldest entry goes"
