"""Periodic jobs: the fire times a pass plans, the scheduler every worker runs, and
``queue.schedules``, the facade the CLI and the REST layer use to manage schedules.

A pass (``Scheduler.run_once``) reads the due schedules together with the database's clock,
plans each one's fire times from its stored ``next_fire_at`` and catch-up policy, and fires them
all in one statement (``fire_schedules`` in sql/queries.sql): fire records under a unique
(schedule, fire_at), their jobs, and the new next_fire_at, written together or not at all. Every
worker runs passes on its own cadence; no leader is needed, since a schedule is fired only at the
revision a pass planned from and each fire time can be recorded once. Nothing is kept in a
worker's memory between passes, so restarting workers never delays or loses a fire.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from pgqueue.cron import CronError, load_zone, parse_cron
from pgqueue.db import CONNECTION_ERRORS, AsyncConnection, connect
from pgqueue.errors import ScheduleExists, ScheduleNotFound, SchedulerFailed
from pgqueue.models import DEFAULT_CATCH_UP_WINDOW, Schedule, ScheduleFire, ScheduleSpec
from pgqueue.registry import JobRegistry, check_schedule
from pgqueue.store import Store

log = logging.getLogger("pgqueue.scheduler")

MAX_FIRES_PER_PASS = 1000  # per schedule: catching up a long window goes on in the next passes
DUE_BATCH = 100
MAX_BATCHES = 10  # per run_once
MIN_SLEEP = 0.01  # between passes while something is due (another worker may be firing it)
MAX_CONSECUTIVE_FAILURES = 5  # unexpected errors in a row before the worker gives up (SchedulerFailed)
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 1000


def plan_fires(schedule: Schedule, now: datetime) -> tuple[list[datetime], datetime | None]:
    """The fire times one pass turns into jobs, and the schedule's next_fire_at afterwards.

    Raises CronError / ValueError when the stored expression or zone is unusable."""
    cron = parse_cron(schedule.expression)
    zone = load_zone(schedule.timezone)
    due = schedule.next_fire_at
    if due is None or due > now:
        return [], due
    window = timedelta(seconds=schedule.catch_up_window)
    if schedule.catch_up == "all":
        fires: list[datetime] = []
        fire: datetime | None = due if due >= now - window else cron.next_at_or_after(now - window, zone)
        while fire is not None and fire <= now and len(fires) < MAX_FIRES_PER_PASS:
            fires.append(fire)
            fire = cron.next_after(fire, zone)
        return fires, fire if fire is not None and fire <= now else cron.next_after(now, zone)
    latest = cron.previous_at_or_before(now, zone)
    if latest is None or latest < due:
        latest = due  # the stored fire time is due, whatever the expression says now
    late = now - latest
    fires = [latest] if schedule.catch_up == "latest" or late <= window else []
    return fires, cron.next_after(now, zone)


def upcoming_fires(schedule: Schedule, now: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` fire times to show: from next_fire_at, or from now when paused (where
    resuming would start)."""
    try:
        cron, zone = parse_cron(schedule.expression), load_zone(schedule.timezone)
    except ValueError:
        return []
    if schedule.paused or schedule.next_fire_at is None:
        return cron.next_times(now, zone, count)
    return [schedule.next_fire_at, *cron.next_times(schedule.next_fire_at, zone, count - 1)][:count]


def first_fire(spec: ScheduleSpec, now: datetime) -> datetime | None:
    return parse_cron(spec.expression).next_after(now, load_zone(spec.timezone))


class Scheduler:
    """One pass at a time: ``run_once`` fires what is due (tests call it directly)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._reported: set[tuple[int, int]] = set()  # unusable schedules already logged, by (id, revision)

    async def run_once(self, conn: AsyncConnection | None = None) -> list[ScheduleFire]:
        fired: list[ScheduleFire] = []
        for _ in range(MAX_BATCHES):
            due, now = await self.store.due_schedules(DUE_BATCH, conn)
            if not due:
                break
            plans = [self._plan(schedule, now) for schedule in due]
            batch = await self.store.fire_schedules(plans, conn)
            fired += batch
            for fire in batch:
                log.info("schedule %s fired for %s: job %s", fire.schedule, fire.fire_at.isoformat(), fire.job_id)
            if len(due) < DUE_BATCH:
                break
        return fired

    def _plan(self, schedule: Schedule, now: datetime) -> tuple[int, int, datetime | None, list[datetime]]:
        try:
            fires, next_fire_at = plan_fires(schedule, now)
        except (CronError, ValueError) as exc:
            # a row written by hand that does not parse: it stops (next_fire_at NULL, state 'never'
            # in pgqueue.schedule_status) instead of staying due and filling every batch
            if (schedule.id, schedule.revision) not in self._reported:
                self._reported.add((schedule.id, schedule.revision))
                log.error("schedule %s cannot fire: %s; it stays stopped until it is redefined", schedule.name, exc)
            return schedule.id, schedule.revision, None, []
        if not fires and schedule.next_fire_at is not None:
            log.warning("schedule %s skipped fire time(s) from %s on (catch_up=%s, window %.0fs)", schedule.name,
                        schedule.next_fire_at.isoformat(), schedule.catch_up, schedule.catch_up_window)
        return schedule.id, schedule.revision, next_fire_at, fires

    async def seconds_until_due(self, cap: float, conn: AsyncConnection | None = None) -> float:
        """How long the next pass may wait: until the soonest schedule is due, at most ``cap``."""
        next_fire_at, now = await self.store.next_schedule_due(conn)
        if next_fire_at is None:
            return cap
        return min(cap, max(MIN_SLEEP, (next_fire_at - now).total_seconds()))

    async def prune(self, conn: AsyncConnection | None = None) -> int:
        return await self.store.prune_schedule_fires(PRUNE_BATCH, conn)


async def sync_declared(store: Store, registry: JobRegistry, conn: AsyncConnection | None = None) -> list[Schedule]:
    """Upsert the schedules declared in code (``@jobs.periodic``); unchanged ones are not touched."""
    specs = sorted(registry.schedules.values(), key=lambda spec: spec.name)
    if not specs:
        return []
    now = await store.now(conn)
    written = await store.upsert_declared_schedules(specs, [first_fire(spec, now) for spec in specs], conn)
    for schedule in written:
        log.info("schedule %s declared in code: %s (%s)", schedule.name, schedule.expression, schedule.timezone)
    return written


async def run_scheduler(store: Store, registry: JobRegistry, url: str, stopping: asyncio.Event, *,
                        poll_seconds: float) -> None:
    """The worker's scheduler: upsert the declared schedules, then a pass whenever one is due (at
    least every ``poll_seconds``, jittered, to see schedules added meanwhile), on a connection of
    its own. A lost database is waited for; an unexpected error is logged and retried, and after
    MAX_CONSECUTIVE_FAILURES in a row raises SchedulerFailed: the worker then stops (procrastinate
    PR #1463: a worker must not go on heartbeating with its scheduler dead)."""
    scheduler = Scheduler(store)
    conn: AsyncConnection | None = None
    synced = False
    failures = 0
    backoff = 0.2
    pruned_at = -PRUNE_EVERY_SECONDS
    try:
        while not stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await connect(url, application_name="pgqueue-worker-scheduler")
                if not synced:
                    await sync_declared(store, registry, conn)
                    synced = True
                await scheduler.run_once(conn)
                if time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                    await scheduler.prune(conn)
                    pruned_at = time.monotonic()
                wait = await scheduler.seconds_until_due(poll_seconds * random.uniform(0.8, 1.2), conn)
                failures, backoff = 0, 0.2
            except CONNECTION_ERRORS as exc:
                log.warning("scheduler: database unavailable (%s); retrying in %.1fs", exc, backoff)
                await _close(conn)
                conn = None
                wait, backoff = backoff, min(backoff * 2, 5.0)
            except Exception as exc:
                failures += 1
                await _close(conn)
                conn = None
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise SchedulerFailed(f"the scheduler failed {failures} times in a row; last error: {exc!r}") from exc
                log.exception("scheduler pass failed (%d/%d in a row); retrying in %.1fs", failures,
                              MAX_CONSECUTIVE_FAILURES, backoff)
                wait, backoff = backoff, min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
    finally:
        await _close(conn)


async def _close(conn: AsyncConnection | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


class ScheduleBackend(Protocol):
    """``queue.schedules`` of both backends (Postgres here, memory in pgqueue/memory.py);
    tests/test_schedules.py runs one contract suite against each."""

    async def add(self, name: str, expression: str, kind: str, payload: Any = None, *, timezone: str = "UTC",
                  queue: str | None = None, priority: int | None = None, max_attempts: int | None = None,
                  catch_up: str = "skip", catch_up_window: float = DEFAULT_CATCH_UP_WINDOW,
                  paused: bool = False) -> Schedule: ...

    async def get(self, name: str) -> Schedule: ...

    async def list(self) -> builtins.list[Schedule]: ...

    async def pause(self, name: str) -> Schedule: ...

    async def resume(self, name: str) -> Schedule: ...

    async def remove(self, name: str) -> None: ...

    async def sync_declared(self) -> builtins.list[Schedule]: ...

    async def fire_due(self) -> builtins.list[ScheduleFire]: ...


class Schedules:
    """Schedules in PostgreSQL: ``queue.schedules.add("nightly", "0 3 * * *", "report", {...})``.

    Options of ``add``: timezone, queue, priority, max_attempts (the kind's defaults otherwise),
    catch_up ("skip", "latest", "all"), catch_up_window (seconds, default 60), paused."""

    def __init__(self, store: Store, registry: JobRegistry) -> None:
        self.store = store
        self.registry = registry

    async def add(self, name: str, expression: str, kind: str, payload: Any = None, *, timezone: str = "UTC",
                  queue: str | None = None, priority: int | None = None, max_attempts: int | None = None,
                  catch_up: str = "skip", catch_up_window: float = DEFAULT_CATCH_UP_WINDOW,
                  paused: bool = False) -> Schedule:
        """Validate (InvalidSchedule lists every bad field) and store a schedule; ScheduleExists
        when the name is taken. Its first fire is the first fire time after now."""
        spec = check_schedule(self.registry, name, expression, kind, payload, timezone=timezone, queue=queue,
                              priority=priority, max_attempts=max_attempts, catch_up=catch_up,
                              catch_up_window=catch_up_window, paused=paused)
        created = await self.store.insert_schedule(spec, first_fire(spec, await self.store.now()))
        if created is None:
            raise ScheduleExists(name)
        return created

    async def get(self, name: str) -> Schedule:
        return _found(await self.store.get_schedule(name), name)

    async def list(self) -> builtins.list[Schedule]:
        return await self.store.list_schedules()

    async def pause(self, name: str) -> Schedule:
        return _found(await self.store.pause_schedule(name), name)

    async def resume(self, name: str) -> Schedule:
        """Fire times that passed while paused are dropped: it goes on from the next one after now."""
        schedule = await self.get(name)
        try:
            cron, zone = parse_cron(schedule.expression), load_zone(schedule.timezone)
            next_fire_at = cron.next_after(await self.store.now(), zone)
        except ValueError:
            next_fire_at = None
        return _found(await self.store.resume_schedule(name, next_fire_at), name)

    async def remove(self, name: str) -> None:
        if not await self.store.delete_schedule(name):
            raise ScheduleNotFound(name)

    async def sync_declared(self) -> builtins.list[Schedule]:
        return await sync_declared(self.store, self.registry)

    async def fire_due(self) -> builtins.list[ScheduleFire]:
        """One scheduler pass (what every worker runs on its own)."""
        return await Scheduler(self.store).run_once()


def _found(schedule: Schedule | None, name: str) -> Schedule:
    if schedule is None:
        raise ScheduleNotFound(name)
    return schedule


def fire_times(fires: Sequence[ScheduleFire], schedule: str) -> builtins.list[datetime]:
    """The fire times of one schedule among a pass's fires, in order (for tests and tools)."""
    return sorted(fire.fire_at for fire in fires if fire.schedule == schedule)
