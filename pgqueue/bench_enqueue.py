"""Concurrent single enqueues, the way a busy web app makes them: P producers, each on its own
pooled autocommit connection, one job per request, against a raw one-row INSERT into
pgqueue.jobs with the wake-up trigger disabled (the ceiling) measured in the same run.

Rows (each the median of its rounds, with the spread):
- ``raw_no_trigger``: plain INSERT, trigger disabled;
- ``raw``: plain INSERT with the trigger, nobody idle (no NOTIFY is sent);
- ``library``: ``Queue.enqueue``, nobody idle;
- ``library_idle_worker``: ``Queue.enqueue`` while a worker listens on the queue, so every
  insert notifies (what a quiet system with waiting workers pays).
Used by `python -m pgqueue bench` (pgqueue/bench.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

TOTAL = 4000
PRODUCERS = (1, 8, 32)
ROUNDS = 3
QUEUE = "bench"

RAW_INSERT = "INSERT INTO pgqueue.jobs (queue, kind, payload) VALUES (%(queue)s, 'bench_noop', '{}')"
TRIGGER_OFF = "ALTER TABLE pgqueue.jobs DISABLE TRIGGER jobs_inserted_notify"
TRIGGER_ON = "ALTER TABLE pgqueue.jobs ENABLE TRIGGER jobs_inserted_notify"
EMPTY = "TRUNCATE pgqueue.jobs, pgqueue.events CASCADE"


async def _spread(total: int, producers: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """`total` calls of one(producer) split over `producers` concurrent tasks; calls per second."""
    per = total // producers

    async def produce(index: int) -> None:
        for _ in range(per):
            await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(produce(i) for i in range(producers)))
    return per * producers / (time.perf_counter() - started)


async def _raw(url: str, producers: int, total: int) -> float:
    from pgqueue.db import open_pool

    pool = await open_pool(url, min_size=producers, max_size=producers, name="pgqueue-bench", pooler="none")
    try:
        async def one(_index: int) -> None:
            async with pool.connection() as conn:
                await conn.execute(RAW_INSERT, {"queue": QUEUE})

        return await _spread(total, producers, one)
    finally:
        await pool.close()


async def _library(url: str, producers: int, total: int, idle_worker: bool = False) -> float:
    """``Queue.enqueue`` calls; with ``idle_worker``, while a worker's wake-up session listens on
    the queue (schema/0015), so that every insert notifies."""
    from pgqueue.bench import bench_jobs
    from pgqueue.db import connect
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=producers)
    session = await connect(url, application_name="pgqueue-bench-idle-worker") if idle_worker else None
    try:
        if session is not None and await queue.store.listen_for_inserts(session, [QUEUE]) != (True, True):
            raise RuntimeError("the bench's idle worker could not listen")
        await queue.pool.wait()
        return await _spread(total, producers, lambda _i: queue.enqueue("bench_noop", {}))
    finally:
        if session is not None:
            await session.close()
        await queue.close()


def measure(url: str, execute: Callable[..., Any], total: int = TOTAL, rounds: int = ROUNDS,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """{producers: {row: {median, min, max, samples}}} plus each row's ratio to the ceiling."""
    out: dict[str, Any] = {}
    for producers in PRODUCERS:
        samples: dict[str, list[float]] = {"raw_no_trigger": [], "raw": [], "library": [], "library_idle_worker": []}
        for _ in range(rounds):  # the variants take turns, so machine noise hits each alike
            execute(url, EMPTY)
            execute(url, TRIGGER_OFF)
            try:
                samples["raw_no_trigger"].append(asyncio.run(_raw(url, producers, total)))
            finally:
                execute(url, TRIGGER_ON)
            execute(url, EMPTY)
            samples["raw"].append(asyncio.run(_raw(url, producers, total)))
            execute(url, EMPTY)
            samples["library"].append(asyncio.run(_library(url, producers, total)))
            execute(url, EMPTY)
            samples["library_idle_worker"].append(asyncio.run(_library(url, producers, total, idle_worker=True)))
        rows: dict[str, dict[str, Any]] = {name: {"median": statistics.median(values), "min": min(values), "max": max(values),
                       "samples": values} for name, values in samples.items()}
        ceiling = rows["raw_no_trigger"]["median"]
        for row in rows.values():
            row["vs_raw_no_trigger"] = row["median"] / ceiling
        out[str(producers)] = rows
        say(f"    P={producers}: raw no trigger {ceiling:,.0f}/s, library {rows['library']['median']:,.0f}/s "
            f"({rows['library']['vs_raw_no_trigger']:.0%}), with an idle worker "
            f"{rows['library_idle_worker']['median']:,.0f}/s")
    execute(url, EMPTY)
    return out
