"""POST /graphql (app/graphql_api.py) on the live server, tested like the REST routes: auth, another
user's job invisible, pages with cursors, filters, a malformed query -> 400 JSON, too deep or too
many fields -> 400, a bad body -> the REST 4xx, and a clear 501 without the optional extra."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

pytest.importorskip("graphql", reason="the optional extra pgqueue[graphql] (graphql-core) is not installed")

NOTE = {"user": "ada", "message": "hi"}
JOB_FIELDS = "id kind status priority payload ownerId lastError createdAt"


async def enqueue(server: LiveServer, user: ApiUser, kind: str = "notification", **fields: Any) -> int:
    async with server.client(user) as http:
        response = await http.post("/jobs", json={"kind": kind, "payload": fields.pop("payload", NOTE), **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def gql(server: LiveServer, user: ApiUser | None, query: str, **variables: Any) -> tuple[int, dict[str, Any]]:
    async with server.client(user) as http:
        response = await http.post("/graphql", json={"query": query, "variables": variables or None})
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()


async def test_job_by_id_with_ownership(live_server: LiveServer, alice: ApiUser, bob: ApiUser, admin: ApiUser) -> None:
    big = 2**62 + 1
    job_id = await enqueue(live_server, alice, "external", payload={"data": {"n": big, "html": "<script>"}})
    query = f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
    status, body = await gql(live_server, alice, query, id=str(job_id))
    assert status == 200 and "errors" not in body, body
    job = body["data"]["job"]
    assert (job["id"], job["kind"], job["status"], job["ownerId"]) == (str(job_id), "external", "queued", str(alice.id))
    assert job["payload"] == {"data": {"n": big, "html": "<script>"}}, "big integers stay exact"

    assert (await gql(live_server, bob, query, id=str(job_id))) == (200, {"data": {"job": None}}), \
        "another user's job is null, as it is a 404 over REST"
    assert (await gql(live_server, admin, query, id=str(job_id)))[1]["data"]["job"]["id"] == str(job_id)
    for missing in ("999999", "0", "abc", "99999999999999999999"):
        assert (await gql(live_server, alice, query, id=missing)) == (200, {"data": {"job": None}})


async def test_auth_is_the_rest_auth(live_server: LiveServer) -> None:
    status, body = await gql(live_server, None, "{ jobs { totalCount } }")
    assert status == 401 and body["error"]["code"] in ("missing_token", "invalid_token"), body
    async with live_server.client() as http:
        response = await http.post("/graphql", json={"query": "{ jobs { totalCount } }"},
                                   headers={"Authorization": "Bearer pgq_not-a-token"})
    assert response.status_code == 401


async def test_jobs_pages_filters_and_only_your_own(live_server: LiveServer, alice: ApiUser, bob: ApiUser,
                                                    admin: ApiUser) -> None:
    alices = [await enqueue(live_server, alice) for _ in range(5)]
    email = await enqueue(live_server, alice, "email", payload={"to": "a@example.com", "subject": "s"})
    bobs = await enqueue(live_server, bob)
    page = "query($after: String) { jobs(first: 2, after: $after, kind: [\"notification\"]) " \
           "{ totalCount nodes { id } pageInfo { hasNextPage endCursor } edges { cursor node { id } } } }"
    seen: list[int] = []
    after = None
    while True:
        status, body = await gql(live_server, alice, page, after=after)
        assert status == 200 and "errors" not in body, body
        jobs = body["data"]["jobs"]
        assert jobs["totalCount"] == 5
        assert [e["node"]["id"] for e in jobs["edges"]] == [n["id"] for n in jobs["nodes"]]
        seen += [int(node["id"]) for node in jobs["nodes"]]
        if not jobs["pageInfo"]["hasNextPage"]:
            break
        after = jobs["pageInfo"]["endCursor"]
    assert seen == sorted(alices, reverse=True), "newest first, each once, across pages"

    _, body = await gql(live_server, alice, '{ jobs(status: [queued]) { totalCount } }')
    assert body["data"]["jobs"]["totalCount"] == 6
    _, body = await gql(live_server, alice, '{ jobs(kind: ["email"]) { nodes { id } } }')
    assert body["data"]["jobs"]["nodes"] == [{"id": str(email)}]
    _, body = await gql(live_server, alice, '{ jobs(status: [succeeded]) { totalCount nodes { id } } }')
    assert body["data"]["jobs"] == {"totalCount": 0, "nodes": []}
    _, body = await gql(live_server, bob, "{ jobs { nodes { id } } }")
    assert body["data"]["jobs"]["nodes"] == [{"id": str(bobs)}]
    _, body = await gql(live_server, admin, "{ jobs(first: 100) { totalCount } }")
    assert body["data"]["jobs"]["totalCount"] == 7


@pytest.mark.parametrize(("query", "code", "words"), [
    ("{ jobs { totalCount }", "GRAPHQL_PARSE_FAILED", "Syntax Error"),
    ("{ jobs { nope } }", "GRAPHQL_VALIDATION_FAILED", "nope"),
    ("{ jobs(status: [sleeping]) { totalCount } }", "GRAPHQL_VALIDATION_FAILED", "sleeping"),
    ("{ jobs { edges { node { id kind } } } }", None, None),
    ("{ jobs { edges { node { id } } pageInfo { endCursor } } a: jobs { totalCount } }", None, None),
    ("query Q { ...F } fragment F on Query { ...F }", "GRAPHQL_VALIDATION_FAILED", "F"),
])
async def test_malformed_queries_are_400_json(live_server: LiveServer, alice: ApiUser, query: str,
                                              code: str | None, words: str | None) -> None:
    status, body = await gql(live_server, alice, query)
    if code is None:
        assert status == 200 and "errors" not in body, body
        return
    assert status == 400, body
    assert body["errors"][0]["extensions"]["code"] == code, body
    assert words in body["errors"][0]["message"], body


def nested_introspection(levels: int) -> str:
    """{ __schema { types { fields { type { ofType { ofType ... { name } } } } } } }: ``levels`` deep."""
    chain = (["__schema", "types", "fields", "type"] + ["ofType"] * levels)[:levels - 1]
    return "{ " + " { ".join(chain) + " { name" + " }" * (len(chain) + 1)


async def test_too_deep_is_400(live_server: LiveServer, alice: ApiUser) -> None:
    from app.graphql_api import MAX_DEPTH
    status, body = await gql(live_server, alice, nested_introspection(MAX_DEPTH))
    assert status == 200 and "errors" not in body, body
    status, body = await gql(live_server, alice, nested_introspection(MAX_DEPTH + 1))
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "QUERY_TOO_LARGE", body
    assert f"nested more than {MAX_DEPTH} levels" in body["errors"][0]["message"]
    # through a fragment too
    inner = nested_introspection(MAX_DEPTH + 1).removeprefix("{ __schema ").removesuffix(" }")
    status, body = await gql(live_server, alice, "{ __schema { ...S } } fragment S on __Schema " + inner)
    assert status == 400 and "nested more than" in body["errors"][0]["message"], body


async def test_size_limits(live_server: LiveServer, alice: ApiUser) -> None:
    from app.graphql_api import MAX_FIELDS, MAX_QUERIES
    aliases = [f"j{i}: jobs {{ totalCount }}" for i in range(MAX_QUERIES + 1)]
    status, body = await gql(live_server, alice, "{ " + " ".join(aliases[:-1]) + " }")
    assert status == 200 and len(body["data"]) == MAX_QUERIES, body
    status, body = await gql(live_server, alice, "{ " + " ".join(aliases) + " }")
    assert status == 400 and f"more than {MAX_QUERIES} times" in body["errors"][0]["message"], body
    status, body = await gql(live_server, alice, "{ jobs { " + " ".join(f"t{i}: totalCount" for i in range(MAX_FIELDS)) + " } }")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "QUERY_TOO_LARGE", body
    assert str(MAX_FIELDS) in body["errors"][0]["message"]
    # fragments that multiply: 2^20 fields once expanded, refused after MAX_FIELDS
    fragments = " ".join(f"fragment F{i} on JobConnection {{ ...F{i + 1} ...F{i + 1} }}" for i in range(20))
    status, body = await gql(live_server, alice,
                             "{ jobs { ...F0 } } " + fragments + " fragment F20 on JobConnection { totalCount }")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "QUERY_TOO_LARGE", body


async def test_bad_arguments_and_bodies(live_server: LiveServer, alice: ApiUser) -> None:
    status, body = await gql(live_server, alice, "{ jobs(first: 0) { totalCount } }")
    assert status == 200 and body["data"] is None and "first" in body["errors"][0]["message"], body
    status, body = await gql(live_server, alice, "{ jobs(first: null, after: null, status: null, kind: null) "
                                                 "{ totalCount } }")
    assert status == 200 and body == {"data": {"jobs": {"totalCount": 0}}}, "null is the default"
    status, body = await gql(live_server, alice, '{ jobs(after: "bm9wZQ==") { totalCount } }')
    assert "cursor" in body["errors"][0]["message"], body
    status, body = await gql(live_server, alice, '{ jobs(kind: ["fax"]) { totalCount } }')
    assert "unknown kind 'fax'" in body["errors"][0]["message"], body
    status, body = await gql(live_server, alice, "query($id: ID!) { job(id: $id) { id } }")
    assert status == 400 and "$id" in body["errors"][0]["message"], body
    async with live_server.client(alice) as http:
        assert (await http.post("/graphql", content=b"{ jobs { totalCount } }",
                                headers={"Content-Type": "application/graphql"})).status_code == 415
        response = await http.post("/graphql", json={"query": ""})
        assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "query"
        response = await http.post("/graphql", json={"query": "{ " + "a " * 6000 + "}"})
        assert response.status_code == 422, "longer than the limit"
        assert (await http.post("/graphql", content=b"{", headers={"Content-Type": "application/json"})).status_code == 400
        assert (await http.get("/graphql")).status_code == 405


async def test_without_the_extra_the_route_says_so(live_server: LiveServer, alice: ApiUser,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "graphql", None)  # what `import graphql` meets when it is not installed
    status, body = await gql(live_server, alice, "{ jobs { totalCount } }")
    assert status == 501 and body["error"]["code"] == "graphql_not_installed", body
    assert "pgqueue[graphql]" in body["error"]["message"]


async def test_the_standard_introspection_query_fits_the_limits(live_server: LiveServer, alice: ApiUser) -> None:
    from graphql import get_introspection_query
    status, body = await gql(live_server, alice, get_introspection_query())
    assert status == 200 and "errors" not in body, body
    assert {t["name"] for t in body["data"]["__schema"]["types"]} >= {"Job", "JobConnection", "JobStatus", "Query"}
