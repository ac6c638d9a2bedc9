"""API-ingest syncs over REST: ``POST /api/v1/syncs`` (admin), ``GET /api/v1/syncs`` (the newest) and
``GET /api/v1/syncs/{id}``.

POST takes a source config (app/kinds/api_ingest.py ``SourceConfig``), checks it, fetches the
API's first page the way the job will (401/403, no items at the path, items without ids, not
JSON, unreachable: a 422 naming the field), then records the sync and enqueues one
``api_ingest`` job per part in one transaction: on any refusal nothing is written. Progress of
each part streams on the job's SSE stream (``GET /jobs/{job_id}/events``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.api import json_response, parse_job_id, read_json, read_query
from app.auth import authenticate, authenticate_admin, may_see
from app.errors import not_found, validation_error
from app.kinds.api_ingest import (
    ConfigProblem,
    SourceConfig,
    SyncCounts,
    SyncStatus,
    create_sync,
    recent_syncs,
    statement,
    sync_status,
)
from app.openapi import operation


class SyncCreated(msgspec.Struct, kw_only=True):
    sync_id: int
    job_ids: list[int]
    status_url: str
    events_urls: list[str]


class SyncOut(SyncCounts, kw_only=True):
    status: str
    parts: int
    job_ids: list[int]
    part_statuses: list[str]
    errors: list[str]
    created_at: datetime


@operation(summary="Start an API ingest (a sync) from a source config", tag="syncs", body=SourceConfig,
           response=SyncCreated, status=202, auth="admin", errors=(400, 413, 415, 422),
           description="The API's first page is fetched before anything is written: a config that cannot work "
                       "(bad URL, unknown pagination, no items at the path, items without the id field, HTTP "
                       "401/403, a target that is not a valid table name) is a 422 naming the field.")
async def create_sync_route(request: Request) -> Response:
    user = await authenticate_admin(request)
    cfg = await read_json(request, SourceConfig)
    try:
        sync_id, job_ids = await create_sync(request.state.queue, cfg, owner_id=user.owner_id)
    except ConfigProblem as exc:
        raise validation_error([{"field": exc.field, "message": exc.message}], f"the source config cannot work: "
                                                                               f"{exc}") from None
    return json_response(SyncCreated(sync_id=sync_id, job_ids=job_ids, status_url=f"/api/v1/syncs/{sync_id}",
                                     events_urls=[f"/jobs/{job_id}/events" for job_id in job_ids]), 202)


@operation(summary="A sync's status and counts (summed over its parts)", tag="syncs", response=SyncOut,
           path_params={"sync_id": "the sync's id"}, errors=(404,),
           description="status: queued, running, succeeded, or failed (a part is dead or cancelled). Another "
                       "user's sync is a 404.")
async def get_sync_route(request: Request) -> Response:
    user = await authenticate(request)
    sync_id = parse_job_id(request.path_params["sync_id"])
    async with request.state.queue.pool.connection() as conn:
        status: SyncStatus | None = await sync_status(conn, sync_id)
    if status is None or not may_see(user, status.owner_id):
        raise not_found(f"sync {sync_id} not found")
    return json_response(msgspec.convert(msgspec.to_builtins(status), SyncOut))


class SyncListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20


class SyncList(msgspec.Struct, kw_only=True):
    syncs: list[SyncOut]


@operation(summary="The newest syncs with their counts", tag="syncs", query=SyncListQuery, response=SyncList,
           description="Your own syncs; an admin sees everyone's.")
async def list_syncs_route(request: Request) -> Response:
    user = await authenticate(request)
    query = read_query(request, SyncListQuery)
    async with request.state.queue.pool.connection() as conn:
        syncs = await recent_syncs(conn, None if user.is_admin else user.owner_id, query.limit)
    return json_response(SyncList(syncs=[msgspec.convert(msgspec.to_builtins(s), SyncOut) for s in syncs]))


async def source_metrics(conn: object) -> list[tuple]:
    """Per-source counters for /metrics (app/ops.py)."""
    cursor = await conn.execute(statement("source_metrics"))  # type: ignore[attr-defined]
    return await cursor.fetchall()


ROUTES: list[BaseRoute] = [
    Route("/api/v1/syncs", create_sync_route, methods=["POST"]),
    Route("/api/v1/syncs", list_syncs_route, methods=["GET"]),
    Route("/api/v1/syncs/{sync_id}", get_sync_route, methods=["GET"]),
]
