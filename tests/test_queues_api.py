"""REST for queues (app/queues.py): admins list, pause, resume and limit queues; bad input is a
422 and changes nothing; POST /jobs takes a concurrency_key."""

from __future__ import annotations

from tests.process_fixtures import query
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

EMAIL = {"to": "ada@example.com", "subject": "Welcome"}


async def test_admin_pauses_limits_and_resumes_a_queue(live_server: LiveServer, admin: ApiUser) -> None:
    async with live_server.client(admin) as http:
        created = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "concurrency_key": "tenant-7"})
        assert created.status_code == 201, created.text
        untouched = (await http.get("/queues/reports")).json()
        assert untouched["state"] == "active" and untouched["concurrency_limit"] is None and untouched["queued"] == 0

        paused = await http.post("/queues/mail/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused" and paused.json()["queued"] == 1
        patched = await http.patch("/queues/mail", json={"concurrency_limit": 5,
                                                         "rate": {"limit": 100, "period_seconds": 60}})
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["concurrency_limit"] == 5 and body["rate"] == {"limit": 100, "period_seconds": 60.0, "text": "100/m"}
        assert body["state"] == "paused"  # limits leave the pause alone
        again = (await http.patch("/queues/mail", json={"rate": None, "key_concurrency_limit": 2})).json()
        assert (again["concurrency_limit"], again["rate"], again["key_concurrency_limit"]) == (5, None, 2)
        put = (await http.put("/queues/mail", json={"key_rate": {"limit": 3, "period_seconds": 1}})).json()
        assert (put["concurrency_limit"], put["key_concurrency_limit"], put["key_rate"]["text"]) == (None, None, "3/s")
        listed = (await http.get("/queues")).json()["queues"]
        assert [(q["name"], q["state"]) for q in listed] == [("mail", "paused")]
        assert (await http.post("/queues/mail/resume")).json()["state"] == "active"
    assert query(live_server.database_url, "SELECT concurrency_key FROM pgqueue.jobs") == [("tenant-7",)]


async def test_bad_queue_input_is_a_422_and_writes_nothing(live_server: LiveServer, admin: ApiUser) -> None:
    async with live_server.client(admin) as http:
        assert (await http.patch("/queues/mail", json={"concurrency_limit": 3})).status_code == 200
        bad_bodies = [{"concurrency_limit": 0}, {"concurrency_limit": -2}, {"concurrency_limit": "3"},
                      {"rate": {"limit": 0, "period_seconds": 1}}, {"rate": {"limit": 5, "period_seconds": 0}},
                      {"rate": {"limit": 5}}, {"key_concurrency_limit": 10**7}, {"unknown": 1},
                      {"concurrency_limit": 4, "rate": {"limit": 1, "period_seconds": -1}}]
        for body in bad_bodies:
            response = await http.patch("/queues/mail", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["details"], body
        for path in ("/queues/bad%20name/pause", "/queues/" + "x" * 101 + "/resume"):
            response = await http.post(path)
            assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "name", path
        assert (await http.get("/queues/a%2Fb")).status_code in (404, 422)
        state = (await http.get("/queues/mail")).json()
        assert (state["concurrency_limit"], state["rate"], state["state"]) == (3, None, "active")
        too_long = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "concurrency_key": "k" * 501})
        assert too_long.status_code == 422
    assert query(live_server.database_url, "SELECT name FROM pgqueue.queues") == [("mail",)]


async def test_queues_are_for_admins_and_in_the_openapi_document(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        for method, path in (("GET", "/queues"), ("GET", "/queues/mail"), ("POST", "/queues/mail/pause"),
                             ("PATCH", "/queues/mail")):
            response = await http.request(method, path, json={} if method == "PATCH" else None)
            assert response.status_code == 403, (method, path, response.text)
        document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    assert {"get"} <= set(paths["/queues"]) and {"get", "patch", "put"} <= set(paths["/queues/{name}"])
    assert "post" in paths["/queues/{name}/pause"] and "post" in paths["/queues/{name}/resume"]
    [name] = paths["/queues/{name}"]["get"]["parameters"]
    assert name["schema"]["type"] == "string"
    assert query(live_server.database_url, "SELECT count(*) FROM pgqueue.queues") == [(0,)]
