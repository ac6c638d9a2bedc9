"""The browser dashboard: one self-contained HTML page (app/dashboard/dashboard.html: vanilla JS, no CDN,
no build step) served at `/` and `/dashboard`. It talks to the same REST API and event streams
as any client, with the API token the user pastes (kept in sessionStorage)."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from app.api import KIND_NAMES
from app.openapi import operation

PAGE_TEMPLATE = (Path(__file__).parent / "dashboard.html").read_text()

# The page needs no API call to learn the kinds; `</` is escaped so no value can end the <script>.
_KINDS_PLACEHOLDER, _NONCE_PLACEHOLDER = "__KINDS__", "__NONCE__"


def render_dashboard(kinds: list[str], nonce: str) -> str:
    kinds_json = msgspec.json.encode(sorted(kinds)).decode().replace("</", "<\\/")
    return PAGE_TEMPLATE.replace(_NONCE_PLACEHOLDER, nonce).replace(_KINDS_PLACEHOLDER, kinds_json)


@operation(summary="The browser dashboard", tag="docs", auth="none", media_type="text/html")
async def dashboard_page(request: Request) -> Response:
    nonce = secrets.token_urlsafe(16)
    # the kinds POST /jobs accepts: not ingest_file, which only an upload may enqueue
    html = render_dashboard(list(KIND_NAMES), nonce)
    # Only our own inline script may run (a nonce per response); the page holds no secrets.
    policy = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
              "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": policy,
                                       "X-Content-Type-Options": "nosniff"})
