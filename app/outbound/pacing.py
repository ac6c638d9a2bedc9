"""Rate-limit pacing: read what a server says about its limit and space requests to run at it.

Headers read (first found wins, names case-insensitive):

- ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (GitHub, Twitter style);
- ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (IETF draft, separate fields);
- ``RateLimit: limit=L, remaining=R, reset=T`` (IETF draft, one field).

A Reset value is seconds from now, unless it is larger than 1e9 (an epoch in seconds) or 1e12
(an epoch in milliseconds); fractions are kept. ``Retry-After`` is seconds or an HTTP date.

The `Pacer` keeps one state per key (by default the URL's host): the remaining quota and when
the window resets. Each request takes a ticket (`acquire`), which reserves a slot: the window's
time left divided by the quota left, so requests are spread over the window instead of
bursting into a 429; with the quota spent it waits for the reset. Answers refresh the state
(`observe`), minus the requests still in flight that were sent after the one answered (so several
requests in flight do not overspend). A 429 blocks the key until its Retry-After (`block`):
nobody on that key sends during a penalty.
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC

import msgspec

EPOCH_SECONDS_THRESHOLD = 1e9
EPOCH_MILLIS_THRESHOLD = 1e12
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
_COMBINED_ITEM = re.compile(r"(limit|remaining|reset|r|t)\s*=\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


class RateLimitInfo(msgspec.Struct, frozen=True):
    limit: float | None
    remaining: float | None
    reset_after: float | None  # seconds from now


def _first_number(value: str | None) -> float | None:
    if value is None:
        return None
    match = _NUMBER.match(value)
    if match is None:
        return None
    number = float(match.group(1))
    return number if math.isfinite(number) else None


def reset_seconds(value: str | None, now_wall: float) -> float | None:
    """A Reset header as seconds from now: a delta, an epoch in s or ms, or an HTTP date."""
    if value is None:
        return None
    number = _first_number(value)
    if number is None:
        return parse_http_date(value, now_wall)
    if number > EPOCH_MILLIS_THRESHOLD:
        return max(0.0, number / 1000.0 - now_wall)
    if number > EPOCH_SECONDS_THRESHOLD:
        return max(0.0, number - now_wall)
    return max(0.0, number)


def parse_http_date(value: str, now_wall: float) -> float | None:
    """An HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``) as seconds from now, or None."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is in GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Retry-After in seconds from now (``120`` or ``Wed, 21 Oct 2015 07:28:00 GMT``), or None."""
    if value is None:
        return None
    now_wall = time.time() if now_wall is None else now_wall
    stripped = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        return float(stripped)
    return parse_http_date(stripped, now_wall)


def parse_rate_limit(headers: Mapping[str, str], now_wall: float | None = None) -> RateLimitInfo | None:
    """What the headers say about the rate limit, or None when they say nothing."""
    now_wall = time.time() if now_wall is None else now_wall
    lower = {k.lower(): v for k, v in headers.items()}
    for prefix in ("x-ratelimit-", "ratelimit-"):
        remaining = _first_number(lower.get(prefix + "remaining"))
        reset = lower.get(prefix + "reset")
        if reset is None and prefix == "x-ratelimit-":
            reset = lower.get("x-ratelimit-reset-after")
        if remaining is not None or reset is not None:
            return RateLimitInfo(limit=_first_number(lower.get(prefix + "limit")), remaining=remaining,
                                 reset_after=reset_seconds(reset, now_wall))
    combined = lower.get("ratelimit")
    if combined:
        fields = {k.lower(): float(v) for k, v in _COMBINED_ITEM.findall(combined)}
        remaining = fields.get("remaining", fields.get("r"))
        reset_value = fields.get("reset", fields.get("t"))
        if remaining is not None or reset_value is not None:
            return RateLimitInfo(limit=fields.get("limit"), remaining=remaining,
                                 reset_after=None if reset_value is None else reset_seconds(str(reset_value), now_wall))
    return None


class Ticket(msgspec.Struct):
    key: str
    seq: int
    waited: float  # seconds the pacer held this request back


class _KeyState:
    __slots__ = ("blocked_until", "inflight", "last_seen_seq", "limit", "next_at", "remaining", "reset_at", "seq")

    def __init__(self) -> None:
        self.limit: float | None = None
        self.remaining: float | None = None
        self.reset_at: float | None = None  # monotonic
        self.next_at = 0.0
        self.blocked_until = 0.0
        self.seq = 0
        self.last_seen_seq = 0
        self.inflight: set[int] = set()


class PacerDeadline(Exception):
    """The pacer would hold the request past its deadline."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the rate limit allows the next request in {wait:.3f} s, past the request's deadline")
        self.wait = wait


class Pacer:
    """Spaces requests per key by the server's rate-limit headers (thread-safe; share one per API).

    ``max_rate`` (requests/s) is a client-side ceiling on top of what the server announces.
    """

    def __init__(self, *, max_rate: float | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None) -> None:
        if max_rate is not None and not (max_rate > 0 and math.isfinite(max_rate)):
            raise ValueError("max_rate must be a positive number of requests per second")
        self.max_rate = max_rate
        self._clock = clock
        self._wall = wall
        self._fake_sleep = sleep  # tests: a fake clock's sleep, so pacing is checked without waiting
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def acquire(self, key: str, deadline: float | None = None, cancel: threading.Event | None = None) -> Ticket:
        """Wait for this key's next slot (``deadline`` on the monotonic clock) and take it."""
        waited = 0.0
        with self._lock:
            while True:
                state = self._state(key)
                now = self._clock()
                if state.reset_at is not None and now >= state.reset_at:
                    # the window is over: the quota is whole again (or unknown until the next answer)
                    state.remaining = state.limit
                    state.reset_at = None
                hold = state.blocked_until
                if state.remaining is not None and state.remaining < 1:
                    # quota spent: wait for the reset (or, told nothing of one, probe in a second)
                    hold = max(hold, state.reset_at if state.reset_at is not None else now + 1.0)
                    if state.reset_at is None:
                        state.reset_at = now + 1.0
                if hold > now:
                    self._wait_locked(hold - now, now, deadline, cancel)
                    waited += self._clock() - now
                    continue
                slot = max(now, state.next_at)
                spacing = 0.0
                if state.remaining is not None and state.reset_at is not None:
                    spacing = max(0.0, state.reset_at - slot) / max(state.remaining, 1.0)
                if self.max_rate is not None:
                    spacing = max(spacing, 1.0 / self.max_rate)
                if deadline is not None and slot > deadline:
                    raise PacerDeadline(slot - now)
                state.next_at = slot + spacing
                if state.remaining is not None:
                    state.remaining -= 1
                state.seq += 1
                state.inflight.add(state.seq)
                ticket = Ticket(key=key, seq=state.seq, waited=waited)
                break
        delay = slot - self._clock()
        if delay > 0:
            self._sleep(delay, cancel)
            ticket.waited += delay
        return ticket

    def _wait_locked(self, seconds: float, now: float, deadline: float | None, cancel: threading.Event | None) -> None:
        if deadline is not None and now + seconds > deadline:
            raise PacerDeadline(seconds)
        if cancel is not None and cancel.is_set():
            raise PacerDeadline(seconds)
        if self._fake_sleep is not None:
            self._fake_sleep(seconds)
            return
        # woken early by observe()/block() so a waiter sees fresh state; at most 0.25 s so a cancel is seen
        self._wake.wait(min(seconds, 0.25))

    def _sleep(self, seconds: float, cancel: threading.Event | None) -> None:
        if self._fake_sleep is not None:
            self._fake_sleep(seconds)
        elif cancel is not None:
            cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def observe(self, ticket: Ticket, headers: Mapping[str, str] | None) -> None:
        """The answer to ``ticket``'s request (None: no answer, e.g. a dropped connection)."""
        info = None if headers is None else parse_rate_limit(headers, self._wall())
        with self._lock:
            state = self._state(ticket.key)
            state.inflight.discard(ticket.seq)
            if info is None or ticket.seq < state.last_seen_seq:
                return  # nothing said, or older news than what we know
            state.last_seen_seq = ticket.seq
            later_in_flight = sum(1 for seq in state.inflight if seq > ticket.seq)
            now = self._clock()
            if info.limit is not None:
                state.limit = info.limit
            if info.remaining is not None:
                state.remaining = max(0.0, info.remaining - later_in_flight)
            if info.reset_after is not None:
                state.reset_at = now + info.reset_after
                # a new window: spacing restarts from its own quota, not the old window's slots
                state.next_at = min(state.next_at, now + info.reset_after)
            self._wake.notify_all()

    def block(self, key: str, seconds: float) -> None:
        """Nobody sends on ``key`` for ``seconds`` (a 429's Retry-After): no penalty for hammering."""
        with self._lock:
            state = self._state(key)
            state.blocked_until = max(state.blocked_until, self._clock() + max(0.0, seconds))
            state.remaining = 0.0 if state.remaining is not None else None
            if state.remaining == 0.0:
                state.reset_at = state.blocked_until
            self._wake.notify_all()

    def snapshot(self, key: str) -> dict[str, float | None]:
        with self._lock:
            state = self._state(key)
            return {"limit": state.limit, "remaining": state.remaining,
                    "reset_in": None if state.reset_at is None else state.reset_at - self._clock()}
