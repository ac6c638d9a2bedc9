"""How long the overview's statements take with a large jobs table.

    python -m app.dashboard.bench [--jobs 1000000] [--output dashboard-bench.json]

Starts an embedded PostgreSQL (or uses PGQUEUE_DATABASE_URL: it must be a database you can fill
and throw away), migrates it, inserts --jobs jobs spread over 7 days (90 % succeeded, 5 %
queued, 2 % failed, 1 % dead, 1.5 % cancelled, 0.5 % running, three queues) with a `failed`
event per failed attempt, ANALYZEs, then runs each overview section 3 times (after one warm-up)
and prints the median and spread of each statement in milliseconds; then the jobs page's lists
(a page of 50 with its total, per filter) and the job page's reads, the same way. The figures
also go to bench-results.json under "dashboard" (with the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
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
            # a first call: the hour cache is empty, so HOURS_PER_CALL hours are counted, plus this one
            started = time.perf_counter()
            await dashboard.build_overview(sections, dashboard.HourCache())
            whole = round((time.perf_counter() - started) * 1000, 2)
            if round_no == 0:
                continue  # warm-up
            rounds.setdefault("overview: every section, one after another", []).append(whole)
            for name, ms in sections.timings_ms.items():
                rounds.setdefault(name, []).append(ms)
            assert not sections.unavailable, sections.unavailable
    await jobs_page_rounds(url, rounds)
    return {"jobs": total, "statement_ms": {
        name: {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for name, values in rounds.items()}}


# The jobs page's lists (GET /jobs: a page of 50 and the total) and the job page's reads.
JOBS_PAGE_VIEWS: dict[str, dict[str, Any]] = {
    "all, newest first": {},
    "status=dead": {"statuses": ["dead"]},
    "status=queued,failed sort=-priority": {"statuses": ["queued", "failed"], "sort": "priority"},
    "has_error=true": {"has_error": True},
    "scheduled=true": {"scheduled": True},
    "queue=mail created in the last hour": {"queues": ["mail"], "created_after": "hour"},
}


DASHBOARD_COUNT_LIMIT = 1001  # the jobs page sends total_max=1000 (pages/jobs.js COUNT_MAX)


async def jobs_page_rounds(url: str, rounds: dict[str, list[float]]) -> None:
    from datetime import timedelta

    from app.store import AppStore, JobFilter
    from pgqueue.queue import Queue

    async with await Queue.connect(url, max_size=2) as queue:
        store = AppStore(queue.pool)
        job_id = (await store.list_jobs(JobFilter(statuses=["dead"]), sort="created", descending=True, limit=1,
                                        offset=0))[1][0].id
        for round_no in range(4):
            for label, view in JOBS_PAGE_VIEWS.items():
                options = dict(view)
                sort = options.pop("sort", "created")
                if options.get("created_after") == "hour":
                    options["created_after"] = datetime.now(UTC) - timedelta(hours=1)
                for count, count_limit in (("counted to 1,000 as the page asks", DASHBOARD_COUNT_LIMIT),
                                           ("exact total", None)):
                    started = time.perf_counter()
                    await store.list_jobs(JobFilter(**options), sort=sort, descending=True, limit=50, offset=0,
                                          count_limit=count_limit)
                    if round_no:
                        rounds.setdefault(f"jobs page:{label} ({count})", []).append(
                            round((time.perf_counter() - started) * 1000, 2))
            started = time.perf_counter()
            await queue.get(job_id)
            await queue.errors(job_id)
            await queue.events(job_id)
            if round_no:
                rounds.setdefault("job page:job, attempts, events", []).append(
                    round((time.perf_counter() - started) * 1000, 2))


def save_section(result: dict[str, Any], path: str = "bench-results.json") -> None:
    """Read-modify-write the shared bench file: only the "dashboard" section is ours."""
    try:
        with open(path) as existing:
            everything = json.load(existing)
    except (FileNotFoundError, json.JSONDecodeError):
        everything = {}
    everything["dashboard"] = result
    with open(path, "w") as out:
        json.dump(everything, out, indent=2)


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
    result["load_average"] = list(os.getloadavg())
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["command"] = f"python -m app.dashboard.bench --jobs {args.jobs}"
    print(json.dumps(result, indent=2))
    with open(args.output, "w") as out:
        json.dump(result, out, indent=2)
    save_section(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
