"""The REST endpoints: jobs, tasks, stats, auth, and the worker protocol over HTTP.

Routes are thin: decode and validate the request with msgspec (``read_json``, ``read_query``),
check who may do it, call the engine, encode the answer. Shapes are the Structs below; the
OpenAPI document is generated from them (app/openapi.py).
"""

from __future__ import annotations

import asyncio
import functools
import operator
import re
import typing
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from app.auth import StreamToken, authenticate, authenticate_admin, forbidden, issue_stream_token, may_see
from app.errors import ApiError, ErrorInfo, field_errors, not_found, validation_error
from app.ingest import INGEST_KIND
from app.jobs import TaskPayload
from app.jobs import jobs as app_jobs
from app.kinds.api_ingest import KIND as API_INGEST_KIND
from app.kinds.bulk import (
    BULK_KIND,
    INLINE_MAX,
    BulkAction,
    BulkActionPayload,
    BulkResult,
    apply_action,
    matching_ids,
    max_job_id,
)
from app.kinds.webhooks import (
    WEBHOOK_KIND,
    UnsafeWebhookUrl,
    WebhookHostUnresolved,
    WebhookPayload,
    resolve_webhook_url,
)
from app.openapi import operation
from app.redact import event_for, exception_message
from app.store import AppStore, JobFilter, User
from app.validation import every_field_error, friendly
from pgqueue.errors import JobNotFound, LeaseLost, WaitTimeout
from pgqueue.models import (
    FINISHED_STATUSES,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    STATUSES,
    Event,
    Job,
    JobError,
    JobStatus,
)
from pgqueue.queue import Queue

T = TypeVar("T")

MAX_JOB_ID = 2**63 - 1  # bigint
JobId = Annotated[int, msgspec.Meta(ge=1, le=MAX_JOB_ID, description="a job id")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# Query parameters are absent or a value; there is no null (msgspec would read "null" as None),
# hence UNSET rather than None for the optional ones.
# Query parameters that take several values, comma-separated or repeated:
_LIST_PARAMS = frozenset({"status", "kind", "queue", "queues"})
# Deeper JSON is refused (400) before anything recursive (validation, jsonb, responses) meets it.
MAX_JSON_DEPTH = 128


# -- reading requests ---------------------------------------------------------------------------

def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json", headers=headers)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it grows past ``limit`` bytes.

    Content-Length is checked first (a cheap early answer) but not trusted: a chunked body,
    or one longer than it claims, is counted while it streams in.
    """
    too_large = ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, body_type: type[T]) -> T:
    """Decode and validate a JSON body: 415 wrong content type, 413 too big, 400 not JSON, 422 invalid."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type: application/json, got {content_type or 'no content type'}")
    body = await read_body(request, request.state.settings.max_body_bytes)
    if not body.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON object")
    too_deep = ApiError(400, "malformed_json", f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 in a string is the latter
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise too_deep
    if (field := nul_character_at(raw)) is not None:
        raise validation_error([{"field": field, "message": _NUL_MESSAGE}])
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        # msgspec stops at the first bad field; the 422 names every one
        raise validation_error(every_field_error(raw, body_type) or field_errors(exc)) from None


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (iterative: any depth is safe)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def nul_character_at(value: Any, path: str = "$") -> str | None:
    """Where a string holds U+0000, which PostgreSQL cannot store in text or jsonb; None if nowhere."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            field = key if path == "$" else f"{path}.{key}"
            if "\x00" in key:
                return field
            if (found := nul_character_at(item, field)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := nul_character_at(item, str(index) if path == "$" else f"{path}.{index}")) is not None:
                return found
    return None


_NUL_MESSAGE = "must not contain the NUL character (\\u0000)"


def read_query(request: Request, query_type: type[T]) -> T:
    """Query parameters into a Struct; unknown parameters and bad values are 422."""
    values: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in values:
            if key not in _LIST_PARAMS:
                raise validation_error([{"field": key, "message": "given more than once"}],
                                       "the query parameters are not valid")
            values[key] = f"{values[key]},{value}"
        else:
            values[key] = value
    if (field := nul_character_at(values)) is not None:
        raise validation_error([{"field": field, "message": _NUL_MESSAGE}], "the query parameters are not valid")
    # msgspec's lax conversion reads "1e2" or "5.0" as an integer; a query parameter must say it plainly
    not_decimal = [{"field": name, "message": "must be an integer in decimal digits (such as 20)"}
                   for name in sorted(integer_fields(query_type)) if name in values
                   and not _DECIMAL_INTEGER.fullmatch(values[name])]
    if not_decimal:
        raise validation_error(not_decimal, "the query parameters are not valid")
    try:
        return msgspec.convert(values, query_type, strict=False)
    except msgspec.ValidationError as exc:
        details = field_errors(exc)
        for detail in details:
            if detail["message"].startswith("Object contains unknown field"):
                allowed = ", ".join(query_type.__struct_fields__)  # type: ignore[attr-defined]
                detail["message"] = f"unknown query parameter; allowed: {allowed}"
            elif detail["message"].startswith("Object missing required field"):
                detail["message"] = "required query parameter is missing"
            else:  # sort=bogus lists the allowed values
                hint = typing.get_type_hints(query_type, include_extras=True).get(detail["field"])
                detail["message"] = friendly(detail["message"], hint)
        raise validation_error(details, "the query parameters are not valid") from None


_DECIMAL_INTEGER = re.compile(r"-?[0-9]{1,20}")


@functools.cache
def integer_fields(query_type: type) -> frozenset[str]:
    """The names of a query Struct's integer parameters (``int``, optional or not)."""
    def is_integer(field_type: msgspec.inspect.Type) -> bool:
        if isinstance(field_type, msgspec.inspect.Metadata):  # Annotated[int, Meta(...)]
            return is_integer(field_type.type)
        if isinstance(field_type, msgspec.inspect.UnionType):  # int | None
            return any(is_integer(t) for t in field_type.types)
        return isinstance(field_type, msgspec.inspect.IntType)

    info = msgspec.inspect.type_info(query_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(field.encode_name for field in info.fields if is_integer(field.type))


def split_list(raw: str | UnsetType, field: str) -> list[str] | None:
    """"a,b" as ["a", "b"]; None when the parameter is absent; 422 when it names nothing."""
    if raw is UNSET:
        return None
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise validation_error([{"field": field, "message": "must name at least one value"}],
                               "the query parameters are not valid")
    return items


def or_none(value: T | UnsetType) -> T | None:
    return None if value is UNSET else value


def parse_job_id(raw: str) -> int:
    """A path id that is not a valid job id names no job: 404, not 422 or 500."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= MAX_JOB_ID:
        raise not_found(f"job {raw!r} not found")
    return int(raw)


def state(request: Request) -> tuple[Queue, AppStore]:
    return request.state.queue, request.state.store


def lagging_reads(request: Request) -> AppStore:
    """The store for lists and counts that may lag a little: the read replica when
    APP_READ_DATABASE_URL names one (README, "Past one box"), else the primary."""
    return request.state.read_store


async def owned_job(request: Request, user: User) -> Job:
    """The job named in the path, if this user may see it; another user's job is a 404 too."""
    job_id = parse_job_id(request.path_params["job_id"])
    try:
        job = await request.state.queue.get(job_id)
    except JobNotFound:
        job = None
    if job is None or not may_see(user, job.owner_id):
        raise not_found(f"job {job_id} not found")
    return job


# -- shapes -------------------------------------------------------------------------------------

class JobOut(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    queue: str
    status: Literal["waiting", "queued", "running", "succeeded", "failed", "dead", "cancelled"]
    priority: int
    payload: Any
    scheduled_for: datetime
    attempts: int
    max_attempts: int
    cancel_requested: bool
    result: Any
    last_error: Annotated[str | None, msgspec.Meta(
        description="the last failure: the whole traceback for admins, its last line (`Type: message`) for others")]
    owner_id: Annotated[str | None, msgspec.Meta(
        description="who enqueued it: the engine keeps owners as text; `/auth/me`'s `owner_id` is yours")]
    worker_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job, *, admin: bool) -> JobOut:
        """``admin`` decides whether ``last_error`` is the whole traceback or its message (app/redact.py)."""
        return cls(id=job.id, kind=job.kind, queue=job.queue, status=job.status, priority=job.priority,  # type: ignore[arg-type]
                   payload=job.payload, scheduled_for=job.run_at, attempts=job.attempts,
                   max_attempts=job.max_attempts, cancel_requested=job.cancel_requested, result=job.result,
                   last_error=job.last_error if admin else exception_message(job.last_error),
                   owner_id=job.owner_id, worker_id=job.lease_owner,
                   created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at,
                   finished_at=job.finished_at)


class JobOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """What POST /jobs accepts besides the kind's payload."""

    priority: Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX, description="5 is the most urgent")] = (
        PRIORITY_DEFAULT)
    scheduled_for: AwareDatetime | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    depends_on: Annotated[list[JobId], msgspec.Meta(
        max_length=1000, description="ids of jobs (yours) that must succeed before this one runs; "
                                     "until then its status is `waiting`")] | None = None
    run_if_parent_fails: Annotated[bool, msgspec.Meta(
        description="run once the parents finished even if one ended dead or cancelled")] = False
    concurrency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=500, description=(
        "the queue's per-key limits apply to this key (a tenant, an account); see /queues"))] | None = None
    unique_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description=(
        "while a job of yours with this key is not finished, enqueueing again returns that job "
        "instead of a new one; keys are per user"))] | None = None


def _struct_name(kind: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", kind)) + "Job"


def job_create_type(kinds: dict[str, Any]) -> Any:
    """POST /jobs's body: one Struct per kind, told apart by ``kind``, whose ``payload`` is that
    kind's type. Decoding it validates the payload, and the OpenAPI document shows each kind's
    payload schema (an ``anyOf`` with a ``kind`` discriminator)."""
    variants = [
        msgspec.defstruct(_struct_name(name), [("payload", spec.payload_type)], bases=(JobOptions,), tag=name,
                          kw_only=True, forbid_unknown_fields=True, module=__name__)
        for name, spec in sorted(kinds.items())
    ]
    return functools.reduce(operator.or_, variants)


# Kinds only the app itself enqueues: an ingest job's payload names a stored file, and only the
# upload route checks that the file is the caller's.
INTERNAL_KINDS = frozenset({INGEST_KIND, BULK_KIND})
PUBLIC_KINDS = {name: spec for name, spec in app_jobs.kinds.items() if name not in INTERNAL_KINDS}
JobCreate = job_create_type(PUBLIC_KINDS)
KIND_NAMES = tuple(sorted(PUBLIC_KINDS))


SortKey = Literal["created", "-created", "priority", "-priority", "status", "-status"]


def _comma_list_pattern(words: tuple[str, ...]) -> str:
    one = "(" + "|".join(re.escape(word) for word in words) + ")"
    return f"^{one}(,{one})*$"


StatusList = Annotated[str, msgspec.Meta(description="comma-separated statuses",
                                         extra_json_schema={"pattern": _comma_list_pattern(STATUSES)})]
KindList = Annotated[str, msgspec.Meta(description="comma-separated job kinds",
                                       extra_json_schema={"pattern": _comma_list_pattern(tuple(app_jobs.kinds))})]


MAX_WAIT_SECONDS = 60  # a long poll longer than this is better served by the SSE stream


class JobGetQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    wait: Annotated[int, msgspec.Meta(ge=0, le=MAX_WAIT_SECONDS, description=(
        "long poll: answer once the job has finished (succeeded, dead, cancelled) or after this many "
        "seconds, whichever comes first; the job as it then is either way"))] = 0


class JobListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: StatusList | UnsetType = UNSET
    kind: KindList | UnsetType = UNSET
    queue: Annotated[str, msgspec.Meta(description="comma-separated queues")] | UnsetType = UNSET
    created_after: AwareDatetime | UnsetType = UNSET
    created_before: AwareDatetime | UnsetType = UNSET
    q: Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                   description="case-insensitive text search in payload and last error")] | UnsetType = UNSET
    scheduled: Annotated[bool, msgspec.Meta(description="true: only jobs queued to run later; false: none of them")] | UnsetType = UNSET
    has_error: Annotated[bool, msgspec.Meta(description="true: only jobs that failed at least once (a last error); "
                                                        "false: only those that never did")] | UnsetType = UNSET
    sort: Annotated[SortKey, msgspec.Meta(description="a leading - sorts descending")] = "-created"
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    total_max: Annotated[int, msgspec.Meta(ge=1, le=10_000_000, description=(
        "count matches only up to this many (fast on a large table); past it `total` is this number "
        "and `total_capped` is true"))] | UnsetType = UNSET


class JobPage(msgspec.Struct, kw_only=True, omit_defaults=True):
    total: int
    limit: int
    offset: int
    jobs: list[JobOut]
    total_capped: Annotated[bool, msgspec.Meta(description="more than `total_max` jobs match (left out when not)")] = False


class JobDetail(msgspec.Struct, kw_only=True):
    job: JobOut
    attempts: list[JobError]
    events: list[Event]


class BulkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: BulkAction
    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=1000)]


class BulkResponse(msgspec.Struct, kw_only=True):
    action: str
    succeeded: int
    failed: int
    results: list[BulkResult]


class JobFilterIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """GET /jobs's filters as JSON (lists where the query string takes comma-separated values)."""

    status: Annotated[list[JobStatus], msgspec.Meta(min_length=1)] | None = None
    kind: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)] | None = None
    queue: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)] | None = None
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
    q: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    scheduled: bool | None = None
    has_error: bool | None = None


class BulkFilterRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: BulkAction
    filter: JobFilterIn = msgspec.field(default_factory=JobFilterIn)


class BulkFilterResponse(msgspec.Struct, kw_only=True):
    action: str
    matched: Annotated[int, msgspec.Meta(description="jobs matching the filter when asked")]
    background: Annotated[bool, msgspec.Meta(description=f"more than {INLINE_MAX} matched: a `{BULK_KIND}` job "
                                                         "does it; follow job_id (its progress and result)")]
    job_id: int | None = None
    succeeded: int = 0  # the counts when done inline
    failed: int = 0
    errors: dict[str, int] = {}  # refusals by error code (invalid_transition, unique_key_taken, ...)


class MinuteOut(msgspec.Struct, kw_only=True):
    minute: datetime
    succeeded: int
    dead: int
    cancelled: int


class StatsOut(msgspec.Struct, kw_only=True):
    by_status: dict[str, int]
    by_kind: dict[str, int]
    by_queue: dict[str, int]
    finished_per_minute: list[MinuteOut]


class TaskCreate(TaskPayload, kw_only=True, forbid_unknown_fields=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    priority: Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = PRIORITY_DEFAULT


class TaskOut(msgspec.Struct, kw_only=True):
    id: int
    title: str
    description: str
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    result: Any
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job, *, admin: bool) -> TaskOut:
        payload = job.payload if isinstance(job.payload, dict) else {}
        return cls(id=job.id, title=str(payload.get("title", "")), description=str(payload.get("description", "")),
                   status=job.status, attempts=job.attempts, max_attempts=job.max_attempts,
                   last_error=job.last_error if admin else exception_message(job.last_error),
                   result=job.result, created_at=job.created_at,
                   updated_at=job.updated_at, started_at=job.started_at, finished_at=job.finished_at)


class TaskListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: StatusList | UnsetType = UNSET
    sort: SortKey = "-created"
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0


class TaskPage(msgspec.Struct, kw_only=True):
    total: int
    limit: int
    offset: int
    tasks: list[TaskOut]


class Me(msgspec.Struct, kw_only=True):
    id: int
    name: str
    is_admin: bool
    owner_id: Annotated[str, msgspec.Meta(description="your `id` as your jobs' `owner_id` shows it (the engine "
                                                      "keeps owners as text, so another app may use any string)")]


# -- jobs ---------------------------------------------------------------------------------------

async def _check_webhook(request: Request, user: User, hook: WebhookPayload) -> None:
    """A webhook is signed with the service's key, so only admins may have one sent; its URL
    must lead to a public address (or one APP_WEBHOOK_ALLOW_HOSTS names). Checked again at delivery."""
    if not user.is_admin:
        raise forbidden("only admins may enqueue webhook jobs: every delivery is signed with the service's "
                        "webhook secret")
    try:
        await asyncio.to_thread(resolve_webhook_url, hook.url, request.state.settings.webhook_allowed_hosts())
    except (UnsafeWebhookUrl, WebhookHostUnresolved) as exc:
        raise validation_error([{"field": "payload.url", "message": str(exc)}]) from None


@operation(summary="Enqueue a job", body=JobCreate, response=JobOut, status=201, errors=(403,),
           description="The payload is validated against the kind's type; every bad field is listed in a 422. "
                       "`webhook` and `api_ingest` jobs are for admins only (403); a webhook's URL must resolve to "
                       "public addresses only, unless APP_WEBHOOK_ALLOW_HOSTS names it (422).")
async def create_job(request: Request) -> Response:
    user = await authenticate(request)
    try:
        new = await read_json(request, JobCreate)
    except ApiError as exc:
        if exc.details and exc.details[0]["field"] == "kind" and exc.details[0]["message"].startswith("Invalid value"):
            kind = exc.details[0]["message"].removeprefix("Invalid value ")
            exc.details[0]["message"] = f"unknown job kind {kind}; expected one of {', '.join(KIND_NAMES)}"
        raise
    queue, _ = state(request)
    options: dict[str, Any] = {"priority": new.priority, "owner_id": user.owner_id}
    if new.scheduled_for is not None:
        try:
            options["run_at"] = new.scheduled_for.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59-14:00: stored, it could never be read back
            raise validation_error([{"field": "scheduled_for",
                                     "message": "must lie between years 1 and 9999 in UTC"}]) from None
    if new.max_attempts is not None:
        options["max_attempts"] = new.max_attempts
    if new.depends_on:  # only on jobs this user may see: another's is "does not exist" (a 422)
        options.update(depends_on=new.depends_on, run_if_parent_fails=new.run_if_parent_fails,
                       parents_owned_by=None if user.is_admin else user.owner_id)
    if new.concurrency_key is not None:
        options["concurrency_key"] = new.concurrency_key
    if new.unique_key is not None:  # scoped to the user: another's key must neither collide nor reveal a job
        options["unique_key"] = f"user:{user.owner_id}:{new.unique_key}"
    kind = new.__struct_config__.tag
    if kind == WEBHOOK_KIND:
        await _check_webhook(request, user, new.payload)
    if kind == API_INGEST_KIND and not user.is_admin:  # it fetches any URL and writes a table of the app
        raise forbidden("only admins may enqueue api_ingest jobs (they call out to the configured URL and write "
                        "tables); admins start a sync with POST /api/v1/syncs")
    job = await queue.enqueue(kind, msgspec.to_builtins(new.payload), **options)
    return json_response(JobOut.of(job, admin=user.is_admin), 201, {"Location": f"/jobs/{job.id}"})


def _statuses(raw: str | UnsetType) -> list[str] | None:
    statuses = split_list(raw, "status")
    for status in statuses or ():
        if status not in STATUSES:
            raise validation_error([{"field": "status",
                                     "message": f"unknown status {status!r}; expected one of {', '.join(STATUSES)}"}],
                                   "the query parameters are not valid")
    return statuses


def _escape_like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def job_filter(user: User, queue: Queue, *, statuses: list[str] | None, kinds: list[str] | None,
               queues: list[str] | None, created_after: datetime | None, created_before: datetime | None,
               q: str | None, scheduled: bool | None, has_error: bool | None,
               message: str = "the query parameters are not valid", prefix: str = "") -> JobFilter:
    """What GET /jobs and the filter-wide bulk action match: a non-admin only their own jobs."""
    for kind in kinds or ():
        if kind not in queue.registry.kinds:
            raise validation_error([{"field": f"{prefix}kind", "message": f"unknown kind {kind!r}; expected one of "
                                     f"{', '.join(sorted(queue.registry.kinds))}"}], message)
    if created_after and created_before and created_after >= created_before:
        raise validation_error([{"field": f"{prefix}created_before", "message": "must be later than created_after"}],
                               message)
    return JobFilter(owner_id=None if user.is_admin else user.owner_id, statuses=statuses, kinds=kinds, queues=queues,
                     created_after=created_after, created_before=created_before,
                     pattern=None if q is None else _escape_like(q), scheduled=scheduled, has_error=has_error)


@operation(summary="List jobs", query=JobListQuery, response=JobPage,
           description="Filter, search, sort and paginate. Non-admins see only their own jobs. "
                       "`q` is a case-insensitive substring match (ILIKE) on the payload's JSON text and the last "
                       "error. `total` counts every match.")
async def list_jobs(request: Request) -> Response:
    user = await authenticate(request)
    query = read_query(request, JobListQuery)
    queue, store = request.state.queue, lagging_reads(request)
    where = job_filter(user, queue, statuses=_statuses(query.status), kinds=split_list(query.kind, "kind"),
                       queues=split_list(query.queue, "queue"), created_after=or_none(query.created_after),
                       created_before=or_none(query.created_before), q=or_none(query.q),
                       scheduled=or_none(query.scheduled), has_error=or_none(query.has_error))
    total_max = or_none(query.total_max)
    total, jobs = await store.list_jobs(where, sort=query.sort.lstrip("-"), descending=query.sort.startswith("-"),
                                        limit=query.limit, offset=query.offset,
                                        count_limit=None if total_max is None else total_max + 1)
    capped = total_max is not None and total > total_max
    return json_response(JobPage(total=min(total, total_max) if total_max is not None else total, limit=query.limit,
                                 offset=query.offset, total_capped=capped,
                                 jobs=[JobOut.of(job, admin=user.is_admin) for job in jobs]))


@operation(summary="One job with its attempts and events", response=JobDetail, query=JobGetQuery,
           path_params={"job_id": "the job's id"}, errors=(404,))
async def get_job(request: Request) -> Response:
    user = await authenticate(request)
    query = read_query(request, JobGetQuery)
    job = await owned_job(request, user)
    queue, _ = state(request)
    if query.wait and job.status not in FINISHED_STATUSES:
        try:  # woken by the job's terminal event (one LISTEN connection per process: pgqueue/waiter.py)
            job = await queue.wait(job.id, timeout=query.wait)
        except WaitTimeout:
            job = await queue.get(job.id)
    attempts = await queue.errors(job.id)
    events = await queue.events(job.id)
    if not user.is_admin:  # the message of each failure, not its traceback
        attempts = [msgspec.structs.replace(a, error=exception_message(a.error) or "") for a in attempts]
        events = [event_for(event, admin=False) for event in events]
    return json_response(JobDetail(job=JobOut.of(job, admin=user.is_admin), attempts=attempts, events=events))


@operation(summary="Cancel a job", response=JobOut, path_params={"job_id": "the job's id"}, errors=(404, 409),
           extra_statuses={202: "The job is running: cancellation was requested, its handler stops soon"},
           description="A waiting job is cancelled at once (200); a running one is asked to stop (202); "
                       "a finished one is a 409.")
async def cancel_job(request: Request) -> Response:
    user = await authenticate(request)
    job = await owned_job(request, user)
    queue, _ = state(request)
    cancelled = await queue.cancel(job.id)
    return json_response(JobOut.of(cancelled, admin=user.is_admin), 202 if cancelled.status == "running" else 200)


@operation(summary="Re-run a dead, cancelled or failed (waiting) job now", response=JobOut, path_params={"job_id": "the job's id"},
           errors=(404, 409))
async def retry_job(request: Request) -> Response:
    user = await authenticate(request)
    job = await owned_job(request, user)
    queue, _ = state(request)
    return json_response(JobOut.of(await queue.retry(job.id), admin=user.is_admin))


@operation(summary="Run a job scheduled for later now", response=JobOut, path_params={"job_id": "the job's id"},
           errors=(404, 409), description="Only a queued job whose scheduled time is still ahead; anything else is a 409.")
async def run_job_now(request: Request) -> Response:
    user = await authenticate(request)
    job = await owned_job(request, user)
    queue, _ = state(request)
    return json_response(JobOut.of(await queue.run_now(job.id), admin=user.is_admin))


@operation(summary="Cancel, retry or delete many jobs", body=BulkRequest, response=BulkResponse,
           description="Each id is handled on its own and reported in `results` (a job you may not see is "
                       "`not_found`). A request that fails validation changes nothing.")
async def bulk_jobs(request: Request) -> Response:
    user = await authenticate(request)
    bulk = await read_json(request, BulkRequest)
    queue, store = state(request)
    ids = list(dict.fromkeys(bulk.ids))
    owners = await store.job_owners(ids)
    results = []
    for job_id in ids:
        if job_id not in owners or not may_see(user, owners[job_id][0]):
            results.append(BulkResult(id=job_id, ok=False, error=ErrorInfo("not_found", f"job {job_id} not found")))
        else:
            results.append(await apply_action(queue, bulk.action, job_id))
    succeeded = sum(result.ok for result in results)
    return json_response(BulkResponse(action=bulk.action, succeeded=succeeded, failed=len(results) - succeeded,
                                      results=results))


@operation(summary="Cancel, retry or delete every job matching a filter", body=BulkFilterRequest,
           response=BulkFilterResponse, errors=(422,),
           extra_statuses={202: f"More than {INLINE_MAX} jobs matched: a `{BULK_KIND}` job does it (`job_id`)"},
           description="The filter is GET /jobs's (JSON lists instead of comma-separated values); a non-admin's "
                       f"action touches only their own jobs. Up to {INLINE_MAX} matches are handled before the "
                       f"answer (200); more run as a background `{BULK_KIND}` job owned by you, with progress on "
                       "its event stream and the counts in its result (202). Jobs enqueued after the request "
                       "are never touched; each job follows the single-job rules (a running job is not deleted, "
                       "a succeeded one not retried), refusals are counted by error code.")
async def bulk_jobs_by_filter(request: Request) -> Response:
    user = await authenticate(request)
    bulk = await read_json(request, BulkFilterRequest)
    queue, store = state(request)
    f = bulk.filter
    where = job_filter(user, queue, statuses=f.status, kinds=f.kind, queues=f.queue, created_after=f.created_after,
                       created_before=f.created_before, q=f.q, scheduled=f.scheduled, has_error=f.has_error,
                       message="the request is not valid", prefix="filter.")
    max_id = await max_job_id(queue.pool)
    matched, _ = await store.list_jobs(where, sort="created", descending=False, limit=1,
                                       offset=0)
    if matched > INLINE_MAX:
        payload = BulkActionPayload(action=bulk.action, filter=where, max_id=max_id, matched=matched)
        job = await queue.enqueue(BULK_KIND, msgspec.to_builtins(payload), owner_id=user.owner_id)
        return json_response(BulkFilterResponse(action=bulk.action, matched=matched, background=True, job_id=job.id),
                             202, {"Location": f"/jobs/{job.id}"})
    errors: dict[str, int] = {}
    succeeded = 0
    for job_id in await matching_ids(queue.pool, where, after_id=0, max_id=max_id, limit=INLINE_MAX):
        result = await apply_action(queue, bulk.action, job_id)
        succeeded += result.ok
        if result.error is not None:
            errors[result.error.code] = errors.get(result.error.code, 0) + 1
    return json_response(BulkFilterResponse(action=bulk.action, matched=matched, background=False,
                                            succeeded=succeeded, failed=sum(errors.values()), errors=errors))


@operation(summary="Job counts by status, kind and queue, and jobs finished per minute (last hour)",
           response=StatsOut, tag="stats",
           description="Non-admins get the numbers of their own jobs.")
async def stats(request: Request) -> Response:
    user = await authenticate(request)
    store = lagging_reads(request)
    owner = None if user.is_admin else user.owner_id
    by_status = dict.fromkeys(STATUSES, 0)
    by_kind: dict[str, int] = {}
    by_queue: dict[str, int] = {}
    for row in await store.job_counts(owner):
        if row.status is not None:
            by_status[row.status] = row.jobs
        elif row.kind is not None:
            by_kind[row.kind] = row.jobs
        elif row.queue is not None:
            by_queue[row.queue] = row.jobs
    minutes = [MinuteOut(minute=m.minute, succeeded=m.succeeded, dead=m.dead, cancelled=m.cancelled)
               for m in await store.finished_per_minute(owner)]
    return json_response(StatsOut(by_status=by_status, by_kind=by_kind, by_queue=by_queue,
                                  finished_per_minute=minutes))


# -- tasks --------------------------------------------------------------------------------------

@operation(summary="Create a task (a job of kind `task` owned by you)", body=TaskCreate, response=TaskOut,
           status=201, tag="tasks",
           description="A worker runs it for `duration_seconds`, logging each step, then it succeeds or fails "
                       "with `fail_probability`; failed attempts retry and the task ends `dead` after "
                       "`max_attempts`. Changes are announced on the `task_created` / `task_updated` channels.")
async def create_task(request: Request) -> Response:
    user = await authenticate(request)
    task = await read_json(request, TaskCreate)
    queue, _ = state(request)
    payload = {field: getattr(task, field) for field in TaskPayload.__struct_fields__}
    job = await queue.enqueue("task", payload, owner_id=user.owner_id, max_attempts=task.max_attempts,
                              priority=task.priority)
    return json_response(TaskOut.of(job, admin=user.is_admin), 201, {"Location": f"/jobs/{job.id}"})


@operation(summary="Your tasks", query=TaskListQuery, response=TaskPage, tag="tasks",
           description="Only the caller's own tasks, admins included.")
async def list_tasks(request: Request) -> Response:
    user = await authenticate(request)
    query = read_query(request, TaskListQuery)
    _, store = state(request)
    where = JobFilter(owner_id=user.owner_id, kinds=["task"], statuses=_statuses(query.status))
    total, jobs = await store.list_jobs(where, sort=query.sort.lstrip("-"), descending=query.sort.startswith("-"),
                                        limit=query.limit, offset=query.offset)
    return json_response(TaskPage(total=total, limit=query.limit, offset=query.offset,
                                  tasks=[TaskOut.of(job, admin=user.is_admin) for job in jobs]))


# -- auth ---------------------------------------------------------------------------------------

@operation(summary="Who am I", response=Me, tag="auth")
async def me(request: Request) -> Response:
    user = await authenticate(request)
    return json_response(Me(id=user.id, name=user.name, is_admin=user.is_admin, owner_id=user.owner_id))


@operation(summary="A short-lived token for event streams", response=StreamToken, tag="auth",
           description="Browsers' EventSource cannot send headers: pass this as `?stream_token=` to the SSE and "
                       "WebSocket routes instead of the API token. Valid for 5 minutes (APP_STREAM_TOKEN_SECONDS).")
async def stream_token(request: Request) -> Response:
    user = await authenticate(request)
    settings = request.state.settings
    return json_response(issue_stream_token(settings.secret, user.id, settings.stream_token_seconds))


# -- the worker protocol over HTTP --------------------------------------------------------------

QueueNames = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,100}(,[A-Za-z0-9_.:-]{1,100}){0,49}$",
                                         description="comma-separated queue names")]


class ClaimQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    queues: QueueNames
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    lease_seconds: Annotated[float, msgspec.Meta(ge=5, le=3600)] | UnsetType = UNSET
    worker_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:@-]{1,200}$",
                                           description="shown as the job's worker")] | UnsetType = UNSET


class LeasedJob(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    queue: str
    payload: Any
    priority: int
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID
    lease_expires_at: datetime
    created_at: datetime


class ClaimResponse(msgspec.Struct, kw_only=True):
    worker_id: str
    jobs: list[LeasedJob]


class HeartbeatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    lease_token: uuid.UUID
    lease_seconds: Annotated[float, msgspec.Meta(ge=5, le=3600)] | None = None


class HeartbeatResponse(msgspec.Struct, kw_only=True):
    id: int
    cancel_requested: bool


class CompleteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    lease_token: uuid.UUID
    result: Any = None


class FailRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    lease_token: uuid.UUID
    error: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    retry_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=86400)] | None = None
    permanent: bool = False


class OutcomeResponse(msgspec.Struct, kw_only=True):
    id: int
    status: str
    attempts: int
    max_attempts: int
    retry_at: datetime | None = None


_WORKER_DOC = ("Admin tokens only: a worker is trusted infrastructure that sees every user's jobs. "
               "The engine's lease rules apply: a token that no longer holds the lease is a 409.")


@operation(summary="Claim runnable jobs under a lease", query=ClaimQuery, response=ClaimResponse, tag="worker",
           auth="admin", description=_WORKER_DOC)
async def worker_claim(request: Request) -> Response:
    user = await authenticate_admin(request)
    query = read_query(request, ClaimQuery)
    queues = split_list(query.queues, "queues")
    assert queues is not None  # a required parameter
    queue, _ = state(request)
    worker_id = or_none(query.worker_id) or f"http:{user.name}"
    jobs = await queue.claim(queues, query.limit, worker_id, lease_seconds=or_none(query.lease_seconds))
    request.state.metrics.claims += len(jobs)
    leased = [LeasedJob(id=j.id, kind=j.kind, queue=j.queue, payload=j.payload, priority=j.priority,
                        attempt=j.attempts, max_attempts=j.max_attempts, lease_token=j.lease_token,  # type: ignore[arg-type]
                        lease_expires_at=j.lease_expires_at, created_at=j.created_at)  # type: ignore[arg-type]
              for j in jobs]
    return json_response(ClaimResponse(worker_id=worker_id, jobs=leased))


def _path_job_id(request: Request) -> int:
    return parse_job_id(request.path_params["job_id"])


@operation(summary="Extend a lease; tells whether cancellation was requested", body=HeartbeatRequest,
           response=HeartbeatResponse, tag="worker", auth="admin", errors=(404, 409),
           path_params={"job_id": "the leased job's id"}, description=_WORKER_DOC)
async def worker_heartbeat(request: Request) -> Response:
    await authenticate_admin(request)
    job_id = _path_job_id(request)
    beat = await read_json(request, HeartbeatRequest)
    queue, _ = state(request)
    held = await queue.heartbeat([(job_id, beat.lease_token)], lease_seconds=beat.lease_seconds)
    if job_id not in held:
        raise LeaseLost(job_id)
    return json_response(HeartbeatResponse(id=job_id, cancel_requested=held[job_id]))


@operation(summary="Finish a leased job successfully", body=CompleteRequest, response=OutcomeResponse,
           tag="worker", auth="admin", errors=(404, 409), path_params={"job_id": "the leased job's id"},
           description=_WORKER_DOC)
async def worker_complete(request: Request) -> Response:
    await authenticate_admin(request)
    job_id = _path_job_id(request)
    done = await read_json(request, CompleteRequest)
    queue, _ = state(request)
    await queue.complete(job_id, done.lease_token, done.result)
    job = await queue.get(job_id)
    return json_response(OutcomeResponse(id=job.id, status=job.status, attempts=job.attempts,
                                         max_attempts=job.max_attempts))


@operation(summary="Record a failed attempt of a leased job", body=FailRequest, response=OutcomeResponse,
           tag="worker", auth="admin", errors=(404, 409), path_params={"job_id": "the leased job's id"},
           description=_WORKER_DOC + " Without `retry_delay_seconds` the kind's backoff applies; "
                                     "`permanent` sends the job straight to dead.")
async def worker_fail(request: Request) -> Response:
    await authenticate_admin(request)
    job_id = _path_job_id(request)
    failure = await read_json(request, FailRequest)
    queue, _ = state(request)
    job = await queue.fail(job_id, failure.lease_token, failure.error, retry_delay=failure.retry_delay_seconds,
                           permanent=failure.permanent)
    request.state.metrics.failures += 1
    return json_response(OutcomeResponse(id=job.id, status=job.status, attempts=job.attempts,
                                         max_attempts=job.max_attempts,
                                         retry_at=job.run_at if job.status == "failed" else None))
