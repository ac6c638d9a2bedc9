"""``POST /graphql``: ``job(id)`` and ``jobs(status, kind, first, after)`` over GraphQL, with the REST
routes' auth and ownership rules (a user sees only their own jobs, an admin every job; another
user's job is null, as it is a 404 over REST; ``lastError`` is the message only for non-admins).

Built on ``graphql-core`` (the reference implementation), an optional extra:
``pip install 'pgqueue[graphql]'``; without it the route answers 501 with a JSON error.

Incoming queries are bounded before they run: the document's length (MAX_QUERY_CHARS) and tokens,
the depth of selections (MAX_DEPTH), the number of fields (MAX_FIELDS) and of ``job`` / ``jobs``
fields, aliases included (MAX_QUERIES: each one is a database query), all counted with fragments
expanded. A query that breaks one is a 400, like a syntax or
validation error, with GraphQL's ``{"errors": [...]}`` (each with ``extensions.code``) and, like every
4xx of the API, ``error: {code, message}``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import inspect
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app.api import MAX_JOB_ID, JobOut, read_json
from app.auth import authenticate, may_see
from app.errors import ApiError
from app.openapi import operation
from app.store import JobFilter, User
from pgqueue.errors import JobNotFound
from pgqueue.models import STATUSES

MAX_QUERY_CHARS = 10_000
MAX_TOKENS = 2_000
MAX_DEPTH = 15  # graphql-core's standard introspection query is 15 deep; job and jobs need 4
MAX_FIELDS = 500  # with fragments expanded
MAX_QUERIES = 10  # job / jobs fields (aliases included): each is a database query
MAX_PAGE = 100
DEFAULT_PAGE = 20


class GraphQLRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_CHARS)]
    variables: dict[str, Any] | None = None
    operationName: str | None = None  # noqa: N815 (the name GraphQL over HTTP gives it)


class GraphQLResponse(msgspec.Struct, kw_only=True):
    """200: ``data`` (null where resolving failed) and ``errors`` when there are some."""

    data: dict[str, Any] | None
    errors: list[dict[str, Any]] | None = None


def _graphql() -> Any:
    """The graphql-core package, imported on first use (it is an optional extra)."""
    try:
        return importlib.import_module("graphql")
    except ImportError:
        raise ApiError(501, "graphql_not_installed",
                       "GraphQL needs the optional extra graphql-core: pip install 'pgqueue[graphql]'") from None


# -- the schema ---------------------------------------------------------------------------------

def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None, gql: Any) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    prefix, _, number = text.partition(":")
    if prefix != "offset" or not number.isdigit() or int(number) > 10_000_000:
        raise gql.GraphQLError("`after` is not a cursor this API gave out", extensions={"code": "BAD_USER_INPUT"})
    return int(number) + 1


def _job_fields(job: JobOut) -> dict[str, Any]:
    return {"id": str(job.id), "kind": job.kind, "queue": job.queue, "status": job.status, "priority": job.priority,
            "payload": job.payload, "result": job.result, "scheduledFor": job.scheduled_for.isoformat(),
            "attempts": job.attempts, "maxAttempts": job.max_attempts, "cancelRequested": job.cancel_requested,
            "lastError": job.last_error, "ownerId": job.owner_id, "workerId": job.worker_id,
            "createdAt": job.created_at.isoformat(), "updatedAt": job.updated_at.isoformat(),
            "startedAt": job.started_at.isoformat() if job.started_at else None,
            "finishedAt": job.finished_at.isoformat() if job.finished_at else None}


async def _resolve_job(_root: Any, info: Any, id: str) -> dict[str, Any] | None:
    request: Request = info.context["request"]
    user: User = info.context["user"]
    if not id.isascii() or not id.isdigit() or len(id) > 19 or not 1 <= int(id) <= MAX_JOB_ID:
        return None  # names no job, as a bad path id is a 404 over REST
    try:
        job = await request.state.queue.get(int(id))
    except JobNotFound:
        return None
    if job is None or not may_see(user, job.owner_id):
        return None
    return _job_fields(JobOut.of(job, admin=user.is_admin))


async def _resolve_jobs(_root: Any, info: Any, first: int | None = DEFAULT_PAGE, after: str | None = None,
                        status: list[str] | None = None, kind: list[str] | None = None) -> dict[str, Any]:
    gql = info.context["graphql"]
    first = DEFAULT_PAGE if first is None else first  # an explicit null is the default
    request: Request = info.context["request"]
    user: User = info.context["user"]
    if not 1 <= first <= MAX_PAGE:
        raise gql.GraphQLError(f"`first` must be 1-{MAX_PAGE}", extensions={"code": "BAD_USER_INPUT"})
    known = request.state.queue.registry.kinds
    for name in kind or ():
        if name not in known:
            raise gql.GraphQLError(f"unknown kind {name!r}; expected one of {', '.join(sorted(known))}",
                                   extensions={"code": "BAD_USER_INPUT"})
    offset = _offset(after, gql)
    where = JobFilter(owner_id=None if user.is_admin else user.owner_id, statuses=status or None, kinds=kind or None)
    total, jobs = await request.state.read_store.list_jobs(where, sort="created", descending=True, limit=first,
                                                           offset=offset)
    edges = [{"cursor": _cursor(offset + index), "node": _job_fields(JobOut.of(job, admin=user.is_admin))}
             for index, job in enumerate(jobs)]
    return {"edges": edges, "nodes": [edge["node"] for edge in edges], "totalCount": total,
            "pageInfo": {"hasNextPage": offset + len(jobs) < total,
                         "endCursor": edges[-1]["cursor"] if edges else None}}


@functools.cache
def build_schema() -> Any:
    gql = _graphql()
    nn, lst = gql.GraphQLNonNull, gql.GraphQLList
    string, boolean, integer = gql.GraphQLString, gql.GraphQLBoolean, gql.GraphQLInt
    json_scalar = gql.GraphQLScalarType(
        "JSON", description="Any JSON value (integers stay exact: the response is encoded by msgspec)",
        serialize=lambda value: value)
    status_enum = gql.GraphQLEnumType("JobStatus", {status: gql.GraphQLEnumValue(status) for status in STATUSES},
                                      description="waiting (for its parents), queued, running, succeeded, failed "
                                                  "(an attempt failed; it waits to retry), dead, cancelled")

    def field(kind: Any, description: str | None = None) -> Any:
        return gql.GraphQLField(kind, description=description)

    job = gql.GraphQLObjectType("Job", lambda: {
        "id": field(nn(gql.GraphQLID), "a bigint, as a string"),
        "kind": field(nn(string)), "queue": field(nn(string)), "status": field(nn(status_enum)),
        "priority": field(nn(integer), "1-5, 5 the most urgent"), "payload": field(json_scalar),
        "result": field(json_scalar), "scheduledFor": field(nn(string), "ISO 8601"),
        "attempts": field(nn(integer)), "maxAttempts": field(nn(integer)), "cancelRequested": field(nn(boolean)),
        "lastError": field(string, "the whole traceback for admins, its last line for others"),
        "ownerId": field(string), "workerId": field(string), "createdAt": field(nn(string)),
        "updatedAt": field(nn(string)), "startedAt": field(string), "finishedAt": field(string),
    })
    edge = gql.GraphQLObjectType("JobEdge", {"cursor": field(nn(string)), "node": field(nn(job))})
    page_info = gql.GraphQLObjectType("PageInfo", {"hasNextPage": field(nn(boolean)), "endCursor": field(string)})
    connection = gql.GraphQLObjectType("JobConnection", {
        "edges": field(nn(lst(nn(edge)))), "nodes": field(nn(lst(nn(job)))),
        "pageInfo": field(nn(page_info)), "totalCount": field(nn(integer), "every match, not just this page"),
    })
    query = gql.GraphQLObjectType("Query", {
        "job": gql.GraphQLField(job, args={"id": gql.GraphQLArgument(nn(gql.GraphQLID))}, resolve=_resolve_job,
                                description="one job; null when there is none or it is not yours"),
        "jobs": gql.GraphQLField(nn(connection), args={
            "status": gql.GraphQLArgument(lst(nn(status_enum))),
            "kind": gql.GraphQLArgument(lst(nn(string))),
            "first": gql.GraphQLArgument(integer, default_value=DEFAULT_PAGE, description=f"1-{MAX_PAGE}"),
            "after": gql.GraphQLArgument(string, description="the endCursor of the previous page"),
        }, resolve=_resolve_jobs, description="your jobs (every job for admins), newest first"),
    })
    return gql.GraphQLSchema(query=query)


# -- limits -------------------------------------------------------------------------------------

class QueryTooLarge(Exception):
    pass


def check_limits(gql: Any, document: Any) -> None:
    """Depth and field counts with fragments expanded; stops as soon as a limit is passed, so a
    hostile document (fragments that multiply) costs no more than the limit."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, gql.FragmentDefinitionNode)}
    fields = queries = 0

    def walk(selection_set: Any, depth: int, seen: frozenset[str]) -> None:
        nonlocal fields, queries
        for selection in selection_set.selections:
            if isinstance(selection, gql.FieldNode):
                fields += 1
                if fields > MAX_FIELDS:
                    raise QueryTooLarge(f"the query selects more than {MAX_FIELDS} fields (fragments expanded)")
                if depth == 1 and selection.name.value in ("job", "jobs"):
                    queries += 1
                    if queries > MAX_QUERIES:
                        raise QueryTooLarge(f"the query asks for job or jobs more than {MAX_QUERIES} times")
                if selection.selection_set is not None:
                    if depth + 1 > MAX_DEPTH:
                        raise QueryTooLarge(f"the query is nested more than {MAX_DEPTH} levels deep")
                    walk(selection.selection_set, depth + 1, seen)
            elif isinstance(selection, gql.InlineFragmentNode):
                walk(selection.selection_set, depth, seen)
            elif isinstance(selection, gql.FragmentSpreadNode):
                name = selection.name.value
                if name in seen or name not in fragments:
                    continue  # a cycle or an unknown fragment: validation reports it
                walk(fragments[name].selection_set, depth, seen | {name})

    for definition in document.definitions:
        if isinstance(definition, gql.OperationDefinitionNode):
            walk(definition.selection_set, 1, frozenset())


def _errors_response(status: int, errors: list[dict[str, Any]]) -> Response:
    """GraphQL's ``errors`` for GraphQL clients, and beside it the ``error`` every other 4xx of the
    API carries (its code is the first error's, in lower case)."""
    summary = {"code": errors[0]["extensions"]["code"].lower(), "message": "; ".join(e["message"] for e in errors)}
    return Response(msgspec.json.encode({"error": summary, "errors": errors}), status_code=status,
                    media_type="application/json")


def _bad_query(message: str, code: str, locations: Any = None) -> Response:
    error: dict[str, Any] = {"message": message, "extensions": {"code": code}}
    if locations:
        error["locations"] = [{"line": loc.line, "column": loc.column} for loc in locations]
    return _errors_response(400, [error])


@functools.cache
def _parse_options(gql: Any) -> dict[str, Any]:
    names = inspect.signature(gql.parse).parameters
    return {"max_tokens": MAX_TOKENS} if "max_tokens" in names else {}


@operation(summary="GraphQL: job(id) and jobs(status, kind, first, after)", tag="graphql", body=GraphQLRequest,
           response=GraphQLResponse, errors=(400, 413, 415),
           extra_statuses={501: "graphql-core (the optional extra `pgqueue[graphql]`) is not installed"},
           description=f"The REST rules apply: your own jobs (every job for admins); another user's job is null. "
                       f"Limits: {MAX_QUERY_CHARS} characters, depth {MAX_DEPTH}, {MAX_FIELDS} fields and {MAX_QUERIES} "
                       f"job/jobs fields with fragments expanded, pages of at most {MAX_PAGE}. A query that does not parse, does not validate or "
                       f"breaks a limit is a 400 with `errors`; errors while resolving come with `data` (200).")
async def graphql_endpoint(request: Request) -> Response:
    gql = _graphql()
    user = await authenticate(request)
    body = await read_json(request, GraphQLRequest)
    schema = build_schema()
    try:
        document = gql.parse(body.query, no_location=False, **_parse_options(gql))
    except gql.GraphQLError as exc:
        return _bad_query(exc.message, "GRAPHQL_PARSE_FAILED", exc.locations)
    try:
        check_limits(gql, document)
    except QueryTooLarge as exc:
        return _bad_query(str(exc), "QUERY_TOO_LARGE")
    problems = gql.validate(schema, document, max_errors=20)
    if problems:
        return _errors_response(400, [{"message": p.message, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"},
                                       **({"locations": [{"line": loc.line, "column": loc.column} for loc in p.locations]}
                                          if p.locations else {})} for p in problems])
    result = gql.execute(schema, document, variable_values=body.variables, operation_name=body.operationName,
                         context_value={"request": request, "user": user, "graphql": gql})
    if inspect.isawaitable(result):
        result = await result
    errors = None
    if result.errors:
        for error in result.errors:  # a bug of ours, not the query's: the app's 500 handler logs it
            if error.original_error is not None and not isinstance(error.original_error, gql.GraphQLError):
                raise error.original_error
        errors = [{"message": e.message, "path": e.path, "extensions": {"code": (e.extensions or {}).get("code", "ERROR")}}
                  for e in result.errors]
    if result.data is None and errors and all(e["path"] is None for e in errors):
        # variables that do not fit the operation: nothing ran (GraphQL over HTTP says 400)
        return _errors_response(400, errors)
    # data is there (null too) once execution started; errors only when there are some
    answer: dict[str, Any] = {"data": result.data} | ({"errors": errors} if errors else {})
    return Response(msgspec.json.encode(answer), media_type="application/json")
