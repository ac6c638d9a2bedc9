"""Exceptions raised by pgqueue. Imports nothing else of ours."""

from __future__ import annotations


class PgQueueError(Exception):
    """Base class for every error pgqueue raises on purpose."""


class ConfigError(PgQueueError):
    """A setting is missing or malformed (database URL, storage URL, ...)."""


class DatabaseUnavailable(PgQueueError):
    """PostgreSQL could not be reached or dropped the connection."""


class UnknownKind(PgQueueError):
    """No job kind with that name is registered."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"unknown job kind {kind!r}")
        self.kind = kind


class InvalidPayload(PgQueueError):
    """A payload (or another enqueue argument) failed validation.

    ``errors`` is a list of ``{"field": ..., "message": ...}`` dicts, ``field`` being a
    dotted path such as ``payload.to`` (``$`` when the whole value is wrong).
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class JobNotFound(PgQueueError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(PgQueueError):
    """The job is not in a state that allows the operation (e.g. cancel a finished job)."""

    def __init__(self, job_id: int, status: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {status}")
        self.job_id = job_id
        self.status = status
        self.action = action


class UniqueKeyTaken(InvalidTransition):
    """A retry would make a second live job with the same unique key (another job holds it now)."""

    def __init__(self, job_id: int, unique_key: str, holder_id: int | None = None) -> None:
        PgQueueError.__init__(self, f"cannot retry job {job_id}: its unique key {unique_key!r} is held by "
                                    + (f"job {holder_id}, which is still live" if holder_id is not None
                                       else "another live job"))
        self.job_id, self.status, self.action = job_id, "", "retry"
        self.unique_key = unique_key
        self.holder_id = holder_id


class LeaseLost(PgQueueError):
    """The caller no longer holds the job's lease (it expired and the job was rescued or cancelled)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"lease on job {job_id} is no longer held by this worker")
        self.job_id = job_id


class JobCancelled(PgQueueError):
    """Raised inside a handler (by ``ctx.raise_if_cancelled()``) when cancellation was requested."""


class PermanentFailure(PgQueueError):
    """Raise from a handler to fail the job now, without further retries (it goes dead)."""


class RetryAfter(PgQueueError):
    """Raise from a handler to fail this attempt and retry in ``seconds`` (not the kind's backoff):
    e.g. an HTTP 429 with ``Retry-After``. The attempt counts; past max_attempts the job is dead."""

    def __init__(self, seconds: float, message: str = "") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 365 * 86400:
            raise ValueError(f"RetryAfter needs a number of seconds from 0 to one year, got {seconds!r}")
        self.seconds = float(seconds)
        super().__init__(message or f"retry in {self.seconds:g}s")


class SchemaNotMigrated(PgQueueError):
    """The database lacks the engine's tables, or some migrations shipped in schema/ are not applied."""

    def __init__(self, missing: list[str], applied_any: bool) -> None:
        self.missing = missing
        state = "behind" if applied_any else "missing"
        super().__init__(f"the database schema is {state} ({len(missing)} migration(s) not applied: "
                         f"{', '.join(missing)}); run `python -m pgqueue migrate` first")


class WaitTimeout(PgQueueError):
    """``wait()`` gave up: the job had not finished (succeeded, dead, cancelled) within ``timeout``
    seconds. ``status`` is the job's status when it gave up."""

    def __init__(self, job_id: int, timeout: float, status: str) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s (it is {status})")
        self.job_id = job_id
        self.timeout = timeout
        self.status = status


# -- periodic jobs -------------------------------------------------------------------------------


class InvalidSchedule(PgQueueError):
    """A schedule's definition failed validation (``errors`` as in InvalidPayload: field, message)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class ScheduleNotFound(PgQueueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r}")
        self.name = name


class ScheduleExists(PgQueueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} exists already")
        self.name = name


class SchedulerFailed(PgQueueError):
    """The worker's scheduler kept failing: the worker stops rather than run without it."""


# -- queues: pause and limits --------------------------------------------------------------------


class InvalidQueueSettings(ConfigError):
    """A queue name or limit is not valid (``errors`` as in InvalidPayload: field, message)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
