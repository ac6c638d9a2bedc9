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
import random
import re
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from pgqueue.errors import InvalidPayload, UnknownKind
from pgqueue.models import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, NewJob

Handler = Callable[..., Any]

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

    def build_plain(self, kind: str, payloads: list[Any]) -> list[NewJob]:
        """``build(kind, p)`` for many payloads with the kind's defaults, validated in one msgspec
        call (bulk enqueue spends most of its Python time here); the first bad payload is then
        reported exactly as ``build`` would."""
        spec = self.get(kind)
        try:
            if spec.payload_type is not Any:
                payloads = msgspec.to_builtins(msgspec.convert(payloads, list[spec.payload_type], strict=False))  # type: ignore[name-defined]
            else:
                msgspec.json.encode(payloads)
        except (msgspec.ValidationError, TypeError, ValueError):
            return [self.build(kind, payload) for payload in payloads]
        return [NewJob(queue=spec.queue, kind=kind, payload=payload, priority=spec.priority,
                       max_attempts=spec.max_attempts) for payload in payloads]

    def build(self, kind: str, payload: Any, *, priority: int | None = None, queue: str | None = None,
              run_at: datetime | None = None, delay: float | None = None, max_attempts: int | None = None,
              unique_key: str | None = None, owner_id: str | None = None) -> NewJob:
        """Validate everything about one job to enqueue; InvalidPayload lists every bad field."""
        spec = self.get(kind)
        priority = spec.priority if priority is None else priority
        max_attempts = spec.max_attempts if max_attempts is None else max_attempts
        queue = spec.queue if queue is None else queue
        errors = validate_options(priority, max_attempts, queue)
        if spec.payload_type is not Any:
            try:
                payload = msgspec.to_builtins(msgspec.convert(payload, spec.payload_type, strict=False))
            except msgspec.ValidationError as exc:
                errors += field_errors(exc)
        else:
            try:
                msgspec.json.encode(payload)
            except (TypeError, ValueError) as exc:
                errors.append({"field": "payload", "message": f"not JSON-serialisable: {exc}"})
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            errors.append({"field": "delay", "message": "must be a number of seconds >= 0"})
        if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
            errors.append({"field": "run_at", "message": "must be a timezone-aware datetime"})
        if unique_key is not None and (not isinstance(unique_key, str) or not 1 <= len(unique_key) <= 500):
            errors.append({"field": "unique_key", "message": "must be a string of 1-500 characters"})
        if errors:
            raise InvalidPayload(errors)
        return NewJob(queue=queue, kind=kind, payload=payload, priority=priority, run_at=run_at,
                      delay_seconds=float(delay or 0.0), max_attempts=max_attempts, unique_key=unique_key,
                      owner_id=owner_id)
