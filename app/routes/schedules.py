"""REST for periodic jobs (admins): the schedules of ``queue.schedules`` (pgqueue/scheduler.py).

    GET    /schedules                every schedule: its meaning in words, next 3 fire times, last runs
    POST   /schedules                create one (a cron expression in a time zone, the job it enqueues)
    GET    /schedules/{name}
    DELETE /schedules/{name}
    POST   /schedules/{name}/pause   no fire until resumed
    POST   /schedules/{name}/resume  goes on from the next fire time after now (missed ones are dropped)
    GET    /cron?expression=&timezone=   an expression in words and its next fire times (nothing stored)

The engine checks a definition as a whole before anything is written (registry.check_schedule):
every bad field is listed in one 422, a cron error says where; a taken name is a 409.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.api import KIND_NAMES, json_response, read_json, read_query
from app.auth import authenticate, authenticate_admin
from app.cron_words import describe_cron
from app.errors import ApiError, not_found, validation_error
from app.kinds.webhooks import (
    WEBHOOK_KIND,
    UnsafeWebhookUrl,
    WebhookHostUnresolved,
    WebhookPayload,
    resolve_webhook_url,
)
from app.openapi import operation
from pgqueue.cron import CronError, load_zone, parse_cron
from pgqueue.errors import InvalidSchedule, ScheduleExists, ScheduleNotFound
from pgqueue.models import DEFAULT_CATCH_UP_WINDOW, MAX_CATCH_UP_WINDOW, Schedule
from pgqueue.registry import check_schedule
from pgqueue.scheduler import upcoming_fires

NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
SCHEDULE_NAME_SCHEMA = {"type": "string", "pattern": NAME_PATTERN}
_NAME = re.compile(NAME_PATTERN)
UPCOMING = 3
RECENT_RUNS = 5


class ScheduleCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A schedule: at each fire time of ``expression`` (read in ``timezone``) one ``kind`` job is enqueued."""

    name: Annotated[str, msgspec.Meta(description="1-100 letters, digits, _ . : - (unique)")]
    expression: Annotated[str, msgspec.Meta(
        description='cron: "[second] minute hour day-of-month month day-of-week" (ranges, steps, lists, '
                    'JAN-DEC, SUN-SAT) or @yearly, @monthly, @weekly, @daily, @hourly; e.g. "*/5 * * * *"')]
    kind: Annotated[str, msgspec.Meta(description=f"a job kind: {', '.join(KIND_NAMES)}")]
    payload: Annotated[Any, msgspec.Meta(description="the job's payload, checked against the kind's type")] = None
    timezone: Annotated[str, msgspec.Meta(description="IANA zone the expression is read in")] = "UTC"
    queue: Annotated[str, msgspec.Meta(description="default: the kind's queue")] | None = None
    priority: Annotated[int, msgspec.Meta(ge=1, le=5, description="default: the kind's")] | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000, description="default: the kind's")] | None = None
    catch_up: Annotated[Literal["skip", "latest", "all"], msgspec.Meta(
        description="after fire times were missed (no worker ran): skip (the latest runs only if at most "
                    "catch_up_window seconds late), latest (the latest runs, however late), all (every one "
                    "of the last catch_up_window seconds)")] = "skip"
    catch_up_window: Annotated[float, msgspec.Meta(ge=1, le=MAX_CATCH_UP_WINDOW,
                                                   description="seconds")] = DEFAULT_CATCH_UP_WINDOW
    paused: bool = False


class ScheduleRun(msgspec.Struct, kw_only=True):
    fire_at: datetime
    job_id: int
    status: Annotated[str | None, msgspec.Meta(description="the job's status; null once the job was pruned")]


class ScheduleOut(msgspec.Struct, kw_only=True):
    name: str
    expression: str
    meaning: Annotated[str, msgspec.Meta(description='the expression in words, e.g. "every day at 03:00"')]
    timezone: str
    kind: str
    queue: str
    payload: Any
    priority: int
    max_attempts: int
    catch_up: str
    catch_up_window: float
    state: Literal["active", "paused", "never"]  # never: the expression names no further fire time
    declared_in_code: bool  # by @jobs.periodic: a worker starting with that code declares it again
    next_fire_at: datetime | None
    next_fire_times: list[datetime]  # the next 3 (from now when paused: where resuming would start)
    last_fire_at: datetime | None
    recent_runs: Annotated[list[ScheduleRun], msgspec.Meta(
        description=f"the last {RECENT_RUNS} fires, newest first, with their jobs")] = []
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule, now: datetime, runs: list[ScheduleRun] | None = None) -> ScheduleOut:
        upcoming = upcoming_fires(schedule, now, UPCOMING)
        state = "paused" if schedule.paused else "active" if schedule.next_fire_at is not None else "never"
        return cls(name=schedule.name, expression=schedule.expression, meaning=describe_cron(schedule.expression),
                   timezone=schedule.timezone,
                   kind=schedule.kind, queue=schedule.queue, payload=schedule.payload, priority=schedule.priority,
                   max_attempts=schedule.max_attempts, catch_up=schedule.catch_up,
                   catch_up_window=schedule.catch_up_window, state=state,  # type: ignore[arg-type]
                   declared_in_code=schedule.declared_in_code, next_fire_at=schedule.next_fire_at,
                   next_fire_times=upcoming, last_fire_at=schedule.last_fire_at, recent_runs=runs or [],
                   created_at=schedule.created_at,
                   updated_at=schedule.updated_at)


class ScheduleList(msgspec.Struct, kw_only=True):
    schedules: list[ScheduleOut]


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not _NAME.match(name):
        raise validation_error([{"field": "name", "message": "must be 1-100 characters of letters, digits, _ . : -"}],
                               "not a valid schedule name")
    return name


async def _recent_runs(request: Request, names: list[str]) -> dict[str, list[ScheduleRun]]:
    runs: dict[str, list[ScheduleRun]] = {name: [] for name in names}
    for row in await request.state.store.schedule_recent_runs(names, RECENT_RUNS):
        runs[row.name].append(ScheduleRun(fire_at=row.fire_at, job_id=row.job_id, status=row.status))
    return runs


async def _out(request: Request, schedule: Schedule) -> ScheduleOut:
    runs = await _recent_runs(request, [schedule.name])
    return ScheduleOut.of(schedule, await request.state.queue.store.now(), runs[schedule.name])


async def _check_webhook(request: Request, new: ScheduleCreate) -> None:
    """A scheduled webhook gets the URL check POST /jobs makes (a payload of the wrong shape is left
    to the engine's check, which lists it with the other bad fields)."""
    try:
        hook = msgspec.convert(new.payload, WebhookPayload)
    except msgspec.ValidationError:
        return
    try:
        await asyncio.to_thread(resolve_webhook_url, hook.url, request.state.settings.webhook_allowed_hosts())
    except (UnsafeWebhookUrl, WebhookHostUnresolved) as exc:
        raise validation_error([{"field": "payload.url", "message": str(exc)}]) from None


_PATH = {"name": "the schedule's name"}
_PATH_SCHEMA = {"name": SCHEDULE_NAME_SCHEMA}
_DOC = "Admin tokens only."


@operation(summary="Schedules with their meaning in words, next fire times and last runs", response=ScheduleList, tag="schedules",
           auth="admin", description=_DOC)
async def list_schedules(request: Request) -> Response:
    await authenticate_admin(request)
    now = await request.state.queue.store.now()
    schedules = await request.state.queue.schedules.list()
    runs = await _recent_runs(request, [s.name for s in schedules])
    return json_response(ScheduleList(schedules=[ScheduleOut.of(s, now, runs[s.name]) for s in schedules]))


@operation(summary="Create a schedule (a periodic job)", body=ScheduleCreate, response=ScheduleOut, status=201,
           tag="schedules", auth="admin", errors=(409,),
           description="Checked as a whole before anything is written: every bad field (an expression that does "
                       "not parse, with the position and field; an unknown time zone or kind; a payload the kind "
                       "refuses) is listed in one 422. A name already taken is a 409. Its first fire is the first "
                       "fire time after now; every worker fires it, each fire time becomes at most one job.")
async def create_schedule(request: Request) -> Response:
    await authenticate_admin(request)
    new = await read_json(request, ScheduleCreate)
    queue = request.state.queue
    options: dict[str, Any] = {"timezone": new.timezone, "queue": new.queue, "priority": new.priority,
                               "max_attempts": new.max_attempts, "catch_up": new.catch_up,
                               "catch_up_window": new.catch_up_window, "paused": new.paused}
    if new.kind not in KIND_NAMES:  # an internal kind (ingest_file) too: only the app enqueues it
        problems = [{"field": "kind", "message": f"unknown job kind {new.kind!r}; expected one of "
                                                 f"{', '.join(KIND_NAMES)}"}]
        try:  # the other fields' errors in the same answer (a check only: nothing is written)
            check_schedule(queue.registry, new.name, new.expression, new.kind, new.payload, **options)
        except InvalidSchedule as exc:
            problems += [e for e in exc.errors if e["field"] != "kind" and not e["field"].startswith("payload")]
        raise validation_error(problems, "the schedule is not valid")
    if new.kind == WEBHOOK_KIND:
        await _check_webhook(request, new)
    try:
        schedule = await queue.schedules.add(new.name, new.expression, new.kind, new.payload, **options)
    except InvalidSchedule as exc:
        raise validation_error(exc.errors, "the schedule is not valid") from None
    except ScheduleExists as exc:
        raise ApiError(409, "schedule_exists", str(exc), [{"field": "name", "message": str(exc)}]) from None
    return json_response(await _out(request, schedule), 201, {"Location": f"/schedules/{schedule.name}"})


@operation(summary="One schedule", response=ScheduleOut, tag="schedules", auth="admin", path_params=_PATH,
           path_param_schemas=_PATH_SCHEMA, errors=(404, 422), description=_DOC)
async def get_schedule(request: Request) -> Response:
    await authenticate_admin(request)
    name = _name(request)
    try:
        return json_response(await _out(request, await request.state.queue.schedules.get(name)))
    except ScheduleNotFound as exc:
        raise not_found(str(exc)) from None


@operation(summary="Remove a schedule", tag="schedules", auth="admin", path_params=_PATH, status=204,
           path_param_schemas=_PATH_SCHEMA, errors=(404, 422),
           description="Its jobs already enqueued stay. One declared in code (@jobs.periodic) is declared again "
                       "by the next worker that starts with that code.")
async def delete_schedule(request: Request) -> Response:
    await authenticate_admin(request)
    name = _name(request)
    try:
        await request.state.queue.schedules.remove(name)
    except ScheduleNotFound as exc:
        raise not_found(str(exc)) from None
    return Response(status_code=204)


@operation(summary="Pause a schedule: no fire until resumed", response=ScheduleOut, tag="schedules", auth="admin",
           path_params=_PATH, path_param_schemas=_PATH_SCHEMA, errors=(404, 422), description=_DOC)
async def pause_schedule(request: Request) -> Response:
    await authenticate_admin(request)
    name = _name(request)
    try:
        return json_response(await _out(request, await request.state.queue.schedules.pause(name)))
    except ScheduleNotFound as exc:
        raise not_found(str(exc)) from None


@operation(summary="Resume a paused schedule", response=ScheduleOut, tag="schedules", auth="admin",
           path_params=_PATH, path_param_schemas=_PATH_SCHEMA, errors=(404, 422),
           description="It goes on from the next fire time after now: the ones that passed while it was paused "
                       "are not run.")
async def resume_schedule(request: Request) -> Response:
    await authenticate_admin(request)
    name = _name(request)
    try:
        return json_response(await _out(request, await request.state.queue.schedules.resume(name)))
    except ScheduleNotFound as exc:
        raise not_found(str(exc)) from None


class CronQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    expression: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    count: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5


class CronPreview(msgspec.Struct, kw_only=True):
    expression: str
    timezone: str
    meaning: str
    next_fire_times: list[datetime]


@operation(summary="A cron expression in words, and its next fire times", query=CronQuery, response=CronPreview,
           tag="schedules", errors=(422,),
           description="A check before creating a schedule (the dashboard calls it as you type): nothing is stored. "
                       "An expression that does not parse is a 422 saying where, as POST /schedules would answer.")
async def preview_cron(request: Request) -> Response:
    await authenticate(request)
    query = read_query(request, CronQuery)
    problems = []
    try:
        cron = parse_cron(query.expression)
    except CronError as exc:
        problems.append({"field": "expression", "message": str(exc)})
    try:
        zone = load_zone(query.timezone)
    except ValueError as exc:
        problems.append({"field": "timezone", "message": str(exc)})
    if problems:
        raise validation_error(problems, "the expression or time zone is not valid")
    now = await request.state.queue.store.now()
    return json_response(CronPreview(expression=query.expression, timezone=query.timezone,
                                     meaning=describe_cron(query.expression),
                                     next_fire_times=cron.next_times(now, zone, query.count)))


ROUTES: list[BaseRoute] = [
    Route("/cron", preview_cron, methods=["GET"]),
    Route("/schedules", list_schedules, methods=["GET"]),
    Route("/schedules", create_schedule, methods=["POST"]),
    Route("/schedules/{name}", get_schedule, methods=["GET"]),
    Route("/schedules/{name}", delete_schedule, methods=["DELETE"]),
    Route("/schedules/{name}/pause", pause_schedule, methods=["POST"]),
    Route("/schedules/{name}/resume", resume_schedule, methods=["POST"]),
]
