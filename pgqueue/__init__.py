"""pgqueue: a Postgres-native job queue. The public names live here."""

from pgqueue.context import JobContext
from pgqueue.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidPayload,
    InvalidTransition,
    JobCancelled,
    JobNotFound,
    LeaseLost,
    PermanentFailure,
    PgQueueError,
    RetryAfter,
    UnknownKind,
    WaitTimeout,
)
from pgqueue.memory import MemoryQueue
from pgqueue.models import Event, Job, JobError, NewJob
from pgqueue.queue import Queue, QueueBackend, SyncQueue
from pgqueue.registry import JobRegistry

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "Event",
    "InvalidPayload",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobRegistry",
    "LeaseLost",
    "MemoryQueue",
    "NewJob",
    "PermanentFailure",
    "PgQueueError",
    "Queue",
    "QueueBackend",
    "RetryAfter",
    "SyncQueue",
    "UnknownKind",
    "WaitTimeout",
]
