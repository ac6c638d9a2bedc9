"""What the dashboard's create, schedules, uploads and syncs pages need from the REST API beyond
the basics: a cron expression in words and a schedule's last runs (GET /schedules), a unique key
on POST /jobs (scoped to the user), the list of uploads (GET /api/v1/files) and of syncs
(GET /api/v1/syncs), each with the ownership rules of the routes beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bench.api_simulator import SimConfig, SimulatedApi
from app.cron_words import describe_cron
from pgqueue.cron import CronError
from tests.helpers import wait_for
from tests.ingest_fixtures import jsonl, upload
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

NOTE = {"user": "ada", "message": "standup"}


@pytest.mark.parametrize(("expression", "words"), [
    ("0 3 * * *", "every day at 03:00"),
    ("*/5 9-17 * * MON-FRI", "every 5 minutes, from 09:00 through 17:59, on Monday through Friday"),
    ("@hourly", "every hour, on the hour"),
    ("@weekly", "at 00:00, on Sunday"),
    ("* * * * *", "every minute"),
    ("*/10 * * * * *", "every 10 seconds"),
    ("0 0 1,15 * 1", "at 00:00, on day 1 and 15 of the month or on Monday"),
    ("5 4 * JAN-MAR SUN", "at 04:05, on Sunday, in January through March"),
    ("0 */2 * * *", "every 2 hours, on the hour"),
    ("0 12 * * 1,3,5", "at 12:00, on Monday, Wednesday and Friday"),
    ("15 * * * *", "at minute 15 of every hour"),
])
def test_a_cron_expression_in_words(expression: str, words: str) -> None:
    assert describe_cron(expression) == words


def test_a_bad_expression_is_not_described() -> None:
    with pytest.raises(CronError, match="day-of-month"):
        describe_cron("0 0 32 * *")


async def test_schedules_carry_their_meaning_and_last_runs(start_server: object, admin: ApiUser) -> None:
    server: LiveServer = start_server(run_worker=True)  # type: ignore[operator]
    async with server.client(admin) as http:
        created = await http.post("/schedules", json={"name": "every-second", "expression": "* * * * * *",
                                                      "kind": "notification", "payload": NOTE})
        assert created.status_code == 201, created.text
        assert created.json()["meaning"] == "every second"
        assert created.json()["recent_runs"] == []

        async def fired() -> list[dict[str, object]] | None:
            listed = (await http.get("/schedules")).json()["schedules"]
            runs = listed[0]["recent_runs"]
            return runs if len(runs) >= 2 else None

        runs = await wait_for(fired, 30, message="two fires of the schedule")
        assert [run["fire_at"] for run in runs] == sorted((run["fire_at"] for run in runs), reverse=True)
        assert len(runs) <= 5
        for run in runs:
            job = (await http.get(f"/jobs/{run['job_id']}")).json()["job"]
            assert job["kind"] == "notification"
        paused = (await http.post("/schedules/every-second/pause")).json()
        assert paused["state"] == "paused" and paused["recent_runs"]
        one = (await http.get("/schedules/every-second")).json()
        assert one["meaning"] == "every second" and one["recent_runs"]


async def test_a_unique_key_returns_the_live_job_and_is_per_user(live_server: LiveServer, alice: ApiUser,
                                                                 bob: ApiUser) -> None:
    body = {"kind": "notification", "payload": NOTE, "unique_key": "daily-digest"}
    async with live_server.client(alice) as http:
        first = await http.post("/jobs", json=body)
        again = await http.post("/jobs", json=body)
        other = await http.post("/jobs", json=body | {"unique_key": "another"})
        empty = await http.post("/jobs", json=body | {"unique_key": ""})
    async with live_server.client(bob) as http:
        bobs = await http.post("/jobs", json=body)
    assert first.status_code == again.status_code == other.status_code == bobs.status_code == 201, first.text
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert bobs.json()["id"] != first.json()["id"], "another user's key neither collides nor reveals the job"
    assert bobs.json()["owner_id"] == str(bob.id)
    assert empty.status_code == 422 and empty.json()["error"]["details"][0]["field"] == "unique_key"


async def test_the_upload_list_shows_your_own_files(start_server: object, tmp_path: Path, alice: ApiUser,
                                                   bob: ApiUser, admin: ApiUser) -> None:
    server: LiveServer = start_server(storage_url=tmp_path.as_uri())  # type: ignore[operator]
    lines = jsonl({"timestamp": "2024-05-01T12:00:00Z", "level": "info", "message": "hello"})
    accepted = await upload(server, alice, lines, name="<img src=x onerror=alert(1)>.jsonl")
    assert accepted.status_code == 202, accepted.text
    async with server.client(alice) as http:
        files = (await http.get("/api/v1/files")).json()["files"]
        bad = await http.get("/api/v1/files", params={"limit": 0})
        unknown = await http.get("/api/v1/files", params={"owner": "1"})
    assert [(f["id"], f["job_id"], f["name"], f["size"]) for f in files] == [
        (accepted.json()["file_id"], accepted.json()["job_id"], "<img src=x onerror=alert(1)>.jsonl", len(lines))]
    assert files[0]["job_status"] == "queued" and files[0]["owner_id"] == str(alice.id)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "limit"
    assert unknown.status_code == 422
    async with server.client(bob) as http:
        assert (await http.get("/api/v1/files")).json()["files"] == []
    async with server.client(admin) as http:
        assert [f["id"] for f in (await http.get("/api/v1/files")).json()["files"]] == [files[0]["id"]]
    async with server.client() as http:
        assert (await http.get("/api/v1/files")).status_code == 401


async def test_the_sync_list_shows_an_admins_syncs_and_not_to_others(live_server: LiveServer, admin: ApiUser,
                                                                     alice: ApiUser) -> None:
    with SimulatedApi(SimConfig(events=20)) as api:
        async with live_server.client(admin) as http:
            created = await http.post("/api/v1/syncs", json={"url": api.url + "/events", "source": "listed"})
            assert created.status_code == 202, created.text
            syncs = (await http.get("/api/v1/syncs")).json()["syncs"]
            bad = await http.get("/api/v1/syncs", params={"limit": "many"})
    assert [(s["id"], s["source"], s["status"], s["job_ids"]) for s in syncs] == [
        (created.json()["sync_id"], "listed", "queued", created.json()["job_ids"])]
    assert bad.status_code == 422
    async with live_server.client(alice) as http:
        assert (await http.get("/api/v1/syncs")).json()["syncs"] == []


async def test_cron_preview_says_what_an_expression_means_and_when_it_fires(live_server: LiveServer,
                                                                          alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        good = await http.get("/cron", params={"expression": "0 9 * * MON-FRI", "timezone": "Europe/Paris"})
        bad = await http.get("/cron", params={"expression": "0 9 * * MON-FRY", "timezone": "Mars/Olympus"})
        missing = await http.get("/cron")
        many = await http.get("/cron", params={"expression": "@daily", "count": 21})
    assert good.status_code == 200, good.text
    body = good.json()
    assert body["meaning"] == "at 09:00, on Monday through Friday" and body["timezone"] == "Europe/Paris"
    assert len(body["next_fire_times"]) == 5
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"expression", "timezone"}
    assert "position 13" in bad.json()["error"]["details"][0]["message"]
    assert missing.status_code == 422 and many.status_code == 422
    async with live_server.client() as http:
        assert (await http.get("/cron", params={"expression": "@daily"})).status_code == 401


async def test_only_admins_may_enqueue_api_ingest_jobs(live_server: LiveServer, alice: ApiUser) -> None:
    """An api_ingest job fetches the URL of its config and writes a table: a user's POST /jobs must
    not get one past the admin-only POST /api/v1/syncs (the create page does not offer the kind)."""
    body = {"kind": "api_ingest", "payload": {"sync_id": 1, "config": {"url": "http://127.0.0.1:9/internal",
                                                                       "target": "stolen"}}}
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json=body)
    assert response.status_code == 403, response.text
    assert "POST /api/v1/syncs" in response.json()["error"]["message"]
    from tests.process_fixtures import scalar
    assert scalar(live_server.database_url, "SELECT count(*) FROM pgqueue.jobs") == 0
