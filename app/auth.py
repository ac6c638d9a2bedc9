"""Who is calling: API tokens (``Authorization: Bearer``) and short-lived stream tokens.

- API tokens are ``pgq_`` + 32 random bytes (URL-safe base64). Only their SHA-256 is stored;
  a request's token is hashed, looked up by hash, and the stored hash compared with
  ``hmac.compare_digest``. A fast hash is enough: the token has 256 bits of entropy.
- Stream tokens exist because a browser's EventSource cannot send headers, and a long-lived
  API token in a URL ends up in logs. ``POST /auth/stream-token`` (with the API token) returns
  ``<user_id>.<expires_unix>.<HMAC-SHA256(secret, "user_id.expires")>``, valid for
  ``APP_STREAM_TOKEN_SECONDS`` (5 minutes); SSE and WebSocket routes accept it as
  ``?stream_token=``. It grants read access to streams only, and no cookies are used, so
  there is no CSRF surface.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import msgspec
from starlette.requests import HTTPConnection

from app.errors import ApiError
from app.store import AppStore, User

TOKEN_PREFIX = "pgq_"
_BEARER = "bearer "


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="pgqueue"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def _bearer_token(connection: HTTPConnection) -> str:
    header = connection.headers.get("authorization")
    if not header:
        raise unauthorized("missing_token", "authentication required: send `Authorization: Bearer <token>`")
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER):].strip():
        raise unauthorized("invalid_token", "the Authorization header must be `Bearer <token>`")
    return header[len(_BEARER):].strip()


async def user_for_api_token(store: AppStore, token: str) -> User | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    token_hash = hash_token(token)
    found = await store.user_by_token_hash(token_hash)
    if found is None or not hmac.compare_digest(found.token_hash, token_hash):
        return None
    return found.user()


async def authenticate(connection: HTTPConnection) -> User:
    """The user behind the request's API token; 401 when it is missing or unknown."""
    token = _bearer_token(connection)
    user = await user_for_api_token(connection.state.store, token)
    if user is None:
        raise unauthorized("invalid_token", "the API token is not valid")
    return user


async def authenticate_admin(connection: HTTPConnection) -> User:
    user = await authenticate(connection)
    if not user.is_admin:
        raise forbidden("this endpoint needs an admin token")
    return user


async def authenticate_metrics(connection: HTTPConnection) -> None:
    """For /metrics: open with APP_METRICS_PUBLIC, else APP_METRICS_TOKEN or an admin's API token."""
    settings = connection.state.settings
    if settings.metrics_public:
        return
    token = _bearer_token(connection)
    if settings.metrics_token and hmac.compare_digest(token.encode(), settings.metrics_token.encode()):
        return
    user = await user_for_api_token(connection.state.store, token)
    if user is None:
        raise unauthorized("invalid_token", "the token is neither APP_METRICS_TOKEN nor a valid API token")
    if not user.is_admin:
        raise forbidden("/metrics needs an admin token or APP_METRICS_TOKEN")


# -- stream tokens ------------------------------------------------------------------------------

class StreamToken(msgspec.Struct, kw_only=True):
    token: str
    expires_at: int  # unix seconds


def _signature(secret: str, message: str) -> str:
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_stream_token(secret: str, user_id: int, lifetime_seconds: int, now: float | None = None) -> StreamToken:
    expires = int((time.time() if now is None else now) + lifetime_seconds)
    message = f"{user_id}.{expires}"
    return StreamToken(token=f"{message}.{_signature(secret, message)}", expires_at=expires)


def verify_stream_token(secret: str, token: str, now: float | None = None) -> int | None:
    """The user id a stream token was issued to, or None when it is forged, malformed or expired."""
    parts = token.split(".")
    # ASCII only: compare_digest refuses (TypeError) non-ASCII strings, and int() reads other digits
    if not token.isascii() or len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or len(token) > 200:
        return None
    user_id, expires, signature = parts
    if not hmac.compare_digest(_signature(secret, f"{user_id}.{expires}"), signature):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return int(user_id)


async def authenticate_stream(connection: HTTPConnection) -> User:
    """For SSE and WebSocket routes: ``?stream_token=`` when present, else the Bearer header."""
    token = connection.query_params.get("stream_token")
    if token is None:
        return await authenticate(connection)
    user_id = verify_stream_token(connection.state.settings.secret, token)
    user = None if user_id is None else await connection.state.store.user_by_id(user_id)
    if user is None:
        raise unauthorized("invalid_token", "the stream token is not valid or has expired")
    return user


def may_see(user: User, owner_id: str | None) -> bool:
    """Admins see every job; anyone else only their own."""
    return user.is_admin or owner_id == user.owner_id
