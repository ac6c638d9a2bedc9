"""Waiting for a job to finish: `await queue.wait(job_id, timeout=...)` and its sync twin.

One `LISTEN pgqueue_events` connection per Queue (an app or a script has one Queue per
process) serves every waiter of that process: the events trigger announces each event as a line
"event_id job_id type", and a terminal one (succeeded, dead, cancelled, deleted) of a job
somebody waits for wakes its waiters, which then read the job once. No polling loop: only a
slow re-check (every `RECHECK_SECONDS`) in case a notification was lost with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from pgqueue.db import CONNECTION_ERRORS, AsyncConnection, connect, connect_sync
from pgqueue.errors import JobNotFound, WaitTimeout
from pgqueue.models import FINISHED_STATUSES, TERMINAL_EVENTS, Job
from pgqueue.store import Store, get_job_sync, listen_sync, notifies_sync

log = logging.getLogger("pgqueue.waiter")

EVENTS_CHANNEL: Final = "pgqueue_events"
WAITER_APPLICATION_NAME: Final = "pgqueue-waiter"
RECHECK_SECONDS = 5.0


def terminal_job_ids(payload: str) -> set[int]:
    """The jobs a pgqueue_events notification says have finished (or were deleted)."""
    ids = set()
    for line in payload.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[2] in TERMINAL_EVENTS and parts[1].isdigit():
            ids.add(int(parts[1]))
    return ids


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError("timeout must be a number of seconds >= 0")
    return float(timeout)


class WaiterHub:
    """The waiters of one process and the LISTEN connection that wakes them (started on first use)."""

    def __init__(self, url: str, store: Store, *, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.url = url
        self.store = store
        self.recheck_seconds = recheck_seconds
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening: asyncio.Event | None = None

    async def wait(self, job_id: int, timeout: float) -> Job:
        """The job once it succeeded, went dead or was cancelled; WaitTimeout after ``timeout`` s."""
        timeout = _check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            listening = self._start()
            if not listening.is_set():  # read the job only once a notification cannot be missed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listening.wait(), max(deadline - loop.time(), 0))
            while True:
                woken.clear()
                job = await self.store.get_job(job_id)
                if job is None:
                    raise JobNotFound(job_id)
                if job.status in FINISHED_STATUSES:
                    return job
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(job_id, timeout, job.status)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self.recheck_seconds))
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[job_id]

    @property
    def waiting(self) -> int:
        """How many waits are in progress (for tests and metrics)."""
        return sum(len(events) for events in self._waiters.values())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start(self) -> asyncio.Event:
        if self._listening is None:
            self._listening = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen_loop(self._listening), name="pgqueue-waiter")
        return self._listening

    def _wake(self, job_ids: set[int] | None = None) -> None:
        for job_id, events in self._waiters.items():
            if job_ids is None or job_id in job_ids:
                for event in events:
                    event.set()

    async def _listen_loop(self, listening: asyncio.Event) -> None:
        delay = 0.5
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await connect(self.url, application_name=WAITER_APPLICATION_NAME)
                await self.store.listen(conn, EVENTS_CHANNEL)
                listening.set()
                self._wake()  # a job may have finished while we were not listening
                delay = 0.5
                while True:
                    async for note in conn.notifies(timeout=30):
                        if self._waiters and (finished := terminal_job_ids(note.payload)):
                            self._wake(finished)
                    await conn.execute("SELECT 1")  # quiet for a while: make sure the connection still lives
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                listening.clear()
                log.warning("waiter LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()


def wait_sync(url: str, job_id: int, timeout: float, *, recheck_seconds: float = RECHECK_SECONDS) -> Job:
    """`WaiterHub.wait` for synchronous code: one connection of its own, LISTENing for the wait."""
    timeout = _check_timeout(timeout)
    deadline = time.monotonic() + timeout
    with connect_sync(url, autocommit=True) as conn:
        listen_sync(conn, EVENTS_CHANNEL)
        while True:
            job = get_job_sync(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status in FINISHED_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(job_id, timeout, job.status)
            for payload in notifies_sync(conn, min(remaining, recheck_seconds)):
                if job_id in terminal_job_ids(payload):
                    break
