"""Operations endpoints: /healthz (alive), /readyz (database reachable and migrated), /metrics.

/metrics (Prometheus text format) takes ``Authorization: Bearer`` with APP_METRICS_TOKEN or an
admin's API token, since it shows every user's queues; APP_METRICS_PUBLIC=true opens it (scraped on
a private network). It has
- ``pgqueue_jobs{queue,status}``: a gauge read from the database, so it is the same on every
  process;
- ``pgqueue_claims_total`` / ``pgqueue_failures_total``: counters of *this process* (jobs claimed
  and attempts failed by its embedded worker and through its /worker HTTP endpoints), the
  Prometheus way (sum them over instances; they restart at zero with the process). Workers
  started with ``python -m pgqueue worker`` serve no HTTP and are not counted here;
- ``pgqueue_queue_wait_seconds``: a histogram of how long the jobs started in the last hour
  waited between becoming runnable and being claimed, computed from the database at scrape
  time (a sliding window, not an ever-growing counter);
- ``pgqueue_events_default_partition_rows`` / ``pgqueue_events_partitions_until_timestamp_seconds``:
  the events partitions (README, "History that grows for years"); alert on rows > 0.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from app.api import json_response
from app.auth import authenticate_metrics
from app.openapi import operation
from pgqueue.errors import PgQueueError
from pgqueue.migrate import missing_migrations

log = logging.getLogger("app.ops")

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
WAIT_WINDOW_SECONDS = 3600.0
READY_TIMEOUT_SECONDS = 5.0


class ProcessMetrics:
    """Counters of this process, read by /metrics (together with the embedded worker's)."""

    def __init__(self) -> None:
        self.claims = 0
        self.failures = 0


@operation(summary="Liveness: the process answers (no database involved)", tag="ops", auth="none",
           media_type="text/plain")
async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


@operation(summary="Readiness: the database is reachable and every migration is applied", tag="ops",
           auth="none", errors=(503,))
async def readyz(request: Request) -> Response:
    expected: list[str] = request.state.expected_migrations
    try:
        applied = await asyncio.wait_for(request.state.queue.store.applied_migrations(), READY_TIMEOUT_SECONDS)
    except (TimeoutError, psycopg.Error, PgQueueError) as exc:
        log.warning("not ready: database unreachable: %s", exc)
        return json_response({"status": "unavailable", "database": "unreachable",
                              "error": {"code": "database_unavailable", "message": str(exc) or "timed out",
                                        "details": []}}, 503)
    missing = missing_migrations(applied, expected)  # what a worker checks before it starts, too
    if missing:
        return json_response({"status": "unavailable", "database": "reachable", "pending_migrations": missing,
                              "error": {"code": "not_migrated",
                                        "message": f"{len(missing)} migration(s) not applied: {', '.join(missing)}",
                                        "details": []}}, 503)
    return json_response({"status": "ready", "database": "reachable", "pending_migrations": [],
                          "api_ingest": await _api_ingest_detail(request), "events": await _events_detail(request)})


async def _events_detail(request: Request) -> dict[str, int | str | None]:
    """The events partitions (schema/0012): rows in the default partition (0 unless maintenance
    fell behind; the next pass moves them) and where the last partition ends. A detail: never
    makes /readyz fail, no event is lost either way."""
    try:
        default_rows, covered_until = await request.state.queue.store.event_partition_health()
    except (psycopg.Error, PgQueueError) as exc:
        log.warning("readyz: events partitions detail unavailable: %s", exc)
        return {"default_partition_rows": None, "partitions_until": None}
    return {"default_partition_rows": default_rows,
            "partitions_until": None if covered_until is None else covered_until.isoformat()}


async def _api_ingest_detail(request: Request) -> dict[str, str | None]:
    """When any API-ingest connector last committed a page (a detail: never makes /readyz fail)."""
    from app.kinds.api_ingest import statement

    try:
        async with request.state.queue.pool.connection() as conn:
            cursor = await conn.execute(statement("last_page_at"))
            row = await cursor.fetchone()
    except (psycopg.Error, PgQueueError) as exc:
        log.warning("readyz: api ingest detail unavailable: %s", exc)
        return {"last_successful_page_at": None}
    last = row[0] if row else None
    return {"last_successful_page_at": None if last is None else last.isoformat()}


API_INGEST_METRICS = (
    ("pages", "pgqueue_api_ingest_pages_total", "Pages (or ranges) committed, by source."),
    ("events", "pgqueue_api_ingest_events_total", "Items received, duplicates included, by source."),
    ("inserted", "pgqueue_api_ingest_inserted_total", "Rows new to the target, by source."),
    ("retries", "pgqueue_api_ingest_retries_total", "HTTP requests retried (errors, 5xx, bad bodies), by source."),
    ("rate_limited", "pgqueue_api_ingest_rate_limited_total", "HTTP 429 answers, by source."),
    ("bytes", "pgqueue_api_ingest_bytes_total", "Response bytes received (decoded), by source."),
)


async def _api_ingest_metrics(request: Request) -> list[str]:
    """Per-source API-ingest counters, summed from app.api_sync_parts (so the same on every process,
    workers in other processes included)."""
    from app.routes.syncs import source_metrics

    async with request.state.queue.pool.connection() as conn:
        rows = await source_metrics(conn)
    lines: list[str] = []
    for index, (_key, name, help_text) in enumerate(API_INGEST_METRICS):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for row in rows:
            lines.append(f'{name}{{source="{_label(row[0])}"}} {int(row[index + 1] or 0)}')
    lines += ["# HELP pgqueue_api_ingest_last_page_timestamp_seconds When the source last committed a page.",
              "# TYPE pgqueue_api_ingest_last_page_timestamp_seconds gauge"]
    for row in rows:
        if row[7] is not None:
            lines.append(f'pgqueue_api_ingest_last_page_timestamp_seconds{{source="{_label(row[0])}"}} '
                         f"{_number(float(row[7]))}")
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


@operation(summary="Prometheus metrics", tag="ops", auth="admin", media_type="text/plain",
           description="An admin's API token or APP_METRICS_TOKEN as the Bearer token; "
                       "no token when APP_METRICS_PUBLIC is true.")
async def metrics(request: Request) -> Response:
    await authenticate_metrics(request)
    store = request.state.store
    counters: ProcessMetrics = request.state.metrics
    worker = request.state.worker
    claims, failures = counters.claims, counters.failures
    if worker is not None:
        claims += worker.counters["claimed"]
        failures += worker.counters["failed"] + worker.counters["dead"]

    lines = [
        "# HELP pgqueue_jobs Jobs in the database by queue and status.",
        "# TYPE pgqueue_jobs gauge",
    ]
    for queue, status, count in await store.job_gauges():
        lines.append(f'pgqueue_jobs{{queue="{_label(queue)}",status="{_label(status)}"}} {count}')
    lines += [
        "# HELP pgqueue_claims_total Jobs claimed by this process (embedded worker and /worker/claim).",
        "# TYPE pgqueue_claims_total counter",
        f"pgqueue_claims_total {claims}",
        "# HELP pgqueue_failures_total Failed job attempts recorded by this process (retrying or dead).",
        "# TYPE pgqueue_failures_total counter",
        f"pgqueue_failures_total {failures}",
    ]
    histogram = await store.wait_time_histogram(WAIT_BUCKETS, WAIT_WINDOW_SECONDS)
    lines += [
        "# HELP pgqueue_queue_wait_seconds Wait between run_at and start of jobs started in the last hour.",
        "# TYPE pgqueue_queue_wait_seconds histogram",
    ]
    for bound, count in zip(WAIT_BUCKETS, histogram.bucket_counts, strict=True):
        lines.append(f'pgqueue_queue_wait_seconds_bucket{{le="{bound}"}} {count}')
    lines += [
        f'pgqueue_queue_wait_seconds_bucket{{le="+Inf"}} {histogram.count}',
        f"pgqueue_queue_wait_seconds_sum {_number(histogram.sum)}",
        f"pgqueue_queue_wait_seconds_count {histogram.count}",
    ]
    lines += await _api_ingest_metrics(request)
    default_rows, covered_until = await request.state.queue.store.event_partition_health()
    lines += [
        "# HELP pgqueue_events_default_partition_rows Events in the default partition: 0 unless the maintenance "
        "leader fell behind creating partitions ahead (its next pass moves them).",
        "# TYPE pgqueue_events_default_partition_rows gauge",
        f"pgqueue_events_default_partition_rows {default_rows}",
        "# HELP pgqueue_events_partitions_until_timestamp_seconds Where the last events partition ends.",
        "# TYPE pgqueue_events_partitions_until_timestamp_seconds gauge",
        f"pgqueue_events_partitions_until_timestamp_seconds {_number(covered_until.timestamp() if covered_until else 0.0)}",
    ]
    hub = request.state.hub.metrics()
    lines += [
        "# HELP pgqueue_sse_subscribers Open event streams (SSE and WebSocket) on this process.",
        "# TYPE pgqueue_sse_subscribers gauge",
        f"pgqueue_sse_subscribers {hub['subscribers']}",
        "# HELP pgqueue_sse_listening 1 while this process's LISTEN connection is up.",
        "# TYPE pgqueue_sse_listening gauge",
        f"pgqueue_sse_listening {hub['listening']}",
        "# HELP pgqueue_sse_events_delivered_total Events handed to stream subscribers.",
        "# TYPE pgqueue_sse_events_delivered_total counter",
        f"pgqueue_sse_events_delivered_total {hub['delivered']}",
        "# HELP pgqueue_sse_dropped_total Times a slow subscriber's queue overflowed (it then caught up from the table).",
        "# TYPE pgqueue_sse_dropped_total counter",
        f"pgqueue_sse_dropped_total {hub['dropped']}",
        "# HELP pgqueue_sse_listen_reconnects_total Times the LISTEN connection was lost and re-established.",
        "# TYPE pgqueue_sse_listen_reconnects_total counter",
        f"pgqueue_sse_listen_reconnects_total {hub['reconnects']}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
