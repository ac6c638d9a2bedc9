"""REST for schedules (app/routes/schedules.py): admins create, list, pause, resume and remove
periodic jobs; users get 403; bad input is a clear 4xx and writes nothing; a schedule created over
REST fires a job that the app's worker runs."""

from __future__ import annotations

from datetime import datetime

from tests.helpers import wait_for
from tests.process_fixtures import query, scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

NOTE = {"user": "ada", "message": "standup"}


def schedule_body(**fields: object) -> dict[str, object]:
    return {"name": "standup", "expression": "0 9 * * MON-FRI", "kind": "notification", "payload": NOTE,
            "timezone": "Europe/Paris", **fields}


async def test_admin_creates_lists_pauses_resumes_and_removes_a_schedule(live_server: LiveServer,
                                                                          admin: ApiUser) -> None:
    async with live_server.client(admin) as http:
        created = await http.post("/schedules", json=schedule_body(catch_up="latest", priority=5))
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/schedules/standup"
        body = created.json()
        assert (body["kind"], body["queue"], body["priority"], body["max_attempts"]) == ("notification", "default", 5, 3)
        assert (body["catch_up"], body["catch_up_window"], body["state"], body["last_fire_at"]) == (
            "latest", 60.0, "active", None)
        fires = [datetime.fromisoformat(text) for text in body["next_fire_times"]]
        assert len(fires) == 3 and fires == sorted(fires) and fires[0] == datetime.fromisoformat(body["next_fire_at"])
        for fire in fires:  # 09:00 on a weekday in Paris, whatever the offset (CET or CEST)
            local = fire.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
            assert (local.hour, local.minute, local.second) == (9, 0, 0) and local.isoweekday() <= 5

        second = await http.post("/schedules", json=schedule_body(name="hourly", expression="@hourly", timezone="UTC",
                                                                  paused=True, catch_up="all", catch_up_window=600))
        assert second.status_code == 201 and second.json()["state"] == "paused", second.text
        assert len(second.json()["next_fire_times"]) == 3  # where resuming would start

        listed = (await http.get("/schedules")).json()["schedules"]
        assert [(s["name"], s["state"]) for s in listed] == [("hourly", "paused"), ("standup", "active")]
        assert (await http.get("/schedules/standup")).json() == body | {"next_fire_times": body["next_fire_times"]}

        paused = await http.post("/schedules/standup/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        resumed = await http.post("/schedules/hourly/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "active"
        assert datetime.fromisoformat(resumed.json()["next_fire_at"]).minute == 0

        removed = await http.delete("/schedules/standup")
        assert removed.status_code == 204 and removed.content == b""
        assert (await http.get("/schedules/standup")).status_code == 404
        assert (await http.delete("/schedules/standup")).status_code == 404
        assert [s["name"] for s in (await http.get("/schedules")).json()["schedules"]] == ["hourly"]
    assert query(live_server.database_url, "SELECT name, paused FROM pgqueue.schedules") == [("hourly", False)]


async def test_bad_schedules_are_a_clear_4xx_and_write_nothing(live_server: LiveServer, admin: ApiUser) -> None:
    async with live_server.client(admin) as http:
        assert (await http.post("/schedules", json=schedule_body())).status_code == 201
        cases: list[tuple[dict[str, object], str, str]] = [
            (schedule_body(name="a", expression="0 9 32 * *"), "expression", "position 5 (day-of-month field)"),
            (schedule_body(name="b", expression="* * *"), "expression", ""),
            (schedule_body(name="c", timezone="Mars/Olympus_Mons"), "timezone", "Mars/Olympus_Mons"),
            (schedule_body(name="d", kind="fax"), "kind", "unknown job kind 'fax'"),
            (schedule_body(name="e", kind="ingest_file"), "kind", "unknown job kind 'ingest_file'"),
            (schedule_body(name="f", payload={"user": "ada"}), "payload.message", ""),
            (schedule_body(name="g", catch_up="sometimes"), "catch_up", ""),
            (schedule_body(name="h", catch_up_window=0), "catch_up_window", ""),
            (schedule_body(name="i", priority=9), "priority", ""),
            (schedule_body(name="bad name"), "name", ""),
            (schedule_body(name="j", expression="x" * 201), "expression", ""),
            (schedule_body(name="k", expression="0 0 30 FEB *"), "expression", "never fires"),
            ({**schedule_body(name="l"), "color": "red"}, "color", ""),
            ({"name": "m", "kind": "notification"}, "expression", ""),
        ]
        for bad, field, words in cases:
            response = await http.post("/schedules", json=bad)
            assert response.status_code == 422, (bad, response.text)
            details = response.json()["error"]["details"]
            assert any(d["field"] == field and words in d["message"] for d in details), (bad, details)
        # every bad field in one answer, the unknown kind with the others
        both = await http.post("/schedules", json=schedule_body(name="n", kind="fax", expression="61 * * * *",
                                                                timezone="Nowhere/Else"))
        assert {d["field"] for d in both.json()["error"]["details"]} == {"kind", "expression", "timezone"}

        duplicate = await http.post("/schedules", json=schedule_body(expression="@daily"))
        assert duplicate.status_code == 409, duplicate.text
        assert duplicate.json()["error"]["code"] == "schedule_exists"
        for method, path in (("GET", "/schedules/bad%20name"), ("POST", "/schedules/" + "x" * 101 + "/pause"),
                             ("DELETE", "/schedules/a,b")):
            response = await http.request(method, path)
            assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "name", path
        for path in ("/schedules/nope/pause", "/schedules/nope/resume"):
            response = await http.post(path)
            assert response.status_code == 404 and "nope" in response.json()["error"]["message"], path
        not_json = await http.post("/schedules", content=b"{", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
    assert query(live_server.database_url, "SELECT name, expression FROM pgqueue.schedules") == [
        ("standup", "0 9 * * MON-FRI")]
    assert scalar(live_server.database_url, "SELECT count(*) FROM pgqueue.jobs") == 0


async def test_schedules_are_for_admins_and_in_the_openapi_document(live_server: LiveServer, alice: ApiUser,
                                                                      admin: ApiUser) -> None:
    async with live_server.client(admin) as http:
        assert (await http.post("/schedules", json=schedule_body())).status_code == 201
    async with live_server.client(alice) as http:
        for method, path in (("GET", "/schedules"), ("POST", "/schedules"), ("GET", "/schedules/standup"),
                             ("DELETE", "/schedules/standup"), ("POST", "/schedules/standup/pause"),
                             ("POST", "/schedules/standup/resume")):
            response = await http.request(method, path, json=schedule_body(name="mine"))
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "forbidden"
    async with live_server.client() as http:
        assert (await http.get("/schedules")).status_code == 401
        document = (await http.get("/openapi.json")).json()
    assert query(live_server.database_url, "SELECT name, paused FROM pgqueue.schedules") == [("standup", False)]
    paths = document["paths"]
    assert set(paths["/schedules"]) == {"get", "post"}
    assert set(paths["/schedules/{name}"]) == {"get", "delete"}
    assert {"/schedules/{name}/pause", "/schedules/{name}/resume"} <= set(paths)
    parameter = paths["/schedules/{name}"]["get"]["parameters"][0]
    assert parameter["name"] == "name" and parameter["schema"]["type"] == "string"
    create = paths["/schedules"]["post"]
    assert {"201", "403", "409", "422"} <= set(create["responses"])
    schema = document["components"]["schemas"]["ScheduleCreate"]
    assert {"name", "expression", "kind"} <= set(schema["required"])
    assert set(schema["properties"]["catch_up"]["enum"]) == {"skip", "latest", "all"}


async def test_a_schedule_made_over_rest_fires_a_job_the_worker_runs(live_server_with_worker: LiveServer,
                                                                    admin: ApiUser) -> None:
    server = live_server_with_worker
    async with server.client(admin) as http:
        created = await http.post("/schedules", json=schedule_body(name="every-second", expression="* * * * * *",
                                                                   timezone="UTC"))
        assert created.status_code == 201, created.text

        async def first_fire_done() -> object:
            return scalar(server.database_url, """
                SELECT min(j.id) FROM pgqueue.schedule_fires AS f JOIN pgqueue.jobs AS j ON j.id = f.job_id
                WHERE j.status = 'succeeded'""")

        job_id = await wait_for(first_fire_done, timeout=30, message="a fired job to succeed")
        response = await http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()["job"]
        assert job["kind"] == "notification" and job["payload"] == {**NOTE, "channel": "push"}
        assert (await http.post("/schedules/every-second/pause")).json()["state"] == "paused"
        listed = (await http.get("/schedules")).json()["schedules"][0]
        assert listed["last_fire_at"] is not None
    fire_at, run_at = query(server.database_url, "SELECT f.fire_at, j.run_at FROM pgqueue.schedule_fires AS f "
                                                 "JOIN pgqueue.jobs AS j ON j.id = f.job_id WHERE j.id = %s",
                            [job_id])[0]
    assert fire_at == run_at and fire_at.microsecond == 0
