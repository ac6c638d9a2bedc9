"""Adversarial probes of the HTTP API: odd inputs never give a 5xx or an error outside the
documented JSON shape, and nobody reaches another user's job by any route."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import wait_for
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer, job_count

EMAIL = {"to": "ada@example.com", "subject": "Welcome"}


def check_error_shape(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    for detail in body["error"]["details"]:
        assert set(detail) == {"field", "message"}, body


async def probe(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = await http.request(method, path, **kwargs)
    assert response.status_code < 500, (method, path, kwargs, response.status_code, response.text)
    if response.status_code >= 400 and method != "HEAD":
        check_error_shape(response)
    return response


ODD_IDS = ["1e3", " 1", "-1", "0", "9223372036854775808", "99999999999999999999", "%00", "%C2%B2", "0x10",
           "\u0661", "1%20"]
ODD_STRINGS = ["a\x00b", "\U0001f600\u202e\u00e9%_\\'\";DROP TABLE x --", "x" * 5000]


async def test_sweep_odd_inputs_never_5xx(live_server: LiveServer, alice: ApiUser, admin: ApiUser):
    async with live_server.client(alice) as http:
        job = (await probe(http, "POST", "/jobs", json={"kind": "email", "payload": EMAIL})).json()
        for raw in ODD_IDS:
            for method, path in [("GET", "/jobs/{}"), ("DELETE", "/jobs/{}"), ("POST", "/jobs/{}/retry"),
                                 ("GET", "/jobs/{}/events"), ("GET", "/api/v1/jobs/{}")]:
                response = await probe(http, method, path.format(raw))
                assert response.status_code in (404, 307), (method, path, raw, response.status_code)
        for value in ODD_STRINGS:
            for param in ("status", "kind", "queue", "q", "sort", "limit", "offset", "created_after",
                          "created_before", "bogus"):
                await probe(http, "GET", "/jobs", params={param: value})
            await probe(http, "GET", "/tasks", params={"status": value})
            await probe(http, "GET", "/events", params={"last_event_id": value})
            await probe(http, "GET", f"/jobs/{job['id']}/events", params={"stream_token": value})
            if "\x00" not in value:
                await probe(http, "GET", f"/jobs/{job['id']}/events",
                            headers={"Last-Event-ID": value.encode("utf-8")})
            for kind, payload in [("email", {"to": value, "subject": value}), ("report", {"name": value}),
                                  ("notification", {"user": value, "message": value}),
                                  ("external", {"data": {value: [value]}})]:
                await probe(http, "POST", "/jobs", json={"kind": kind, "payload": payload})
            await probe(http, "POST", "/jobs", json={"kind": value, "payload": {}})
            await probe(http, "POST", "/tasks", json={"title": value, "description": value})
        for params in [[("limit", "1"), ("limit", "2")], [("sort", "created"), ("sort", "-created")],
                       [("status", "queued"), ("status", "failed")], [("limit", "1e3")], [("limit", "-1")],
                       [("offset", "99999999999999999999999")], [("limit", "00012")],
                       [("created_after", "0001-01-01T00:00:00+14:00")],
                       [("created_before", "9999-12-31T23:59:59-14:00")],
                       [("created_after", "2020-01-01")], [("sort", "created;DROP TABLE x")],
                       [("sort", "id")], [("status", ",,,")], [("q", "")]]:
            await probe(http, "GET", "/jobs", params=params)
        for body, headers in [
            (b"", {"content-type": "application/json"}), (b"{", {"content-type": "application/json"}),
            (b"[]", {"content-type": "application/json"}), (b"null", {"content-type": "application/json"}),
            (b"\xff\xfe", {"content-type": "application/json"}), (b"{}", {"content-type": "text/plain"}),
            (b"{}", {}), (b"{}", {"content-type": "application/json; charset=latin-1"}),
            (b"[" * 100_000 + b"]" * 100_000, {"content-type": "application/json"}),
            (b'{"kind": "external", "payload": {"data": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
             {"content-type": "application/json"}),
            (b'{"kind": "external", "payload": {"data": ' + b"[" * 950 + b"]" * 950 + b"}}",
             {"content-type": "application/json"}),
            (b'{"kind": "external", "payload": {"data": 1e999}}', {"content-type": "application/json"}),
            (b'{"kind": "external", "payload": {"data": 123456789012345678901234567890}}',
             {"content-type": "application/json"}),
            (b'{"kind": "external", "payload": {"data": "\\ud800"}}', {"content-type": "application/json"}),
            (b'{"kind": "email", "payload": {"to": "a@b.co", "subject": "x"}, "kind": "report"}',
             {"content-type": "application/json"}),
            (b'{"kind": "email", "payload": {"to": "a@b.co", "subject": "x"}, "priority": 1e3}',
             {"content-type": "application/json"}),
            (b'{"kind": "email", "payload": {"to": "a@b.co", "subject": "x"}, "priority": 99999999999999999999999}',
             {"content-type": "application/json"}),
            (b'{"kind": "email", "payload": {"to": "a@b.co", "subject": "x"}, "scheduled_for": "2020-01-01T00:00:00"}',
             {"content-type": "application/json"}),
        ]:
            await probe(http, "POST", "/jobs", content=body, headers=headers)
            await probe(http, "POST", "/jobs/bulk", content=body, headers=headers)
        for bulk in [{"action": "cancel", "ids": list(range(1, 10_001))}, {"action": "cancel", "ids": [0]},
                     {"action": "cancel", "ids": [2**63]}, {"action": "nuke", "ids": [1]},
                     {"action": "delete", "ids": [job["id"]] * 3}, {"action": "retry", "ids": []},
                     {"action": "retry", "ids": ["1"]}, {"action": "retry", "ids": [1.5]}]:
            await probe(http, "POST", "/jobs/bulk", json=bulk)
        for method in ("HEAD", "OPTIONS", "PUT", "PATCH"):
            for path in ("/jobs", "/jobs/1", "/jobs/bulk", "/tasks", "/worker/claim"):
                await probe(http, method, path)
        for path in ("/jobs/", "/stats/", "/tasks/", "/jobs/1/", "/api/v1/jobs/1/", "/nope", "/jobs/1/retry/"):
            await probe(http, "GET", path, follow_redirects=True)
    async with live_server.client(admin) as http:
        for value in [*ODD_STRINGS, "", ",", "a,,b"]:
            await probe(http, "POST", "/worker/claim", params={"queues": value})
            await probe(http, "POST", "/worker/claim", params={"queues": "mail", "worker_id": value})
        for params in [{"queues": "mail", "lease_seconds": "nan"}, {"queues": "mail", "lease_seconds": "1e400"},
                       {"queues": "mail", "limit": "0"}, {"queues": "mail", "limit": "1e3"}]:
            await probe(http, "POST", "/worker/claim", params=params)
        for raw in ODD_IDS[::3]:
            for action in ("heartbeat", "complete", "fail"):
                await probe(http, "POST", f"/worker/jobs/{raw}/{action}",
                            json={"lease_token": "00000000-0000-0000-0000-000000000000", "error": "x"})
        for action, body in [("heartbeat", {"lease_token": "nope"}), ("complete", {}),
                             ("fail", {"lease_token": "00000000-0000-0000-0000-000000000000", "error": ""}),
                             ("fail", {"lease_token": "00000000-0000-0000-0000-000000000000", "error": "\x00"}),
                             ("complete", {"lease_token": "00000000-0000-0000-0000-000000000000",
                                           "result": {"\x00": 1}})]:
            await probe(http, "POST", f"/worker/jobs/{job['id']}/{action}", json=body)
    async with live_server.client() as http:
        for header in ["", "Bearer", "Basic abc", "bearer  pgq_x",
                       "Bearer " + "x" * 10_000, "Bearer é".encode(), "Bearer pgq_é".encode("latin-1")]:
            response = await probe(http, "GET", "/auth/me", headers={"Authorization": header})
            assert response.status_code == 401




async def test_deeply_nested_json_is_a_400_not_a_500(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        for depth in (129, 900, 5000, 200_000):
            body = b'{"kind": "external", "payload": {"data": ' + b"[" * depth + b"]" * depth + b"}}"
            response = await http.post("/jobs", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (depth, response.text)
            assert response.json()["error"]["code"] == "malformed_json"
        nested: object = []
        for _ in range(125):  # 128 levels with the body and the payload
            nested = [nested]
        response = await http.post("/jobs", json={"kind": "external", "payload": {"data": nested}})
        assert response.status_code == 201, response.text
        assert (await http.get(f"/jobs/{response.json()['id']}")).status_code == 200


async def test_scheduled_for_outside_the_utc_calendar_is_a_422_and_inserts_nothing(live_server: LiveServer,
                                                                                    alice: ApiUser):
    async with live_server.client(alice) as http:
        for when in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
            response = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "scheduled_for": when})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["details"][0]["field"] == "scheduled_for"
        assert await job_count(live_server) == 0
        assert (await http.get("/jobs")).status_code == 200
        response = await http.post("/jobs", json={"kind": "email", "payload": EMAIL,
                                                  "scheduled_for": "9999-12-31T23:59:59+00:00"})
        assert response.status_code == 201, response.text
        assert (await http.get("/jobs")).json()["total"] == 1



def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


LINE = b'{"timestamp": 1, "level": "info", "message": "hi"}\n'


async def test_upload_with_an_overlong_multipart_boundary_is_a_400(live_server: LiveServer, alice: ApiUser):
    boundary = "b" * 300
    async with live_server.client(alice) as http:
        response = await http.post("/api/v1/files/upload", content=multipart(boundary, [("file", "a.jsonl", LINE)]),
                                   headers={"content-type": f'multipart/form-data; boundary="{boundary}"'})
        assert response.status_code == 400, response.text
        check_error_shape(response)
        boundary = "b" * 70
        response = await http.post("/api/v1/files/upload", content=multipart(boundary, [("file", "a.jsonl", LINE)]),
                                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 202, response.text


async def test_head_on_a_live_event_stream_ends_and_frees_the_connection(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice, timeout=5) as http:
        job = (await http.post("/jobs", json={"kind": "external", "payload": {}})).json()
        for path in (f"/jobs/{job['id']}/events", "/events"):
            response = await http.head(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            # the same keep-alive connection serves the next request: the HEAD response has ended
            assert (await http.get("/auth/me")).status_code == 200
    hub = live_server.state["hub"]
    assert await wait_for(lambda: _no_subscribers(hub), timeout=5, message="the HEAD streams to unsubscribe")


async def _no_subscribers(hub: Any) -> bool:
    return hub.subscriber_count == 0


async def test_chunked_upload_body_is_bounded_outside_the_file_part_too(start_server: Any, alice: ApiUser,
                                                                         tmp_path: Any):
    """Epilogue bytes count: without Content-Length the body is still refused once it passes the
    limit plus the multipart allowance, as a declared Content-Length would be."""
    server = start_server(storage_url=(tmp_path / "storage").as_uri(), max_upload_bytes=1000)
    boundary = "xYz"
    filler = b"z" * 64 * 1024

    async def body(epilogue: int) -> Any:
        yield multipart(boundary, [("file", "a.jsonl", LINE)])
        for _ in range(epilogue):
            yield filler

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with server.client(alice, timeout=10) as http:
        response = await http.post("/api/v1/files/upload", content=body(2), headers=headers)  # 128 KiB after the file
        assert response.status_code == 413, response.text
        check_error_shape(response)
        assert list((tmp_path / "storage").rglob("*.jsonl")) == []
        assert await job_count(server) == 0
        response = await http.post("/api/v1/files/upload", content=body(0), headers=headers)
        assert response.status_code == 202, response.text


async def test_a_stream_token_with_non_ascii_characters_is_a_401(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        job = (await http.post("/jobs", json={"kind": "external", "payload": {}})).json()
    async with live_server.client() as http:
        for token in ("1.2.\u00e9", "1.2.\U0001f600", "\u0661.2.abc"):
            for path in ("/events", f"/jobs/{job['id']}/events"):
                response = await http.get(path, params={"stream_token": token})
                assert response.status_code == 401, (token, path, response.text)
                assert response.json()["error"]["code"] == "invalid_token"


async def test_invalid_utf8_inside_a_json_string_is_a_400(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice) as http:
        for body in (b'{"kind": "email", "payload": {"to": "\xff@x.io", "subject": "x"}}',
                     b'{"title": "\xed\xa0\x80"}', b'{"\xc0\xaf": 1}'):
            for path in ("/jobs", "/tasks", "/jobs/bulk"):
                response = await http.post(path, content=body, headers={"content-type": "application/json"})
                assert response.status_code == 400, (path, body, response.text)
                assert response.json()["error"]["code"] == "malformed_json"
        assert await job_count(live_server) == 0
