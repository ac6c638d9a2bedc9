"""The browser dashboard: vanilla JS modules, no CDN, no build step. It talks to the same REST API
and event streams as any client, with the API token the user pastes (kept in sessionStorage).

Every page has its own URL (PAGES below): one shared frame (shell.html, static/shell.js: sign-in,
navigation) and the page's module, static/pages/<page>.js. `/` redirects to /dashboard."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.api import KIND_NAMES, parse_job_id
from app.openapi import operation

HERE = Path(__file__).parent
SHELL_TEMPLATE = (HERE / "shell.html").read_text()

# The page needs no API call to learn the kinds; `</` is escaped so no value can end the <script>.
_NONCE_PLACEHOLDER = "__NONCE__"


@operation(summary="The dashboard (redirects to /dashboard)", tag="docs", auth="none", media_type="text/html",
           extra_statuses={307: "to /dashboard"})
async def root_redirect(request: Request) -> Response:
    # a body of its own, so the answer has a Content-Type like the one documented
    return HTMLResponse('<a href="/dashboard">/dashboard</a>', status_code=307, headers={"Location": "/dashboard"})


# page name (static/pages/<name>.js) -> (URL, title)
PAGES: dict[str, tuple[str, str]] = {
    "overview": ("/dashboard", "Overview"),
    "jobs": ("/dashboard/jobs", "Jobs"),
    "job": ("/dashboard/jobs/{job_id}", "Job"),
    "create": ("/dashboard/new", "New job"),
    "schedules": ("/dashboard/schedules", "Schedules"),
    "uploads": ("/dashboard/uploads", "Uploads"),
    "syncs": ("/dashboard/syncs", "Syncs"),
}


def render_page(name: str, nonce: str, params: dict[str, object]) -> str:
    data = {"kinds": sorted(KIND_NAMES), "params": params}
    data_json = msgspec.json.encode(data).decode().replace("</", "<\\/")
    return (SHELL_TEMPLATE.replace("__TITLE__", PAGES[name][1]).replace("__PAGE__", name)
            .replace(_NONCE_PLACEHOLDER, nonce).replace("__DATA__", data_json))


def _page_endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        params: dict[str, object] = {}
        if "job_id" in request.path_params:
            params["job_id"] = parse_job_id(request.path_params["job_id"])
        html = render_page(name, nonce, params)
        # our own scripts only ('self' for the page modules, the nonce for the entry point); no
        # inline style attributes are needed by the pages, but SVG charts set presentation attributes
        policy = (f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
                  "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": policy,
                                           "X-Content-Type-Options": "nosniff"})
    endpoint.__name__ = f"dashboard_{name}"
    endpoint.__doc__ = f"The dashboard's {PAGES[name][1]} page"
    path_params = {"job_id": "the job's id"} if name == "job" else {}
    return operation(summary=f"Dashboard: {PAGES[name][1]}", tag="docs", auth="none", media_type="text/html",
                     path_params=path_params, errors=(404,) if path_params else ())(endpoint)


ROUTES: list[BaseRoute] = [
    Route("/", root_redirect, methods=["GET"]),
    *(Route(url, _page_endpoint(name), methods=["GET"]) for name, (url, _title) in PAGES.items()),
    Mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static"),
]
