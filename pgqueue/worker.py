"""The worker: one asyncio loop with N job slots.

Tasks inside one worker:
- fetcher: claims up to the free slots (SKIP LOCKED), woken by NOTIFY, a jittered poll as safety net;
- listener: a dedicated LISTEN connection (re-established when lost);
- heartbeat and maintenance: dedicated connections each, so a busy pool cannot starve them;
  the heartbeat extends leases and notices cancellation (it never waits on a row lock, so no
  handler can hold it up); maintenance, while holding the leader lock, rescues expired leases
  and prunes;
- flushers: completions and progress/log events are written in batches.
Async handlers run on the loop; sync handlers in a thread pool.

Runs are tracked by lease token, not job id: a job rescued from this worker and claimed by it
again is a new run, and nothing of the old run (its heartbeat answer, its clean-up) touches it.
A crash suspect (a job that was running when some worker died) is claimed only when nothing
else runs here, and nothing else is claimed beside it (README, "One bad job").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import secrets
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pgqueue.config import check_concurrency
from pgqueue.context import EventBuffer, JobContext, run_handler, settle_outcome
from pgqueue.db import CONNECTION_ERRORS, AsyncConnection, connect
from pgqueue.errors import LeaseLost, SchedulerFailed
from pgqueue.maintenance import LeaseRescuer, Pruner
from pgqueue.migrate import check_schema
from pgqueue.models import Job
from pgqueue.queue import Queue
from pgqueue.scheduler import run_scheduler

log = logging.getLogger("pgqueue.worker")

JOBS_CHANNEL = "pgqueue_jobs"
CONTROL_CHANNEL = "pgqueue_control"


def new_worker_id() -> str:
    """Never reused: host + pid + random, so a restarted process cannot act on an old lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class _Running:
    __slots__ = ("ctx", "job", "task")

    def __init__(self, job: Job, ctx: JobContext, task: asyncio.Task[None]) -> None:
        self.job = job
        self.ctx = ctx
        self.task = task


class Worker:
    def __init__(self, queue: Queue, queues: Sequence[str] = ("default",), concurrency: int = 50, *,
                 url: str | None = None, shutdown_grace: float = 30.0, maintenance: bool = True,
                 maintenance_interval: float | None = None, worker_id: str | None = None) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.concurrency = check_concurrency(concurrency)  # 0 slots is a ConfigError, not silently 1
        self.url: str = url or queue.settings.database_url or str(queue.pool.conninfo)
        # LISTEN, the leader lock and the heartbeat: never through a pooler (README, "Past one
        # box"): the first two need a session, and a heartbeat must not queue behind handlers'
        # transactions for one of the pooler's server connections
        self.direct_url: str = url or queue.session_url

        self.settings = queue.settings
        self.shutdown_grace = shutdown_grace
        self.maintenance = maintenance
        self.maintenance_interval = maintenance_interval or queue.settings.maintenance_seconds
        self.worker_id = worker_id or new_worker_id()
        self.running: dict[uuid.UUID, _Running] = {}  # by lease token
        self._isolated: uuid.UUID | None = None  # the lease of a crash suspect running alone
        self._suspects_waiting = False
        self._suspects_checked_at = 0.0
        # wake-ups (schema/0015): while we hold the listening locks of our queues, on a session
        # connection of our own, inserts into them send a NOTIFY; marked idle = listening and
        # every insert that probed before has committed
        self._wakeup_conn: AsyncConnection | None = None
        self._listening = False
        self._marked_idle = False
        self.events = EventBuffer()
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self._release_now = asyncio.Event()  # shutdown: stop waiting for running jobs, release them
        self._releasing = False  # set once the running jobs left are being released
        self.is_leader = False
        self.counters = {"claimed": 0, "succeeded": 0, "failed": 0, "dead": 0, "cancelled": 0, "lease_lost": 0,
                         "isolated": 0, "beats_skipped": 0}
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._empty_claims = 0  # claims in a row that found nothing (see _idle)
        self._completions: list[tuple[int, uuid.UUID, Any]] = []
        # finished jobs whose completion is not written yet: still heartbeated (their lease must
        # not expire while a slow flush runs), and they hold back claiming once they pile up
        self._unacked: dict[uuid.UUID, int] = {}  # lease token -> job id
        self._completions_ready = asyncio.Event()
        self._events_lock = asyncio.Lock()
        # 'started' events not written yet: debounced like progress (see _flush_events)
        self._unannounced: dict[uuid.UUID, tuple[int, dict[str, Any]]] = {}
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="pgqueue-job")
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running jobs get `shutdown_grace` seconds to finish."""
        self.stopping.set()
        self._wake.set()
        self._slot_free.set()  # a fetch loop waiting for a free slot must see the stop too

    def release_now(self) -> None:
        """Stop at once: running jobs are released back to the queue without waiting (a second signal)."""
        self.shutdown_grace = 0
        self._release_now.set()
        self.stop()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._register()
        log.info("worker %s started: queues=%s concurrency=%s", self.worker_id, ",".join(self.queues), self.concurrency)
        helpers = [
            asyncio.create_task(self._listen_loop(), name="pgqueue-listen"),
            asyncio.create_task(self._heartbeat_loop(), name="pgqueue-heartbeat"),
            *([asyncio.create_task(self._maintenance_loop(), name="pgqueue-maintenance")] if self.maintenance else []),
            asyncio.create_task(self._flush_completions_loop(), name="pgqueue-complete"),
            asyncio.create_task(self._flush_events_loop(), name="pgqueue-events"),
            asyncio.create_task(self._schedule_loop(), name="pgqueue-scheduler"),
        ]
        try:
            await self._fetch_loop()
            await self._drain()
            if self.scheduler_error is not None:
                raise SchedulerFailed(f"worker stopped: its scheduler died ({self.scheduler_error})")
        finally:
            await _cancel_and_wait(helpers)
            await self._close_wakeup_conn()
            await self._flush_completions()
            await self._flush_events()
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.queue.store.unregister_worker(self.worker_id)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.stopped.set()
            log.info("worker %s stopped", self.worker_id)

    async def _register(self) -> None:
        """Check the schema (SchemaNotMigrated when missing or behind) and record this worker,
        retrying while the database is unreachable."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await check_schema(self.queue.store)
                await self._record_worker()
                return
            except CONNECTION_ERRORS as exc:
                log.warning("database unavailable at start (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _record_worker(self, conn: AsyncConnection | None = None) -> None:
        """Write this worker's row (an upsert: after a pause past the pruning horizon, the next
        heartbeat puts back the row the pruner removed)."""
        await self.queue.store.register_worker(self.worker_id, socket.gethostname(), os.getpid(), self.queues,
                                               self.concurrency, self.settings.heartbeat_seconds, conn)

    async def _drain(self) -> None:
        """Graceful shutdown: wait for running jobs, then release what did not finish."""
        if self.running:
            log.info("waiting up to %.0fs for %d running job(s)", self.shutdown_grace, len(self.running))
            all_done = asyncio.ensure_future(asyncio.wait([r.task for r in self.running.values()]))
            release_now = asyncio.ensure_future(self._release_now.wait())
            await asyncio.wait([all_done, release_now], timeout=self.shutdown_grace,
                               return_when=asyncio.FIRST_COMPLETED)
            all_done.cancel()
            release_now.cancel()
        leftovers = list(self.running.values())
        if not leftovers:
            return
        self._releasing = True
        await self._flush_completions()
        items = [(r.job.id, r.job.lease_token) for r in leftovers]
        for r in leftovers:
            r.ctx.cancelled.set()
            r.task.cancel()
        try:
            released = await self.queue.release(items)  # type: ignore[arg-type]
            for job_id in released:
                log.info("job %s released (shutdown grace period over)", job_id)
        except CONNECTION_ERRORS as exc:
            log.warning("could not release %d job(s) (%s); their leases will expire and they will be rescued",
                        len(items), exc)
        self.running.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # -- fetching ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        error_delay = 0.2
        with contextlib.suppress(*CONNECTION_ERRORS):  # the first claim meets the same outage
            await self._look_for_suspects()  # crash suspects waiting when a worker starts go first
        while not self.stopping.is_set():
            # the flag as last asked, after a claim (below): a woken worker's claim never waits
            # for that round trip
            isolating = self._isolated is not None or self._suspects_waiting
            # counted with no await since the last look, and _slot_free cleared before the next
            # one: a job that finishes in between must not be missed (its slot would stay idle)
            free = self.concurrency - len(self.running) - max(0, len(self._unacked) - self.concurrency)
            if free <= 0 or (isolating and self.running):
                # full, or a crash suspect waits to run alone here: let the running jobs finish
                self._slot_free.clear()
                if self._listening:
                    # no slot to fill: inserts need not pay for a NOTIFY to wake us
                    await self._stop_listening()
                await self._slot_free.wait()
                # let every job that is finishing right now finish, then claim for all free slots at once
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            try:
                if isolating:
                    # should the suspect crash this process, nothing finished may go down with it
                    await self._flush_completions()
                    jobs = await self.queue.store.claim_suspect_job(self.queues, self.worker_id,
                                                                    self.settings.lease_seconds)
                    if jobs:
                        self._start(jobs[0], isolated=True)
                        continue
                    self._suspects_waiting = False
                # uncharged: should this worker die, the expired leases of the batch cost no attempt
                jobs = await self.queue.store.claim_jobs(self.queues, free, self.worker_id, self.settings.lease_seconds,
                                                         record_started=False, charged=False, include_suspects=False)
                error_delay = 0.2
            except CONNECTION_ERRORS as exc:
                log.warning("claim failed (%s); retrying in %.1fs", exc, error_delay)
                await self._sleep(error_delay)
                error_delay = min(error_delay * 2, 5.0)
                continue
            for job in jobs:
                self._start(job)
            if jobs:
                # let the handlers begin before this loop logs, idles (a round trip whose send can
                # wake a backend onto this core) or claims again: a job waits for nothing of ours
                await asyncio.sleep(0)
                if log.isEnabledFor(logging.INFO):
                    log.info("started %s", _summary([job.id for job in jobs]))
            self._empty_claims = 0 if jobs else self._empty_claims + 1
            # whether crash suspects wait to run alone, asked once per poll interval after a claim
            # rather than before one (it made the slowest 1 % of wake-ups): found now, they run
            # alone once the jobs just started have finished
            with contextlib.suppress(*CONNECTION_ERRORS):  # the next claim meets the same outage
                await self._look_for_suspects()
            if len(jobs) < free:
                await self._idle()

    async def _look_for_suspects(self) -> None:
        """Set _suspects_waiting when crash suspects wait to be run alone (asked at most once per
        poll interval; the fetch loop reads the flag)."""
        if not self._suspects_waiting and time.monotonic() - self._suspects_checked_at >= self.settings.poll_seconds:
            self._suspects_checked_at = time.monotonic()
            self._suspects_waiting = await self.queue.store.suspects_waiting(self.queues)

    async def _idle(self) -> None:
        """Wait for a NOTIFY, a free slot, or the (jittered) poll timer, or the next scheduled job."""
        timeout = self.settings.poll_seconds * random.uniform(0.8, 1.2)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if not self._marked_idle:
                # from the mark on, every insert into our queues notifies; one that committed
                # before it is found by the look for runnable jobs just below
                self._marked_idle = await self._start_listening()
            next_at, now = await self.queue.store.next_run_at(self.queues)
            if next_at is not None and next_at > now:
                timeout = min(timeout, (next_at - now).total_seconds())
            elif next_at is not None and len(self.running) < self.concurrency:
                # something is runnable already (rows another worker just released, crash suspects
                # the plain claim skips, or a queue at its limit): fetch again soon, asking for
                # suspects too; 50 ms, doubling while claims keep coming back empty (a queue full
                # under its concurrency or rate limit), up to the poll interval
                retry = 0.05 * 2 ** min(max(self._empty_claims - 1, 0), 8)
                timeout = min(timeout, retry)
                self._suspects_checked_at = 0.0
        if not self._marked_idle:
            timeout = min(timeout, 0.05)  # an insert was under way (or the mark failed): no NOTIFY is sure to come
        if self._wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))

    async def _start_listening(self) -> bool:
        """Hold the listening locks of our queues and pass the barrier (schema/0015); True once
        every later insert into them notifies and every earlier one has committed."""
        try:
            if self._wakeup_conn is None or self._wakeup_conn.closed:
                self._wakeup_conn = await connect(self.direct_url, application_name="pgqueue-worker-wakeup",
                                                  session_for="the worker's wake-up locks")
            listening, settled = await self.queue.store.listen_for_inserts(self._wakeup_conn, self.queues)
            self._listening = True  # possibly some stripes only: let go of all below
            if not listening:
                await self._stop_listening()
            return settled
        except CONNECTION_ERRORS:
            await self._close_wakeup_conn()  # its locks went with it
            raise

    async def _stop_listening(self) -> None:
        self._marked_idle = False
        if not self._listening or self._wakeup_conn is None:
            return
        try:
            await self.queue.store.stop_listening_for_inserts(self._wakeup_conn)
            self._listening = False
        except CONNECTION_ERRORS:
            await self._close_wakeup_conn()

    async def _close_wakeup_conn(self) -> None:
        self._marked_idle = self._listening = False
        conn, self._wakeup_conn = self._wakeup_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _start(self, job: Job, isolated: bool = False) -> None:
        token = job.lease_token
        assert token is not None and self._loop is not None
        self.counters["claimed"] += 1
        if isolated:
            self._isolated = token
            self.counters["isolated"] += 1
            log.warning("job %s %s started alone: it was running when a worker died (attempt %s/%s)", job.id,
                        job.kind, job.attempts, job.max_attempts)
        else:
            log.debug("job %s %s started (attempt %s/%s)", job.id, job.kind, job.attempts, job.max_attempts)
        ctx = JobContext(job, self.queue, self.events, self._loop)
        self._unannounced[token] = (job.id, {"attempt": job.attempts, "worker_id": self.worker_id})
        task = asyncio.create_task(self._execute(job, ctx), name=f"pgqueue-job-{job.id}")
        self.running[token] = _Running(job, ctx, task)

    # -- running one job ---------------------------------------------------------------------

    async def _execute(self, job: Job, ctx: JobContext) -> None:
        assert job.lease_token is not None
        try:
            await self._record(job, ctx, *await run_handler(ctx, self._executor))
        except asyncio.CancelledError:
            if not self._releasing and ctx.cancelled.is_set() and not ctx.lease_lost:
                await self._record(job, ctx, *settle_outcome(ctx, "cancelled", None))
        finally:
            self.running.pop(job.lease_token, None)
            if self._isolated == job.lease_token:
                self._isolated = None
            self._slot_free.set()

    async def _record(self, job: Job, ctx: JobContext, outcome: str, value: Any) -> None:
        """Write an outcome from run_handler: successes go to the batched completions."""
        token = job.lease_token
        assert token is not None
        if outcome == "lease_lost":
            self.counters["lease_lost"] += 1
            log.warning("job %s lease lost; its outcome is discarded", job.id)
            return
        if outcome == "succeeded":
            self._completions.append((job.id, token, value))
            self._unacked[token] = job.id
            self._completions_ready.set()
            return
        await self._retrying(self._finish_unsuccessful, job, ctx, outcome, value)

    async def _finish_unsuccessful(self, job: Job, ctx: JobContext, outcome: str, value: Any) -> None:
        assert job.lease_token is not None
        await self._flush_events()
        try:
            if outcome == "cancelled":
                await self.queue.finish_cancelled(job.id, job.lease_token)
                self.counters["cancelled"] += 1
                log.info("job %s cancelled", job.id)
                return
            spec = self.queue.registry.kinds.get(job.kind)
            delay = spec.retry_delay(job.attempts) if spec else None  # None: the engine's default backoff
            if ctx.retry_delay is not None:  # the handler raised RetryAfter
                delay = ctx.retry_delay
            failed = await self.queue.fail(job.id, job.lease_token, str(value), retry_delay=delay,
                                           permanent=outcome == "dead")
        except LeaseLost:
            self.counters["lease_lost"] += 1
            log.warning("job %s lease lost before its outcome (%s) could be recorded", job.id, outcome)
            return
        self.counters[failed.status] = self.counters.get(failed.status, 0) + 1
        first_line = str(value).strip().splitlines()[-1] if str(value).strip() else ""
        if failed.status == "dead":
            log.error("job %s dead after %s attempt(s): %s", job.id, failed.attempts, first_line)
        elif failed.status == "cancelled":
            log.info("job %s cancelled (it failed after cancellation was requested): %s", job.id, first_line)
        else:
            log.warning("job %s failed (attempt %s/%s), retry at %s: %s", job.id, failed.attempts,
                        failed.max_attempts, _fmt(failed.run_at), first_line)

    async def _retrying(self, fn: Any, *args: Any, give_up: bool = True) -> None:
        """Keep trying a state write through a database outage (until the lease would be rescued anyway)."""
        delay = 0.2
        deadline = time.monotonic() + max(self.settings.lease_seconds * 4, 60)
        while True:
            try:
                await fn(*args)
                return
            except CONNECTION_ERRORS as exc:
                if give_up and time.monotonic() > deadline:
                    log.error("giving up writing a job outcome (%s); the lease will expire and be rescued", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- batched writes ----------------------------------------------------------------------

    async def _flush_completions_loop(self) -> None:
        while True:
            await self._completions_ready.wait()
            self._completions_ready.clear()
            # no deadline: these jobs are still heartbeated (nobody rescues them), so giving up
            # would leave them running until some other job happens to finish
            await self._retrying(self._flush_completions, give_up=False)

    async def _flush_completions(self) -> None:
        if not self._completions:
            return
        # take the batch first: a job finishing while the events below are written has progress
        # that this flush did not take, so it waits for the next batch
        batch, self._completions = self._completions, []
        try:
            await self._flush_events()  # a job's last progress and log lines come before its terminal event
            done = await self.queue.complete_many(batch)
        except BaseException:
            self._completions[:0] = batch
            raise
        self.counters["succeeded"] += len(done)
        if done and log.isEnabledFor(logging.INFO):
            log.info("succeeded %s", _summary(done))
        for job_id, token, _result in batch:
            self._unacked.pop(token, None)
            if job_id in done:
                log.debug("job %s succeeded", job_id)
            else:
                self.counters["lease_lost"] += 1
                log.warning("job %s finished but its lease was lost; result discarded", job_id)
        self._slot_free.set()

    async def _flush_events_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self._retrying(self._flush_events)

    async def _flush_events(self) -> None:
        # one flush at a time: a completion flush waits for an insert already under way, so a
        # job's last progress and log lines always commit before its terminal event
        async with self._events_lock:
            pending = self.events.take()
            # 'started' is written for jobs still running at this flush (<= 100 ms after they
            # started) or that reported something; a job that finished before it gets none (its
            # terminal event says it all), which spares two thirds of a no-op job's event rows
            reporting = {event[0] for event in pending}
            started = [(job_id, "started", data) for token, (job_id, data) in self._unannounced.items()
                       if token in self.running or job_id in reporting]
            self._unannounced.clear()
            pending = started + pending
            if not pending:
                return
            try:
                await self.queue.add_events(pending)
            except BaseException:
                self.events.put_back(pending)
                raise

    # -- LISTEN ------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = 0.5
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await connect(self.direct_url, application_name="pgqueue-worker-listen",
                                     session_for="the worker's LISTEN")

                await self.queue.store.listen(conn, JOBS_CHANNEL, CONTROL_CHANNEL)
                delay = 0.5
                self._wake.set()  # anything enqueued while we were not listening
                while True:
                    async for note in conn.notifies(timeout=self.settings.poll_seconds * 5):
                        self._on_notify(note.channel, note.payload)
                    await conn.execute("SELECT 1")  # quiet for a while: make sure the connection still lives
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs (polling meanwhile)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == JOBS_CHANNEL:
            if payload in self.queues:
                self._wake.set()
        elif channel == CONTROL_CHANNEL:
            action, _, raw_id = payload.partition(" ")
            if action == "cancel" and raw_id.isdigit():
                for running in [r for r in self.running.values() if r.job.id == int(raw_id)]:
                    self._cancel_running(running)
            elif action in ("pause", "resume", "limits") and raw_id in self.queues:
                # the claim itself reads the queue's row (a paused queue is never claimed from);
                # this only makes an idle worker claim at once after a resume or a raised limit
                log.info("queue %s: %s", raw_id, {"pause": "paused", "resume": "resumed"}.get(action, "limits changed"))
                self._wake.set()

    def _cancel_running(self, running: _Running, lease_lost: bool = False) -> None:
        if running.ctx.cancelled.is_set():
            return
        running.ctx.lease_lost = lease_lost
        running.ctx.cancelled.set()
        log.info("job %s %s; stopping it", running.job.id,
                 "lost its lease" if lease_lost else "cancellation requested")
        spec = self.queue.registry.kinds.get(running.job.kind)
        if spec is not None and spec.is_async:
            running.task.cancel()  # async handlers stop at their next await; sync ones see ctx.cancelled

    # -- heartbeat and maintenance -----------------------------------------------------------

    # set when the scheduler task died: the worker then stops and run() raises SchedulerFailed
    scheduler_error: BaseException | None = None

    async def _schedule_loop(self) -> None:
        """Fire due schedules (pgqueue/scheduler.py) on a connection of its own, never the heartbeat's.
        Every worker runs it (the database dedupes fires). It retries what fails; should it die for
        good, the worker stops and exits non-zero rather than heartbeat on without it (procrastinate
        PR #1463)."""
        try:
            await run_scheduler(self.queue.store, self.queue.registry, self.url, self.stopping,
                                poll_seconds=self.settings.poll_seconds)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.critical("scheduler died (%s); stopping worker %s", exc, self.worker_id, exc_info=exc)
            self.scheduler_error = exc
            self.stop()

    async def _heartbeat_loop(self) -> None:
        await self._on_own_connection("heartbeat", self.settings.heartbeat_seconds, self._heartbeat)

    async def _maintenance_loop(self) -> None:
        """Rescue and prune while this worker holds the leader lock. Its own connection: the
        session advisory lock lives on it, and a long pass never delays a heartbeat."""
        rescuer = LeaseRescuer(self.queue.store, self.settings.lease_seconds)
        pruner = Pruner(self.queue.store, self.settings)

        async def maintain(conn: AsyncConnection) -> None:
            if not self.is_leader:
                self.is_leader = await self.queue.store.try_leader_lock(conn)
                if self.is_leader:
                    log.info("worker %s is the maintenance leader", self.worker_id)
            if self.is_leader:
                await rescuer.run_once(conn)
                await pruner.run_once(conn)

        try:
            await self._on_own_connection("maintenance", self.maintenance_interval, maintain)
        finally:
            self.is_leader = False

    async def _on_own_connection(self, name: str, interval: float, step: Any) -> None:
        """Run ``step(conn)`` every ``interval`` seconds on a dedicated connection (so a busy pool
        cannot starve it), reconnecting when it is lost."""
        conn: AsyncConnection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await connect(self.direct_url, application_name=f"pgqueue-worker-{name}",
                                             session_for="the maintenance leader lock" if name == "maintenance" else None)

                        if name == "maintenance":
                            self.is_leader = False  # a new session holds no advisory lock
                    await step(conn)
                except CONNECTION_ERRORS as exc:
                    log.warning("%s failed (%s); reconnecting", name, exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                except Exception:
                    log.exception("%s step failed; trying again in %.1fs", name, interval)
                await asyncio.sleep(interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _heartbeat(self, conn: AsyncConnection) -> None:
        running = list(self.running.items())
        leases = [(r.job.id, token) for token, r in running] + [(job_id, token) for token, job_id in self._unacked.items()]
        rows = await self.queue.store.extend_leases(leases, self.settings.lease_seconds, conn) if leases else []
        await self._record_worker(conn)
        held: dict[uuid.UUID, bool] = {}
        for _job_id, token, cancel_requested, extended in rows:
            held[token] = cancel_requested
            if not extended:  # the row was locked by another writer: extended on the next beat
                self.counters["beats_skipped"] += 1
        for token, r in running:
            if token not in self.running:
                continue  # finished meanwhile
            if token not in held:
                self._cancel_running(r, lease_lost=True)
            elif held[token]:
                self._cancel_running(r)


async def _cancel_and_wait(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until each has ended, cancelling again if needed: on Python 3.11 a
    cancellation that lands while asyncio.wait_for (inside psycopg_pool) hands over its result is
    lost (CPython gh-86296), and the worker hung on shutdown waiting for that task."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task %s had failed: %r", task.get_name(), task.exception())


def _summary(ids: Iterable[int], runs: int = 8) -> str:
    """'3 jobs: 7, 9-10' (the ids in runs; at most `runs` of them, then how many more)."""
    ordered = sorted(ids)
    spans = []
    for _, run in itertools.groupby(enumerate(ordered), lambda pair: pair[1] - pair[0]):  # a run: id - index constant
        members = [job_id for _, job_id in run]
        spans.append(str(members[0]) if len(members) == 1 else f"{members[0]}-{members[-1]}")
    shown = ", ".join(spans[:runs]) + (f" and {len(spans) - runs} more runs" if len(spans) > runs else "")
    return f"{len(ordered)} job{'s' if len(ordered) != 1 else ''}: {shown}"


def _fmt(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
