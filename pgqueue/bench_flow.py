"""The flow-control rows of `python -m pgqueue bench`: the drain by one fresh worker process with
a queue limit that is never reached, against the plain drain by the same process in the same
run, taking turns, median and spread of the rounds (README "Queues").

Scenarios: plain; a concurrency limit of 100,000 on the queue; a rate limit of 10^9 starts per
second; 1,000 distinct concurrency keys under a per-key limit of 1,000. Each claim then goes
through pgqueue.claim's limited path (the queue lock, its slots, its buckets, or both per key).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgqueue.limits import Rate

SCENARIOS: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("plain", {}, 0),
    ("concurrency_limit", {"concurrency": 100_000}, 0),
    ("rate_limit", {"rate": Rate(1_000_000_000, 1.0)}, 0),
    ("keys_1000", {"key_concurrency": 1000}, 1000),
)
ROUNDS = 3
TARGET = 0.8  # of the plain drain

BENCH_RESET_QUEUES = "TRUNCATE pgqueue.queues, pgqueue.rate_buckets"
BENCH_ANALYZE = "ANALYZE pgqueue.jobs"
BENCH_DRAIN = """
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8, count(DISTINCT started_at)
FROM pgqueue.jobs WHERE kind = 'bench_noop' AND status = 'succeeded'
"""


async def _prepare(url: str, queue_name: str, count: int, limits: dict[str, Any], keys: int) -> None:
    """Limits first, then every job in one commit (COPY), with fresh statistics."""
    from pgqueue.bench import bench_jobs
    from pgqueue.db import connect
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    conn = await connect(url, autocommit=False, application_name="pgqueue-bench")
    try:
        if limits:
            await queue.set_queue_limits(queue_name, **limits)
        items: list[Any] = ([("bench_noop", {}, {"concurrency_key": f"tenant-{n % keys}"}) for n in range(count)]
                            if keys else [("bench_noop", {})] * count)
        await queue.enqueue_many(items, conn=conn)
        await conn.execute(BENCH_ANALYZE)
        await conn.commit()
    finally:
        await conn.close()
        await queue.close()


def measure(url: str, count: int, log_dir: Path, *, execute: Callable[..., list[tuple[Any, ...]]],
            say: Callable[[str], None], rounds: int = ROUNDS) -> dict[str, Any]:
    from pgqueue.bench import BENCH_QUEUE, WorkerProcesses, reset_engine, wait_for_jobs

    rates: dict[str, list[float]] = {name: [] for name, _, _ in SCENARIOS}
    claims: dict[str, list[float]] = {name: [] for name, _, _ in SCENARIOS}
    with WorkerProcesses(url, 1, log_dir) as workers:
        workers.wait_ready()
        for index in range(rounds):
            for name, limits, keys in SCENARIOS:
                reset_engine(url)
                execute(url, BENCH_RESET_QUEUES)
                asyncio.run(_prepare(url, BENCH_QUEUE, count, limits, keys))
                wait_for_jobs(url, workers, "bench_noop", count, f"{name}, round {index + 1}/{rounds}",
                              timeout=max(60.0, count / 100))
                done, seconds, claim_count = execute(url, BENCH_DRAIN)[0]
                rates[name].append(done / seconds)
                claims[name].append(done / claim_count)
                say(f"    {name}, round {index + 1}/{rounds}: {done / seconds:,.0f} jobs/s")
                time.sleep(0.2)  # let the worker go idle before the next commit of jobs
        execute(url, BENCH_RESET_QUEUES)
    plain = statistics.median(rates["plain"])
    out: dict[str, Any] = {"jobs": count, "rounds": rounds, "worker_processes": 1}
    for name, limits, keys in SCENARIOS:
        median = statistics.median(rates[name])
        out[name] = {"jobs_per_s_median": median, "jobs_per_s_min": min(rates[name]),
                     "jobs_per_s_max": max(rates[name]), "samples_jobs_per_s": rates[name],
                     "jobs_per_claim_median": statistics.median(claims[name]),
                     "limits": {key: str(value) for key, value in limits.items()}, "keys": keys,
                     "vs_plain": median / plain, "pass": name == "plain" or median / plain >= TARGET}
    return out


def render_rows(flow: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    labels = {"plain": "drain, 1 worker, no limits (flow-control baseline)",
              "concurrency_limit": "  ... concurrency limit 100,000 (never reached)",
              "rate_limit": "  ... rate limit 10^9/s (never reached)",
              "keys_1000": "  ... 1,000 concurrency keys, 1,000 per key"}
    rows = []
    for name, label in labels.items():
        row = flow[name]
        spread = f"{row['jobs_per_s_min']:,.0f}-{row['jobs_per_s_max']:,.0f}"
        if name == "plain":
            rows.append((f"  {label}", f"{row['jobs_per_s_median']:>12,.0f} jobs/s", f"median, range {spread}", ""))
        else:
            rows.append((f"  {label}", f"{row['jobs_per_s_median']:>12,.0f} jobs/s",
                         f"{row['vs_plain']:.0%} of the baseline, range {spread}",
                         f">= {TARGET:g}   {'PASS' if row['pass'] else 'MISS'}"))
    return rows
