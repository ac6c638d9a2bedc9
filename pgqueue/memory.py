"""An in-memory queue backend for your own unit tests: the contract of `Queue` without a database.

    mq = MemoryQueue(jobs)                     # jobs: your JobRegistry
    await mq.enqueue("email", {"to": "a@b.c"})
    counts = await mq.run_until_empty()        # runs the handlers, in-process
    assert counts["succeeded"] == 1

`MemoryQueue` honours the same contract as the PostgreSQL `Queue` (tests/test_contract.py runs
one behavioural suite against both): validation, unique keys among live jobs, priority then
age ordering, run_at/delay, leases, retries with backoff, dead jobs, cancellation, re-drive,
errors, events with increasing ids, checkpoints and stats. What differs, on purpose:

- Time comes from an injectable clock (`clock=`, default: the system's UTC time) plus an
  offset that `advance(seconds)` moves, so a test can expire leases or reach a retry time
  without sleeping.
- There are no connections: every ``conn`` argument is accepted and ignored, a job exists as
  soon as `enqueue` returns, and `ctx.transaction()` checks the lease and yields None (a
  checkpoint saved with ``conn=None`` is stored at once; there is nothing to roll back).
- Progress and log events of a job run by `run_until_empty` are written when its handler
  returns (coalesced like the worker does), just before its terminal event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from pgqueue.config import Settings
from pgqueue.context import EventBuffer, JobContext, run_handler, settle_outcome
from pgqueue.cron import load_zone, parse_cron
from pgqueue.dependencies import check_parents, has_dependencies, plan_graph, split_options, with_dependencies
from pgqueue.errors import (
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    ScheduleExists,
    ScheduleNotFound,
    UniqueKeyTaken,
    WaitTimeout,
)
from pgqueue.limits import UNCHANGED, QueueInfo, Rate, check_queue_name, limit_params, unlimited
from pgqueue.models import (
    DEFAULT_CATCH_UP_WINDOW,
    FINISHED_STATUSES,
    LIVE_STATUSES,
    RETRYABLE_STATUSES,
    TERMINAL_EVENTS,
    Event,
    Job,
    JobError,
    NewJob,
    Schedule,
    ScheduleFire,
    ScheduleSpec,
)
from pgqueue.queue import DEFAULT_RETRY_BASE, EnqueueItem, build_jobs
from pgqueue.registry import JobRegistry, check_payload_sizes, check_schedule
from pgqueue.scheduler import first_fire, plan_fires

# The lease owner `run_until_empty` claims under.
MEMORY_WORKER_ID = "memory"
RUNNABLE_STATUSES = ("queued", "failed")
# Keys of the dict `run_until_empty` returns; "failed" counts failed attempts that will be retried.
RUN_OUTCOMES = ("succeeded", "failed", "dead", "cancelled", "lease_lost")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _through_json(value: Any) -> Any:
    """What Postgres would hand back after storing ``value`` as jsonb (and the same TypeError
    for a value that is not JSON-serialisable)."""
    return msgspec.json.decode(msgspec.json.encode(value))


class _RunningHandler:
    __slots__ = ("ctx", "task")

    def __init__(self, ctx: JobContext, task: asyncio.Task[tuple[str, Any]]) -> None:
        self.ctx = ctx
        self.task = task


class MemoryQueue:
    def __init__(self, registry: JobRegistry | None = None, settings: Settings | None = None, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.registry = registry or JobRegistry()
        self.settings = settings or Settings()
        self._clock = clock or _utc_now
        self._offset = timedelta(0)
        self._jobs: dict[int, Job] = {}
        self._errors: dict[int, list[JobError]] = {}
        self._events: list[Event] = []
        self._checkpoints: dict[int, Any] = {}
        self._job_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._running: dict[int, _RunningHandler] = {}
        self._event_buffer = EventBuffer()
        # dependencies: child -> [(parent, run_if_failed)], parent -> children
        self._parents: dict[int, list[tuple[int, bool]]] = {}
        self._children: dict[int, list[int]] = {}
        self._waiters: dict[int, set[asyncio.Event]] = {}  # wait(): woken by a terminal event
        self._queues: dict[str, QueueInfo] = {}  # paused or limited queues (the pgqueue.queues rows)
        self._buckets: dict[tuple[str, str], tuple[float, datetime]] = {}  # (queue, key or ''): tokens, as of
        self.schedules = MemorySchedules(self)  # periodic jobs, same contract as pgqueue/scheduler.py

    async def close(self) -> None:
        """Nothing to release; here so code written against `Queue` runs unchanged."""

    async def __aenter__(self) -> MemoryQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- time ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The backend's current time: the clock plus whatever `advance` added."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move time forward (expire leases, reach scheduled and retry times) without sleeping."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += timedelta(seconds=seconds)

    # -- enqueue -------------------------------------------------------------------------------

    async def enqueue(self, kind: str, payload: Any = None, *, conn: Any = None, parents_owned_by: str | None = None,
                      **options: Any) -> Job:
        """Validate and store one job; a live job holding the same unique key is returned instead."""
        options, dependency_options = split_options(options)
        new = with_dependencies(self.registry.build(kind, {} if payload is None else payload, **options),
                                dependency_options)
        check_payload_sizes([new], self.settings.max_payload_bytes)
        return self._snapshot(self._insert([new], parents_owned_by)[0])

    async def enqueue_many(self, items: Iterable[EnqueueItem], *, conn: Any = None,
                           parents_owned_by: str | None = None) -> list[int]:
        """Store many jobs at once (all validated first); returns their ids in input order."""
        jobs = build_jobs(self.registry, items, max_payload_bytes=self.settings.max_payload_bytes)
        return [job.id for job in self._insert(jobs, parents_owned_by)]

    def _insert(self, new_jobs: Sequence[NewJob], parents_owned_by: str | None = None) -> list[Job]:
        # what Postgres would hand back after storing the payload as jsonb
        payloads = [_through_json(new.payload) if new.payload_json is None else msgspec.json.decode(new.payload_json)
                    for new in new_jobs]  # may raise: nothing written yet
        if has_dependencies(new_jobs):
            return self._insert_graph(new_jobs, payloads, parents_owned_by)
        now = self.now()
        live_by_key = {job.unique_key: job for job in self._jobs.values()
                       if job.unique_key is not None and job.status in LIVE_STATUSES}
        ordered: list[Job] = []
        for new, payload in zip(new_jobs, payloads, strict=True):
            holder = live_by_key.get(new.unique_key) if new.unique_key is not None else None
            if holder is not None:
                ordered.append(holder)
                continue
            job = Job(id=next(self._job_ids), queue=new.queue, kind=new.kind, payload=payload,
                      priority=new.priority, status="queued",
                      run_at=new.run_at or now + timedelta(seconds=new.delay_seconds),
                      attempts=0, max_attempts=new.max_attempts, unique_key=new.unique_key,
                      owner_id=new.owner_id, concurrency_key=new.concurrency_key, created_at=now, updated_at=now)
            self._jobs[job.id] = job
            if job.unique_key is not None:
                live_by_key[job.unique_key] = job
            # no 'created' event, as in Postgres: a job's timeline starts at created_at
            ordered.append(job)
        return ordered

    def _insert_graph(self, new_jobs: Sequence[NewJob], payloads: list[Any], parents_owned_by: str | None) -> list[Job]:
        """Jobs with dependencies, as Store.insert_graph: parents must exist (and be the owner's),
        jobs with parents start 'waiting', and those whose parents already finished are settled."""
        plan = plan_graph(new_jobs)
        check_parents(plan, [(job.id, job.status, job.owner_id) for job_id in plan.existing_parents
                             if (job := self._jobs.get(job_id)) is not None], parents_owned_by)
        now = self.now()
        live_by_key = {job.unique_key: job for job in self._jobs.values()
                       if job.unique_key is not None and job.status in LIVE_STATUSES}
        ordered: list[Job] = []
        ids: list[int | None] = []
        for new, payload, waits in zip(new_jobs, payloads, plan.waiting, strict=True):
            holder = live_by_key.get(new.unique_key) if new.unique_key is not None else None
            if holder is not None:
                ordered.append(holder)
                ids.append(None)
                continue
            job = Job(id=next(self._job_ids), queue=new.queue, kind=new.kind, payload=payload,
                      priority=new.priority, status="waiting" if waits else "queued",
                      run_at=new.run_at or now + timedelta(seconds=new.delay_seconds),
                      attempts=0, max_attempts=new.max_attempts, unique_key=new.unique_key,
                      owner_id=new.owner_id, created_at=now, updated_at=now)
            self._jobs[job.id] = job
            if job.unique_key is not None:
                live_by_key[job.unique_key] = job
            ordered.append(job)
            ids.append(job.id)
        for edge in plan.edges:
            child = ids[edge.child]
            if child is not None:
                parent = plan.parent_of(edge, ids)
                self._parents.setdefault(child, []).append((parent, edge.run_if_failed))
                self._children.setdefault(parent, []).append(child)
        self._resolve(sorted({child for edge in plan.edges if (child := ids[edge.child]) is not None}))
        return ordered

    def _resolve(self, children: Sequence[int]) -> None:
        """Settle waiting jobs whose parents may have finished (pgqueue.resolve_waiting): cancelled
        when a parent ended dead or cancelled (unless run_if_failed), queued once all have finished."""
        now = self.now()
        for child_id in children:
            child = self._jobs.get(child_id)
            if child is None or child.status != "waiting":
                continue
            parents = [(job, run_anyway) for parent_id, run_anyway in self._parents.get(child_id, [])
                       if (job := self._jobs.get(parent_id)) is not None]  # a deleted parent's edge is gone
            failed = sorted((job.id, job.status) for job, run_anyway in parents
                            if job.status in ("dead", "cancelled") and not run_anyway)
            if failed:
                parent_id, parent_status = failed[0]
                child.status = "cancelled"
                child.finished_at = child.updated_at = now
                child.last_error = f"cancelled: parent job {parent_id} ended {parent_status}"
                self._add_event(child_id, "cancelled", {"reason": f"parent {parent_status}", "parent_id": parent_id}, now)
            elif all(job.status in FINISHED_STATUSES for job, _ in parents):
                child.status = "queued"
                child.run_at = max(child.run_at, now)
                child.updated_at = now
                self._add_event(child_id, "unblocked", {}, now)

    # -- the worker's side ---------------------------------------------------------------------

    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, *,
                    lease_seconds: float | None = None) -> list[Job]:
        """Lease up to ``limit`` runnable jobs of these queues, best priority then oldest first."""
        now = self.now()
        lease = timedelta(seconds=lease_seconds or self.settings.lease_seconds)
        wanted = set(queues)
        candidates = sorted(
            (job for job in self._jobs.values()
             if job.queue in wanted and job.status in RUNNABLE_STATUSES and job.run_at <= now),
            key=lambda job: (-job.priority, job.run_at, job.id),
        )
        runnable: list[Job] = []
        for job in candidates:
            if len(runnable) >= limit:
                break
            # a paused or limited queue's job without a slot or a token is skipped, as in Postgres
            if not self._admit(job, now):
                continue
            runnable.append(job)
            job.status = "running"
            job.attempts += 1
            job.lease_owner = worker_id
            job.lease_token = uuid.uuid4()
            job.lease_expires_at = now + lease
            job.started_at = job.updated_at = now
            self._add_event(job.id, "started", {"attempt": job.attempts, "worker_id": worker_id}, now)
        return [self._snapshot(job) for job in runnable]

    async def complete(self, job_id: int, token: uuid.UUID, result: Any = None) -> None:
        if job_id not in await self.complete_many([(job_id, token, result)]):
            raise LeaseLost(job_id)

    async def complete_many(self, items: Sequence[tuple[int, uuid.UUID, Any]]) -> set[int]:
        """Finish jobs as succeeded; returns the ids whose lease was still held."""
        results = [_through_json(result) for _job_id, _token, result in items]  # may raise: nothing written yet
        now = self.now()
        done: set[int] = set()
        for (job_id, token, _result), result in sorted(zip(items, results, strict=True), key=lambda pair: pair[0][0]):
            job = self._held(job_id, token)
            if job is None:
                continue
            job.status = "succeeded"
            job.result = result
            job.finished_at = job.updated_at = now
            job.lease_token = job.lease_expires_at = None
            self._add_event(job_id, "succeeded", {"attempt": job.attempts}, now)
            done.add(job_id)
        return done

    async def fail(self, job_id: int, token: uuid.UUID, error: str, *, retry_delay: float | None = None,
                   permanent: bool = False) -> Job:
        """Record a failed attempt; the job retries after ``retry_delay`` (default: the kind's
        backoff) or goes dead once its attempts are used up or when ``permanent``."""
        job = self._held(job_id, token)
        if job is None:
            raise LeaseLost(job_id)
        if retry_delay is None:
            spec = self.registry.kinds.get(job.kind)
            retry_delay = spec.retry_delay(job.attempts) if spec else DEFAULT_RETRY_BASE
        now = self.now()
        # a cancel request wins over a retry (as in Postgres): the retry would only be cancelled
        dead = job.cancel_requested or permanent or job.attempts >= job.max_attempts
        job.status = "cancelled" if job.cancel_requested else "dead" if dead else "failed"
        if not dead:
            job.run_at = now + timedelta(seconds=retry_delay)
        job.finished_at = now if dead else None
        job.last_error = error
        job.lease_token = job.lease_expires_at = None
        job.updated_at = now
        self._add_error(job, error, now)
        self._add_event(job_id, job.status, {"attempt": job.attempts, "error": error[:500],
                                             "retry_at": None if dead else job.run_at.isoformat()}, now)
        return self._snapshot(job)

    async def finish_cancelled(self, job_id: int, token: uuid.UUID) -> Job:
        """A running job whose handler stopped because cancellation was requested."""
        job = self._held(job_id, token)
        if job is None:
            raise LeaseLost(job_id)
        now = self.now()
        job.status = "cancelled"
        job.finished_at = job.updated_at = now
        job.lease_token = job.lease_expires_at = None
        job.last_error = "cancelled while running"
        self._add_event(job_id, "cancelled", {"while_running": True}, now)
        return self._snapshot(job)

    async def heartbeat(self, items: Sequence[tuple[int, uuid.UUID]], *, lease_seconds: float | None = None,
                        conn: Any = None) -> dict[int, bool]:
        """Extend leases; returns {job_id: cancel_requested} for the leases still held."""
        expires = self.now() + timedelta(seconds=lease_seconds or self.settings.lease_seconds)
        held: dict[int, bool] = {}
        for job_id, token in items:
            job = self._held(job_id, token)
            if job is not None:
                job.lease_expires_at = expires
                held[job_id] = job.cancel_requested
        return held

    async def release(self, items: Sequence[tuple[int, uuid.UUID]]) -> list[int]:
        """Give jobs back untouched (shutdown ran out of time): the attempt is not counted."""
        now = self.now()
        released = []
        for job_id, token in items:
            job = self._held(job_id, token)
            if job is None:
                continue
            if job.cancel_requested:  # asked to stop anyway: cancelled, not back in the queue
                job.status = "cancelled"
                job.finished_at = now
            else:
                job.status = "queued"
                job.attempts = max(job.attempts - 1, 0)
            job.run_at = job.updated_at = now
            job.lease_token = job.lease_expires_at = None
            self._add_event(job_id, "cancelled" if job.cancel_requested else "released", {}, now)
            released.append(job_id)
        return released

    async def rescue_expired_leases(self, limit: int = 1000, conn: Any = None) -> list[int]:
        """Jobs whose lease expired: the attempt counts; runnable again, dead, or cancelled if asked."""
        now = self.now()
        expired = sorted(
            (job for job in self._jobs.values()
             if job.status == "running" and job.lease_expires_at is not None and job.lease_expires_at < now),
            key=lambda job: (job.lease_expires_at, job.id),
        )[: max(limit, 0)]
        for job in expired:
            if job.cancel_requested:
                job.status = "cancelled"
            elif job.attempts >= job.max_attempts:
                job.status = "dead"
            else:
                job.status = "failed"
            job.run_at = job.updated_at = now
            job.finished_at = None if job.status == "failed" else now
            job.last_error = f"lease expired: worker {job.lease_owner or '?'} stopped heartbeating"
            job.lease_token = job.lease_expires_at = None
            self._add_error(job, job.last_error, now)
            self._add_event(job.id, "rescued" if job.status == "failed" else job.status,
                            {"attempt": job.attempts, "error": job.last_error}, now)
        return [job.id for job in expired]

    # -- operator actions ----------------------------------------------------------------------

    async def get(self, job_id: int, conn: Any = None) -> Job:
        return self._snapshot(self._existing(job_id))

    async def cancel(self, job_id: int) -> Job:
        """Cancel a waiting job at once; ask a running one to stop (its handler sees the request)."""
        job = self._existing(job_id)
        now = self.now()
        if job.status in RUNNABLE_STATUSES or job.status == "waiting":
            job.status = "cancelled"
            job.finished_at = job.updated_at = now
            self._add_event(job_id, "cancelled", {}, now)
        elif job.status == "running":
            job.cancel_requested = True
            job.updated_at = now
            self._add_event(job_id, "cancel_requested", {}, now)
            self._stop_running_handler(job)
        else:
            raise InvalidTransition(job_id, job.status, "cancel")
        return self._snapshot(job)

    async def retry(self, job_id: int) -> Job:
        """Re-drive a dead, cancelled (or failed, waiting) job now, with a fresh attempt budget."""
        job = self._existing(job_id)
        if job.status not in RETRYABLE_STATUSES:
            raise InvalidTransition(job_id, job.status, "retry")
        holder = next((other.id for other in self._jobs.values() if job.unique_key is not None and other.id != job_id
                       and other.unique_key == job.unique_key and other.status in LIVE_STATUSES), None)
        if holder is not None:
            raise UniqueKeyTaken(job_id, job.unique_key or "", holder)
        now = self.now()
        job.status = "queued"
        job.attempts = 0
        job.run_at = job.updated_at = now
        job.finished_at = None
        job.cancel_requested = False
        self._add_event(job_id, "retried", {}, now)
        return self._snapshot(job)

    async def run_now(self, job_id: int) -> Job:
        """Make a queued job scheduled for later runnable now."""
        job = self._existing(job_id)
        now = self.now()
        if job.status != "queued" or job.run_at <= now:
            raise InvalidTransition(job_id, job.status, "run now")
        job.run_at = job.updated_at = now
        return self._snapshot(job)

    async def delete(self, job_id: int) -> None:
        """Remove a job that is not running, with its errors and checkpoint (its events stay, and a
        'deleted' one ends any stream following it)."""
        job = self._existing(job_id)
        if job.status == "running":
            raise InvalidTransition(job_id, job.status, "delete")
        if any(self._jobs[c].status == "waiting" for c in self._children.get(job_id, ()) if c in self._jobs):
            await self.cancel(job_id)  # what it leaves waiting is cancelled, as in Postgres
        del self._jobs[job_id]
        for child_id in self._children.pop(job_id, []):  # the edges go with the job (ON DELETE CASCADE)
            self._parents[child_id] = [edge for edge in self._parents.get(child_id, []) if edge[0] != job_id]
        self._parents.pop(job_id, None)
        self._add_event(job_id, "deleted", {}, self.now())
        self._errors.pop(job_id, None)
        self._checkpoints.pop(job_id, None)

    async def wait(self, job_id: int, timeout: float = 30.0) -> Job:
        """The job once it finished (succeeded, dead, cancelled); WaitTimeout after ``timeout`` real
        seconds (something else, e.g. run_until_empty in another task, must run it meanwhile)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise ValueError("timeout must be a number of seconds >= 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            while True:
                woken.clear()
                job = self._existing(job_id)
                if job.status in FINISHED_STATUSES:
                    return self._snapshot(job)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(job_id, timeout, job.status)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), remaining)
        finally:
            self._waiters[job_id].discard(woken)
            if not self._waiters[job_id]:
                del self._waiters[job_id]

    async def parents(self, job_id: int) -> list[tuple[int, str, bool]]:
        """(id, status, run_if_failed) of each job this one depends on."""
        self._existing(job_id)
        return sorted((parent_id, self._jobs[parent_id].status, run_anyway)
                      for parent_id, run_anyway in self._parents.get(job_id, []) if parent_id in self._jobs)

    async def errors(self, job_id: int) -> list[JobError]:
        return copy.deepcopy(self._errors.get(job_id, []))

    async def events(self, job_id: int, after_id: int = 0, limit: int = 1000) -> list[Event]:
        matching = (event for event in self._events if event.job_id == job_id and event.id > after_id)
        return copy.deepcopy(list(itertools.islice(matching, max(limit, 0))))

    async def add_events(self, events: Sequence[tuple[int, str, Any]]) -> None:
        """Progress and log events (job_id, type, data)."""
        datas = [_through_json(data) for _job_id, _type, data in events]  # may raise: nothing written yet
        now = self.now()
        for (job_id, event_type, _data), data in zip(events, datas, strict=True):
            self._add_event(job_id, event_type, data, now)

    @contextlib.asynccontextmanager
    async def lease_transaction(self, job_id: int, token: uuid.UUID) -> AsyncIterator[None]:
        """Checks the lease like the Postgres backend; yields None, as there is no connection."""
        if self._held(job_id, token) is None:
            raise LeaseLost(job_id)
        yield None

    async def load_checkpoint(self, job_id: int, conn: Any = None) -> Any:
        return copy.deepcopy(self._checkpoints.get(job_id))

    async def save_checkpoint(self, job_id: int, token: uuid.UUID, state: Any, conn: Any = None) -> None:
        """Save a checkpoint, only while the lease is held."""
        if self._held(job_id, token) is None:
            raise LeaseLost(job_id)
        self._checkpoints[job_id] = _through_json(state)

    async def stats(self) -> dict[str, dict[str, int]]:
        """{queue: {status: count}}."""
        out: dict[str, dict[str, int]] = {}
        for job in self._jobs.values():
            by_status = out.setdefault(job.queue, {})
            by_status[job.status] = by_status.get(job.status, 0) + 1
        return out

    # -- queues: pause and limits (the contract of pgqueue.queues and claim_jobs) ----------------

    async def list_queues(self) -> list[QueueInfo]:
        names = set(self._queues) | {job.queue for job in self._jobs.values()}
        return [self._queue_info(name) for name in sorted(names)]

    async def get_queue(self, name: str) -> QueueInfo:
        return self._queue_info(check_queue_name(name))

    async def pause_queue(self, name: str) -> QueueInfo:
        return self._change_queue(check_queue_name(name), paused=True)

    async def resume_queue(self, name: str) -> QueueInfo:
        return self._change_queue(check_queue_name(name), paused=False)

    async def set_queue_limits(self, name: str, *, concurrency: Any = UNCHANGED, rate: Any = UNCHANGED,
                               key_concurrency: Any = UNCHANGED, key_rate: Any = UNCHANGED) -> QueueInfo:
        params = limit_params(concurrency, rate, key_concurrency, key_rate)
        check_queue_name(name)
        changes: dict[str, Any] = {}
        for field in ("concurrency_limit", "key_concurrency_limit"):
            if params[f"set_{field}"]:
                changes[field] = params[field]
        for rate_name in ("rate", "key_rate"):
            if params[f"set_{rate_name}"]:
                changes[f"{rate_name}_limit"] = params[f"{rate_name}_limit"]
                changes[f"{rate_name}_period"] = params[f"{rate_name}_period"]
        return self._change_queue(name, **changes)

    def _change_queue(self, name: str, **changes: Any) -> QueueInfo:
        now = self.now()
        current = self._queues.get(name) or QueueInfo(name=name, state="active", created_at=now)
        updated = msgspec.structs.replace(current, **changes, updated_at=now)
        self._queues[name] = msgspec.structs.replace(updated, state="paused" if updated.paused else "active")
        return self._queue_info(name)

    def _queue_info(self, name: str) -> QueueInfo:
        now = self.now()
        row = self._queues.get(name) or unlimited(name)
        jobs = [job for job in self._jobs.values() if job.queue == name]
        waiting = [job for job in jobs if job.status in RUNNABLE_STATUSES]
        running = [job for job in jobs if job.status == "running"]
        return msgspec.structs.replace(
            row, queued=sum(job.run_at <= now for job in waiting), scheduled=sum(job.run_at > now for job in waiting),
            running=len(running), running_keys=len({job.concurrency_key for job in running if job.concurrency_key}))

    def _admit(self, job: Job, now: datetime) -> bool:
        """Whether a runnable job may start now under its queue's pause and limits; if so it gets
        its capacity slots and the tokens are taken (the caller starts it)."""
        row = self._queues.get(job.queue)
        if row is None:
            job.queue_slot = job.key_slot = None
            return True
        if row.paused:
            return False
        keyed = job.concurrency_key is not None
        queue_slot = self._free_slot(job.queue, None, row.concurrency_limit)
        key_slot = self._free_slot(job.queue, job.concurrency_key, row.key_concurrency_limit) if keyed else None
        if (row.concurrency_limit is not None and queue_slot is None) or (
                keyed and row.key_concurrency_limit is not None and key_slot is None):
            return False
        buckets = [((job.queue, ""), row.rate)]
        if keyed:
            buckets.append(((job.queue, job.concurrency_key or ""), row.key_rate))
        refilled = {where: self._refill(where, rate, now) for where, rate in buckets if rate is not None}
        if any(tokens < 1 for tokens in refilled.values()):
            return False
        for where, tokens in refilled.items():
            self._buckets[where] = (tokens - 1, now)
        job.queue_slot, job.key_slot = queue_slot, key_slot
        return True

    def _free_slot(self, queue: str, key: str | None, limit: int | None) -> int | None:
        """The lowest slot in 0..limit-1 no running job of this queue (and key) holds."""
        if limit is None:
            return None
        if key is None:
            held = {job.queue_slot for job in self._jobs.values() if job.status == "running" and job.queue == queue}
        else:
            held = {job.key_slot for job in self._jobs.values()
                    if job.status == "running" and job.queue == queue and job.concurrency_key == key}
        return next((slot for slot in range(limit) if slot not in held), None)

    def _refill(self, where: tuple[str, str], rate: Rate, now: datetime) -> float:
        """A bucket's tokens now: ``rate.limit`` at most, ``rate.limit`` more per period (as
        pgqueue.refilled_tokens)."""
        tokens, at = self._buckets.get(where, (float(rate.limit), now))
        elapsed = max((now - at).total_seconds(), 0.0)
        return min(float(rate.limit), tokens + elapsed * rate.limit / rate.period)

    # -- conveniences for unit tests -----------------------------------------------------------

    def list_jobs(self, *, kind: str | None = None, status: str | None = None, queue: str | None = None) -> list[Job]:
        """Every job (oldest first), optionally only of one kind, status or queue."""
        return [self._snapshot(job) for job in self._jobs.values()
                if (kind is None or job.kind == kind) and (status is None or job.status == status)
                and (queue is None or job.queue == queue)]

    async def run_until_empty(self, queues: Sequence[str] | None = None, *, run_scheduled: bool = False,
                              max_jobs: int = 10_000) -> dict[str, int]:
        """Run runnable jobs through their registered handlers, one at a time, until none is left.

        Handlers get a real `JobContext` (async ones run on this loop, sync ones in a thread, as
        in the worker), and outcomes are recorded as the worker records them: success, a failed
        attempt to be retried after the kind's backoff, dead, or cancelled. With
        ``run_scheduled`` time is moved forward to each scheduled job or retry instead of
        stopping, so retries run until the job succeeds or dies. Jobs enqueued by handlers run
        too; ``max_jobs`` stops a job chain that never ends (RuntimeError).

        Returns how many runs ended each way: {"succeeded", "failed", "dead", "cancelled", "lease_lost"}.
        """
        counts = dict.fromkeys(RUN_OUTCOMES, 0)
        runs = 0
        while True:
            names = list(queues) if queues is not None else sorted({job.queue for job in self._jobs.values()})
            claimed = await self.claim(names, 1, MEMORY_WORKER_ID)
            if not claimed:
                next_at = self._next_run_at(names) if run_scheduled else None
                if next_at is None:
                    return counts
                self._offset += max(next_at - self.now(), timedelta(0))
                continue
            job = claimed[0]
            if runs >= max_jobs:
                assert job.lease_token is not None
                await self.release([(job.id, job.lease_token)])
                raise RuntimeError(f"run_until_empty ran {max_jobs} jobs and more keep coming; is a job re-enqueueing itself?")
            runs += 1
            counts[await self._run(job)] += 1

    async def _run(self, job: Job) -> str:
        ctx = JobContext(job, self, self._event_buffer, asyncio.get_running_loop())
        task = asyncio.create_task(run_handler(ctx), name=f"pgqueue-memory-job-{job.id}")
        self._running[job.id] = _RunningHandler(ctx, task)
        try:
            outcome, value = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if (current is not None and current.cancelling()) or not ctx.cancelled.is_set():
                raise  # our caller is being cancelled, not the job
            outcome, value = settle_outcome(ctx, "cancelled", None)
        finally:
            self._running.pop(job.id, None)
        await self.add_events(self._event_buffer.take())  # the job's progress and logs come before its end
        return await self._record(job, outcome, value, ctx.retry_delay)

    async def _record(self, job: Job, outcome: str, value: Any, retry_delay: float | None = None) -> str:
        token = job.lease_token
        assert token is not None
        try:
            if outcome == "succeeded":
                await self.complete(job.id, token, value)
                return "succeeded"
            if outcome == "cancelled":
                await self.finish_cancelled(job.id, token)
                return "cancelled"
            if outcome in ("failed", "dead"):
                failed = await self.fail(job.id, token, str(value), retry_delay=retry_delay,
                                         permanent=outcome == "dead")
                return failed.status
        except LeaseLost:
            pass
        return "lease_lost"

    def _stop_running_handler(self, job: Job) -> None:
        """What the worker does on a cancel NOTIFY: signal the context, interrupt an async handler."""
        running = self._running.get(job.id)
        if running is None or running.ctx.cancelled.is_set():
            return
        running.ctx.cancelled.set()
        spec = self.registry.kinds.get(job.kind)
        if spec is not None and spec.is_async:
            running.task.cancel()  # sync handlers see ctx.cancelled at their next raise_if_cancelled()

    def _next_run_at(self, queues: Sequence[str]) -> datetime | None:
        """When the next job of these queues may start: its run_at, or later when its queue's
        (or key's) bucket has no token yet. Paused queues and jobs waiting for a slot that a
        running job holds are left out (time passing would not start them)."""
        wanted = set(queues)
        now = self.now()
        times = []
        for job in self._jobs.values():
            if job.queue not in wanted or job.status not in RUNNABLE_STATUSES:
                continue
            row = self._queues.get(job.queue)
            if row is None:
                times.append(job.run_at)
                continue
            keyed = job.concurrency_key is not None
            if row.paused or (row.concurrency_limit is not None
                              and self._free_slot(job.queue, None, row.concurrency_limit) is None) or (
                    keyed and row.key_concurrency_limit is not None
                    and self._free_slot(job.queue, job.concurrency_key, row.key_concurrency_limit) is None):
                continue
            at = max(job.run_at, now)
            for where, rate in (((job.queue, ""), row.rate), ((job.queue, job.concurrency_key or ""), row.key_rate)):
                if rate is not None and (where[1] == "" or keyed):
                    missing = 1 - self._refill(where, rate, at)
                    if missing > 0:
                        at += timedelta(seconds=missing * rate.period / rate.limit + 1e-6)
            times.append(at if at > now else job.run_at)
        return min(times, default=None)

    # -- internals -----------------------------------------------------------------------------

    def _existing(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _held(self, job_id: int, token: uuid.UUID) -> Job | None:
        """The job if ``token`` is its current lease, else None (the lease was lost or never held)."""
        job = self._jobs.get(job_id)
        if job is None or job.status != "running" or job.lease_token != token:
            return None
        return job

    def _add_event(self, job_id: int, event_type: str, data: Any, now: datetime) -> None:
        self._events.append(Event(id=next(self._event_ids), job_id=job_id, type=event_type, data=data, created_at=now))
        if event_type in TERMINAL_EVENTS:
            # every finishing path writes its terminal event once the job's state is set: settle
            # the dependents (walking down the graph as they are cancelled) and wake the waiters
            if event_type != "deleted" and job_id in self._children:
                self._resolve(sorted(set(self._children[job_id])))
            for woken in self._waiters.get(job_id, ()):
                woken.set()

    def _add_error(self, job: Job, error: str, now: datetime) -> None:
        self._errors.setdefault(job.id, []).append(
            JobError(attempt=job.attempts, worker_id=job.lease_owner, error=error, failed_at=now)
        )

    @staticmethod
    def _snapshot(job: Job) -> Job:
        """A copy, as Postgres would return: later changes do not show through, and edits by the
        caller do not leak in."""
        return copy.deepcopy(job)


# -- periodic jobs -----------------------------------------------------------------------------


class MemorySchedules:
    """``MemoryQueue.schedules``: schedules on the backend's clock. ``fire_due()`` is one scheduler
    pass (the worker runs those for Postgres): after ``mq.advance(...)``, it enqueues what is due,
    by the same plan (pgqueue/scheduler.py plan_fires) and with the same one-job-per-fire-time rule."""

    def __init__(self, queue: MemoryQueue) -> None:
        self._queue = queue
        self._by_name: dict[str, Schedule] = {}
        self._fires: dict[tuple[int, datetime], int] = {}  # (schedule id, fire time) -> job id
        self._ids = itertools.count(1)

    async def add(self, name: str, expression: str, kind: str, payload: Any = None, *, timezone: str = "UTC",
                  queue: str | None = None, priority: int | None = None, max_attempts: int | None = None,
                  catch_up: str = "skip", catch_up_window: float = DEFAULT_CATCH_UP_WINDOW,
                  paused: bool = False) -> Schedule:
        spec = check_schedule(self._queue.registry, name, expression, kind, payload, timezone=timezone, queue=queue,
                              priority=priority, max_attempts=max_attempts, catch_up=catch_up,
                              catch_up_window=catch_up_window, paused=paused)
        if name in self._by_name:
            raise ScheduleExists(name)
        return copy.deepcopy(self._store(spec, declared=False))

    def _store(self, spec: ScheduleSpec, *, declared: bool) -> Schedule:
        now = self._queue.now()
        schedule = Schedule(id=next(self._ids), name=spec.name, expression=spec.expression, timezone=spec.timezone,
                            kind=spec.kind, queue=spec.queue, payload=_through_json(spec.payload),
                            priority=spec.priority, max_attempts=spec.max_attempts, catch_up=spec.catch_up,
                            catch_up_window=spec.catch_up_window, paused=spec.paused, declared_in_code=declared,
                            next_fire_at=first_fire(spec, now), last_fire_at=None, revision=0, created_at=now,
                            updated_at=now)
        self._by_name[spec.name] = schedule
        return schedule

    async def get(self, name: str) -> Schedule:
        return copy.deepcopy(self._existing(name))

    async def list(self) -> builtins.list[Schedule]:
        return [copy.deepcopy(self._by_name[name]) for name in sorted(self._by_name)]

    async def pause(self, name: str) -> Schedule:
        schedule = self._existing(name)
        schedule.paused = True
        self._touch(schedule)
        return copy.deepcopy(schedule)

    async def resume(self, name: str) -> Schedule:
        """Fire times that passed while paused are dropped: it goes on from the next one after now."""
        schedule = self._existing(name)
        if schedule.paused:
            schedule.paused = False
            try:
                schedule.next_fire_at = parse_cron(schedule.expression).next_after(
                    self._queue.now(), load_zone(schedule.timezone))
            except ValueError:
                schedule.next_fire_at = None
            self._touch(schedule)
        return copy.deepcopy(schedule)

    async def remove(self, name: str) -> None:
        schedule = self._existing(name)
        del self._by_name[name]
        self._fires = {key: job for key, job in self._fires.items() if key[0] != schedule.id}

    async def sync_declared(self) -> builtins.list[Schedule]:
        """Upsert the registry's declared schedules; an unchanged one keeps its next fire time."""
        written = []
        for spec in sorted(self._queue.registry.schedules.values(), key=lambda spec: spec.name):
            old = self._by_name.get(spec.name)
            if old is None:
                written.append(self._store(msgspec.structs.replace(spec, paused=False), declared=True))
                continue
            new = (spec.expression, spec.timezone, spec.kind, spec.queue, _through_json(spec.payload), spec.priority,
                   spec.max_attempts, spec.catch_up, spec.catch_up_window, True)
            if new == (old.expression, old.timezone, old.kind, old.queue, old.payload, old.priority,
                       old.max_attempts, old.catch_up, old.catch_up_window, old.declared_in_code):
                continue
            if (old.expression, old.timezone) != (spec.expression, spec.timezone):
                old.next_fire_at = first_fire(spec, self._queue.now())
            (old.expression, old.timezone, old.kind, old.queue, old.payload, old.priority, old.max_attempts,
             old.catch_up, old.catch_up_window, old.declared_in_code) = new
            self._touch(old)
            written.append(old)
        return [copy.deepcopy(schedule) for schedule in written]

    async def fire_due(self) -> builtins.list[ScheduleFire]:
        """One scheduler pass on the backend's clock."""
        now = self._queue.now()
        fired: builtins.list[ScheduleFire] = []
        due = sorted((s for s in self._by_name.values()
                      if not s.paused and s.next_fire_at is not None and s.next_fire_at <= now),
                     key=lambda s: (s.next_fire_at, s.id))
        for schedule in due:
            try:
                fires, next_fire_at = plan_fires(schedule, now)
            except ValueError:
                fires, next_fire_at = [], None
            new_fires = [fire for fire in fires if (schedule.id, fire) not in self._fires]
            jobs = self._queue._insert([NewJob(queue=schedule.queue, kind=schedule.kind, payload=schedule.payload,
                                               priority=schedule.priority, run_at=fire,
                                               max_attempts=schedule.max_attempts) for fire in new_fires])
            for fire, job in zip(new_fires, jobs, strict=True):
                self._fires[(schedule.id, fire)] = job.id
                fired.append(ScheduleFire(schedule=schedule.name, fire_at=fire, job_id=job.id))
            if fires:
                schedule.last_fire_at = max([*fires, *([schedule.last_fire_at] if schedule.last_fire_at else [])])
            schedule.next_fire_at = next_fire_at
            self._touch(schedule)
        return sorted(fired, key=lambda fire: (fire.fire_at, fire.schedule))

    def _existing(self, name: str) -> Schedule:
        schedule = self._by_name.get(name)
        if schedule is None:
            raise ScheduleNotFound(name)
        return schedule

    def _touch(self, schedule: Schedule) -> None:
        schedule.revision += 1
        schedule.updated_at = self._queue.now()
