"""The engine facade: enqueue, claim, complete, fail, cancel, re-drive, inspect.

`Queue` is async and used by the worker and the web layer; `SyncQueue` is the small
sync surface for scripts and sync web apps (enqueue only). The in-memory backend in
pgqueue/memory.py honours the same contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

from pgqueue.config import Settings
from pgqueue.db import AsyncConnection, Connection, ConnectionPool, connect_sync, open_pool, transaction
from pgqueue.dependencies import has_dependencies, plan_graph, recheck, split_options, with_dependencies
from pgqueue.errors import ConfigError, InvalidTransition, JobNotFound, LeaseLost, UniqueKeyTaken
from pgqueue.limits import UNCHANGED, QueueInfo, check_queue_name, limit_params, unlimited
from pgqueue.models import RETRYABLE_STATUSES, Event, Job, JobError, NewJob
from pgqueue.registry import JobRegistry, check_payload_sizes
from pgqueue.scheduler import ScheduleBackend, Schedules
from pgqueue.store import Store, insert_graph_sync, insert_jobs_sync
from pgqueue.waiter import WaiterHub, wait_sync

EnqueueItem = NewJob | tuple[str, Any] | tuple[str, Any, dict[str, Any]]

# Retry delay when the failing side (an HTTP worker, a rescue) did not choose one.
DEFAULT_RETRY_BASE = 2.0


def build_jobs(registry: JobRegistry, items: Iterable[EnqueueItem], *, max_payload_bytes: int) -> list[NewJob]:
    """Validate every item before anything is written (shared by both backends and SyncQueue),
    payload sizes included (``Settings.max_payload_bytes``).

    Runs of plain ``(kind, payload)`` items of one kind are validated together."""
    jobs: list[NewJob] = []
    run_kind: str | None = None
    run: list[Any] = []

    def flush_run() -> None:
        if run_kind is not None and run:
            jobs.extend(registry.build_plain(run_kind, run))
        run.clear()

    for item in items:
        if isinstance(item, NewJob):
            flush_run()
            jobs.append(recheck(registry.check_new_job(item)))
        elif len(item) == 2:
            if item[0] != run_kind:
                flush_run()
                run_kind = item[0]
            run.append(item[1])
        else:
            flush_run()
            kind, payload, options = item  # type: ignore[misc]
            options, dependency_options = split_options(options)
            jobs.append(with_dependencies(registry.build(kind, payload, **options), dependency_options))
    flush_run()
    check_payload_sizes(jobs, max_payload_bytes)
    return jobs


SHARED_INSERT_MAX = 500  # jobs per shared statement


class SharedInserts:
    """Concurrent single enqueues of one process share statements (README, "Enqueue from a busy
    web app"): a job waits only while up to ``in_flight`` earlier inserts run, and then goes in
    with every job that arrived meanwhile, in one autocommit INSERT. Alone it goes at once (no
    timer, no added latency); under load each commit carries many jobs. Each caller still
    returns only after its job committed, and gets that statement's error if it failed."""

    def __init__(self, store: Store, in_flight: int) -> None:
        self.store = store
        self.in_flight = max(1, in_flight)
        self.running = 0
        self.waiting: list[tuple[NewJob, asyncio.Future[Job] | None]] = []  # (a waiting job always has one)
        self.tasks: set[asyncio.Task[None]] = set()

    async def insert(self, job: NewJob) -> Job:
        if self.running < self.in_flight and not self.waiting:
            # alone: in the caller's own task, one statement as without sharing
            self.running += 1
            try:
                return (await self._insert([(job, None)]))[0]
            finally:
                self._continue()
        done: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self.waiting.append((job, done))
        if self.running < self.in_flight:
            self.running += 1
            self._spawn()
        # a caller cancelled here leaves the statement running for the others in it
        return await done

    async def _run(self) -> None:
        try:
            while self.waiting:
                with contextlib.suppress(Exception):  # handed to the callers in the batch
                    await self._insert(self._share())
        except BaseException:
            for _, done in self.waiting:
                if done is not None:
                    done.cancel()
            raise
        finally:
            self.running -= 1

    def _share(self) -> list[tuple[NewJob, asyncio.Future[Job] | None]]:
        # an even share for each slot, so jobs that arrive together still go in parallel
        take = min(SHARED_INSERT_MAX, -(-len(self.waiting) // self.running))
        batch, self.waiting = self.waiting[:take], self.waiting[take:]
        return batch

    def _continue(self) -> None:
        """A caller's own statement returned: its slot goes on with those who arrived meanwhile."""
        if self.waiting:
            self._spawn()
        else:
            self.running -= 1

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run(), name="pgqueue-shared-insert")
        self.tasks.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self.tasks.discard)

    async def _insert(self, batch: list[tuple[NewJob, asyncio.Future[Job] | None]]) -> list[Job]:
        new = [job for job, _ in batch]
        try:
            jobs = await (self.store.insert_jobs(new) if len(new) == 1 else self.store.insert_shared_jobs(new))
        except BaseException as exc:
            for _, done in batch:
                if done is not None and not done.done():
                    if isinstance(exc, Exception):
                        done.set_exception(exc)
                    else:
                        done.cancel()
            raise
        for (_, done), inserted in zip(batch, jobs, strict=True):
            if done is not None and not done.done():
                done.set_result(inserted)
        return jobs


def _copyable(jobs: Sequence[NewJob]) -> bool:
    return all(j.unique_key is None and j.run_at is None and not j.delay_seconds for j in jobs)


class Queue:
    def __init__(self, pool: ConnectionPool, registry: JobRegistry | None = None,
                 settings: Settings | None = None) -> None:
        self.pool = pool
        self.store = Store(pool)
        self.registry = registry or JobRegistry()
        self.settings = settings or Settings()
        # wait(): one LISTEN connection for every waiter of this Queue (pgqueue/waiter.py), opened on first use
        self.waiters = WaiterHub(self.session_url, self.store)
        self.schedules = Schedules(self.store, self.registry)  # periodic jobs (pgqueue/scheduler.py)
        # concurrent enqueues share statements, two in flight at once (one slow statement holds up no others)
        self.shared_inserts = SharedInserts(self.store, min(2, pool.max_size))

    @classmethod
    async def connect(cls, url: str | None = None, registry: JobRegistry | None = None, *,
                      settings: Settings | None = None, max_size: int = 10) -> Queue:
        settings = settings or Settings.from_env(database_url=url)
        url = url or settings.database_url
        if not url:
            raise ConfigError("no database URL: pass one or set PGQUEUE_DATABASE_URL")
        pool = await open_pool(url, max_size=max_size, pooler=settings.pooler)
        return cls(pool, registry, settings)

    @property
    def session_url(self) -> str:
        """Where this queue's LISTENs and session locks connect: PGQUEUE_DIRECT_DATABASE_URL when
        the pool's URL goes through a pooler such as PgBouncer, else the pool's own URL."""
        return self.settings.direct_database_url or self.settings.database_url or str(self.pool.conninfo)

    async def close(self) -> None:
        await self.waiters.close()
        await self.pool.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, kind: str, payload: Any = None, *, conn: AsyncConnection | None = None,
                      parents_owned_by: str | None = None, **options: Any) -> Job:
        """Validate and insert one job. With ``conn`` it joins the caller's transaction.

        Options: priority, queue, run_at, delay, max_attempts, unique_key, owner_id. A live job
        holding the same unique key is returned instead of a new one.
        ``depends_on=[ids]``: the job waits until those jobs have succeeded (README, "Job
        dependencies"); ``run_if_parent_fails=True``: until they finished, whatever the outcome.
        ``parents_owned_by``: the parents must belong to that owner (others are "not found").
        """
        options, dependency_options = split_options(options)
        new = with_dependencies(self.registry.build(kind, {} if payload is None else payload, **options),
                                dependency_options)
        check_payload_sizes([new], self.settings.max_payload_bytes)
        if has_dependencies([new]):
            return (await self.store.insert_graph([new], plan_graph([new]), parents_owned_by, conn))[0]
        if conn is None and new.unique_key is None:
            return await self.shared_inserts.insert(new)
        return (await self.store.insert_jobs([new], conn))[0]

    async def enqueue_many(self, items: Iterable[EnqueueItem], *, conn: AsyncConnection | None = None,
                           parents_owned_by: str | None = None) -> list[int]:
        """Insert many jobs in one round trip (COPY when it can); returns their ids in order.

        A whole graph goes in one transaction: an item's ``depends_on`` may name the ``ref`` of an
        earlier item, e.g. ``("report", {...}, {"ref": "r"})`` then ``("email", {...}, {"depends_on": ["r"]})``."""
        jobs = build_jobs(self.registry, items, max_payload_bytes=self.settings.max_payload_bytes)
        if not jobs:
            return []
        if has_dependencies(jobs):
            return [job.id for job in await self.store.insert_graph(jobs, plan_graph(jobs), parents_owned_by, conn)]
        if _copyable(jobs):
            return await self.store.copy_jobs(jobs, conn)
        return [job.id for job in await self.store.insert_jobs(jobs, conn)]

    # -- the worker's side -------------------------------------------------------------------

    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, *,
                    lease_seconds: float | None = None) -> list[Job]:
        return await self.store.claim_jobs(queues, limit, worker_id, lease_seconds or self.settings.lease_seconds)

    async def complete(self, job_id: int, token: uuid.UUID, result: Any = None) -> None:
        if job_id not in await self.store.complete_jobs([(job_id, token, result)]):
            raise LeaseLost(job_id)

    async def complete_many(self, items: Sequence[tuple[int, uuid.UUID, Any]]) -> set[int]:
        """Finish many jobs in one statement; returns the ids whose lease was still held."""
        return await self.store.complete_jobs(items) if items else set()

    async def fail(self, job_id: int, token: uuid.UUID, error: str, *, retry_delay: float | None = None,
                   permanent: bool = False) -> Job:
        """Record a failed attempt; the job retries after ``retry_delay`` or goes dead."""
        if retry_delay is None:
            job = await self.store.get_job(job_id)
            spec = self.registry.kinds.get(job.kind) if job else None
            retry_delay = spec.retry_delay(job.attempts) if spec and job else DEFAULT_RETRY_BASE
        failed = await self.store.fail_job(job_id, token, error, retry_delay=retry_delay, permanent=permanent)
        if failed is None:
            raise LeaseLost(job_id)
        return failed

    async def finish_cancelled(self, job_id: int, token: uuid.UUID) -> Job:
        job = await self.store.finish_cancelled_job(job_id, token)
        if job is None:
            raise LeaseLost(job_id)
        return job

    async def heartbeat(self, items: Sequence[tuple[int, uuid.UUID]], *, lease_seconds: float | None = None,
                        conn: AsyncConnection | None = None) -> dict[int, bool]:
        """Extend leases; returns {job_id: cancel_requested} for the leases still held."""
        if not items:
            return {}
        rows = await self.store.extend_leases(items, lease_seconds or self.settings.lease_seconds, conn)
        return {job_id: cancel_requested for job_id, _token, cancel_requested, _extended in rows}

    async def release(self, items: Sequence[tuple[int, uuid.UUID]]) -> list[int]:
        return await self.store.release_jobs(items) if items else []

    async def rescue_expired_leases(self, limit: int = 1000, conn: AsyncConnection | None = None) -> list[int]:
        return [row[0] for row in await self.store.rescue_expired_leases(limit, self.settings.lease_seconds, conn)]

    # -- operator actions --------------------------------------------------------------------

    async def get(self, job_id: int, conn: AsyncConnection | None = None) -> Job:
        job = await self.store.get_job(job_id, conn)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def cancel(self, job_id: int) -> Job:
        """Cancel a waiting job at once; ask a running one to stop (its handler sees the request)."""
        async with transaction(self.pool) as conn:
            job = await self.store.lock_job(job_id, conn)
            if job is None:
                raise JobNotFound(job_id)
            changed = None
            if job.status in ("waiting", "queued", "failed"):  # its waiting dependents are cancelled too
                changed = await self.store.cancel_queued_job(job_id, conn)
            elif job.status == "running":
                changed = await self.store.request_cancel(job_id, conn)
            if changed is None:  # the row is locked, so only a finished job gets here
                raise InvalidTransition(job_id, job.status, "cancel")
            return changed

    async def retry(self, job_id: int) -> Job:
        """Re-drive a dead, cancelled (or failed, waiting) job now, with a fresh attempt budget."""
        async with transaction(self.pool) as conn:
            job = await self.store.lock_job(job_id, conn)
            if job is None:
                raise JobNotFound(job_id)
            if job.status not in RETRYABLE_STATUSES:
                raise InvalidTransition(job_id, job.status, "retry")
            # its unique key may have gone to a new live job since it ended: a 409, not a crash
            if job.unique_key is not None and (holder := await self.store.unique_key_holder(job.unique_key, job_id, conn)):
                raise UniqueKeyTaken(job_id, job.unique_key, holder)
            try:
                redriven = await self.store.redrive_job(job_id, conn)
            except UniqueKeyTaken:  # the holder committed after our check
                raise UniqueKeyTaken(job_id, job.unique_key or "") from None
            if redriven is None:
                raise InvalidTransition(job_id, job.status, "retry")
            return redriven

    async def run_now(self, job_id: int) -> Job:
        """Make a queued job scheduled for later runnable now."""
        job = await self.store.run_job_now(job_id)
        if job is None:
            raise InvalidTransition(job_id, (await self.get(job_id)).status, "run now")
        return job

    async def delete(self, job_id: int) -> None:
        async with transaction(self.pool) as conn:
            job = await self.store.lock_job(job_id, conn)
            if job is None:
                raise JobNotFound(job_id)
            if job.status == "running":
                raise InvalidTransition(job_id, job.status, "delete")
            if await self.store.has_waiting_dependents(job_id, conn):
                await self.store.cancel_queued_job(job_id, conn)  # what it leaves waiting is cancelled
            await self.store.delete_job(job_id, conn)

    async def wait(self, job_id: int, timeout: float = 30.0) -> Job:
        """The job once it has finished (succeeded, dead or cancelled), woken by its terminal event's
        NOTIFY; WaitTimeout after ``timeout`` seconds, JobNotFound if it is (or gets) deleted."""
        return await self.waiters.wait(job_id, timeout)

    async def parents(self, job_id: int) -> list[tuple[int, str, bool]]:
        """(id, status, run_if_failed) of each job this one depends on."""
        return await self.store.job_parents(job_id)

    async def errors(self, job_id: int) -> list[JobError]:
        return await self.store.job_errors(job_id)

    async def events(self, job_id: int, after_id: int = 0, limit: int = 1000) -> list[Event]:
        return await self.store.job_events(job_id, after_id, limit)

    async def add_events(self, events: Sequence[tuple[int, str, Any]]) -> None:
        """Progress and log events (job_id, type, data), in their own short transaction."""
        if events:
            await self.store.insert_events(events)

    @contextlib.asynccontextmanager
    async def lease_transaction(self, job_id: int, token: uuid.UUID) -> AsyncIterator[AsyncConnection]:
        """A pooled connection in a transaction that starts only while the job's lease is held.

        The check locks the job row, so a rescuer cannot take the job away before this commits.
        """
        async with transaction(self.pool) as conn:
            if not await self.store.lease_held(job_id, token, conn):
                raise LeaseLost(job_id)
            yield conn

    async def load_checkpoint(self, job_id: int, conn: AsyncConnection | None = None) -> Any:
        return await self.store.load_checkpoint(job_id, conn)

    async def save_checkpoint(self, job_id: int, token: uuid.UUID, state: Any, conn: AsyncConnection | None = None) -> None:
        """Save a checkpoint, in the caller's transaction when given, only while the lease is held."""
        if not await self.store.save_checkpoint(job_id, token, state, conn):
            raise LeaseLost(job_id)

    async def stats(self) -> dict[str, dict[str, int]]:
        """{queue: {status: count}}."""
        out: dict[str, dict[str, int]] = {}
        for queue, status, count in await self.store.queue_stats():
            out.setdefault(queue, {})[status] = count
        return out

    # -- queues: pause and limits (README "Queues") ------------------------------------------

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue that has jobs, or was ever paused or limited: state, limits, counts."""
        return await self.store.queue_statuses()

    async def get_queue(self, name: str) -> QueueInfo:
        """One queue's state (any valid name: a queue nobody limited runs unlimited)."""
        return await self.store.queue_status(check_queue_name(name)) or unlimited(name)

    async def pause_queue(self, name: str) -> QueueInfo:
        """Stop claiming from a queue, in every worker (running jobs finish; enqueue still works)."""
        await self.store.set_queue_paused(check_queue_name(name), True)
        return await self.get_queue(name)

    async def resume_queue(self, name: str) -> QueueInfo:
        await self.store.set_queue_paused(check_queue_name(name), False)
        return await self.get_queue(name)

    async def set_queue_limits(self, name: str, *, concurrency: Any = UNCHANGED, rate: Any = UNCHANGED,
                               key_concurrency: Any = UNCHANGED, key_rate: Any = UNCHANGED) -> QueueInfo:
        """Set (a value), remove (None) or keep (leave out) each limit: ``concurrency`` running
        jobs at most, ``rate`` starts (``"10/s"``, ``Rate(10, 1.0)``, ``(10, 1.0)``), and the same
        per concurrency key. Everything is checked before anything is written."""
        params = limit_params(concurrency, rate, key_concurrency, key_rate)
        await self.store.set_queue_limits(check_queue_name(name), params)
        return await self.get_queue(name)


class QueueBackend(Protocol):
    """The contract `Queue` (PostgreSQL) and `MemoryQueue` (pgqueue/memory.py) both honour;
    tests/test_contract.py runs one behavioural suite against each. ``conn`` arguments are
    the caller's connection for Postgres; the memory backend has none and ignores them."""

    registry: JobRegistry
    settings: Settings

    @property
    def schedules(self) -> ScheduleBackend: ...  # periodic jobs: add, list, pause, resume, remove, fire_due

    async def close(self) -> None: ...

    async def enqueue(self, kind: str, payload: Any = None, *, conn: Any = None, **options: Any) -> Job: ...

    async def enqueue_many(self, items: Iterable[EnqueueItem], *, conn: Any = None) -> list[int]: ...

    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, *,
                    lease_seconds: float | None = None) -> list[Job]: ...

    async def complete(self, job_id: int, token: uuid.UUID, result: Any = None) -> None: ...

    async def complete_many(self, items: Sequence[tuple[int, uuid.UUID, Any]]) -> set[int]: ...

    async def fail(self, job_id: int, token: uuid.UUID, error: str, *, retry_delay: float | None = None,
                   permanent: bool = False) -> Job: ...

    async def finish_cancelled(self, job_id: int, token: uuid.UUID) -> Job: ...

    async def heartbeat(self, items: Sequence[tuple[int, uuid.UUID]], *, lease_seconds: float | None = None,
                        conn: Any = None) -> dict[int, bool]: ...

    async def release(self, items: Sequence[tuple[int, uuid.UUID]]) -> list[int]: ...

    async def rescue_expired_leases(self, limit: int = 1000, conn: Any = None) -> list[int]: ...

    async def get(self, job_id: int, conn: Any = None) -> Job: ...

    async def cancel(self, job_id: int) -> Job: ...

    async def retry(self, job_id: int) -> Job: ...

    async def run_now(self, job_id: int) -> Job: ...

    async def delete(self, job_id: int) -> None: ...

    async def wait(self, job_id: int, timeout: float = 30.0) -> Job: ...

    async def parents(self, job_id: int) -> list[tuple[int, str, bool]]: ...

    async def errors(self, job_id: int) -> list[JobError]: ...

    async def events(self, job_id: int, after_id: int = 0, limit: int = 1000) -> list[Event]: ...

    async def add_events(self, events: Sequence[tuple[int, str, Any]]) -> None: ...

    def lease_transaction(self, job_id: int, token: uuid.UUID) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def load_checkpoint(self, job_id: int, conn: Any = None) -> Any: ...

    async def save_checkpoint(self, job_id: int, token: uuid.UUID, state: Any, conn: Any = None) -> None: ...

    async def stats(self) -> dict[str, dict[str, int]]: ...

    async def list_queues(self) -> list[QueueInfo]: ...

    async def get_queue(self, name: str) -> QueueInfo: ...

    async def pause_queue(self, name: str) -> QueueInfo: ...

    async def resume_queue(self, name: str) -> QueueInfo: ...

    async def set_queue_limits(self, name: str, *, concurrency: Any = UNCHANGED, rate: Any = UNCHANGED,
                               key_concurrency: Any = UNCHANGED, key_rate: Any = UNCHANGED) -> QueueInfo: ...


class SyncQueue:
    """Enqueue from synchronous code: ``SyncQueue(url, jobs).enqueue("email", {...})``.

    Pass ``conn`` (a psycopg Connection) to enqueue inside your own transaction.
    """

    def __init__(self, url: str | None = None, registry: JobRegistry | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env(database_url=url)
        self.url = url or self.settings.database_url
        self.registry = registry or JobRegistry()

    def enqueue(self, kind: str, payload: Any = None, *, conn: Connection | None = None,
                parents_owned_by: str | None = None, **options: Any) -> Job:
        return self.enqueue_many([(kind, {} if payload is None else payload, options)], conn=conn,
                                 parents_owned_by=parents_owned_by)[0]

    def enqueue_many(self, items: Iterable[EnqueueItem], *, conn: Connection | None = None,
                     parents_owned_by: str | None = None) -> list[Job]:
        jobs = build_jobs(self.registry, items, max_payload_bytes=self.settings.max_payload_bytes)

        def insert(c: Connection) -> list[Job]:
            if has_dependencies(jobs):
                return insert_graph_sync(c, jobs, plan_graph(jobs), parents_owned_by)
            return insert_jobs_sync(c, jobs)

        if conn is not None:
            return insert(conn)
        if not self.url:
            raise ConfigError("no database URL: pass one or set PGQUEUE_DATABASE_URL")
        with connect_sync(self.url) as own:
            return insert(own)

    def wait(self, job_id: int, timeout: float = 30.0) -> Job:
        """Queue.wait for scripts: blocks until the job finished; WaitTimeout after ``timeout`` s."""
        if not self.url:
            raise ConfigError("no database URL: pass one or set PGQUEUE_DATABASE_URL")
        return wait_sync(self.settings.direct_database_url or self.url, job_id, timeout)  # a LISTEN: never pooled
