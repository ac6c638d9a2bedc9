"""Job dependencies and long polls through the REST API and the CLI (README, "Job dependencies",
"Waiting for a result")."""

from __future__ import annotations

from tests.process_fixtures import run_cli, scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer, job_count

EMAIL = {"to": "ada@example.com", "subject": "Welcome"}


async def test_depends_on_only_on_jobs_the_user_may_see(live_server: LiveServer, alice: ApiUser, bob: ApiUser):
    async with live_server.client(alice) as http:
        parent = (await http.post("/jobs", json={"kind": "email", "payload": EMAIL})).json()
        response = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "depends_on": [parent["id"]]})
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "waiting"
        before = await job_count(live_server)
        missing = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "depends_on": [10**12]})
        assert missing.status_code == 422
        assert missing.json()["error"]["details"] == [{"field": "depends_on", "message": "job 1000000000000 does not exist"}]
        zero = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "depends_on": [0]})
        assert zero.status_code == 422 and zero.json()["error"]["details"][0]["field"].startswith("depends_on")
    async with live_server.client(bob) as http:
        theirs = await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "depends_on": [parent["id"]]})
        assert theirs.status_code == 422
        assert theirs.json()["error"]["details"] == [
            {"field": "depends_on", "message": f"job {parent['id']} does not exist"}]
    assert await job_count(live_server) == before


async def test_get_with_wait_long_polls_until_the_job_finished(live_server_with_worker: LiveServer, alice: ApiUser,
                                                               bob: ApiUser):
    server = live_server_with_worker
    async with server.client(alice, timeout=60) as http:
        job = (await http.post("/jobs", json={"kind": "email", "payload": EMAIL})).json()
        child = (await http.post("/jobs", json={"kind": "email", "payload": EMAIL, "depends_on": [job["id"]]})).json()
        done = await http.get(f"/jobs/{child['id']}", params={"wait": 30})
        assert done.status_code == 200
        assert done.json()["job"]["status"] == "succeeded"
        assert [e["type"] for e in done.json()["events"]][:1] == ["unblocked"]
        for bad in ("61", "-1", "1.5", "x"):
            assert (await http.get(f"/jobs/{job['id']}", params={"wait": bad})).status_code == 422
    async with server.client(bob) as http:
        assert (await http.get(f"/jobs/{job['id']}", params={"wait": 30})).status_code == 404


async def test_a_long_poll_that_times_out_returns_the_job_as_it_is(live_server: LiveServer, alice: ApiUser):
    async with live_server.client(alice, timeout=30) as http:
        job = (await http.post("/jobs", json={"kind": "email", "payload": EMAIL})).json()
        response = await http.get(f"/jobs/{job['id']}", params={"wait": 1})
        assert response.status_code == 200
        assert response.json()["job"]["status"] == "queued"


def test_the_cli_enqueues_with_depends_on(db_url: str):
    parent = run_cli("enqueue", "noop", "{}", "--untyped", database_url=db_url)
    assert parent.returncode == 0, parent.stderr
    parent_id = int(parent.stdout.split()[1].rstrip(":"))
    child = run_cli("enqueue", "noop", "{}", "--untyped", "--depends-on", str(parent_id), database_url=db_url)
    assert child.returncode == 0, child.stderr
    assert ", waiting," in child.stdout
    for bad in ("999999", "1,x"):
        refused = run_cli("enqueue", "noop", "{}", "--untyped", "--depends-on", bad, database_url=db_url)
        assert refused.returncode == 2
        assert refused.stderr.startswith("error: invalid job: depends_on:"), refused.stderr
    timed_out = run_cli("enqueue", "noop", "{}", "--untyped", "--wait", "0.2", database_url=db_url)
    assert timed_out.returncode == 1 and "did not finish within 0.2s" in timed_out.stderr
    assert scalar(db_url, "SELECT count(*) FROM pgqueue.jobs") == 3
