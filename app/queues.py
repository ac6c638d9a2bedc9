"""REST for queue flow control (admins): list queues with their state and counts, pause and
resume, set concurrency and rate limits (per queue and per concurrency key).

    GET   /queues                 every queue with jobs or settings
    GET   /queues/{name}          one queue (any valid name: an untouched queue runs unlimited)
    POST  /queues/{name}/pause    workers stop claiming from it (running jobs finish)
    POST  /queues/{name}/resume
    PATCH /queues/{name}          change the limits named in the body (null removes one)
    PUT   /queues/{name}          set every limit (one left out is removed)

The engine enforces the limits in its claim statement (pgqueue/sql/queries.sql, README "Queues").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.api import json_response, read_json
from app.auth import authenticate_admin
from app.errors import validation_error
from app.openapi import operation
from pgqueue.errors import InvalidQueueSettings
from pgqueue.limits import (
    MAX_CONCURRENCY_LIMIT,
    MAX_RATE_LIMIT,
    MAX_RATE_PERIOD,
    MIN_RATE_PERIOD,
    UNCHANGED,
    QueueInfo,
    Rate,
    check_queue_name,
)

QUEUE_NAME_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,100}$"}

ConcurrencyLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY_LIMIT,
                                               description="at most this many running at once, across all workers")]


class RateIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_RATE_LIMIT, description="job starts")]
    period_seconds: Annotated[float, msgspec.Meta(ge=MIN_RATE_PERIOD, le=MAX_RATE_PERIOD)]


class RateOut(msgspec.Struct, kw_only=True):
    limit: int
    period_seconds: float
    text: str  # such as 10/s


class QueueLimitsPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the limits named change; null removes one."""

    concurrency_limit: ConcurrencyLimit | UnsetType | None = UNSET
    rate: RateIn | UnsetType | None = UNSET
    key_concurrency_limit: ConcurrencyLimit | UnsetType | None = UNSET
    key_rate: RateIn | UnsetType | None = UNSET


class QueueLimitsPut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every limit of the queue; one left out (or null) is removed."""

    concurrency_limit: ConcurrencyLimit | None = None
    rate: RateIn | None = None
    key_concurrency_limit: ConcurrencyLimit | None = None
    key_rate: RateIn | None = None


class QueueOut(msgspec.Struct, kw_only=True):
    name: str
    state: Literal["active", "paused"]
    concurrency_limit: int | None
    rate: RateOut | None
    key_concurrency_limit: int | None
    key_rate: RateOut | None
    queued: int
    scheduled: int
    running: int
    running_keys: int
    updated_at: datetime | None

    @classmethod
    def of(cls, info: QueueInfo) -> QueueOut:
        return cls(name=info.name, state=info.state,  # type: ignore[arg-type]
                   concurrency_limit=info.concurrency_limit, rate=_rate_out(info.rate),
                   key_concurrency_limit=info.key_concurrency_limit, key_rate=_rate_out(info.key_rate),
                   queued=info.queued, scheduled=info.scheduled, running=info.running,
                   running_keys=info.running_keys, updated_at=info.updated_at)


class QueueList(msgspec.Struct, kw_only=True):
    queues: list[QueueOut]


def _rate_out(rate: Rate | None) -> RateOut | None:
    return None if rate is None else RateOut(limit=rate.limit, period_seconds=rate.period, text=str(rate))


def _name(request: Request) -> str:
    """The path's queue name; not a valid name is a 422 (it names no queue one could create)."""
    try:
        return check_queue_name(request.path_params["name"])
    except InvalidQueueSettings as exc:
        raise validation_error(exc.errors, "not a valid queue name") from None


def _change(value: Any) -> Any:
    if value is UNSET:
        return UNCHANGED
    if isinstance(value, RateIn):
        return Rate(value.limit, value.period_seconds)
    return value


async def _set_limits(request: Request, body: QueueLimitsPatch | QueueLimitsPut) -> Response:
    name = _name(request)
    try:
        info = await request.state.queue.set_queue_limits(
            name, concurrency=_change(body.concurrency_limit), rate=_change(body.rate),
            key_concurrency=_change(body.key_concurrency_limit), key_rate=_change(body.key_rate))
    except InvalidQueueSettings as exc:
        raise validation_error(exc.errors) from None
    return json_response(QueueOut.of(info))


_PATH = {"name": "the queue's name"}
_DOC = "Admin tokens only. A queue needs no creating: any valid name is a queue, unlimited until limited."


@operation(summary="Queues with their state, limits and job counts", response=QueueList, tag="queues",
           auth="admin", description=_DOC)
async def list_queues(request: Request) -> Response:
    await authenticate_admin(request)
    queues = await request.state.queue.list_queues()
    return json_response(QueueList(queues=[QueueOut.of(q) for q in queues]))


@operation(summary="One queue", response=QueueOut, tag="queues", auth="admin", path_params=_PATH,
           path_param_schemas={"name": QUEUE_NAME_SCHEMA}, errors=(422,), description=_DOC)
async def get_queue(request: Request) -> Response:
    await authenticate_admin(request)
    return json_response(QueueOut.of(await request.state.queue.get_queue(_name(request))))


@operation(summary="Pause a queue: no worker claims from it until resumed", response=QueueOut, tag="queues",
           auth="admin", path_params=_PATH, path_param_schemas={"name": QUEUE_NAME_SCHEMA}, errors=(422,),
           description="Persisted. Every claim that starts after this returns no job of the queue (the claim "
                       "reads the pause itself); running jobs finish; enqueueing still works.")
async def pause_queue(request: Request) -> Response:
    await authenticate_admin(request)
    return json_response(QueueOut.of(await request.state.queue.pause_queue(_name(request))))


@operation(summary="Resume a paused queue", response=QueueOut, tag="queues", auth="admin", path_params=_PATH,
           path_param_schemas={"name": QUEUE_NAME_SCHEMA}, errors=(422,), description=_DOC)
async def resume_queue(request: Request) -> Response:
    await authenticate_admin(request)
    return json_response(QueueOut.of(await request.state.queue.resume_queue(_name(request))))


@operation(summary="Change some limits of a queue (null removes one)", body=QueueLimitsPatch, response=QueueOut,
           tag="queues", auth="admin", path_params=_PATH, path_param_schemas={"name": QUEUE_NAME_SCHEMA},
           description="concurrency_limit: running jobs at most, across all workers; rate: starts per period "
                       "(a token bucket holding `limit` starts, refilled by `limit` per `period_seconds`); "
                       "key_*: the same for each concurrency key of the queue.")
async def patch_queue(request: Request) -> Response:
    await authenticate_admin(request)
    _name(request)
    return await _set_limits(request, await read_json(request, QueueLimitsPatch))


@operation(summary="Set every limit of a queue (one left out is removed)", body=QueueLimitsPut, response=QueueOut,
           tag="queues", auth="admin", path_params=_PATH, path_param_schemas={"name": QUEUE_NAME_SCHEMA})
async def put_queue(request: Request) -> Response:
    await authenticate_admin(request)
    _name(request)
    return await _set_limits(request, await read_json(request, QueueLimitsPut))


ROUTES: list[BaseRoute] = [
    Route("/queues", list_queues, methods=["GET"]),
    Route("/queues/{name}", get_queue, methods=["GET"]),
    Route("/queues/{name}", patch_queue, methods=["PATCH"]),
    Route("/queues/{name}", put_queue, methods=["PUT"]),
    Route("/queues/{name}/pause", pause_queue, methods=["POST"]),
    Route("/queues/{name}/resume", resume_queue, methods=["POST"]),
]
