"""Waiting without sleeping blindly: poll a condition until a deadline, or fake the clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.02,
                   message: str = "condition") -> T:
    """Await `check()` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


def wait_for_sync(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.02,
                  message: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


class FakeTime:
    """A clock that only sleeping moves: `clock` (also `monotonic`, to stand in for the time
    module) and `sleep`, which records what it was asked and returns at once."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    monotonic = clock

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
