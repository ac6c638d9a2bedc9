"""Fire-time accuracy of periodic jobs: how late a job of a once-a-second schedule starts, as
``job started_at - fire_at`` (both on the server's clock, from pgqueue.schedule_fires joined to
pgqueue.jobs), split into the scheduler's part (fire_at -> the job row's created_at) and the
claim's part (created_at -> started_at).

Each round starts a fresh ``python -m pgqueue worker`` process (its scheduler and its fetch loop,
as a user runs them), waits until it is ready, and takes the next FIRES fire times after that
(the fire a starting worker catches up is not counted). Rows are the median over rounds of each
round's p50 and p99, with their range. Used by `python -m pgqueue bench` (pgqueue/bench.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEDULE = "bench-periodic"
EXPRESSION = "* * * * * *"  # every second (the optional seconds field)
FIRES = (20, 5)  # per round: (full, quick)
ROUNDS = (3, 1)

BENCH_NOW = "SELECT now()"
BENCH_DROP_SCHEDULE = "DELETE FROM pgqueue.schedules WHERE name = %(name)s"
# One row per fire time after the worker was ready, once its job has started (running or done).
BENCH_FIRE_LATENESS = """
SELECT f.fire_at,
       extract(epoch FROM j.started_at - f.fire_at)::float8 * 1000,
       extract(epoch FROM j.created_at - f.fire_at)::float8 * 1000,
       extract(epoch FROM j.started_at - j.created_at)::float8 * 1000
FROM pgqueue.schedule_fires AS f
JOIN pgqueue.schedules AS s ON s.id = f.schedule_id
JOIN pgqueue.jobs AS j ON j.id = f.job_id
WHERE s.name = %(name)s AND f.fire_at > %(after)s AND j.started_at IS NOT NULL
ORDER BY f.fire_at
LIMIT %(fires)s
"""


async def _add_schedule(url: str) -> None:
    from pgqueue.bench import bench_jobs
    from pgqueue.queue import Queue

    queue = await Queue.connect(url, bench_jobs, max_size=1)
    try:
        await queue.schedules.add(SCHEDULE, EXPRESSION, "bench_noop", {}, catch_up="skip")
    finally:
        await queue.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    from pgqueue.bench import percentile

    return {"p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99), "max_ms": max(values)}


def one_round(url: str, fires: int, log_dir: Path, execute: Callable[..., list[tuple[Any, ...]]],
              say: Callable[[str], None], label: str) -> dict[str, Any]:
    from pgqueue.bench import BenchError, WorkerProcesses, reset_engine

    reset_engine(url)
    execute(url, BENCH_DROP_SCHEDULE, {"name": SCHEDULE})
    asyncio.run(_add_schedule(url))
    try:
        with WorkerProcesses(url, 1, log_dir) as workers:
            workers.wait_ready()
            after: datetime = execute(url, BENCH_NOW)[0][0]
            deadline = time.monotonic() + fires + 30
            rows: list[tuple[Any, ...]] = []
            while len(rows) < fires:
                workers.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{label}: only {len(rows)}/{fires} fires started in {fires + 30}s")
                time.sleep(0.5)
                rows = execute(url, BENCH_FIRE_LATENESS, {"name": SCHEDULE, "after": after, "fires": fires})
    finally:
        execute(url, BENCH_DROP_SCHEDULE, {"name": SCHEDULE})
    span = (rows[-1][0] - rows[0][0]).total_seconds()
    result = {
        "fires": len(rows),
        # a once-a-second schedule: fire times 1 s apart, none skipped
        "fire_times_missed": round(span) + 1 - len(rows),
        "start_after_fire": _percentiles([row[1] for row in rows]),
        "job_row_after_fire": _percentiles([row[2] for row in rows]),
        "start_after_job_row": _percentiles([row[3] for row in rows]),
    }
    say(f"    {label}: job start - fire time p50 {result['start_after_fire']['p50_ms']:.1f} ms, "
        f"p99 {result['start_after_fire']['p99_ms']:.1f} ms ({len(rows)} fires)")
    return result


def measure(url: str, log_dir: Path, *, execute: Callable[..., list[tuple[Any, ...]]], say: Callable[[str], None],
            quick: bool = False) -> dict[str, Any]:
    size = 1 if quick else 0
    fires, rounds = FIRES[size], ROUNDS[size]
    samples = [one_round(url, fires, log_dir, execute, say, f"periodic, round {index + 1}/{rounds}")
               for index in range(rounds)]
    summary: dict[str, Any] = {"expression": EXPRESSION, "fires_per_round": fires, "rounds": rounds,
                               "fire_times_missed": sum(s["fire_times_missed"] for s in samples)}
    for part in ("start_after_fire", "job_row_after_fire", "start_after_job_row"):
        for stat in ("p50_ms", "p99_ms"):
            values = [s[part][stat] for s in samples]
            summary[f"{part}_{stat}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    summary["samples"] = samples
    return summary


def render_rows(periodic: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def row(label: str, key: str) -> tuple[str, str, str, str]:
        value = periodic[key]
        return (label, f"{value['median']:>12.1f} ms", f"median of rounds, range {value['min']:.1f}-{value['max']:.1f}",
                "")

    return [
        row("  periodic: job start - fire time p50", "start_after_fire_p50_ms"),
        row(f"  periodic: job start - fire time p99 ({periodic['fires_per_round']} fires/round)",
            "start_after_fire_p99_ms"),
        row("    scheduler part (fire time -> job row) p50", "job_row_after_fire_p50_ms"),
        row("    claim part (job row -> start) p50", "start_after_job_row_p50_ms"),
        (f"  periodic: fire times missed ({periodic['rounds']} round(s), once a second)",
         f"{periodic['fire_times_missed']:>12d}", "", ""),
    ]
