"""Every error the API returns, as one JSON shape, and the handlers that produce it.

    HTTP/1.1 422 Unprocessable Content
    {"error": {"code": "validation_error",
               "message": "the request is not valid",
               "details": [{"field": "payload.to", "message": "Object missing required field `to`"}]}}

``code`` is stable and machine-readable, ``message`` is for humans, ``details`` lists field
errors (``field`` is a dotted path into the body or the name of a query parameter; ``$`` is
the whole body) and is empty for errors that are not about fields. 404 and 405 from routing,
engine errors and unexpected exceptions (500, always a bug) all use it.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import msgspec
from psycopg import OperationalError
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from pgqueue.errors import (
    DatabaseUnavailable,
    InvalidPayload,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    PgQueueError,
    UniqueKeyTaken,
    UnknownKind,
)

log = logging.getLogger("app.errors")


class FieldError(msgspec.Struct):
    field: str
    message: str


class ErrorInfo(msgspec.Struct):
    code: str
    message: str
    details: list[FieldError] = []


class ErrorBody(msgspec.Struct):
    """The body of every error response."""

    error: ErrorInfo


class ApiError(Exception):
    """Raise from a route to answer with an error body; status and code say what went wrong."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def validation_error(details: list[dict[str, str]], message: str = "the request is not valid") -> ApiError:
    return ApiError(422, "validation_error", message, details)


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`$")


def pinpoint(details: list[dict[str, str]]) -> list[dict[str, str]]:
    """msgspec reports a missing or unknown field at the object holding it; name the field itself."""
    out = []
    for detail in details:
        match = _NAMED_FIELD.match(detail["message"])
        if match:
            parent = detail["field"]
            name = match.group("name")
            detail = {**detail, "field": name if parent in ("$", "") else f"{parent}.{name}"}
        out.append(detail)
    return out


def field_errors(exc: msgspec.ValidationError, root: str = "$") -> list[dict[str, str]]:
    """msgspec's "Expected `int`, got `str` - at `$.payload.count`" as [{"field": "payload.count", ...}].

    ``root`` names the value being validated when the error is about all of it.
    """
    match = _AT.match(str(exc))
    assert match is not None
    path = (match.group("path") or "").replace("[", ".").replace("]", "").lstrip(".")
    if root != "$":
        path = f"{root}.{path}" if path else root
    return pinpoint([{"field": path or "$", "message": match.group("message")}])


def error_response(status: int, code: str, message: str, details: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(ErrorInfo(code, message, [FieldError(**d) for d in details or []]))
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


# -- handlers (registered by create_app) ---------------------------------------------------------

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    503: "service_unavailable",
}


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTPExceptions: an unknown path (404) or method (405)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such resource: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
    code = _HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"))
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path accepts: one path may be served by several routes (one per method),
    and Starlette's 405 names only the first route's methods."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


async def handle_engine_error(request: Request, exc: Exception) -> Response:
    """The engine's errors that reach a route untranslated map to their natural status."""
    if isinstance(exc, JobNotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, UniqueKeyTaken):
        return error_response(409, "unique_key_taken", str(exc))
    if isinstance(exc, InvalidTransition):
        return error_response(409, "invalid_transition", str(exc))
    if isinstance(exc, LeaseLost):
        return error_response(409, "lease_lost", str(exc))
    if isinstance(exc, InvalidPayload):
        return error_response(422, "validation_error", "the job is not valid", exc.errors)
    if isinstance(exc, UnknownKind):
        return error_response(422, "validation_error", str(exc), [{"field": "kind", "message": str(exc)}])
    return await handle_unexpected(request, exc)


async def handle_database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "database_unavailable", "the database is not reachable; try again shortly",
                          headers={"Retry-After": "5"})


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """A 500 is a bug: log the traceback, tell the client nothing internal."""
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error (this is a bug; it has been logged)")


def exception_handlers() -> dict[Any, Any]:
    return {
        ApiError: handle_api_error,
        HTTPException: handle_http_exception,
        DatabaseUnavailable: handle_database_unavailable,
        OperationalError: handle_database_unavailable,
        PoolTimeout: handle_database_unavailable,
        PgQueueError: handle_engine_error,
        Exception: handle_unexpected,
    }
