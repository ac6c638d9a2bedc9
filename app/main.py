"""The Starlette application: ``create_app(settings=None, *, queue=None)``.

The lifespan opens the engine (a ``pgqueue.Queue`` with the app's job kinds) and, when
``APP_RUN_WORKER`` is set, runs a worker for the app's kinds in the same event loop. Routes
read what the lifespan opened from ``request.state``. ROUTES below is the whole URL map.

Serve it with ``uvicorn --factory app.main:create_app`` (or ``python -m app run|serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from app import api, dashboard, graphql_api, ops, queues, streams, uploads
from app.dashboard import api as dashboard_api
from app.errors import exception_handlers
from app.hub import EventHub
from app.jobs import jobs as app_jobs
from app.openapi import docs_page, openapi_json
from app.ops import ProcessMetrics
from app.replica import ReplicaStore
from app.routes import schedules, syncs
from app.settings import AppSettings
from app.store import AppStore
from pgqueue.db import open_pool
from pgqueue.errors import ConfigError
from pgqueue.migrate import shipped_migrations
from pgqueue.queue import Queue
from pgqueue.worker import Worker

log = logging.getLogger("app")

ROUTES: list[BaseRoute] = [
    # jobs
    Route("/jobs", api.create_job, methods=["POST"]),
    Route("/jobs", api.list_jobs, methods=["GET"]),
    Route("/jobs/bulk", api.bulk_jobs, methods=["POST"]),
    Route("/jobs/bulk/filter", api.bulk_jobs_by_filter, methods=["POST"]),
    Route("/jobs/{job_id}", api.get_job, methods=["GET"]),
    Route("/jobs/{job_id}", api.cancel_job, methods=["DELETE"]),
    Route("/jobs/{job_id}/retry", api.retry_job, methods=["POST"]),
    Route("/jobs/{job_id}/run-now", api.run_job_now, methods=["POST"]),
    Route("/stats", api.stats, methods=["GET"]),
    # per-user tasks
    Route("/tasks", api.create_task, methods=["POST"]),
    Route("/tasks", api.list_tasks, methods=["GET"]),
    # auth
    Route("/auth/me", api.me, methods=["GET"]),
    Route("/auth/stream-token", api.stream_token, methods=["POST"]),
    # workers in other languages
    Route("/worker/claim", api.worker_claim, methods=["POST"]),
    Route("/worker/jobs/{job_id}/heartbeat", api.worker_heartbeat, methods=["POST"]),
    Route("/worker/jobs/{job_id}/complete", api.worker_complete, methods=["POST"]),
    Route("/worker/jobs/{job_id}/fail", api.worker_fail, methods=["POST"]),
    # operations and docs
    Route("/healthz", ops.healthz, methods=["GET"]),
    Route("/readyz", ops.readyz, methods=["GET"]),
    Route("/metrics", ops.metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    # live events (SSE, WebSocket) and the browser dashboard
    *streams.ROUTES,
    *dashboard.ROUTES,
    Route("/dashboard/api/overview", dashboard_api.overview, methods=["GET"]),
    Route("/dashboard/api/jobs/{job_id}/related", dashboard_api.job_related, methods=["GET"]),
    # log files: upload, then ingestion status
    *uploads.ROUTES,
    # API ingest: start a sync (admin), follow it
    *syncs.ROUTES,
    # queues: pause, resume, concurrency and rate limits (admins)
    *queues.ROUTES,
    # periodic jobs: cron schedules (admins)
    *schedules.ROUTES,
    # GraphQL (the optional extra pgqueue[graphql]): job(id), jobs(...)
    Route("/graphql", graphql_api.graphql_endpoint, methods=["POST"]),
]


def _handled_queues(queue: Queue) -> list[str]:
    return sorted({spec.queue for spec in queue.registry.kinds.values() if spec.handler is not None})


@contextlib.asynccontextmanager
async def _embedded_worker(settings: AppSettings, queue: Queue) -> AsyncIterator[Worker | None]:
    """A worker for the app's kinds in this event loop, when APP_RUN_WORKER is set."""
    if not settings.run_worker:
        yield None
        return
    worker = Worker(queue, settings.queues_to_work(_handled_queues(queue)), settings.worker_concurrency,
                    shutdown_grace=settings.worker_shutdown_grace)
    task = asyncio.create_task(worker.run(), name="app-embedded-worker")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.gather(task, return_exceptions=True)


def create_app(settings: AppSettings | None = None, *, queue: Queue | None = None) -> Starlette:
    """The app. Without ``settings`` they are read from the environment (PGQUEUE_*, APP_*);
    with ``queue`` the app uses that engine (and its job kinds) instead of opening its own."""
    settings = settings or AppSettings.from_env()
    migrations = shipped_migrations()  # /readyz expects every one of them applied

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        own_queue = queue is None
        if queue is not None:
            engine = queue
        elif settings.database_url:
            engine = await Queue.connect(settings.database_url, app_jobs, settings=settings.engine_settings(),
                                         max_size=settings.pool_size)
        else:
            raise ConfigError("no database URL: set PGQUEUE_DATABASE_URL")
        # The process's one LISTEN connection, feeding every event stream: on the primary, never
        # through a pooler (PGQUEUE_DIRECT_DATABASE_URL) and never on a replica (README, "Past one box").
        hub = EventHub(settings.direct_database_url or engine.session_url, engine.store,
                       queue_size=settings.sse_queue_size)
        # Reads that may lag behind by the replica's replay delay; without a replica, the primary.
        read_pool = (await open_pool(settings.read_database_url, max_size=settings.pool_size, name="app-read",
                                     pooler=engine.settings.pooler) if settings.read_database_url else None)
        await hub.start()
        store = AppStore(engine.pool)
        try:
            async with _embedded_worker(settings, engine) as worker:
                yield {
                    "settings": settings,
                    "queue": engine,
                    "hub": hub,
                    "store": store,
                    "read_store": (ReplicaStore(read_pool, store, max_lag_seconds=settings.read_max_lag_seconds)
                                   if read_pool is not None else store),
                    "metrics": ProcessMetrics(),
                    "worker": worker,
                    "expected_migrations": migrations,
                }
        finally:
            await hub.close()
            if read_pool is not None:
                await read_pool.close()
            if own_queue:
                await engine.close()

    return Starlette(routes=ROUTES, exception_handlers=exception_handlers(), lifespan=lifespan)
