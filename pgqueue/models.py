"""Plain data types shared by the engine, the in-memory backend and the web layer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, get_args

import msgspec

# waiting: a job whose parents have not all finished (README, "Job dependencies")
JobStatus = Literal["waiting", "queued", "running", "succeeded", "failed", "dead", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
LIVE_STATUSES = frozenset({"waiting", "queued", "running", "failed"})
FINISHED_STATUSES = frozenset({"succeeded", "dead", "cancelled"})
# What retry() re-drives (River and Oban let a cancelled job be retried as well).
RETRYABLE_STATUSES = frozenset({"dead", "failed", "cancelled"})
# Event types after which a job emits nothing more (SSE streams end there).
TERMINAL_EVENTS = frozenset({"succeeded", "dead", "cancelled", "deleted"})

PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 1, 5, 3


class Job(msgspec.Struct, kw_only=True):
    """One row of pgqueue.jobs. Field names match the columns."""

    id: int
    queue: str
    kind: str
    payload: Any
    priority: int
    status: str
    run_at: datetime
    attempts: int
    max_attempts: int
    lease_owner: str | None = None
    lease_token: uuid.UUID | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    result: Any = None
    last_error: str | None = None
    unique_key: str | None = None
    owner_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # see schema/0005.crash-isolation.sql
    crash_suspect: bool = False
    lease_charged: bool = True
    has_dependents: bool = False  # see schema/0009.dependencies.sql
    # see schema/0008.queues.sql: the job's concurrency key, and the capacity slots it holds while running
    concurrency_key: str | None = None
    queue_slot: int | None = None
    key_slot: int | None = None


class Event(msgspec.Struct, kw_only=True):
    id: int
    job_id: int
    type: str
    data: Any
    created_at: datetime


class JobError(msgspec.Struct, kw_only=True):
    attempt: int
    worker_id: str | None
    error: str
    failed_at: datetime


class NewJob(msgspec.Struct, kw_only=True):
    """A job ready to insert: payload already validated and converted to JSON-able data."""

    queue: str
    kind: str
    payload: Any
    priority: int = PRIORITY_DEFAULT
    run_at: datetime | None = None
    delay_seconds: float = 0.0
    max_attempts: int = 3
    unique_key: str | None = None
    owner_id: str | None = None
    concurrency_key: str | None = None  # limits of the queue per key apply (schema/0008.queues.sql)
    # dependencies (README, "Job dependencies"): ids of existing jobs, or the ``ref`` of an earlier
    # job of the same enqueue_many batch; the job waits until they have all succeeded
    depends_on: tuple[int | str, ...] = ()
    ref: str | None = None
    run_if_parent_fails: bool = False  # run once the parents finished, whatever their outcome
    # the payload as the JSON text to store, set by the registry when it validated it (the store
    # encodes ``payload`` itself when this is None)
    payload_json: str | None = None


# -- periodic jobs (pgqueue/scheduler.py) ----------------------------------------------------------

CatchUp = Literal["skip", "latest", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)
DEFAULT_CATCH_UP_WINDOW = 60.0  # seconds
MAX_CATCH_UP_WINDOW = 366 * 86400.0


class ScheduleSpec(msgspec.Struct, kw_only=True):
    """What a schedule enqueues and when (checked by registry.check_schedule before it is stored).

    catch_up, when fire times were missed (no worker ran): ``skip`` runs the latest one only if it
    is at most ``catch_up_window`` seconds late; ``latest`` runs the latest one however late;
    ``all`` runs every one of the last ``catch_up_window`` seconds."""

    name: str
    expression: str
    kind: str
    payload: Any = {}
    timezone: str = "UTC"
    queue: str = "default"
    priority: int = PRIORITY_DEFAULT
    max_attempts: int = 3
    catch_up: str = "skip"
    catch_up_window: float = DEFAULT_CATCH_UP_WINDOW
    paused: bool = False  # on creation only: code declarations never change an operator's pause
    payload_json: str | None = None  # set by check_schedule


class Schedule(msgspec.Struct, kw_only=True):
    """One row of pgqueue.schedules."""

    id: int
    name: str
    expression: str
    timezone: str
    kind: str
    queue: str
    payload: Any
    priority: int
    max_attempts: int
    catch_up: str
    catch_up_window: float
    paused: bool
    declared_in_code: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    revision: int
    created_at: datetime
    updated_at: datetime


class ScheduleFire(msgspec.Struct, kw_only=True, frozen=True):
    """A fire time that became a job (pgqueue.schedule_fires)."""

    schedule: str
    fire_at: datetime
    job_id: int
