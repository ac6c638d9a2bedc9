"""Queue flow control as data: a queue's state and limits (`QueueInfo`), rate parsing (`10/s`,
`600/1m`) and the validation shared by both backends, the CLI and the REST layer.

The limits themselves are enforced in the claim (pgqueue.claim, schema/0013.claim-function.sql)
and, for the in-memory backend, in MemoryQueue.claim. Imports nothing of ours but errors.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import msgspec

from pgqueue.errors import InvalidQueueSettings

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_CONCURRENCY_LIMIT = 100_000
MAX_RATE_LIMIT = 1_000_000_000
MIN_RATE_PERIOD, MAX_RATE_PERIOD = 0.001, 366 * 86400.0  # seconds (the CHECKs of schema/0008)

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(?P<limit>\d{1,10})\s*/\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$")


class _Unchanged:
    """The default of set_queue_limits' arguments: leave that limit as it is."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


class Rate(msgspec.Struct, frozen=True):
    """At most ``limit`` job starts per ``period`` seconds (a token bucket: see the README)."""

    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.limit}/{_format_period(self.period)}"


class QueueInfo(msgspec.Struct, kw_only=True):
    """A queue's state, limits and job counts (one row of pgqueue.queue_status)."""

    name: str
    state: str  # active or paused
    paused: bool = False
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None  # seconds
    key_concurrency_limit: int | None = None
    key_rate_limit: int | None = None
    key_rate_period: float | None = None
    queued: int = 0  # runnable now
    scheduled: int = 0  # queued or retrying, runnable later
    running: int = 0
    running_keys: int = 0  # distinct concurrency keys among the running jobs
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def rate(self) -> Rate | None:
        return None if self.rate_limit is None or self.rate_period is None else Rate(self.rate_limit, self.rate_period)

    @property
    def key_rate(self) -> Rate | None:
        if self.key_rate_limit is None or self.key_rate_period is None:
            return None
        return Rate(self.key_rate_limit, self.key_rate_period)


def unlimited(name: str) -> QueueInfo:
    """The state of a queue nobody paused or limited."""
    return QueueInfo(name=name, state="active")


def _format_period(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            count = int(seconds / size)
            return unit if count == 1 else f"{count}{unit}"
    return f"{seconds:g}s"


def parse_rate(text: str, field: str = "rate") -> Rate:
    """``N/PERIOD``: ``10/s``, ``600/1m``, ``5/30s``, ``1000/hour``, ``2/500ms``."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = match and (_UNITS.get(match.group("unit")) or _UNITS.get(match.group("unit").removesuffix("s")))
    if match is None or unit is None:
        raise InvalidQueueSettings([{"field": field, "message": f"{text!r} is not N/PERIOD (such as 10/s, 600/1m, "
                                                                 "5/30s, 1000/hour)"}])
    period = float(match.group("count") or 1) * unit
    return check_rate(Rate(int(match.group("limit")), period), field)


def check_queue_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise InvalidQueueSettings([{"field": field, "message": "a queue name is 1-100 characters of letters, "
                                                                "digits, _ . : -"}])
    return name


def check_concurrency_limit(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY_LIMIT:
        raise InvalidQueueSettings([{"field": field, "message": f"must be an integer from 1 to "
                                                                f"{MAX_CONCURRENCY_LIMIT} (or none)"}])
    return value


def check_rate(value: Any, field: str) -> Rate:
    limit, period = (value.limit, value.period) if isinstance(value, Rate) else (None, None)
    if isinstance(value, tuple) and len(value) == 2:
        limit, period = value
    errors = []
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RATE_LIMIT:
        errors.append({"field": field, "message": f"the number of starts must be an integer from 1 to {MAX_RATE_LIMIT}"})
    if (isinstance(period, bool) or not isinstance(period, int | float) or not math.isfinite(period)
            or not MIN_RATE_PERIOD <= period <= MAX_RATE_PERIOD):
        errors.append({"field": field, "message": f"the period must be {MIN_RATE_PERIOD:g} s to 366 days"})
    if errors:
        raise InvalidQueueSettings(errors)
    return Rate(int(limit), float(period))  # type: ignore[arg-type]


def limit_params(concurrency: Any, rate: Any, key_concurrency: Any, key_rate: Any) -> dict[str, Any]:
    """set_queue_limits' statement parameters: each limit UNCHANGED, None (removed) or a value
    (a rate as a Rate, an (N, seconds) pair or an ``N/PERIOD`` string). Checks everything first."""
    params: dict[str, Any] = {}
    for name, value in (("concurrency_limit", concurrency), ("key_concurrency_limit", key_concurrency)):
        params[f"set_{name}"] = value is not UNCHANGED
        params[name] = None if value is UNCHANGED else check_concurrency_limit(value, name)
    for name, value in (("rate", rate), ("key_rate", key_rate)):
        params[f"set_{name}"] = value is not UNCHANGED
        checked = None
        if value is not UNCHANGED and value is not None:
            checked = parse_rate(value, name) if isinstance(value, str) else check_rate(value, name)
        params[f"{name}_limit"] = checked.limit if checked else None
        params[f"{name}_period"] = checked.period if checked else None
    return params
