"""The OpenAPI 3.1 document, generated from the routes and their msgspec types, and /docs.

Each endpoint carries an ``OperationDoc`` (set by ``@operation(...)``): the msgspec types of
its query parameters, body and response, its success status and the errors it may answer.
``build_openapi`` walks the app's routes and turns those types into JSON Schema with
``msgspec.json.schema_components``; no schema is written by hand. ``/docs`` is one static
HTML page (no CDN, works offline) that renders the operations from /openapi.json.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from app.errors import ErrorBody

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{name}"

_ERROR_TEXT = {
    400: "Malformed JSON or an unreadable request",
    401: "Missing or invalid token",
    403: "The token is valid but not allowed here (admin only)",
    404: "No such job, or not yours",
    409: "The job's state does not allow this, or the lease is no longer yours",
    413: "The body is larger than the limit",
    415: "The body is not application/json",
    422: "A field, a query parameter or the job payload is not valid",
    503: "The database is not reachable or not migrated",
}


class OperationDoc(msgspec.Struct, kw_only=True):
    summary: str
    description: str = ""
    tag: str = "jobs"
    query: Any = None  # a msgspec Struct whose fields are the query parameters
    body: Any = None
    response: Any = None
    status: int = 200
    media_type: str = "application/json"  # of the success response
    errors: tuple[int, ...] = ()
    auth: str = "bearer"  # bearer, admin, stream (bearer or ?stream_token=) or none
    path_params: dict[str, str] = {}  # name -> description (all path parameters are int64 ids ...
    path_param_schemas: dict[str, Any] = {}  # ... except those given a JSON schema here (e.g. a queue name)
    extra_statuses: dict[int, str] = {}  # other non-error statuses (e.g. 202)


def operation(**doc: Any) -> Callable[[F], F]:
    """Attach an OperationDoc to an endpoint; ``build_openapi`` finds it on the route."""

    def attach(endpoint: F) -> F:
        endpoint.openapi = OperationDoc(**doc)  # type: ignore[attr-defined]
        return endpoint

    return attach


def _query_parameters(query_type: Any, schemas: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, Any]]:
    name = ref["$ref"].rsplit("/", 1)[-1]
    struct_schema = schemas.pop(name)
    required = set(struct_schema.get("required", []))
    params = []
    for field, schema in struct_schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": field, "in": "query", "required": field in required, "schema": schema}
        if "description" in schema:
            param["description"] = schema["description"]
        params.append(param)
    return params


def _operations(routes: Sequence[BaseRoute]) -> list[tuple[str, str, OperationDoc]]:
    found = []
    for route in routes:
        doc = getattr(getattr(route, "endpoint", None), "openapi", None)
        if isinstance(route, Route) and isinstance(doc, OperationDoc):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((route.path, method.lower(), doc))
    return found


def build_openapi(routes: Sequence[BaseRoute], *, title: str = "pgqueue API", version: str = "0.1.0") -> dict[str, Any]:
    operations = _operations(routes)
    types: list[Any] = [ErrorBody]
    for _path, _method, doc in operations:
        types += [t for t in (doc.query, doc.body, doc.response) if t is not None]
    unique = list(dict.fromkeys(types))
    refs, schemas = msgspec.json.schema_components(unique, ref_template=REF_TEMPLATE)
    ref_of = dict(zip(unique, refs, strict=True))
    query_params: dict[Any, list[dict[str, Any]]] = {}
    for _path, _method, doc in operations:
        if doc.query is not None and doc.query not in query_params:
            query_params[doc.query] = _query_parameters(doc.query, schemas, ref_of[doc.query])

    paths: dict[str, dict[str, Any]] = {}
    for path, method, doc in operations:
        op: dict[str, Any] = {
            "operationId": f"{method}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_') or 'root'}",
            "summary": doc.summary,
            "tags": [doc.tag],
        }
        if doc.description:
            op["description"] = doc.description
        parameters = [
            {"name": name, "in": "path", "required": True, "description": text,
             "schema": doc.path_param_schemas.get(name, {"type": "integer", "format": "int64"})}
            for name, text in doc.path_params.items()
        ]
        if doc.query is not None:
            parameters += query_params[doc.query]
        if parameters:
            op["parameters"] = parameters
        if doc.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[doc.body]}}}
        success: dict[str, Any] = {"description": "Success"}
        if doc.response is not None:
            success["content"] = {doc.media_type: {"schema": ref_of[doc.response]}}
        elif doc.media_type != "application/json":
            success["content"] = {doc.media_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(doc.status): success}
        for status, text in doc.extra_statuses.items():
            responses[str(status)] = {**success, "description": text}
        errors = set(doc.errors)
        if doc.auth != "none":
            errors.add(401)
        if doc.auth == "admin":
            errors.add(403)
        if doc.body is not None:
            errors |= {400, 413, 415, 422}
        if doc.query is not None or doc.path_params:
            errors.add(422 if doc.query is not None else 404)
        for status in sorted(errors):
            responses[str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": ref_of[ErrorBody]}},
            }
        op["responses"] = responses
        if doc.auth in ("bearer", "admin"):
            op["security"] = [{"bearer": []}]
        elif doc.auth == "stream":
            op["security"] = [{"bearer": []}, {"streamToken": []}]
        else:
            op["security"] = []
        paths.setdefault(path, {})[method] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "A Postgres-native job queue. Every error is "
                           '`{"error": {"code", "message", "details": [{"field", "message"}]}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API token from `python -m app create-user NAME`"},
                "streamToken": {"type": "apiKey", "in": "query", "name": "stream_token",
                                "description": "A 5-minute token from POST /auth/stream-token (for EventSource)"},
            },
        },
    }


@operation(summary="This OpenAPI document", tag="docs", auth="none")
async def openapi_json(request: Request) -> Response:
    document = build_openapi(request.app.routes)
    return Response(msgspec.json.encode(document), media_type="application/json")


@operation(summary="Human-readable API docs (offline, no CDN)", tag="docs", auth="none", media_type="text/html")
async def docs_page(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgqueue API</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7fa; }
  header { background: #1d2330; color: #fff; padding: 1rem 2rem; }
  header h1 { margin: 0; font-size: 1.3rem; }
  main { max-width: 960px; margin: 1.5rem auto; padding: 0 1rem; }
  details { background: #fff; border: 1px solid #d9dce3; border-radius: 6px; margin: .5rem 0; }
  summary { cursor: pointer; padding: .6rem .9rem; display: flex; gap: .8rem; align-items: baseline; }
  .method { font: bold 12px monospace; text-transform: uppercase; padding: .15rem .45rem; border-radius: 4px;
            color: #fff; min-width: 3.8rem; text-align: center; }
  .get { background: #2f7dd1; } .post { background: #2b9a55; } .delete { background: #c8423b; }
  .put, .patch { background: #b8860b; }
  .path { font-family: monospace; font-weight: 600; }
  .body { padding: .2rem 1rem 1rem; border-top: 1px solid #eceef2; }
  table { border-collapse: collapse; width: 100%; margin: .4rem 0; }
  td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eceef2; vertical-align: top; }
  pre { background: #f0f2f6; padding: .6rem; border-radius: 4px; overflow-x: auto; font-size: 12.5px; }
  h2 { margin-top: 2rem; font-size: 1.1rem; text-transform: capitalize; }
  .muted { color: #667; }
</style>
</head>
<body>
<header><h1>pgqueue API</h1><div class="muted" id="info"></div></header>
<main id="ops"><p>Loading <a href="openapi.json">openapi.json</a>&hellip;</p></main>
<script>
"use strict";
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function resolve(schema, doc, depth) {
  if (!schema || depth > 6) return schema;
  if (schema.$ref) return resolve(doc.components.schemas[schema.$ref.split("/").pop()], doc, depth + 1);
  if (Array.isArray(schema)) return schema.map(s => resolve(s, doc, depth + 1));
  if (typeof schema !== "object") return schema;
  const out = {};
  for (const [k, v] of Object.entries(schema)) out[k] = typeof v === "object" ? resolve(v, doc, depth + 1) : v;
  return out;
}
function render(doc) {
  document.getElementById("info").textContent = doc.info.title + " " + doc.info.version + " - OpenAPI " + doc.openapi;
  const main = document.getElementById("ops");
  main.replaceChildren(el("p", {}, doc.info.description || ""));
  const byTag = {};
  for (const [path, methods] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(methods))
      (byTag[(op.tags || ["other"])[0]] ||= []).push([path, method, op]);
  for (const [tag, ops] of Object.entries(byTag)) {
    main.append(el("h2", {}, tag));
    for (const [path, method, op] of ops) {
      const body = el("div", {class: "body"});
      if (op.description) body.append(el("p", {}, op.description));
      const auth = (op.security || []).map(s => Object.keys(s)[0]).join(" or ") || "none";
      body.append(el("p", {class: "muted"}, "Authentication: " + auth));
      if (op.parameters && op.parameters.length) {
        const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
                                         el("th", {}, "schema"), el("th", {}, "description")));
        for (const p of op.parameters)
          table.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in),
                          el("td", {}, el("code", {}, JSON.stringify(p.schema))), el("td", {}, p.description || "")));
        body.append(table);
      }
      if (op.requestBody) {
        const schema = op.requestBody.content["application/json"].schema;
        body.append(el("h4", {}, "Request body (application/json)"),
                    el("pre", {}, JSON.stringify(resolve(schema, doc, 0), null, 2)));
      }
      body.append(el("h4", {}, "Responses"));
      for (const [status, r] of Object.entries(op.responses)) {
        body.append(el("p", {}, el("b", {}, status), " " + r.description));
        const content = r.content && Object.values(r.content)[0];
        if (content && content.schema && status < 400)
          body.append(el("pre", {}, JSON.stringify(resolve(content.schema, doc, 0), null, 2)));
      }
      main.append(el("details", {}, el("summary", {}, el("span", {class: "method " + method}, method),
                                       el("span", {class: "path"}, path), el("span", {}, op.summary || "")), body));
    }
  }
}
fetch("openapi.json").then(r => r.json()).then(render).catch(e => {
  document.getElementById("ops").textContent = "Could not load openapi.json: " + e;
});
</script>
</body>
</html>
"""
