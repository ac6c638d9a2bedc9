"""One behavioural contract, two backends: every test here runs against the PostgreSQL `Queue`
(a fresh migrated database) and the in-memory `MemoryQueue`, so both keep the same promises.

Time: the memory backend's clock jumps (`advance`); for Postgres, whose `now()` is the only
clock, `pass_time` waits (polling the server, no blind sleep) for a few tenths of a second.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pgqueue import (
    InvalidPayload,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    MemoryQueue,
    Queue,
    QueueBackend,
    UnknownKind,
)
from pgqueue.config import Settings
from pgqueue.errors import UniqueKeyTaken
from pgqueue.registry import MAX_PAYLOAD_DEPTH
from tests.engine_fixtures import fetch
from tests.helpers import wait_for
from tests.jobs import jobs

SHORT = 0.3  # seconds: a lease or delay a test lets run out


def contract_settings(url: str | None = None) -> Settings:
    return Settings(database_url=url, lease_seconds=5, heartbeat_seconds=0.2, poll_seconds=0.2)


async def server_up_longer_than_a_lease(queue: Queue) -> bool:
    """The rescuer leaves leases alone until the server has been up for a lease (the restart
    grace of rescue_expired_leases); the session's server may have only just started."""
    [(up,)] = await fetch(queue, "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
    return up > queue.settings.lease_seconds


@pytest.fixture(params=["postgres", "pgbouncer", "memory"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[QueueBackend]:
    """The in-memory backend, or a Queue on a fresh database: directly, or through PgBouncer in
    transaction-pooling mode (waits and session locks then on the direct URL)."""
    if request.param == "memory":
        yield MemoryQueue(jobs, contract_settings())
        return
    direct_url = request.getfixturevalue("db_url")
    url = request.getfixturevalue("pgbouncer").url_for(direct_url) if request.param == "pgbouncer" else direct_url
    settings = contract_settings(url)
    settings.direct_database_url = direct_url
    queue = await Queue.connect(url, jobs, settings=settings, max_size=4)
    try:
        await wait_for(lambda: server_up_longer_than_a_lease(queue), message="the server to be up for a lease")
        yield queue
    finally:
        await queue.close()


async def backend_now(backend: QueueBackend) -> datetime:
    if isinstance(backend, MemoryQueue):
        return backend.now()
    assert isinstance(backend, Queue)
    return await backend.store.now()


async def pass_time(backend: QueueBackend, seconds: float) -> None:
    """Let ``seconds`` pass on the backend's clock."""
    if isinstance(backend, MemoryQueue):
        backend.advance(seconds)
        return
    target = await backend_now(backend) + timedelta(seconds=seconds)

    async def reached() -> bool:
        return await backend_now(backend) > target

    await wait_for(reached, timeout=10, interval=0.05, message=f"{seconds}s to pass on the database clock")


async def claim_one(backend: QueueBackend, queue: str = "default", worker: str = "w1", **kw: float):
    claimed = await backend.claim([queue], 1, worker, **kw)
    assert len(claimed) == 1, claimed
    return claimed[0]


async def event_types(backend: QueueBackend, job_id: int) -> list[str]:
    return [event.type for event in await backend.events(job_id)]


# -- ordering and scheduling -----------------------------------------------------------------


async def test_claim_order_is_priority_then_age(backend: QueueBackend) -> None:
    hour_ago = await backend_now(backend) - timedelta(hours=1)
    low = await backend.enqueue("noop", {"n": "low"}, priority=1)
    mid_first = await backend.enqueue("noop", {"n": "mid-first"})
    high = await backend.enqueue("noop", {"n": "high"}, priority=5)
    mid_second = await backend.enqueue("noop", {"n": "mid-second"})
    high_but_older = await backend.enqueue("noop", {"n": "high-older"}, priority=5, run_at=hour_ago)
    expected = [high_but_older.id, high.id, mid_first.id, mid_second.id, low.id]

    one_at_a_time = [(await claim_one(backend)).id for _ in expected]
    assert one_at_a_time == expected
    assert await backend.claim(["default"], 10, "w1") == []


async def test_batch_claim_returns_best_first(backend: QueueBackend) -> None:
    ids = await backend.enqueue_many([("noop", {}, {"priority": p}) for p in (2, 4, 3, 5, 1)])
    claimed = await backend.claim(["default"], 10, "w1")
    assert [job.priority for job in claimed] == [5, 4, 3, 2, 1]
    assert sorted(job.id for job in claimed) == sorted(ids)
    assert all(job.status == "running" and job.attempts == 1 and job.lease_owner == "w1" for job in claimed)
    assert len({job.lease_token for job in claimed}) == 5


async def test_claim_only_from_the_asked_queues(backend: QueueBackend) -> None:
    email = await backend.enqueue("email", {"to": "a@example.com"})  # the kind's queue is "mail"
    other = await backend.enqueue("noop", {}, queue="reports")
    assert email.queue == "mail"
    assert await backend.claim(["default"], 10, "w1") == []
    assert [job.id for job in await backend.claim(["mail", "reports"], 10, "w1")] == [email.id, other.id]


async def test_scheduled_jobs_wait_for_run_at(backend: QueueBackend) -> None:
    now = await backend_now(backend)
    ready = await backend.enqueue("noop", {"n": "ready"}, priority=5)
    later = await backend.enqueue("noop", {"n": "later"}, delay=SHORT)
    far = await backend.enqueue("noop", {"n": "far"}, run_at=now + timedelta(hours=1))
    assert later.run_at >= later.created_at + timedelta(seconds=SHORT)
    assert far.run_at == now + timedelta(hours=1)

    first = await backend.claim(["default"], 10, "w1")
    checked_at = await backend_now(backend)
    assert first[0].id == ready.id
    if checked_at < later.run_at:  # the claim certainly ran before `later` was due
        assert len(first) == 1

    await pass_time(backend, SHORT)
    rest = first[1:] or await backend.claim(["default"], 10, "w1")
    assert [job.id for job in rest] == [later.id]
    assert await backend.claim(["default"], 10, "w1") == []
    assert (await backend.get(far.id)).status == "queued"


async def test_batch_claim_takes_up_to_limit_and_never_more(backend: QueueBackend) -> None:
    ids = await backend.enqueue_many([("noop", {"n": n}) for n in range(7)])
    batches = [await backend.claim(["default"], 3, "w1") for _ in range(4)]
    assert [len(batch) for batch in batches] == [3, 3, 1, 0]
    claimed = [job.id for batch in batches for job in batch]
    assert claimed == ids  # same priority: oldest first, each exactly once
    assert await backend.claim(["default"], 0, "w1") == []


# -- unique keys -----------------------------------------------------------------------------


async def test_unique_key_returns_the_live_job_and_is_free_after_it_finishes(backend: QueueBackend) -> None:
    first = await backend.enqueue("noop", {"n": 1}, unique_key="report:42")
    again = await backend.enqueue("noop", {"n": 2}, unique_key="report:42")
    assert again.id == first.id and again.payload == {"n": 1}

    running = await claim_one(backend)
    assert (await backend.enqueue("noop", {}, unique_key="report:42")).id == first.id  # running is live

    failed = await backend.fail(running.id, running.lease_token, "boom", retry_delay=3600)
    assert failed.status == "failed"
    assert (await backend.enqueue("noop", {}, unique_key="report:42")).id == first.id  # waiting to retry is live

    await backend.cancel(first.id)
    fresh = await backend.enqueue("noop", {"n": 3}, unique_key="report:42")
    assert fresh.id != first.id and fresh.status == "queued"
    assert await backend.stats() == {"default": {"cancelled": 1, "queued": 1}}


async def test_duplicate_unique_keys_inside_one_batch_do_not_fail_it(backend: QueueBackend) -> None:
    holder = await backend.enqueue("noop", {}, unique_key="held")
    ids = await backend.enqueue_many([
        ("noop", {"n": 1}, {"unique_key": "a"}),
        ("noop", {"n": 2}, {"unique_key": "a"}),
        ("noop", {"n": 3}),
        ("noop", {"n": 4}, {"unique_key": "held"}),
        ("noop", {"n": 5}, {"unique_key": "b"}),
    ])
    assert len(ids) == 5
    assert ids[0] == ids[1]
    assert ids[3] == holder.id
    assert len({ids[0], ids[2], ids[4], holder.id}) == 4
    assert (await backend.get(ids[0])).payload == {"n": 1}
    assert await backend.stats() == {"default": {"queued": 4}}


# -- bad input -------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_the_field_named_and_nothing_written(backend: QueueBackend) -> None:
    with pytest.raises(UnknownKind, match="no_such_kind"):
        await backend.enqueue("no_such_kind", {})
    with pytest.raises(InvalidPayload) as missing:
        await backend.enqueue("email", {"subject": "hi"})
    # msgspec reports a missing field at its parent object; the registry names the field itself
    assert [(e["field"], e["message"]) for e in missing.value.errors] == [
        ("payload.to", "Object missing required field `to`")
    ]
    with pytest.raises(InvalidPayload) as wrong_type:
        await backend.enqueue("email", {"to": 42})
    assert [e["field"] for e in wrong_type.value.errors] == ["payload.to"]
    for priority in (0, 6):
        with pytest.raises(InvalidPayload) as bad_priority:
            await backend.enqueue("noop", {}, priority=priority)
        assert [e["field"] for e in bad_priority.value.errors] == ["priority"]
    with pytest.raises(InvalidPayload) as bad_delay:
        await backend.enqueue("noop", {}, delay=-1)
    assert [e["field"] for e in bad_delay.value.errors] == ["delay"]
    with pytest.raises(InvalidPayload):
        await backend.enqueue_many([("noop", {}), ("email", {"to": ["not", "a", "string"]})])
    with pytest.raises(UnknownKind):
        await backend.enqueue_many([("noop", {}), ("no_such_kind", {})])
    assert await backend.stats() == {}


async def refused_fields(backend: QueueBackend, kind: str, payload: Any, **options: Any) -> list[str]:
    """The fields InvalidPayload names for this enqueue, through both enqueue and enqueue_many."""
    with pytest.raises(InvalidPayload) as one:
        await backend.enqueue(kind, payload, **options)
    with pytest.raises(InvalidPayload) as many:
        await backend.enqueue_many([("noop", {"fine": 1}), (kind, payload, options)])
    assert [e["field"] for e in many.value.errors] == [e["field"] for e in one.value.errors]
    return [e["field"] for e in one.value.errors]


def nested(depth: int) -> Any:
    payload: Any = {}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


async def test_values_postgres_cannot_store_are_refused_before_anything_is_written(backend: QueueBackend) -> None:
    """NUL (text and jsonb cannot hold U+0000), NaN and Infinity (msgspec would store null),
    nesting deeper than MAX_PAYLOAD_DEPTH (a RecursionError otherwise), a payload over the size
    limit, and instants outside years 1-9999 (stored, then unreadable by every worker)."""
    assert await refused_fields(backend, "noop", {"text": "a\x00b"}) == ["payload.text"]
    assert await refused_fields(backend, "noop", {"list": ["ok", {"k\x00": 1}]}) == ["payload.list.1"]
    assert await refused_fields(backend, "email", {"to": "a@example.com\x00"}) == ["payload.to"]
    assert await refused_fields(backend, "noop", {}, unique_key="key\x00") == ["unique_key"]
    assert await refused_fields(backend, "noop", {}, owner_id="user\x00") == ["owner_id"]
    for number in (math.nan, math.inf, -math.inf):
        assert await refused_fields(backend, "noop", {"x": [1, number]}) == ["payload.x.1"]
    assert await refused_fields(backend, "noop", nested(MAX_PAYLOAD_DEPTH + 1)) == ["payload"]
    assert await refused_fields(backend, "noop", nested(5000)) == ["payload"]
    limit = backend.settings.max_payload_bytes
    assert await refused_fields(backend, "noop", {"blob": "x" * limit}) == ["payload"]
    for delay in (math.nan, math.inf, 1e300, -0.5, True):
        assert await refused_fields(backend, "noop", {}, delay=delay) == ["delay"]
    before_year_1 = datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=10)))  # 0001-12-31 BC in UTC
    after_year_9999 = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    for run_at in (before_year_1, after_year_9999, datetime(2030, 1, 1)):  # the last one is naive
        assert await refused_fields(backend, "noop", {}, run_at=run_at) == ["run_at"]
    assert await backend.stats() == {}

    # right at the limits everything is accepted
    deepest = await backend.enqueue("noop", nested(MAX_PAYLOAD_DEPTH))
    assert (await backend.get(deepest.id)).payload == nested(MAX_PAYLOAD_DEPTH)
    blob = "x" * (limit - len('{"blob":""}'))
    await backend.enqueue_many([("noop", {"blob": blob}), ("noop", {"n": None, "s": "\\u0000 is text"})])
    early = await backend.enqueue("noop", {}, run_at=datetime(1, 1, 2, tzinfo=UTC))
    assert early.run_at == datetime(1, 1, 2, tzinfo=UTC)
    assert (await backend.stats())["default"]["queued"] == 4


# -- finishing -------------------------------------------------------------------------------


async def test_complete_stores_the_result_and_only_the_lease_holder_may(backend: QueueBackend) -> None:
    job = await backend.enqueue("email", {"to": "a@example.com"})
    running = await claim_one(backend, "mail")
    with pytest.raises(LeaseLost):
        await backend.complete(job.id, uuid.uuid4(), "forged")
    await backend.complete(job.id, running.lease_token, {"sent_to": "a@example.com", "n": [1, 2]})
    done = await backend.get(job.id)
    assert done.status == "succeeded"
    assert done.result == {"sent_to": "a@example.com", "n": [1, 2]}
    assert done.finished_at is not None and done.lease_token is None
    with pytest.raises(LeaseLost):  # the same token again: the job is no longer running
        await backend.complete(job.id, running.lease_token, "twice")
    with pytest.raises(LeaseLost):
        await backend.fail(job.id, running.lease_token, "late")
    assert (await backend.get(job.id)).result == {"sent_to": "a@example.com", "n": [1, 2]}


async def test_complete_many_finishes_only_the_held_leases(backend: QueueBackend) -> None:
    await backend.enqueue_many([("noop", {"n": n}) for n in range(3)])
    a, b, c = await backend.claim(["default"], 3, "w1")
    done = await backend.complete_many([(a.id, a.lease_token, 1), (b.id, uuid.uuid4(), 2), (c.id, c.lease_token, None)])
    assert done == {a.id, c.id}
    assert [(await backend.get(j.id)).status for j in (a, b, c)] == ["succeeded", "running", "succeeded"]
    assert await backend.complete_many([]) == set()


async def test_failed_attempt_waits_for_its_retry_time(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    failed = await backend.fail(job.id, running.lease_token, "try later", retry_delay=SHORT)
    assert failed.status == "failed" and failed.attempts == 1 and failed.last_error == "try later"
    assert failed.run_at == failed.updated_at + timedelta(seconds=SHORT)
    assert failed.finished_at is None and failed.lease_token is None

    early = await backend.claim(["default"], 10, "w1")
    if await backend_now(backend) < failed.run_at:
        assert early == []
    await pass_time(backend, SHORT)
    retried = early[0] if early else await claim_one(backend)
    assert retried.id == job.id and retried.attempts == 2


async def test_default_retry_delay_is_the_kinds_exponential_backoff_with_jitter(backend: QueueBackend) -> None:
    plain = await backend.enqueue("noop", {})  # default backoff: 2s base, +-25% jitter
    running = await claim_one(backend)
    failed = await backend.fail(plain.id, running.lease_token, "boom")
    assert 1.5 <= (failed.run_at - failed.updated_at).total_seconds() <= 2.5

    job = await backend.enqueue("flaky", {}, max_attempts=5)  # flaky: 0.05s base, capped at 0.2s
    expected = {1: (0.0375, 0.0625), 2: (0.075, 0.125), 3: (0.15, 0.25), 4: (0.15, 0.25)}
    for attempt, (low, high) in expected.items():
        running = await wait_for(lambda: backend.claim(["default"], 1, "w1"), timeout=10, interval=0.01)
        assert (running[0].id, running[0].attempts) == (job.id, attempt)
        failed = await backend.fail(job.id, running[0].lease_token, f"error {attempt}")
        assert low <= (failed.run_at - failed.updated_at).total_seconds() <= high, attempt
        await pass_time(backend, high)


async def test_dead_after_max_attempts_with_every_error_kept(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {}, max_attempts=3)
    statuses = []
    for attempt in (1, 2, 3):
        running = await claim_one(backend, worker=f"w{attempt}")
        assert running.attempts == attempt
        statuses.append((await backend.fail(job.id, running.lease_token, f"error {attempt}", retry_delay=0)).status)
    assert statuses == ["failed", "failed", "dead"]
    dead = await backend.get(job.id)
    assert dead.status == "dead" and dead.finished_at is not None and dead.last_error == "error 3"
    assert await backend.claim(["default"], 10, "w1") == []
    errors = await backend.errors(job.id)
    assert [(e.attempt, e.worker_id, e.error) for e in errors] == [(1, "w1", "error 1"), (2, "w2", "error 2"),
                                                                   (3, "w3", "error 3")]
    assert (await event_types(backend, job.id))[-1] == "dead"


async def test_permanent_failure_is_dead_at_once(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {}, max_attempts=5)
    running = await claim_one(backend)
    dead = await backend.fail(job.id, running.lease_token, "PermanentFailure: bad input", permanent=True)
    assert dead.status == "dead" and dead.attempts == 1
    assert [e.error for e in await backend.errors(job.id)] == ["PermanentFailure: bad input"]


# -- cancel, retry, delete -------------------------------------------------------------------


async def test_cancel_a_queued_job(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    cancelled = await backend.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert await backend.claim(["default"], 10, "w1") == []
    assert await event_types(backend, job.id) == ["cancelled"]  # no row for creation: see created_at


async def test_cancel_a_job_waiting_to_retry(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    await backend.fail(job.id, running.lease_token, "boom", retry_delay=3600)
    assert (await backend.cancel(job.id)).status == "cancelled"


async def test_cancel_a_running_job_flags_it_for_its_worker(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    assert await backend.heartbeat([(job.id, running.lease_token)]) == {job.id: False}
    flagged = await backend.cancel(job.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert await backend.heartbeat([(job.id, running.lease_token)]) == {job.id: True}

    stopped = await backend.finish_cancelled(job.id, running.lease_token)
    assert stopped.status == "cancelled" and stopped.last_error == "cancelled while running"
    with pytest.raises(LeaseLost):
        await backend.finish_cancelled(job.id, running.lease_token)
    events = await backend.events(job.id)
    assert [e.type for e in events] == ["started", "cancel_requested", "cancelled"]
    assert events[-1].data == {"while_running": True}


async def test_a_job_asked_to_stop_is_cancelled_when_it_fails_or_is_released(backend: QueueBackend) -> None:
    # it failed for another reason after the request: a retry would only be cancelled again
    failing = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    await backend.cancel(failing.id)
    failed = await backend.fail(failing.id, running.lease_token, "boom", retry_delay=0)
    assert failed.status == "cancelled" and failed.finished_at is not None
    assert [e.error for e in await backend.errors(failing.id)] == ["boom"]
    assert (await event_types(backend, failing.id))[-1] == "cancelled"

    # shutdown released it: it does not go back to the queue
    releasing = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    await backend.cancel(releasing.id)
    assert await backend.release([(releasing.id, running.lease_token)]) == [releasing.id]
    assert (await backend.get(releasing.id)).status == "cancelled"
    assert await backend.claim(["default"], 10, "w1") == []


async def test_cancel_a_finished_or_missing_job_is_refused(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    await backend.complete(job.id, running.lease_token)
    with pytest.raises(InvalidTransition) as refused:
        await backend.cancel(job.id)
    assert refused.value.status == "succeeded"
    with pytest.raises(JobNotFound):
        await backend.cancel(10**9)


async def test_retry_re_drives_a_dead_job_with_fresh_attempts(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {}, max_attempts=1)
    running = await claim_one(backend)
    await backend.fail(job.id, running.lease_token, "boom")
    assert (await backend.get(job.id)).status == "dead"

    redriven = await backend.retry(job.id)
    assert redriven.status == "queued" and redriven.attempts == 0 and redriven.finished_at is None
    assert redriven.run_at <= await backend_now(backend)
    again = await claim_one(backend)
    assert again.id == job.id and again.attempts == 1
    assert [e.error for e in await backend.errors(job.id)] == ["boom"]  # history stays
    with pytest.raises(InvalidTransition):
        await backend.retry(job.id)  # running
    assert "retried" in await event_types(backend, job.id)
    with pytest.raises(JobNotFound):
        await backend.retry(10**9)


async def test_retry_re_drives_a_cancelled_job_as_river_and_oban_do(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    assert (await backend.cancel(job.id)).status == "cancelled"
    redriven = await backend.retry(job.id)
    assert redriven.status == "queued" and redriven.finished_at is None and not redriven.cancel_requested
    again = await claim_one(backend)
    assert again.id == job.id and again.attempts == 1
    assert await event_types(backend, job.id) == ["cancelled", "retried", "started"]
    await backend.complete(job.id, again.lease_token)
    with pytest.raises(InvalidTransition) as refused:
        await backend.retry(job.id)  # a succeeded job stays succeeded
    assert refused.value.status == "succeeded"


async def test_retry_refuses_while_another_live_job_holds_its_unique_key(backend: QueueBackend) -> None:
    first = await backend.enqueue("noop", {}, unique_key="nightly")
    assert (await backend.cancel(first.id)).status == "cancelled"
    holder = await backend.enqueue("noop", {}, unique_key="nightly")  # the key is free again: a new job
    assert holder.id != first.id
    with pytest.raises(UniqueKeyTaken) as refused:
        await backend.retry(first.id)
    assert refused.value.holder_id == holder.id and isinstance(refused.value, InvalidTransition)
    assert (await backend.get(first.id)).status == "cancelled"
    await backend.cancel(holder.id)
    assert (await backend.retry(first.id)).status == "queued"


async def test_run_now_makes_a_job_scheduled_for_later_runnable(backend: QueueBackend) -> None:
    later = await backend.enqueue("noop", {}, delay=3600)
    assert await backend.claim(["default"], 1, "w") == []
    moved = await backend.run_now(later.id)
    assert moved.run_at <= await backend_now(backend)
    assert (await claim_one(backend)).id == later.id
    with pytest.raises(InvalidTransition):
        await backend.run_now(later.id)  # running now


async def test_delete(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    with pytest.raises(InvalidTransition):
        await backend.delete(job.id)
    await backend.fail(job.id, running.lease_token, "boom", retry_delay=3600)
    await backend.delete(job.id)
    with pytest.raises(JobNotFound):
        await backend.get(job.id)
    assert await backend.errors(job.id) == []
    # a 'deleted' event is the job's last: it ends any stream still following it
    assert (await event_types(backend, job.id))[-1] == "deleted"
    with pytest.raises(JobNotFound):
        await backend.delete(job.id)


# -- leases ----------------------------------------------------------------------------------


async def test_expired_lease_is_rescued_and_the_zombie_cannot_finish(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    zombie = await claim_one(backend, worker="zombie", lease_seconds=SHORT)
    assert zombie.lease_expires_at is not None
    early = await backend.rescue_expired_leases()
    if await backend_now(backend) < zombie.lease_expires_at:
        assert early == []

    await pass_time(backend, SHORT)
    rescued = early or await backend.rescue_expired_leases()
    assert rescued == [job.id]
    after = await backend.get(job.id)
    assert after.status == "failed" and after.attempts == 1  # the lost attempt counts
    assert after.run_at <= await backend_now(backend)
    assert "lease expired" in (after.last_error or "")
    assert [(e.attempt, e.worker_id) for e in await backend.errors(job.id)] == [(1, "zombie")]
    assert (await event_types(backend, job.id))[-1] == "rescued"

    with pytest.raises(LeaseLost):
        await backend.complete(job.id, zombie.lease_token, "stale")
    with pytest.raises(LeaseLost):
        await backend.fail(job.id, zombie.lease_token, "stale")
    with pytest.raises(LeaseLost):
        await backend.save_checkpoint(job.id, zombie.lease_token, {"next": 1})
    assert await backend.heartbeat([(job.id, zombie.lease_token)]) == {}

    rerun = await claim_one(backend, worker="w2")
    assert rerun.attempts == 2 and rerun.lease_token != zombie.lease_token
    with pytest.raises(LeaseLost):
        await backend.complete(job.id, zombie.lease_token, "stale")
    await backend.complete(job.id, rerun.lease_token, "fresh")
    assert (await backend.get(job.id)).result == "fresh"


async def test_rescue_ends_jobs_out_of_attempts_or_asked_to_cancel(backend: QueueBackend) -> None:
    last_try = await backend.enqueue("noop", {"n": 1}, max_attempts=1)
    to_cancel = await backend.enqueue("noop", {"n": 2})
    claimed = await backend.claim(["default"], 2, "gone", lease_seconds=SHORT)
    assert sorted(j.id for j in claimed) == sorted([last_try.id, to_cancel.id])
    await backend.cancel(to_cancel.id)
    await pass_time(backend, SHORT)
    assert sorted(await backend.rescue_expired_leases()) == sorted([last_try.id, to_cancel.id])
    assert (await backend.get(last_try.id)).status == "dead"
    assert (await backend.get(to_cancel.id)).status == "cancelled"
    assert (await event_types(backend, last_try.id))[-1] == "dead"
    assert (await event_types(backend, to_cancel.id))[-1] == "cancelled"


async def test_heartbeat_extends_the_lease(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend, lease_seconds=SHORT)
    assert await backend.heartbeat([(job.id, running.lease_token), (10**9, uuid.uuid4())], lease_seconds=60) == {
        job.id: False
    }
    extended = await backend.get(job.id)
    assert extended.lease_expires_at is not None and running.lease_expires_at is not None
    assert extended.lease_expires_at >= running.lease_expires_at + timedelta(seconds=50)
    await pass_time(backend, SHORT)
    assert await backend.rescue_expired_leases() == []
    assert await backend.heartbeat([]) == {}


async def test_release_gives_the_job_back_without_counting_the_attempt(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    assert await backend.release([(job.id, running.lease_token), (job.id, uuid.uuid4())]) == [job.id]
    released = await backend.get(job.id)
    assert released.status == "queued" and released.attempts == 0 and released.lease_token is None
    assert await backend.release([(job.id, running.lease_token)]) == []
    assert (await claim_one(backend)).attempts == 1
    assert "released" in await event_types(backend, job.id)


# -- checkpoints, events, stats --------------------------------------------------------------


async def test_checkpoints_are_saved_by_the_lease_holder_and_survive_a_retry(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    other = await backend.enqueue("noop", {}, queue="elsewhere")
    assert await backend.load_checkpoint(job.id) is None
    running = await claim_one(backend)
    await backend.save_checkpoint(job.id, running.lease_token, {"next": 10})
    await backend.save_checkpoint(job.id, running.lease_token, {"next": 20, "cursor": "abc"})
    with pytest.raises(LeaseLost):
        await backend.save_checkpoint(job.id, uuid.uuid4(), {"next": 99})
    assert await backend.load_checkpoint(job.id) == {"next": 20, "cursor": "abc"}
    assert await backend.load_checkpoint(other.id) is None

    await backend.fail(job.id, running.lease_token, "crash", retry_delay=0)
    retry = await claim_one(backend)
    assert retry.id == job.id
    assert await backend.load_checkpoint(job.id) == {"next": 20, "cursor": "abc"}


async def test_events_timeline(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {}, max_attempts=2)
    first = await claim_one(backend, worker="w1")
    await backend.add_events([(job.id, "progress", {"percent": 50.0, "message": "half"}),
                              (job.id, "log", {"line": "hello", "level": "info"})])
    failed = await backend.fail(job.id, first.lease_token, "boom", retry_delay=0)
    second = await claim_one(backend, worker="w2")
    await backend.complete(job.id, second.lease_token, "ok")

    events = await backend.events(job.id)
    assert [e.type for e in events] == ["started", "progress", "log", "failed", "started", "succeeded"]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e.job_id == job.id for e in events)
    started, progress, log, fail_event, restarted, succeeded = (e.data for e in events)
    assert started == {"attempt": 1, "worker_id": "w1"}
    assert progress == {"percent": 50.0, "message": "half"}
    assert log == {"line": "hello", "level": "info"}
    assert fail_event["attempt"] == 1 and fail_event["error"] == "boom"
    assert datetime.fromisoformat(fail_event["retry_at"]) == failed.run_at
    assert restarted == {"attempt": 2, "worker_id": "w2"}
    assert succeeded == {"attempt": 2}

    assert [e.id for e in await backend.events(job.id, after_id=ids[3])] == ids[4:]
    assert [e.id for e in await backend.events(job.id, limit=2)] == ids[:2]
    other = await backend.enqueue("noop", {})
    assert await backend.events(other.id) == []  # a job's timeline starts at its created_at
    await backend.cancel(other.id)
    assert [e.type for e in await backend.events(other.id)] == ["cancelled"]
    assert (await backend.events(other.id))[0].id > ids[-1]


async def test_stats_counts_jobs_by_queue_and_status(backend: QueueBackend) -> None:
    assert await backend.stats() == {}
    await backend.enqueue_many([("noop", {}), ("noop", {}), ("email", {"to": "a@example.com"})])
    await claim_one(backend)
    assert await backend.stats() == {"default": {"queued": 1, "running": 1}, "mail": {"queued": 1}}


async def test_get_returns_a_snapshot(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {"nested": {"n": 1}})
    job.payload["nested"]["n"] = 2  # editing what we got back must not change the stored job
    await claim_one(backend)
    fetched = await backend.get(job.id)
    assert fetched.payload == {"nested": {"n": 1}}
    assert job.status == "queued" and fetched.status == "running"
    with pytest.raises(JobNotFound):
        await backend.get(10**9)


async def test_lease_transaction_is_open_only_to_the_lease_holder(backend: QueueBackend) -> None:
    job = await backend.enqueue("noop", {})
    running = await claim_one(backend)
    async with backend.lease_transaction(job.id, running.lease_token) as conn:
        await backend.save_checkpoint(job.id, running.lease_token, {"next": 5}, conn=conn)
    assert await backend.load_checkpoint(job.id) == {"next": 5}
    with pytest.raises(LeaseLost):
        async with backend.lease_transaction(job.id, uuid.uuid4()):
            raise AssertionError("entered without the lease")
