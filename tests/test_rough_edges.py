"""The rough edges a new user hit (issue 11's "Also fix" list), each pinned by a test: every bad
field in a 422, words for the email check and enum values, tracebacks for admins only, the
dashboard's kinds, `owner_id`, retrying a cancelled job, the CLI's enqueue and exit codes,
one progress event per ingest batch, and the embedded server stopped by the command that
started it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pgqueue.__main__ import dev_database
from pgqueue.embedded import EmbeddedPostgres
from tests.ingest_fixtures import *  # noqa: F403
from tests.ingest_fixtures import follow_events, job_progress, upload, wait_until_finished
from tests.process_fixtures import run_cli, scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

TRACEBACK = """Traceback (most recent call last):
  File "/srv/pgqueue/app/jobs.py", line 97, in send_email
    await relay.send(message)
  File "/srv/pgqueue/app/relay.py", line 12, in send
    raise RelayRefused("550 mailbox unavailable")
app.relay.RelayRefused: 550 mailbox unavailable"""


async def test_a_422_names_every_bad_field(live_server: LiveServer, alice: ApiUser) -> None:
    body = {"kind": "email", "priority": 9, "scheduled_for": "next tuesday",
            "payload": {"to": "not-an-address", "subject": "hi", "cc": ["a@b.co", "nope"]}}
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "priority", "message": "Expected `int` <= 5"},
        {"field": "scheduled_for", "message": "Invalid RFC3339 encoded datetime"},
        {"field": "payload.to", "message": "not an email address"},
        {"field": "payload.cc.1", "message": "not an email address"},
    ]


async def test_a_missing_and_an_unknown_field_are_both_named(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        response = await http.post("/jobs", json={"kind": "report", "payload": {"rows": -1, "colour": "red"}})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "payload.colour", "message": "Object contains unknown field `colour`"},
        {"field": "payload.name", "message": "Object missing required field `name`"},
        {"field": "payload.rows", "message": "Expected `int` >= 0"},
    ]


async def test_a_bad_sort_lists_the_allowed_values(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        response = await http.get("/jobs", params={"sort": "bogus"})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "sort", "message": "'bogus' is not allowed; expected one of created, -created, priority, "
                                     "-priority, status, -status"}]


async def test_a_non_admin_sees_the_exception_message_an_admin_the_traceback(
        live_server: LiveServer, alice: ApiUser, admin: ApiUser) -> None:
    async with live_server.client(alice) as http, live_server.client(admin) as worker:
        job = (await http.post("/jobs", json={"kind": "external", "payload": {"data": 1}})).json()
        [leased] = (await worker.post("/worker/claim", params={"queues": "external"})).json()["jobs"]
        failed = await worker.post(f"/worker/jobs/{job['id']}/fail",
                                   json={"lease_token": leased["lease_token"], "error": TRACEBACK, "permanent": True})
        assert failed.json()["status"] == "dead"

        mine = (await http.get(f"/jobs/{job['id']}")).json()
        assert mine["job"]["last_error"] == "RelayRefused: 550 mailbox unavailable"
        assert [a["error"] for a in mine["attempts"]] == ["RelayRefused: 550 mailbox unavailable"]
        assert [e["data"]["error"] for e in mine["events"] if "error" in e["data"]] == [
            "RelayRefused: 550 mailbox unavailable"]
        listed = (await http.get("/jobs")).json()["jobs"]
        assert [j["last_error"] for j in listed] == ["RelayRefused: 550 mailbox unavailable"]
        progress = (await http.get(f"/api/v1/jobs/{job['id']}")).json()
        assert progress["error"] == "RelayRefused: 550 mailbox unavailable"

        theirs = (await worker.get(f"/jobs/{job['id']}")).json()
        assert theirs["job"]["last_error"] == TRACEBACK
        assert theirs["attempts"][0]["error"] == TRACEBACK
    streamed = await follow_events(live_server, alice, job["id"])
    assert [e.data["error"] for e in streamed if e.type == "dead"] == ["RelayRefused: 550 mailbox unavailable"]
    assert all("/srv/pgqueue" not in json.dumps(e.data) for e in streamed)


async def test_me_gives_owner_id_as_the_jobs_show_it(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        me = (await http.get("/auth/me")).json()
        job = (await http.post("/jobs", json={"kind": "external", "payload": {}})).json()
    assert me["id"] == alice.id and me["owner_id"] == str(alice.id) == job["owner_id"]


async def test_a_cancelled_job_can_be_retried_over_http(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        job = (await http.post("/jobs", json={"kind": "external", "payload": {}})).json()
        assert (await http.delete(f"/jobs/{job['id']}")).json()["status"] == "cancelled"
        retried = await http.post(f"/jobs/{job['id']}/retry")
        assert retried.status_code == 200 and retried.json()["status"] == "queued"
        bulk = await http.post("/jobs/bulk", json={"action": "cancel", "ids": [job["id"]]})
        assert bulk.json()["succeeded"] == 1
        again = await http.post("/jobs/bulk", json={"action": "retry", "ids": [job["id"]]})
        assert again.json()["results"] == [{"id": job["id"], "ok": True, "status": "queued", "error": None}]


async def test_the_dashboard_offers_only_kinds_the_api_accepts(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        page = (await http.get("/dashboard/new")).text
        kinds = json.loads(re.search(r'<script id="pgq-data" type="application/json">(.*?)</script>', page).group(1))["kinds"]
        assert "ingest_file" not in kinds and "email" in kinds
        for kind in kinds:  # none of them is an unknown kind to POST /jobs (a bad payload is fine)
            response = await http.post("/jobs", json={"kind": kind, "payload": {"x": [1]}})
            assert not any(d["field"] == "kind" for d in response.json().get("error", {}).get("details", [])), kind
        refused = await http.post("/jobs", json={"kind": "ingest_file", "payload": {"file_id": 1}})
        assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "kind"


def test_enqueue_without_app_refuses_an_unknown_kind(db_url: str) -> None:
    done = run_cli("enqueue", "email", '{"to": "a@example.com"}', database_url=db_url)
    assert done.returncode == 3
    assert done.stderr.startswith("error: unknown job kind 'email': pass --app MODULE"), done.stderr
    assert scalar(db_url, "SELECT count(*) FROM pgqueue.jobs") == 0

    untyped = run_cli("enqueue", "ping", "--untyped", "--queue", "pings", database_url=db_url)
    assert untyped.returncode == 0, untyped.stderr
    assert scalar(db_url, "SELECT queue FROM pgqueue.jobs") == "pings"

    typo = run_cli("enqueue", "emial", "{}", "--app", "tests.jobs", database_url=db_url)
    assert typo.returncode == 3 and "unknown job kind 'emial'" in typo.stderr


def test_enqueue_says_when_a_unique_key_deduplicated_the_job(db_url: str) -> None:
    args = ("enqueue", "noop", "--app", "tests.jobs", "--unique-key", "nightly-report")
    first = run_cli(*args, database_url=db_url)
    second = run_cli(*args, database_url=db_url)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "deduplicated" not in first.stdout
    job_id = re.match(r"job (\d+):", first.stdout).group(1)
    assert second.stdout.startswith(f"job {job_id}:")
    assert "(deduplicated: this job already held unique key 'nightly-report'; nothing new enqueued)" in second.stdout
    assert scalar(db_url, "SELECT count(*) FROM pgqueue.jobs") == 1


def test_exit_codes_tell_the_error_classes_apart(db_url: str) -> None:
    bad_input = run_cli("enqueue", "noop", "--app", "tests.jobs", "--priority", "9", database_url=db_url)
    unreachable = run_cli("stats", "--database-url", "postgresql://postgres@127.0.0.1:1/postgres")
    assert (bad_input.returncode, unreachable.returncode) == (2, 4), bad_input.stderr + unreachable.stderr
    assert all("Traceback" not in done.stderr for done in (bad_input, unreachable))
    assert "XDG_RUNTIME_DIR" not in bad_input.stderr + unreachable.stderr


async def test_a_one_batch_ingest_reports_progress_once(start_server: Callable[..., LiveServer], alice: ApiUser,
                                                        ingest_storage_url: str) -> None:
    server = start_server(run_worker=True, storage_url=ingest_storage_url)
    sample = Path(__file__).parent.parent / "app" / "samples" / "logs.jsonl"
    accepted = (await upload(server, alice, sample.read_bytes(), "logs.jsonl")).json()
    events = await follow_events(server, alice, accepted["job_id"])
    progress = [e.data for e in events if e.type == "progress"]
    assert [p["percent"] for p in progress] == [100], progress
    assert progress[0]["message"].startswith("done: 20 lines, 18 valid, 2 invalid")
    finished = await wait_until_finished(server, alice, accepted["job_id"])
    assert (finished["status"], finished["job_status"]) == ("completed", "succeeded")
    assert (await job_progress(server, alice, accepted["job_id"]))["lines"]["invalid"] == 2


def test_the_embedded_server_stops_with_the_command_that_started_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PGQUEUE_DATABASE_URL", raising=False)
    server = EmbeddedPostgres(tmp_path / "data" / "pg")
    with pytest.raises(KeyboardInterrupt), dev_database(str(tmp_path / "data")) as url:  # Ctrl-C inside
        assert server.is_running()
        port = url.rsplit(":", 1)[1].split("/")[0]
        raise KeyboardInterrupt
    printed = capsys.readouterr().out
    assert not server.is_running()
    assert f"export PGQUEUE_DATABASE_URL=postgresql://postgres@127.0.0.1:{port}/postgres" in printed
    assert "stopped when this command ends" in printed and "embedded PostgreSQL stopped" in printed

    # one already running (started by another command) is left running, with a stop command that works
    server.port = int(port)
    server.start()
    try:
        with dev_database(str(tmp_path / "data")):
            pass
        assert server.is_running()
        assert server.stop_command() in capsys.readouterr().out
    finally:
        server.stop()
