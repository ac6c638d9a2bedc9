"""The REST API against a real uvicorn server and a real PostgreSQL: jobs, bulk actions, stats,
users and ownership, tasks (through the worker and the task_* NOTIFY channels), the worker
protocol over HTTP, ops endpoints, and every error path with its exact JSON body."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from app.auth import issue_stream_token, verify_stream_token
from tests.conftest import with_dbname
from tests.helpers import wait_for
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer, job_count

EMAIL = {"to": "ada@example.com", "subject": "Welcome"}


def error(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


async def create_job(http: httpx.AsyncClient, kind: str = "email", payload: Any = None, **fields: Any) -> dict:
    response = await http.post("/jobs", json={"kind": kind, "payload": EMAIL if payload is None else payload,
                                              **fields})
    assert response.status_code == 201, response.text
    return response.json()



# -- creating jobs ------------------------------------------------------------------------------

async def test_create_job_returns_the_job_and_get_shows_its_timeline(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "priority": 5})
        assert response.status_code == 201
        job = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        assert job["kind"] == "email" and job["queue"] == "mail" and job["status"] == "queued"
        assert job["priority"] == 5 and job["max_attempts"] == 5  # the kind's default attempts
        assert job["payload"] == {"to": "ada@example.com", "subject": "Welcome", "body": "", "cc": []}
        assert job["owner_id"] == str(alice.id)

        detail = (await http.get(f"/jobs/{job['id']}")).json()
        assert detail["job"] == job
        assert detail["attempts"] == []
        assert detail["events"] == []  # the timeline starts with the first attempt (no 'created' event rows)


async def test_create_job_defaults_and_schedule(live_server: LiveServer, alice: ApiUser):
    later = datetime.now(UTC) + timedelta(hours=2)
    async with live_server.client(alice) as http:
        job = await create_job(http, "report", {"name": "sales"}, scheduled_for=later.isoformat(), max_attempts=7)
    assert job["priority"] == 3
    assert job["max_attempts"] == 7
    assert datetime.fromisoformat(job["scheduled_for"]) == later


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"kind": "email", "payload": {"subject": "x"}},
         [{"field": "payload.to", "message": "Object missing required field `to`"}]),
        ({"kind": "email", "payload": {**EMAIL, "cc": ["not-an-address"]}},
         [{"field": "payload.cc.0", "message": "not an email address"}]),
        ({"kind": "report", "payload": {"name": "r", "format": "docx"}},
         [{"field": "payload.format", "message": "'docx' is not allowed; expected one of csv, pdf, json"}]),
        ({"kind": "email", "payload": {**EMAIL, "attachments": []}},
         [{"field": "payload.attachments", "message": "Object contains unknown field `attachments`"}]),
    ],
)
async def test_invalid_payload_is_422_with_the_field_errors(live_server: LiveServer, alice: ApiUser, body: dict,
                                                             details: list):
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json=body)
    assert response.status_code == 422
    assert response.json() == error("validation_error", "the request is not valid", details)


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"kind": "email", "payload": EMAIL, "priority": 6}, [{"field": "priority", "message": "Expected `int` <= 5"}]),
        ({"kind": "email", "payload": EMAIL, "priority": "high"},
         [{"field": "priority", "message": "Expected `int`, got `str`"}]),
        ({"payload": EMAIL}, [{"field": "kind", "message": "Object missing required field `kind`"}]),
        ({"kind": "email", "payload": EMAIL, "scheduled_for": "2030-01-01T00:00:00"},
         [{"field": "scheduled_for", "message": "Expected `datetime` with a timezone component"}]),
        ({"kind": "email", "payload": EMAIL, "max_attempts": 0},
         [{"field": "max_attempts", "message": "Expected `int` >= 1"}]),
        ({"kind": "email", "payload": EMAIL, "queue": "fast"},
         [{"field": "queue", "message": "Object contains unknown field `queue`"}]),
        ([1, 2], [{"field": "$", "message": "Expected `object`, got `array`"}]),
    ],
)
async def test_invalid_envelope_is_422(live_server: LiveServer, alice: ApiUser, body: Any, details: list):
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json=body)
    assert response.status_code == 422
    assert response.json() == error("validation_error", "the request is not valid", details)


async def test_a_nul_character_is_422_not_a_database_error(live_server: LiveServer, alice: ApiUser):
    # PostgreSQL cannot store U+0000 in text or jsonb: refused up front, with the field named
    nul = "must not contain the NUL character (\\u0000)"
    async with live_server.client(alice) as http:
        body = await http.post("/jobs", json={"kind": "email", "payload": {**EMAIL, "cc": ["a@b.co", "x\u0000"]}})
        search = await http.get("/jobs", params={"q": "a\x00b"})
    assert body.status_code == 422
    assert body.json() == error("validation_error", "the request is not valid", [{"field": "payload.cc.1",
                                                                                  "message": nul}])
    assert search.status_code == 422
    assert search.json() == error("validation_error", "the query parameters are not valid",
                                  [{"field": "q", "message": nul}])


async def test_unknown_or_internal_kind_is_422(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        # ingest jobs name a stored file: only the upload route, which checks the file is yours, makes them
        internal = await http.post("/jobs", json={"kind": "ingest_file", "payload": {"file_id": 1}})
        assert internal.status_code == 422
        assert internal.json()["error"]["details"][0]["message"].startswith("unknown job kind 'ingest_file'")
        response = await http.post("/jobs", json={"kind": "fax", "payload": {}})
        no_payload = await http.post("/jobs", json={"kind": "email"})
    assert response.status_code == 422
    assert response.json() == error("validation_error", "the request is not valid", [{
        "field": "kind",
        "message": "unknown job kind 'fax'; expected one of api_ingest, email, external, notification, report, task, webhook",
    }])
    assert no_payload.json() == error("validation_error", "the request is not valid",
                                      [{"field": "payload", "message": "Object missing required field `payload`"}])


async def test_malformed_json_is_400_and_wrong_content_type_is_415(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        broken = await http.post("/jobs", content=b'{"kind": "email", ', headers={"Content-Type": "application/json"})
        empty = await http.post("/jobs", content=b"", headers={"Content-Type": "application/json"})
        form = await http.post("/jobs", data={"kind": "email"})
        text = await http.post("/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
    assert broken.status_code == 400
    assert broken.json() == error("malformed_json", "the request body is not valid JSON: Input data was truncated")
    assert empty.status_code == 400
    assert empty.json() == error("malformed_json", "the request body is empty; expected a JSON object")
    assert form.status_code == 415
    assert form.json() == error("unsupported_media_type",
                                "expected Content-Type: application/json, got application/x-www-form-urlencoded")
    assert text.status_code == 415
    assert await job_count(live_server) == 0


async def test_oversized_body_is_413_even_without_a_content_length(start_server, alice: ApiUser):
    server = start_server(max_body_bytes=2048)
    big = {"kind": "email", "payload": {**EMAIL, "body": "x" * 4096}}
    expected = error("payload_too_large", "the request body is larger than 2048 bytes")
    async with server.client(alice) as http:
        declared = await http.post("/jobs", json=big)
        assert declared.status_code == 413
        assert declared.json() == expected

        async def chunks():  # no Content-Length: Transfer-Encoding: chunked, counted while read
            encoded = json.dumps(big).encode()
            for start in range(0, len(encoded), 512):
                yield encoded[start:start + 512]

        streamed = await http.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert "content-length" not in streamed.request.headers
        assert streamed.json() == expected

        small = await http.post("/jobs", json={"kind": "email", "payload": EMAIL})
        assert small.status_code == 201
    assert await job_count(server) == 1  # nothing half-written by the refused requests


# -- authentication and ownership ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, error("missing_token", "authentication required: send `Authorization: Bearer <token>`")),
        ({"Authorization": "Bearer pgq_not-a-real-token"}, error("invalid_token", "the API token is not valid")),
        ({"Authorization": "Bearer"}, error("invalid_token", "the Authorization header must be `Bearer <token>`")),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"},
         error("invalid_token", "the Authorization header must be `Bearer <token>`")),
    ],
)
async def test_missing_or_bad_token_is_401(live_server: LiveServer, alice: ApiUser, headers: dict, expected: dict):
    async with live_server.client(headers=headers) as http:
        for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/1"), ("GET", "/stats"),
                             ("GET", "/tasks"), ("POST", "/worker/claim?queues=external")]:
            response = await http.request(method, path, json={"kind": "email", "payload": EMAIL})
            assert response.status_code == 401, (method, path)
            assert response.json() == expected
            assert response.headers["www-authenticate"] == 'Bearer realm="pgqueue"'
    assert await job_count(live_server) == 0


async def test_a_token_is_stored_only_as_its_hash(live_server: LiveServer, alice: ApiUser):
    async with await psycopg.AsyncConnection.connect(live_server.database_url) as conn:
        rows = await (await conn.execute("SELECT token_hash FROM app.api_tokens")).fetchall()
    assert rows and all(alice.token.encode() not in bytes(row[0]) for row in rows)
    assert all(len(row[0]) == 32 for row in rows)


async def test_another_users_job_is_404_and_admins_see_everything(live_server: LiveServer, alice: ApiUser,
                                                                   bob: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as as_alice, live_server.client(bob) as as_bob, \
            live_server.client(admin) as as_admin:
        job = await create_job(as_alice)
        job_id = job["id"]
        not_found = error("not_found", f"job {job_id} not found")
        for method, path in [("GET", f"/jobs/{job_id}"), ("DELETE", f"/jobs/{job_id}"),
                             ("POST", f"/jobs/{job_id}/retry")]:
            response = await as_bob.request(method, path)
            assert response.status_code == 404
            assert response.json() == not_found
        assert (await as_bob.get("/jobs")).json()["total"] == 0
        assert (await as_alice.get("/jobs")).json()["total"] == 1
        assert (await as_admin.get(f"/jobs/{job_id}")).json()["job"]["id"] == job_id
        assert (await as_admin.get("/jobs")).json()["total"] == 1
        assert (await as_alice.get(f"/jobs/{job_id}")).json()["job"]["status"] == "queued"  # bob changed nothing


@pytest.mark.parametrize("raw_id", ["abc", "0", "-1", "1.5", "99999999999999999999999", "9223372036854775808", "٣"])
async def test_an_id_that_is_not_a_job_id_is_404(live_server: LiveServer, alice: ApiUser, raw_id: str):
    async with live_server.client(alice) as http:
        for method, path in [("GET", f"/jobs/{raw_id}"), ("DELETE", f"/jobs/{raw_id}"),
                             ("POST", f"/jobs/{raw_id}/retry")]:
            response = await http.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json() == error("not_found", f"job {raw_id!r} not found")


async def test_unknown_route_and_method_are_json(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        missing = await http.get("/nowhere")
        wrong_method = await http.put("/jobs/7/retry")
        split_route = await http.put("/jobs")  # GET and POST /jobs are two routes
    assert missing.status_code == 404
    assert missing.json() == error("not_found", "no such resource: GET /nowhere")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == error("method_not_allowed", "method PUT is not allowed on /jobs/7/retry")
    assert wrong_method.headers["allow"] == "POST"
    assert split_route.status_code == 405 and split_route.headers["allow"] == "GET, HEAD, POST"


async def test_me_and_stream_tokens(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        assert (await http.get("/auth/me")).json() == {"id": alice.id, "name": "alice", "is_admin": False,
                                                       "owner_id": str(alice.id)}
        issued = (await http.post("/auth/stream-token")).json()
    assert verify_stream_token("test-secret", issued["token"]) == alice.id
    assert issued["expires_at"] - time.time() == pytest.approx(300, abs=30)
    assert verify_stream_token("another-secret", issued["token"]) is None
    user_id, expires, signature = issued["token"].split(".")
    assert verify_stream_token("test-secret", f"{int(user_id) + 1}.{expires}.{signature}") is None
    expired = issue_stream_token("test-secret", alice.id, 300, now=time.time() - 301)
    assert verify_stream_token("test-secret", expired.token) is None
    assert verify_stream_token("test-secret", "garbage") is None


def run_app_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGQUEUE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


async def test_create_user_command_prints_a_working_token(live_server: LiveServer):
    created = await asyncio.to_thread(run_app_cli, live_server.database_url, "create-user", "grace", "--admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("pgq_") and "\n" not in token  # stdout holds the token alone
    async with live_server.client(headers={"Authorization": f"Bearer {token}"}) as http:
        me = (await http.get("/auth/me")).json()
    assert me["name"] == "grace" and me["is_admin"] is True

    again = await asyncio.to_thread(run_app_cli, live_server.database_url, "create-user", "grace")
    assert again.returncode == 1 and again.stdout == ""
    assert "a user named 'grace' exists" in again.stderr
    second = await asyncio.to_thread(run_app_cli, live_server.database_url, "add-token", "grace")
    assert second.returncode == 0 and second.stdout.strip() not in ("", token)


# -- listing ------------------------------------------------------------------------------------

async def test_list_filters_search_sort_and_paginate(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http:
        first = await create_job(http, "email", {"to": "zed@example.com", "subject": "Invoice 42"}, priority=1)
        second = await create_job(http, "report", {"name": "quarterly_sales"}, priority=5)
        third = await create_job(http, "notification", {"user": "u1", "message": "100% done"}, priority=3)
        cancelled = (await http.delete(f"/jobs/{third['id']}")).json()
        assert cancelled["status"] == "cancelled"

        async def ids(**params: Any) -> list[int]:
            response = await http.get("/jobs", params=params)
            assert response.status_code == 200, response.text
            return [job["id"] for job in response.json()["jobs"]]

        assert await ids() == [third["id"], second["id"], first["id"]]  # newest first by default
        assert await ids(sort="created") == [first["id"], second["id"], third["id"]]
        assert await ids(sort="-priority") == [second["id"], third["id"], first["id"]]
        assert await ids(sort="priority") == [first["id"], third["id"], second["id"]]
        assert await ids(sort="status") == [first["id"], second["id"], third["id"]]  # queued before cancelled
        assert await ids(sort="-status") == [third["id"], second["id"], first["id"]]
        assert await ids(status="cancelled") == [third["id"]]
        assert await ids(status="queued,cancelled", sort="created") == [first["id"], second["id"], third["id"]]
        assert await ids(kind="report") == [second["id"]]
        assert await ids(queue="mail") == [first["id"]]
        assert await ids(q="invoice") == [first["id"]]  # case-insensitive, in the payload
        assert await ids(q="QUARTERLY_") == [second["id"]]
        assert await ids(q="100%") == [third["id"]]  # % is literal, not a wildcard
        assert await ids(q="1_0") == []  # so is _
        created = datetime.fromisoformat(second["created_at"])
        assert await ids(created_after=created.isoformat(), sort="created") == [second["id"], third["id"]]
        assert await ids(created_before=created.isoformat()) == [first["id"]]

        page = (await http.get("/jobs", params={"limit": 2, "offset": 2, "sort": "created"})).json()
        assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 2
        assert [job["id"] for job in page["jobs"]] == [third["id"]]
        beyond = (await http.get("/jobs", params={"offset": 50})).json()
        assert beyond == {"total": 3, "limit": 50, "offset": 50, "jobs": []}


async def test_list_searches_the_last_error(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        job = await create_job(http, "external", {"data": {"n": 1}})
        claimed = (await worker.post("/worker/claim", params={"queues": "external"})).json()["jobs"][0]
        await worker.post(f"/worker/jobs/{job['id']}/fail",
                          json={"lease_token": claimed["lease_token"], "error": "Upstream TIMEOUT after 30s"})
        found = (await http.get("/jobs", params={"q": "timeout"})).json()
    assert [j["id"] for j in found["jobs"]] == [job["id"]]


@pytest.mark.parametrize(
    ("params", "details"),
    [
        ({"status": "done"}, [{"field": "status", "message":
                               "unknown status 'done'; expected one of waiting, queued, running, succeeded, failed, dead, "
                               "cancelled"}]),
        ({"sort": "name"}, [{"field": "sort", "message": "'name' is not allowed; expected one of created, -created, "
                                                     "priority, -priority, status, -status"}]),
        ({"limit": "101"}, [{"field": "limit", "message": "Expected `int` <= 100"}]),
        ({"limit": "ten"}, [{"field": "limit", "message": "must be an integer in decimal digits (such as 20)"}]),
        ({"offset": "-1"}, [{"field": "offset", "message": "Expected `int` >= 0"}]),
        ({"kind": "fax"}, [{"field": "kind", "message":
                            "unknown kind 'fax'; expected one of api_ingest, bulk_action, email, external, ingest_file, notification, report, task, webhook"}]),
        ({"colour": "red"}, [{"field": "colour", "message": "unknown query parameter; allowed: status, kind, queue, "
                              "created_after, created_before, q, scheduled, has_error, sort, limit, offset, total_max"}]),
        ({"status": ","}, [{"field": "status", "message": "must name at least one value"}]),
        ({"created_after": "null"}, [{"field": "created_after", "message": "Invalid RFC3339 encoded datetime"}]),
        ({"created_after": "yesterday"}, [{"field": "created_after", "message": "Invalid RFC3339 encoded datetime"}]),
        ({"created_after": "2030-01-02T00:00:00Z", "created_before": "2030-01-01T00:00:00Z"},
         [{"field": "created_before", "message": "must be later than created_after"}]),
    ],
)
async def test_list_rejects_unknown_filters_and_sorts(live_server: LiveServer, alice: ApiUser, params: dict,
                                                      details: list):
    async with live_server.client(alice) as http:
        response = await http.get("/jobs", params=params)
    assert response.status_code == 422
    assert response.json() == error("validation_error", "the query parameters are not valid", details)


async def test_a_repeated_single_value_parameter_is_422(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        repeated = await http.get("/jobs?limit=1&limit=2")
        listed = await http.get("/jobs?status=queued&status=dead")
    assert repeated.json() == error("validation_error", "the query parameters are not valid",
                                    [{"field": "limit", "message": "given more than once"}])
    assert listed.status_code == 200


# -- cancel, retry, bulk ------------------------------------------------------------------------

async def claim(worker: httpx.AsyncClient, queues: str = "external", limit: int = 1, **params: Any) -> list[dict]:
    response = await worker.post("/worker/claim", params={"queues": queues, "limit": limit, **params})
    assert response.status_code == 200, response.text
    return response.json()["jobs"]


async def test_cancel_queued_running_and_finished(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        queued = await create_job(http)
        response = await http.delete(f"/jobs/{queued['id']}")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"

        again = await http.delete(f"/jobs/{queued['id']}")
        assert again.status_code == 409
        assert again.json() == error("invalid_transition", f"cannot cancel job {queued['id']}: it is cancelled")

        running = await create_job(http, "external", {"data": 1})
        [leased] = await claim(worker)
        response = await http.delete(f"/jobs/{running['id']}")
        assert response.status_code == 202
        assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
        beat = await worker.post(f"/worker/jobs/{running['id']}/heartbeat", json={"lease_token": leased["lease_token"]})
        assert beat.json() == {"id": running["id"], "cancel_requested": True}


async def test_retry_dead_and_failed_jobs_only(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        job = await create_job(http, "external", {"data": 1})
        response = await http.post(f"/jobs/{job['id']}/retry")
        assert response.status_code == 409
        assert response.json() == error("invalid_transition", f"cannot retry job {job['id']}: it is queued")

        [leased] = await claim(worker)
        failed = await worker.post(f"/worker/jobs/{job['id']}/fail",
                                   json={"lease_token": leased["lease_token"], "error": "boom", "permanent": True})
        assert failed.json()["status"] == "dead"
        retried = await http.post(f"/jobs/{job['id']}/retry")
        assert retried.status_code == 200
        assert retried.json()["status"] == "queued" and retried.json()["attempts"] == 0
        detail = (await http.get(f"/jobs/{job['id']}")).json()
        assert [a["error"] for a in detail["attempts"]] == ["boom"]  # the history stays
        assert [e["type"] for e in detail["events"]] == ["started", "dead", "retried"]


async def test_bulk_actions_report_each_id(live_server: LiveServer, alice: ApiUser, bob: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(bob) as as_bob, \
            live_server.client(admin) as worker:
        queued = await create_job(http)
        running = await create_job(http, "external", {"data": 1})
        await claim(worker)
        bobs = await create_job(as_bob)

        response = await http.post("/jobs/bulk", json={"action": "cancel",
                                                       "ids": [queued["id"], running["id"], bobs["id"], 999999]})
        assert response.status_code == 200
        assert response.json() == {
            "action": "cancel", "succeeded": 2, "failed": 2,
            "results": [
                {"id": queued["id"], "ok": True, "status": "cancelled", "error": None},
                {"id": running["id"], "ok": True, "status": "running", "error": None},
                {"id": bobs["id"], "ok": False, "status": None,
                 "error": {"code": "not_found", "message": f"job {bobs['id']} not found", "details": []}},
                {"id": 999999, "ok": False, "status": None,
                 "error": {"code": "not_found", "message": "job 999999 not found", "details": []}},
            ],
        }
        deleted = (await http.post("/jobs/bulk", json={"action": "delete",
                                                       "ids": [queued["id"], running["id"], queued["id"]]})).json()
        assert deleted["results"] == [
            {"id": queued["id"], "ok": True, "status": None, "error": None},
            {"id": running["id"], "ok": False, "status": "running",
             "error": {"code": "invalid_transition", "message": f"cannot delete job {running['id']}: it is running",
                       "details": []}},
        ]
        assert (await http.get(f"/jobs/{queued['id']}")).status_code == 404
        assert (await as_bob.get(f"/jobs/{bobs['id']}")).json()["job"]["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"action": "cancel", "ids": ["x"]}, [{"field": "ids.0", "message": "Expected `int`, got `str`"}]),
        ({"action": "cancel", "ids": [0]}, [{"field": "ids.0", "message": "Expected `int` >= 1"}]),
        ({"action": "cancel", "ids": [1, 2**63]},
         [{"field": "ids.1", "message": "Expected `int` <= 9223372036854775807"}]),
        ({"action": "cancel", "ids": []}, [{"field": "ids", "message": "Expected `array` of length >= 1"}]),
        ({"action": "explode", "ids": [1]},
         [{"field": "action", "message": "'explode' is not allowed; expected one of cancel, retry, delete"}]),
    ],
)
async def test_an_invalid_bulk_request_changes_nothing(live_server: LiveServer, alice: ApiUser, body: dict,
                                                       details: list):
    async with live_server.client(alice) as http:
        job = await create_job(http)
        body = {**body, "ids": [job["id"] if i == 1 else i for i in body["ids"]]}
        response = await http.post("/jobs/bulk", json=body)
        assert response.status_code == 422
        assert response.json() == error("validation_error", "the request is not valid", details)
        assert (await http.get(f"/jobs/{job['id']}")).json()["job"]["status"] == "queued"


# -- stats --------------------------------------------------------------------------------------

async def test_stats_counts_and_finished_per_minute(live_server: LiveServer, alice: ApiUser, bob: ApiUser,
                                                    admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(bob) as as_bob, \
            live_server.client(admin) as as_admin:
        await create_job(http)
        await create_job(http, "report", {"name": "r"})
        cancelled = await create_job(http, "notification", {"user": "u", "message": "m"})
        await http.delete(f"/jobs/{cancelled['id']}")
        await create_job(as_bob)

        mine = (await http.get("/stats")).json()
        everything = (await as_admin.get("/stats")).json()
    assert mine["by_status"] == {"waiting": 0, "queued": 2, "running": 0, "succeeded": 0, "failed": 0, "dead": 0, "cancelled": 1}
    assert mine["by_kind"] == {"email": 1, "notification": 1, "report": 1}
    assert mine["by_queue"] == {"default": 1, "mail": 1, "reports": 1}
    assert everything["by_status"]["queued"] == 3 and everything["by_kind"]["email"] == 2
    minutes = mine["finished_per_minute"]
    assert len(minutes) == 60
    starts = [datetime.fromisoformat(m["minute"]) for m in minutes]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    assert sum(m["cancelled"] for m in minutes) == 1 and sum(m["succeeded"] for m in minutes) == 0


# -- tasks --------------------------------------------------------------------------------------

async def test_tasks_are_per_user(live_server: LiveServer, alice: ApiUser, bob: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as as_alice, live_server.client(bob) as as_bob, \
            live_server.client(admin) as as_admin:
        response = await as_alice.post("/tasks", json={"title": "write report", "duration_seconds": 0})
        assert response.status_code == 201
        task = response.json()
        assert task["title"] == "write report" and task["status"] == "queued" and task["max_attempts"] == 3
        await create_job(as_alice)  # not a task: not listed under /tasks

        alices = (await as_alice.get("/tasks")).json()
        assert alices["total"] == 1 and [t["id"] for t in alices["tasks"]] == [task["id"]]
        assert (await as_bob.get("/tasks")).json() == {"total": 0, "limit": 50, "offset": 0, "tasks": []}
        assert (await as_admin.get("/tasks")).json()["total"] == 0  # the caller's own tasks, admins too
        assert (await as_bob.get(f"/jobs/{task['id']}")).status_code == 404

        invalid = await as_alice.post("/tasks", json={"title": "", "fail_probability": 2})
        assert invalid.status_code == 422
        assert invalid.json() == error("validation_error", "the request is not valid",
                                       [{"field": "title", "message": "Expected `str` of length >= 1"},
                                        {"field": "fail_probability", "message": "Expected `float` <= 1.0"}])


async def _notifications(conn: psycopg.AsyncConnection, until: Any, timeout: float = 30) -> list[tuple[str, dict]]:
    received: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for note in conn.notifies(timeout=0.5):
            received.append((note.channel, json.loads(note.payload)))
            if until(received):
                return received
    raise AssertionError(f"notifications did not arrive; got {received}")


async def test_a_task_runs_to_success_and_is_announced_on_task_channels(live_server_with_worker: LiveServer,
                                                                        alice: ApiUser):
    server = live_server_with_worker
    async with await psycopg.AsyncConnection.connect(server.database_url, autocommit=True) as listener:
        await listener.execute("LISTEN task_created")
        await listener.execute("LISTEN task_updated")
        async with server.client(alice) as http:
            task = (await http.post("/tasks", json={"title": "ok", "fail_probability": 0, "duration_seconds": 0.2,
                                                    "steps": 2})).json()
            notes = await _notifications(listener, lambda got: got[-1][1]["status"] == "succeeded")
            assert notes == [
                ("task_created", {"id": task["id"], "user_id": alice.id, "status": "queued"}),
                ("task_updated", {"id": task["id"], "user_id": alice.id, "status": "running"}),
                ("task_updated", {"id": task["id"], "user_id": alice.id, "status": "succeeded"}),
            ]
            listed = (await http.get("/tasks")).json()["tasks"][0]
            assert listed["status"] == "succeeded" and listed["attempts"] == 1
            events = (await http.get(f"/jobs/{task['id']}")).json()["events"]
    logs = [e["data"]["line"] for e in events if e["type"] == "log"]
    assert logs == ["task 'ok' started (attempt 1/3)", "step 1/2 done", "step 2/2 done", "task finished"]
    assert [e["data"]["percent"] for e in events if e["type"] == "progress"] == [50.0, 100.0]


async def test_a_failing_task_retries_and_ends_dead(live_server_with_worker: LiveServer, alice: ApiUser):
    server = live_server_with_worker
    async with await psycopg.AsyncConnection.connect(server.database_url, autocommit=True) as listener:
        await listener.execute("LISTEN task_updated")
        async with server.client(alice) as http:
            task = (await http.post("/tasks", json={"title": "doomed", "fail_probability": 1, "duration_seconds": 0,
                                                    "max_attempts": 2})).json()
            notes = await _notifications(listener, lambda got: got[-1][1]["status"] == "dead")
            assert [status["status"] for _channel, status in notes] == ["running", "failed", "running", "dead"]

            detail = (await http.get(f"/jobs/{task['id']}")).json()
    assert detail["job"]["status"] == "dead" and detail["job"]["attempts"] == 2
    assert [a["attempt"] for a in detail["attempts"]] == [1, 2]
    assert "task 'doomed' failed on attempt 2" in detail["job"]["last_error"]
    assert any(e["type"] == "log" and e["data"]["line"] == "task failed (simulated)" for e in detail["events"])


async def test_many_tasks_run_at_once(live_server_with_worker: LiveServer, alice: ApiUser):
    async with live_server_with_worker.client(alice) as http:
        tasks = await asyncio.gather(*(
            http.post("/tasks", json={"title": f"t{i}", "fail_probability": 0, "duration_seconds": 0.3})
            for i in range(8)
        ))
        ids = {t.json()["id"] for t in tasks}

        async def all_done() -> bool:
            listed = (await http.get("/tasks", params={"status": "succeeded"})).json()
            return {t["id"] for t in listed["tasks"]} == ids

        await wait_for(all_done, message="8 tasks to succeed")
        detail = [(await http.get(f"/jobs/{i}")).json()["job"] for i in ids]
    # 8 slots: they overlapped rather than running one after another
    latest_start = max(datetime.fromisoformat(j["started_at"]) for j in detail)
    earliest_end = min(datetime.fromisoformat(j["finished_at"]) for j in detail)
    assert latest_start < earliest_end


# -- the worker protocol over HTTP --------------------------------------------------------------

async def test_http_worker_claims_heartbeats_and_completes(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        low = await create_job(http, "external", {"data": "low"}, priority=1)
        high = await create_job(http, "external", {"data": "high"}, priority=5)
        await create_job(http)  # another queue: not claimed

        response = await worker.post("/worker/claim", params={"queues": "external,other", "limit": 5,
                                                              "worker_id": "go-worker-1", "lease_seconds": 60})
        assert response.status_code == 200
        body = response.json()
        assert body["worker_id"] == "go-worker-1"
        assert [j["id"] for j in body["jobs"]] == [high["id"], low["id"]]  # best priority first
        leased = body["jobs"][0]
        assert leased["payload"] == {"data": "high"} and leased["attempt"] == 1 and leased["kind"] == "external"
        expires = datetime.fromisoformat(leased["lease_expires_at"])
        assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=61)
        assert await claim(worker) == []  # nothing else runnable

        beat = await worker.post(f"/worker/jobs/{high['id']}/heartbeat", json={"lease_token": leased["lease_token"]})
        assert beat.json() == {"id": high["id"], "cancel_requested": False}
        done = await worker.post(f"/worker/jobs/{high['id']}/complete",
                                 json={"lease_token": leased["lease_token"], "result": {"answer": 42}})
        assert done.status_code == 200
        assert done.json() == {"id": high["id"], "status": "succeeded", "attempts": 1, "max_attempts": 5,
                               "retry_at": None}
        job = (await http.get(f"/jobs/{high['id']}")).json()["job"]
        assert job["status"] == "succeeded" and job["result"] == {"answer": 42} and job["worker_id"] == "go-worker-1"

        # the lease is gone: any further use of the token is a 409
        stale = error("lease_lost", f"lease on job {high['id']} is no longer held by this worker")
        for action, extra in [("complete", {}), ("heartbeat", {}), ("fail", {"error": "late"})]:
            response = await worker.post(f"/worker/jobs/{high['id']}/{action}",
                                         json={"lease_token": leased["lease_token"], **extra})
            assert response.status_code == 409, action
            assert response.json() == stale


async def test_http_worker_fails_with_retry_then_dead(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        job = await create_job(http, "external", {"data": 1}, max_attempts=2)
        [first] = await claim(worker)
        failed = await worker.post(f"/worker/jobs/{job['id']}/fail",
                                   json={"lease_token": first["lease_token"], "error": "flaky",
                                         "retry_delay_seconds": 0})
        assert failed.status_code == 200
        body = failed.json()
        assert body["status"] == "failed" and body["attempts"] == 1 and body["retry_at"] is not None

        [second] = await claim(worker)
        assert second["id"] == job["id"] and second["attempt"] == 2
        assert second["lease_token"] != first["lease_token"]
        stale = await worker.post(f"/worker/jobs/{job['id']}/complete", json={"lease_token": first["lease_token"]})
        assert stale.status_code == 409  # the first attempt's token cannot touch the second attempt

        dead = await worker.post(f"/worker/jobs/{job['id']}/fail",
                                 json={"lease_token": second["lease_token"], "error": "still flaky"})
        assert dead.json() == {"id": job["id"], "status": "dead", "attempts": 2, "max_attempts": 2, "retry_at": None}
        detail = (await http.get(f"/jobs/{job['id']}")).json()
        assert [(a["attempt"], a["error"], a["worker_id"]) for a in detail["attempts"]] == [
            (1, "flaky", "http:root"), (2, "still flaky", "http:root")]


async def test_http_worker_endpoints_are_admin_only_and_validated(live_server: LiveServer, alice: ApiUser,
                                                                 admin: ApiUser):
    async with live_server.client(alice) as as_alice, live_server.client(admin) as worker:
        job = await create_job(as_alice, "external", {"data": 1})
        forbidden = await as_alice.post("/worker/claim", params={"queues": "external"})
        assert forbidden.status_code == 403
        assert forbidden.json() == error("forbidden", "this endpoint needs an admin token")

        missing = await worker.post("/worker/claim")
        assert missing.status_code == 422
        assert missing.json() == error("validation_error", "the query parameters are not valid",
                                       [{"field": "queues", "message": "required query parameter is missing"}])
        too_many = await worker.post("/worker/claim", params={"queues": "external", "limit": 1000})
        assert too_many.json()["error"]["details"] == [{"field": "limit", "message": "Expected `int` <= 100"}]

        bad_token = await worker.post(f"/worker/jobs/{job['id']}/complete", json={"lease_token": "nope"})
        assert bad_token.status_code == 422
        assert bad_token.json()["error"]["details"] == [{"field": "lease_token", "message": "Invalid UUID"}]
        unknown = await worker.post("/worker/jobs/abc/heartbeat",
                                    json={"lease_token": "00000000-0000-0000-0000-000000000000"})
        assert unknown.status_code == 404
        never_leased = await worker.post(f"/worker/jobs/{job['id']}/complete",
                                         json={"lease_token": "00000000-0000-0000-0000-000000000000"})
        assert never_leased.status_code == 409
        assert (await as_alice.get(f"/jobs/{job['id']}")).json()["job"]["status"] == "queued"


# -- operations ---------------------------------------------------------------------------------

async def test_health_and_readiness(live_server: LiveServer):
    async with live_server.client() as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert health.status_code == 200 and health.text == "ok\n"
    assert ready.status_code == 200
    body = ready.json()
    assert body.pop("events")["default_partition_rows"] == 0  # tests/test_partitions.py for more
    assert body == {"status": "ready", "database": "reachable", "pending_migrations": [],
                    "api_ingest": {"last_successful_page_at": None}}


async def test_readyz_is_503_on_a_database_missing_migrations(pg_server, start_server):
    name = f"unmigrated_{int(time.time() * 1000)}"
    with pg_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        server = start_server(database_url=with_dbname(pg_server.url, name))
        async with server.client() as http:
            response = await http.get("/readyz")
            health = await http.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable" and body["database"] == "reachable"
        assert body["pending_migrations"][:2] == ["0001.engine", "0002.app"]
        assert body["error"]["code"] == "not_migrated"
        assert health.status_code == 200  # alive, just not ready
        server.stop()
    finally:
        with pg_server.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_readyz_is_503_when_a_migration_is_missing(live_server: LiveServer):
    async with await psycopg.AsyncConnection.connect(live_server.database_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0002.app'")
    async with live_server.client() as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["pending_migrations"] == ["0002.app"]
    assert response.json()["error"]["message"] == "1 migration(s) not applied: 0002.app"


async def test_readyz_follows_the_database_going_away_and_coming_back(pg_server, template_db, start_server):
    """The database vanishes under a running server (dropped, its connections killed): /readyz
    says 503 unreachable within its timeout, /healthz stays 200, and once the database is back
    the pool reconnects by itself and /readyz is 200 again."""
    name = f"vanishing_{int(time.time() * 1000)}"
    with pg_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        server = start_server(database_url=with_dbname(pg_server.url, name))
        async with server.client() as http:
            assert (await http.get("/readyz")).status_code == 200
            with pg_server.admin() as conn:
                conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            gone = await http.get("/readyz")
            assert gone.status_code == 503
            assert gone.json()["database"] == "unreachable"
            assert gone.json()["error"]["code"] == "database_unavailable"
            assert (await http.get("/healthz")).status_code == 200

            with pg_server.admin() as conn:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_for(ready, timeout=60, interval=0.5, message="/readyz back to 200")
        server.stop()
    finally:
        with pg_server.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_metrics_in_prometheus_format(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        for _ in range(3):
            await create_job(http, "external", {"data": 1})
        await create_job(http)
        leased = await claim(worker, limit=2)
        await worker.post(f"/worker/jobs/{leased[0]['id']}/fail",
                          json={"lease_token": leased[0]["lease_token"], "error": "x"})
        response = await worker.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['pgqueue_jobs{queue="external",status="queued"}'] == 1
    assert samples['pgqueue_jobs{queue="external",status="running"}'] == 1
    assert samples['pgqueue_jobs{queue="external",status="failed"}'] == 1
    assert samples['pgqueue_jobs{queue="mail",status="queued"}'] == 1
    assert samples["pgqueue_claims_total"] == 2
    assert samples["pgqueue_failures_total"] == 1
    assert samples["pgqueue_queue_wait_seconds_count"] == 2
    assert samples['pgqueue_queue_wait_seconds_bucket{le="+Inf"}'] == 2
    assert samples['pgqueue_queue_wait_seconds_bucket{le="1800.0"}'] == 2
    buckets = [v for k, v in samples.items() if k.startswith("pgqueue_queue_wait_seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    assert "# TYPE pgqueue_queue_wait_seconds histogram" in response.text


METRICS_TOKEN = "metrics-" + "x" * 24


async def test_metrics_need_an_admin_or_the_metrics_token(start_server: Any, alice: ApiUser, admin: ApiUser):
    server = start_server(metrics_token=METRICS_TOKEN)
    async with server.client() as anonymous, server.client(alice) as user, server.client(admin) as operator:
        missing = await anonymous.get("/metrics")
        wrong = await anonymous.get("/metrics", headers={"Authorization": "Bearer metrics-wrong"})
        not_admin = await user.get("/metrics")
        scraper = await anonymous.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        by_admin = await operator.get("/metrics")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_token"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
    assert not_admin.status_code == 403
    assert not_admin.json() == error("forbidden", "/metrics needs an admin token or APP_METRICS_TOKEN")
    assert scraper.status_code == by_admin.status_code == 200
    assert "pgqueue_claims_total" in scraper.text


async def test_metrics_public_opens_them_to_anyone(start_server: Any):
    server = start_server(metrics_public=True)
    async with server.client() as anonymous:
        response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert "pgqueue_claims_total" in response.text


async def test_openapi_document_is_valid_and_generated_from_the_types(live_server: LiveServer):
    from openapi_spec_validator import validate

    async with live_server.client() as http:
        document = (await http.get("/openapi.json")).json()
        docs = await http.get("/docs")
    validate(document)
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    create = document["paths"]["/jobs"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    # one variant per kind, told apart by `kind`, each with that kind's payload type
    assert body["discriminator"]["propertyName"] == "kind"
    assert set(body["discriminator"]["mapping"]) == {"api_ingest", "email", "external", "notification", "report", "task", "webhook"}
    email_job = schemas["EmailJob"]
    assert email_job["required"] == ["kind", "payload"]
    assert email_job["properties"]["kind"] == {"enum": ["email"]}
    assert email_job["properties"]["payload"] == {"$ref": "#/components/schemas/EmailPayload"}
    assert email_job["properties"]["priority"] == {"type": "integer", "minimum": 1, "maximum": 5,
                                                   "description": "5 is the most urgent", "default": 3}
    assert schemas["EmailPayload"]["required"] == ["to", "subject"]
    assert schemas["ReportPayload"]["properties"]["format"]["enum"] == ["csv", "json", "pdf"]
    assert set(create["responses"]) == {"201", "400", "401", "403", "413", "415", "422"}
    listed = {p["name"] for p in document["paths"]["/jobs"]["get"]["parameters"]}
    assert listed == {"status", "kind", "queue", "created_after", "created_before", "q", "scheduled", "has_error", "sort",
                      "limit", "offset", "total_max"}
    assert document["paths"]["/worker/claim"]["post"]["security"] == [{"bearer": []}]
    assert "/jobs/{job_id}" in document["paths"] and "/tasks" in document["paths"]

    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert 'fetch("openapi.json")' in docs.text
    assert "<script src" not in docs.text and "<link" not in docs.text and "https://" not in docs.text


def positional(sql: str) -> str:
    """%(name)s placeholders as $1, $2 ... (a name used twice keeps its number), for PREPARE."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
    return re.sub(r"%\((\w+)\)s", lambda match: f"${names.index(match[1]) + 1}", sql)


async def test_every_app_query_prepares_against_the_migrated_schema(db_url: str):
    from app.store import QUERIES

    failures = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for query in QUERIES.values():
            try:
                await conn.execute(f"PREPARE check_{query.name} AS {positional(query.sql)}")
                await conn.execute(f"DEALLOCATE check_{query.name}")
            except psycopg.Error as exc:
                failures.append(f"{query.name}: {str(exc).strip()}")
    assert len(QUERIES) >= 10 and failures == []


# -- integer query parameters -------------------------------------------------------------------

NOT_DECIMAL = ["1e2", "5.0", "+5", " 5", "0x10", "1_0", "\u0665", "5 "]
INTEGER_PARAMS = [("GET", "/jobs", "limit"), ("GET", "/jobs", "offset"), ("GET", "/tasks", "limit"),
                  ("GET", "/tasks", "offset"), ("POST", "/worker/claim", "limit"),
                  ("GET", "/events", "last_event_id")]


@pytest.mark.parametrize(("method", "path", "name"), INTEGER_PARAMS)
async def test_integer_query_parameters_must_be_plain_decimal(live_server: LiveServer, admin: ApiUser,
                                                              method: str, path: str, name: str):
    base = {"queues": "external"} if path == "/worker/claim" else {}
    async with live_server.client(admin) as http:
        for raw in NOT_DECIMAL:
            response = await http.request(method, path, params={**base, name: raw})
            assert response.status_code == 422, (raw, response.text)
            assert response.json() == error("validation_error", "the query parameters are not valid", [
                {"field": name, "message": "must be an integer in decimal digits (such as 20)"}]), raw
        if name != "last_event_id":  # a valid position opens a stream that does not end by itself
            assert (await http.request(method, path, params={**base, name: "20"})).status_code == 200
