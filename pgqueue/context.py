"""What a handler receives besides its payload: the job, progress and log helpers,
checkpoints, a transaction bound to the job's lease, and the cancellation signal; and
`run_handler`, which runs one job's handler and names its outcome (worker and memory backend)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import traceback
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from pgqueue.errors import JobCancelled, LeaseLost, PermanentFailure, RetryAfter, UnknownKind
from pgqueue.models import Job

if TYPE_CHECKING:
    from pgqueue.queue import QueueBackend

T = TypeVar("T")

# Pending log lines kept per job between two flushes; past this, lines are counted as dropped.
MAX_PENDING_LOG_LINES = 1000

# A JSON \u0000 escape (not an escaped backslash followed by "u0000"): jsonb cannot store it.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _no_nul(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL characters: one in a log line, progress message
    or error would make every write of the batch it sits in fail, again and again."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class EventBuffer:
    """Progress and log events waiting to be written, coalesced so a chatty job cannot flood.

    Progress updates inside the same 10% band replace each other (the newest wins), so every
    band a job passes through (10%, 20%, ... 100%) is still reported; log lines are kept.
    Thread-safe: sync handlers call it from worker threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str, dict[str, Any]]] = []
        self._dropped: dict[int, int] = {}
        self._log_counts: dict[int, int] = {}

    def progress(self, job_id: int, percent: float, message: str | None) -> None:
        data = {"percent": round(percent, 2), "message": None if message is None else _no_nul(str(message))}
        band = int(percent // 10)
        with self._lock:
            for index in range(len(self._pending) - 1, -1, -1):
                pending_id, kind, old = self._pending[index]
                if pending_id == job_id and kind == "progress":
                    if int(old["percent"] // 10) == band:
                        self._pending[index] = (job_id, "progress", data)
                        return
                    break
            self._pending.append((job_id, "progress", data))

    def log(self, job_id: int, line: str, level: str) -> None:
        with self._lock:
            count = self._log_counts.get(job_id, 0)
            if count >= MAX_PENDING_LOG_LINES:
                self._dropped[job_id] = self._dropped.get(job_id, 0) + 1
                return
            self._log_counts[job_id] = count + 1
            self._pending.append((job_id, "log", {"line": _no_nul(line[:4000]), "level": _no_nul(str(level))}))

    def take(self) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            pending, self._pending = self._pending, []
            for job_id, dropped in self._dropped.items():
                pending.append((job_id, "log", {"line": f"[{dropped} log lines dropped: too many too fast]",
                                                "level": "warning"}))
            self._dropped.clear()
            self._log_counts.clear()
            return pending

    def put_back(self, events: list[tuple[int, str, dict[str, Any]]]) -> None:
        with self._lock:
            self._pending[:0] = events


_CANCEL_EVENT_LOCK = threading.Lock()


class JobContext:
    def __init__(self, job: Job, queue: QueueBackend, events: EventBuffer, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self.queue = queue
        self._cancelled: threading.Event | None = None
        self.lease_lost = False
        # set by run_handler when the handler raised RetryAfter: the delay its failure asks for
        self.retry_delay: float | None = None
        self._events = events
        self._loop = loop

    @property
    def cancelled(self) -> threading.Event:
        """Set when cancellation was requested or the lease was lost (made on first use: most jobs
        never look, and a threading.Event costs as much as the rest of starting a job)."""
        event = self._cancelled
        if event is None:
            with _CANCEL_EVENT_LOCK:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    @property
    def attempt(self) -> int:
        return self.job.attempts

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100); written and announced within ~100 ms, coalesced."""
        self._events.progress(self.job.id, max(0.0, min(100.0, float(percent))), message)

    def log(self, line: str, level: str = "info") -> None:
        """A log line for this job, streamed live to anyone watching it."""
        self._events.log(self.job.id, str(line), level)

    def raise_if_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise LeaseLost(self.job.id) if self.lease_lost else JobCancelled(f"job {self.job.id} was cancelled")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pooled connection in a transaction that commits only while this job's lease is held.

        Write your own rows and ``save_checkpoint(..., conn=conn)`` inside it: both commit or neither.
        (The in-memory backend checks the lease and yields None: there is no connection to write on.)
        """
        assert self.job.lease_token is not None
        try:
            async with self.queue.lease_transaction(self.job.id, self.job.lease_token) as conn:
                yield conn
        except LeaseLost as exc:
            if exc.job_id == self.job.id:
                self.lease_lost = True
                self.cancelled.set()
            raise

    async def load_checkpoint(self) -> Any:
        """The state saved by an earlier attempt of this job (None on a first run)."""
        return await self.queue.load_checkpoint(self.job.id)

    async def save_checkpoint(self, state: Any, conn: Any = None) -> None:
        """Remember where the handler got to, in ``conn``'s transaction (from ``ctx.transaction()``)
        so the checkpoint commits together with the work it covers."""
        assert self.job.lease_token is not None
        await self.queue.save_checkpoint(self.job.id, self.job.lease_token, state, conn)

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """From a sync handler (a worker thread): run one of the async helpers on the worker's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def run_handler(ctx: JobContext, executor: Executor | None = None) -> tuple[str, Any]:
    """Run the job's handler (async on this loop, sync in ``executor``) and say how it ended.

    Returns ("succeeded", result), ("failed", traceback), ("dead", reason), ("cancelled", None)
    or ("lease_lost", None); a RetryAfter is ("failed", its message) with ``ctx.retry_delay`` set. Shared by the worker and the in-memory backend so both map a
    handler's ending the same way. An asyncio cancellation of the caller propagates.
    """
    job = ctx.job
    try:
        spec = ctx.queue.registry.get(job.kind)
        if spec.handler is None:
            raise UnknownKind(job.kind)
        payload = spec.decode_payload(job.payload)
        if spec.is_async:
            result = await spec.handler(ctx, payload)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(executor, functools.partial(spec.handler, ctx, payload))
    except asyncio.CancelledError:
        raise
    except JobCancelled:
        return settle_outcome(ctx, "cancelled", None)
    except LeaseLost:
        return "lease_lost", None
    except (PermanentFailure, UnknownKind, msgspec.ValidationError) as exc:
        return settle_outcome(ctx, "dead", f"{type(exc).__name__}: {exc}")
    except RetryAfter as exc:
        ctx.retry_delay = exc.seconds  # the worker retries after this, not after the kind's backoff
        return settle_outcome(ctx, "failed", f"RetryAfter: {exc}")
    except Exception:
        return settle_outcome(ctx, "failed", traceback.format_exc(limit=20)[-8000:])
    return settle_outcome(ctx, "succeeded", result)


def settle_outcome(ctx: JobContext, outcome: str, value: Any) -> tuple[str, Any]:
    """The outcome to record: a lost lease overrides everything (the job is someone else's now),
    a result that cannot be stored as JSON kills the job (retrying would not help), and a
    JobCancelled nobody asked for is an ordinary failure."""
    if ctx.lease_lost:
        return "lease_lost", None
    if outcome == "succeeded":
        try:
            encoded = msgspec.json.encode(value)
        except (TypeError, ValueError) as exc:
            return "dead", f"handler result is not JSON-serialisable: {exc}"
        if _JSON_NUL.search(encoded):
            return "dead", "handler result holds a NUL character (\\u0000), which PostgreSQL cannot store"
    elif isinstance(value, str):
        value = _no_nul(value)
    if outcome == "cancelled" and not ctx.cancelled.is_set():
        return "failed", "JobCancelled raised without a cancellation request"
    return outcome, value
