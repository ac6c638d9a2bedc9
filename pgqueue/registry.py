"""Job kinds: a name, a typed payload (msgspec Struct), a handler and enqueue defaults.

    jobs = JobRegistry()

    class Email(msgspec.Struct):
        to: str
        subject: str

    @jobs.kind("email", queue="mail", max_attempts=5, priority=4)
    async def send_email(ctx: JobContext, email: Email) -> dict: ...
"""

from __future__ import annotations

import inspect
import math
import random
import re
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from pgqueue.cron import CronError, load_zone, parse_cron
from pgqueue.errors import InvalidPayload, InvalidSchedule, UnknownKind
from pgqueue.models import (
    CATCH_UP_POLICIES,
    DEFAULT_CATCH_UP_WINDOW,
    MAX_CATCH_UP_WINDOW,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    NewJob,
    ScheduleSpec,
)

Handler = Callable[..., Any]

# How deeply arrays and objects may nest in a payload: the REST layer's limit for a whole body
# (app/api.py MAX_JSON_DEPTH), far below where msgspec and Python give up with a RecursionError.
MAX_PAYLOAD_DEPTH = 128
# The instants a job may be scheduled at: years 1-9999 in UTC. Postgres stores far more, but
# Python's datetime holds no year 0 or 10000, and a worker must be able to read every row it claims.
EARLIEST_RUN_AT = datetime.min.replace(tzinfo=UTC)
LATEST_RUN_AT = datetime.max.replace(tzinfo=UTC)
# a delay is added to the database's clock, not ours
_CLOCK_SKEW_MARGIN = timedelta(days=1)
NUL_MESSAGE = "must not contain the NUL character (\\u0000): PostgreSQL text and jsonb cannot store it"
_encode_json = msgspec.json.Encoder().encode

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`$")


def field_errors(exc: msgspec.ValidationError, prefix: str = "payload") -> list[dict[str, str]]:
    """msgspec's "Expected `int`, got `str` - at `$.count`" as [{"field": "payload.count", ...}].

    A missing or unknown field is reported by msgspec at the object holding it; we name the
    field itself ("Object missing required field `to`" -> field "payload.to").
    """
    match = _AT.match(str(exc))
    assert match is not None
    field = prefix + (match.group("path") or "").replace("[", ".").replace("]", "")
    message = match.group("message")
    if named := _NAMED_FIELD.match(message):
        field = f"{field}.{named.group('name')}"
    return [{"field": field, "message": message}]


class KindSpec(msgspec.Struct, kw_only=True):
    name: str
    payload_type: Any
    handler: Handler | None
    queue: str = "default"
    max_attempts: int = 3
    priority: int = PRIORITY_DEFAULT
    # exponential backoff: base * 2**(attempt-1), capped, with +-25% jitter
    backoff_base: float = 2.0
    backoff_max: float = 3600.0

    is_async: bool = False  # set by declare(): the handler is a coroutine function

    def retry_delay(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(attempt - 1, 0))
        return delay * random.uniform(0.75, 1.25)

    def decode_payload(self, payload: Any) -> Any:
        if self.payload_type is Any:
            return payload
        if self.payload_type in _PLAIN_OBJECT_TYPES and isinstance(payload, dict):
            return payload  # a JSON object already is one (msgspec.convert to dict costs 2 us a job)
        return msgspec.convert(payload, self.payload_type, strict=False)


_PLAIN_OBJECT_TYPES = (dict, dict[str, Any])


def _payload_type_of(handler: Handler) -> Any:
    """The annotation of the handler's second parameter (the first is the context)."""
    params = list(inspect.signature(handler).parameters.values())
    if len(params) < 2:
        return Any
    hints = typing.get_type_hints(handler)
    return hints.get(params[1].name, Any)


def encode_payload(payload: Any, field: str = "payload") -> tuple[str | None, list[dict[str, str]]]:
    """A JSON-able payload as the JSON text to store, or None and what is wrong with it.

    The checks run on the encoded bytes first (a few C-speed scans); the payload is walked only
    when one of them finds a suspect: many brackets, an escaped NUL, or a ``null`` (msgspec
    writes NaN and Infinity as null)."""
    try:
        encoded = _encode_json(payload)
    except RecursionError:
        return None, [_too_deep(field)]
    except (TypeError, ValueError) as exc:
        return None, [{"field": field, "message": f"not JSON-serialisable: {exc}"}]
    if error := _payload_problem(encoded, payload, field, suspect=True):
        return None, [error]
    return encoded.decode(), []


# Nesting deeper than MAX_PAYLOAD_DEPTH takes more brackets than this many bytes hold.
_SHORT_ENOUGH_FOR_ANY_DEPTH = 2 * MAX_PAYLOAD_DEPTH


def _payload_problem(encoded: bytes, payload: Any, field: str, *, suspect: bool) -> dict[str, str] | None:
    """Too deep, or a NUL, NaN or Infinity in it (looked for only when ``suspect``: a batch
    whose joined JSON has no escaped NUL and no null holds none)."""
    if (len(encoded) > _SHORT_ENOUGH_FOR_ANY_DEPTH and encoded.count(b"[") + encoded.count(b"{") > MAX_PAYLOAD_DEPTH
            and _depth(payload) > MAX_PAYLOAD_DEPTH):
        return _too_deep(field)
    if suspect and (b"\\u0000" in encoded or b"null" in encoded):
        return _unstorable_value(payload, field)
    return None


def _too_deep(field: str) -> dict[str, str]:
    return {"field": field, "message": f"nests arrays and objects more than {MAX_PAYLOAD_DEPTH} levels deep"}


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest (iterative: any depth is safe)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _unstorable_value(value: Any, path: str) -> dict[str, str] | None:
    """The first string or key holding NUL, or float that is NaN or infinite (recursive: only
    called once the nesting is known to be shallow)."""
    if isinstance(value, str):
        return {"field": path, "message": NUL_MESSAGE} if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else {"field": path, "message": "NaN and Infinity are not JSON numbers"}
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return {"field": path, "message": "has a key with the NUL character (\\u0000), which PostgreSQL cannot store"}
            if error := _unstorable_value(item, f"{path}.{key}"):
                return error
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if error := _unstorable_value(item, f"{path}.{index}"):
                return error
    return None


def validate_schedule(run_at: datetime | None, delay: float | None) -> list[dict[str, str]]:
    """run_at must be an aware datetime and delay a finite number of seconds >= 0, and the
    instant either names within EARLIEST_RUN_AT..LATEST_RUN_AT."""
    errors = []
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            errors.append({"field": "delay", "message": "must be a finite number of seconds >= 0"})
        elif delay > (LATEST_RUN_AT - _CLOCK_SKEW_MARGIN - datetime.now(UTC)).total_seconds():
            errors.append({"field": "delay", "message": "puts the job after the year 9999"})
    if run_at is not None:
        if not isinstance(run_at, datetime) or run_at.utcoffset() is None:
            errors.append({"field": "run_at", "message": "must be a timezone-aware datetime"})
        elif not EARLIEST_RUN_AT <= run_at <= LATEST_RUN_AT:
            errors.append({"field": "run_at", "message": "must be within the years 1-9999 in UTC"})
    return errors


def validate_keys(unique_key: str | None, owner_id: str | None,
                  concurrency_key: str | None = None) -> list[dict[str, str]]:
    errors = []
    for field, value in (("unique_key", unique_key), ("owner_id", owner_id), ("concurrency_key", concurrency_key)):
        if value is None:
            continue
        if not isinstance(value, str) or not 1 <= len(value) <= 500:
            errors.append({"field": field, "message": "must be a string of 1-500 characters"})
        elif "\x00" in value:
            errors.append({"field": field, "message": NUL_MESSAGE})
    return errors


def check_payload_sizes(jobs: list[NewJob], max_bytes: int) -> None:
    """InvalidPayload for the first job whose payload is longer than ``max_bytes`` as JSON."""
    for job in jobs:
        text = job.payload_json or ""
        size = len(text) if text.isascii() else len(text.encode())  # isascii() is O(1) in CPython
        if size > max_bytes:
            raise InvalidPayload([{"field": "payload", "message": f"is {size} bytes as JSON, more than the "
                                   f"{max_bytes} allowed (PGQUEUE_MAX_PAYLOAD_BYTES)"}])


def validate_options(priority: int, max_attempts: int, queue: str) -> list[dict[str, str]]:
    errors = []
    if not isinstance(priority, int) or isinstance(priority, bool) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        errors.append({"field": "priority", "message": f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"})
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not 1 <= max_attempts <= 1000:
        errors.append({"field": "max_attempts", "message": "must be an integer from 1 to 1000"})
    if not isinstance(queue, str) or not _NAME.match(queue):
        errors.append({"field": "queue", "message": "must be 1-100 characters of letters, digits, _ . : -"})
    return errors


class JobRegistry:
    def __init__(self) -> None:
        self.kinds: dict[str, KindSpec] = {}
        self.schedules: dict[str, ScheduleSpec] = {}  # declared with periodic(); workers upsert them at start

    def kind(self, name: str, *, payload: Any = None, queue: str = "default", max_attempts: int = 3,
             priority: int = PRIORITY_DEFAULT, backoff_base: float = 2.0,
             backoff_max: float = 3600.0) -> Callable[[Handler], Handler]:
        """Decorator registering a handler ``(ctx, payload) -> result`` (async or sync) for a kind."""

        def register(handler: Handler) -> Handler:
            self.declare(name, payload=payload if payload is not None else _payload_type_of(handler), handler=handler,
                         queue=queue, max_attempts=max_attempts, priority=priority,
                         backoff_base=backoff_base, backoff_max=backoff_max)
            return handler

        return register

    def declare(self, name: str, *, payload: Any = Any, handler: Handler | None = None, queue: str = "default",
                max_attempts: int = 3, priority: int = PRIORITY_DEFAULT, backoff_base: float = 2.0,
                backoff_max: float = 3600.0) -> KindSpec:
        """Register a kind, possibly without a Python handler (a worker in another language runs it)."""
        if not _NAME.match(name):
            raise ValueError(f"bad job kind name {name!r}")
        if errors := validate_options(priority, max_attempts, queue):
            raise ValueError(f"kind {name!r}: " + "; ".join(f"{e['field']} {e['message']}" for e in errors))
        spec = KindSpec(name=name, payload_type=payload, handler=handler, queue=queue, max_attempts=max_attempts,
                        priority=priority, backoff_base=backoff_base, backoff_max=backoff_max,
                        is_async=inspect.iscoroutinefunction(handler))
        self.kinds[name] = spec
        return spec

    def get(self, name: str) -> KindSpec:
        try:
            return self.kinds[name]
        except KeyError:
            raise UnknownKind(name) from None

    def include(self, other: JobRegistry) -> None:
        self.kinds.update(other.kinds)
        self.schedules.update(other.schedules)

    def build_plain(self, kind: str, payloads: list[Any]) -> list[NewJob]:
        """``build(kind, p)`` for many payloads with the kind's defaults, converted in one msgspec
        call (bulk enqueue spends most of its Python time here); the first bad payload is
        reported exactly as ``build`` would."""
        spec = self.get(kind)
        try:
            if spec.payload_type is not Any:
                payloads = msgspec.to_builtins(msgspec.convert(payloads, list[spec.payload_type], strict=False))  # type: ignore[name-defined]
            texts = [_encode_json(payload) for payload in payloads]
        except (msgspec.ValidationError, TypeError, ValueError, RecursionError):
            return [self.build(kind, payload) for payload in payloads]
        # one scan of the whole batch for an escaped NUL or a null (NaN); per payload only a length
        # check for depth, unless the batch scan found something
        joined = b"".join(texts)
        suspect = b"\\u0000" in joined or b"null" in joined
        if suspect or max(map(len, texts), default=0) > _SHORT_ENOUGH_FOR_ANY_DEPTH:
            for payload, text in zip(payloads, texts, strict=True):
                if error := _payload_problem(text, payload, "payload", suspect=suspect):
                    raise InvalidPayload([error])
        return [NewJob(queue=spec.queue, kind=kind, payload=payload, priority=spec.priority,
                       max_attempts=spec.max_attempts, payload_json=text.decode())
                for payload, text in zip(payloads, texts, strict=True)]

    def build(self, kind: str, payload: Any, *, priority: int | None = None, queue: str | None = None,
              run_at: datetime | None = None, delay: float | None = None, max_attempts: int | None = None,
              unique_key: str | None = None, owner_id: str | None = None,
              concurrency_key: str | None = None) -> NewJob:
        """Validate everything about one job to enqueue; InvalidPayload lists every bad field."""
        spec = self.get(kind)
        priority = spec.priority if priority is None else priority
        max_attempts = spec.max_attempts if max_attempts is None else max_attempts
        queue = spec.queue if queue is None else queue
        errors = validate_options(priority, max_attempts, queue)
        payload_json = None
        try:
            if spec.payload_type is not Any:
                payload = msgspec.to_builtins(msgspec.convert(payload, spec.payload_type, strict=False))
        except msgspec.ValidationError as exc:
            errors += field_errors(exc)
        except RecursionError:
            errors.append(_too_deep("payload"))
        else:
            payload_json, payload_errors = encode_payload(payload)
            errors += payload_errors
        errors += validate_schedule(run_at, delay)
        errors += validate_keys(unique_key, owner_id, concurrency_key)
        if errors:
            raise InvalidPayload(errors)
        return NewJob(queue=queue, kind=kind, payload=payload, priority=priority, run_at=run_at,
                      delay_seconds=float(delay or 0.0), max_attempts=max_attempts, unique_key=unique_key,
                      owner_id=owner_id, concurrency_key=concurrency_key, payload_json=payload_json)

    def check_new_job(self, new: NewJob) -> NewJob:
        """A NewJob made by the caller, checked like ``build`` checks its arguments except for the
        kind's payload type (the kind need not be registered here); returned with its JSON text."""
        errors = validate_options(new.priority, new.max_attempts, new.queue)
        if not isinstance(new.kind, str) or not _NAME.match(new.kind):
            errors.append({"field": "kind", "message": "must be 1-100 characters of letters, digits, _ . : -"})
        payload_json, payload_errors = encode_payload(new.payload)
        errors += payload_errors
        errors += validate_schedule(new.run_at, new.delay_seconds)
        errors += validate_keys(new.unique_key, new.owner_id, new.concurrency_key)
        if errors:
            raise InvalidPayload(errors)
        return msgspec.structs.replace(new, payload_json=payload_json)

    # -- periodic jobs (README "Periodic jobs") ----------------------------------------------------

    def periodic(self, expression: str, *, kind: str | None = None, payload: Any = None, name: str | None = None,
                 timezone: str = "UTC", queue: str | None = None, priority: int | None = None,
                 max_attempts: int | None = None, catch_up: str = "skip",
                 catch_up_window: float = DEFAULT_CATCH_UP_WINDOW) -> Callable[[Handler], Handler]:
        """Decorator declaring a schedule for a handler: ``@jobs.periodic("*/5 * * * *")`` above
        ``@jobs.kind("report")``, or alone (``kind=`` names the kind to register the handler as,
        default its function name). Workers upsert declared schedules when they start; the
        expression, zone and payload are checked here, at import time (ValueError)."""

        def register(handler: Handler) -> Handler:
            kind_name = kind or next((k for k, spec in self.kinds.items() if spec.handler is handler),
                                     getattr(handler, "__name__", ""))
            registered_here = kind_name not in self.kinds
            if registered_here:
                self.kind(kind_name)(handler)
            try:
                self.declare_schedule(name or kind_name, expression, kind=kind_name, payload=payload,
                                      timezone=timezone, queue=queue, priority=priority, max_attempts=max_attempts,
                                      catch_up=catch_up, catch_up_window=catch_up_window)
            except ValueError:
                if registered_here:  # a bad declaration leaves nothing behind
                    del self.kinds[kind_name]
                raise
            return handler

        return register

    def declare_schedule(self, name: str, expression: str, *, kind: str, payload: Any = None, timezone: str = "UTC",
                         queue: str | None = None, priority: int | None = None, max_attempts: int | None = None,
                         catch_up: str = "skip", catch_up_window: float = DEFAULT_CATCH_UP_WINDOW) -> ScheduleSpec:
        """Declare a schedule of a registered kind in code (what ``periodic`` does, without a decorator)."""
        if name in self.schedules:
            raise ValueError(f"schedule {name!r} is declared twice")
        try:
            spec = check_schedule(self, name, expression, kind, payload, timezone=timezone, queue=queue,
                                  priority=priority, max_attempts=max_attempts, catch_up=catch_up,
                                  catch_up_window=catch_up_window)
        except InvalidSchedule as exc:
            raise ValueError(f"schedule {name!r}: {exc}") from None
        self.schedules[name] = spec
        return spec


def check_schedule(registry: JobRegistry, name: str, expression: str, kind: str, payload: Any = None, *,
                   timezone: str = "UTC", queue: str | None = None, priority: int | None = None,
                   max_attempts: int | None = None, catch_up: str = "skip",
                   catch_up_window: float = DEFAULT_CATCH_UP_WINDOW, paused: bool = False) -> ScheduleSpec:
    """A schedule's definition, checked as a whole (InvalidSchedule lists every bad field): the
    expression parses and fires within cron.SEARCH_YEARS, the zone exists, and the job it makes
    passes ``build`` (kind, payload type, queue, priority, attempts), the kind's defaults filling
    what is not given."""
    errors: list[dict[str, str]] = []
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append({"field": "name", "message": "must be 1-100 characters of letters, digits, _ . : -"})
    cron = zone = None
    try:
        cron = parse_cron(expression)
    except CronError as exc:
        errors.append({"field": "expression", "message": str(exc)})
    try:
        zone = load_zone(timezone)
    except ValueError as exc:
        errors.append({"field": "timezone", "message": str(exc)})
    if cron is not None and zone is not None and cron.next_after(datetime.now(UTC), zone) is None:
        errors.append({"field": "expression", "message": "never fires (no such date within the next 30 years)"})
    if catch_up not in CATCH_UP_POLICIES:
        errors.append({"field": "catch_up", "message": f"must be one of {', '.join(CATCH_UP_POLICIES)}"})
    if (isinstance(catch_up_window, bool) or not isinstance(catch_up_window, int | float)
            or not math.isfinite(catch_up_window) or not 1 <= catch_up_window <= MAX_CATCH_UP_WINDOW):
        errors.append({"field": "catch_up_window",
                       "message": f"must be a number of seconds from 1 to {MAX_CATCH_UP_WINDOW:.0f} (366 days)"})
    if not isinstance(paused, bool):
        errors.append({"field": "paused", "message": "must be true or false"})
    new = None
    try:
        new = registry.build(kind, {} if payload is None else payload, queue=queue, priority=priority,
                             max_attempts=max_attempts)
    except UnknownKind as exc:
        errors.append({"field": "kind", "message": str(exc)})
    except InvalidPayload as exc:
        errors += exc.errors
    if errors or new is None:
        raise InvalidSchedule(errors)
    return ScheduleSpec(name=name, expression=expression, kind=kind, payload=new.payload, timezone=timezone,
                        queue=new.queue, priority=new.priority, max_attempts=new.max_attempts, catch_up=catch_up,
                        catch_up_window=float(catch_up_window), paused=paused, payload_json=new.payload_json)
