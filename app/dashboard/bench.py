"""How long the overview's statements take with a large jobs table.

    python -m app.dashboard.bench [--jobs 1000000] [--output dashboard-bench.json]

Starts an embedded PostgreSQL (or uses PGQUEUE_DATABASE_URL: it must be a database you can fill
and throw away), migrates it, inserts --jobs jobs spread over 7 days (90 % succeeded, 5 %
queued, 2 % failed, 1 % dead, 1.5 % cancelled, 0.5 % running, three queues) with a `failed`
event per failed attempt, ANALYZEs, then runs each overview section 3 times (after one warm-up)
and prints the median and spread of each statement in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from datetime import UTC, datetime
from typing import Any

FILL = """
INSERT INTO pgqueue.jobs (queue, kind, status, priority, run_at, created_at, started_at, finished_at, attempts,
                          lease_owner, lease_token, lease_expires_at)
SELECT q.queue, 'noop', q.status, 3, q.created + interval '1 second', q.created,
       CASE WHEN q.status <> 'queued' THEN q.created + interval '2 seconds' END,
       CASE WHEN q.status IN ('succeeded', 'dead', 'cancelled') THEN q.created + interval '3 seconds' END,
       CASE WHEN q.status = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN q.status = 'running' THEN 'bench' END,
       CASE WHEN q.status = 'running' THEN gen_random_uuid() END,
       CASE WHEN q.status = 'running' THEN now() + interval '1 hour' END
FROM (SELECT (ARRAY['default', 'mail', 'reports'])[1 + g %% 3] AS queue,
             CASE WHEN g %% 200 < 180 THEN 'succeeded' WHEN g %% 200 < 190 THEN 'queued'
                  WHEN g %% 200 < 194 THEN 'failed' WHEN g %% 200 < 196 THEN 'dead'
                  WHEN g %% 200 < 199 THEN 'cancelled' ELSE 'running' END AS status,
             now() - make_interval(secs => (%(jobs)s - g) * (7 * 86400.0 / %(jobs)s)) AS created
      FROM generate_series(1, %(jobs)s) AS g) AS q
"""
EVENTS = """
INSERT INTO pgqueue.events (job_id, type, data, created_at)
SELECT id, 'failed', '{}', started_at + interval '1 second' FROM pgqueue.jobs WHERE status IN ('failed', 'dead')
"""


async def measure(url: str, jobs: int) -> dict[str, Any]:
    from app.dashboard import api as dashboard
    from pgqueue.db import connect_sync
    from pgqueue.queue import Queue

    with connect_sync(url) as conn:
        conn.autocommit = True
        if conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()[0] == 0:  # type: ignore[index]
            conn.execute(FILL, {"jobs": jobs})
            conn.execute(EVENTS)
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
        conn.execute("VACUUM ANALYZE pgqueue.events")
        total = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()[0]  # type: ignore[index]
    rounds: dict[str, list[float]] = {}
    async with await Queue.connect(url, max_size=2) as queue:
        for round_no in range(4):
            sections = dashboard._Sections(queue.pool)
            cache = dashboard.HourCache()
            await dashboard.status_counts(sections)
            await sections.rows("per_minute", "finished_per_minute", {"owner_id": None})
            await dashboard.per_hour(sections, cache, datetime.now(UTC))  # a first call: HOURS_PER_CALL hours + this one
            await sections.rows("queues", "queue_table", {"cap": dashboard.QUEUE_SCAN_CAP})
            await sections.rows("queues", "queue_settings", {})
            await sections.rows("depth", "depth_over_time", {"cap": dashboard.DEPTH_SCAN_CAP})
            await sections.rows("workers", "workers", {})
            if round_no == 0:
                continue  # warm-up
            for name, ms in sections.timings_ms.items():
                rounds.setdefault(name, []).append(ms)
            assert not sections.unavailable, sections.unavailable
    return {"jobs": total, "statement_ms": {
        name: {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for name, values in rounds.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m app.dashboard.bench")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--output", default="dashboard-bench.json")
    args = parser.parse_args()
    from pgqueue.embedded import EmbeddedPostgres
    from pgqueue.migrate import migrate

    url = os.environ.get("PGQUEUE_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="pgqueue-dashboard-bench-") as data:
        server = None if url else EmbeddedPostgres(os.path.join(data, "pg"))
        try:
            if server is not None:
                url = server.start()
            assert url is not None
            migrate(url)
            result = asyncio.run(measure(url, args.jobs))
        finally:
            if server is not None:
                server.destroy()
    print(json.dumps(result, indent=2))
    with open(args.output, "w") as out:
        json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
