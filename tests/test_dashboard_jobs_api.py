"""What the dashboard's jobs pages need from the REST API: the `scheduled` and `has_error`
filters, filter-wide bulk actions (inline when small, a `bulk_action` job with progress when
large; ownership kept; bad input a JSON 4xx), and a retry whose unique key is taken is a 409."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

from app.kinds.bulk import INLINE_MAX
from tests.helpers import wait_for
from tests.process_fixtures import query, scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer


def insert_jobs(url: str, owner: ApiUser, count: int, status: str, **columns: Any) -> list[int]:
    """`count` notification jobs of `owner` in `status` (finished ones get finished_at)."""
    extra = ", ".join(f"{name} = %({name})s" for name in columns)
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(
            """INSERT INTO pgqueue.jobs (queue, kind, payload, status, owner_id, attempts, finished_at, last_error)
               SELECT 'default', 'notification', jsonb_build_object('user', 'u' || g, 'message', 'hi'), %(status)s,
                      %(owner)s, CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END,
                      CASE WHEN %(status)s IN ('succeeded', 'dead', 'cancelled') THEN now() END,
                      CASE WHEN %(status)s IN ('dead', 'failed') THEN 'Boom: it broke' END
               FROM generate_series(1, %(count)s) AS g RETURNING id""",
            {"status": status, "owner": str(owner.id), "count": count}).fetchall()]
        if columns:
            conn.execute(f"UPDATE pgqueue.jobs SET {extra} WHERE id = ANY(%(ids)s)", {**columns, "ids": ids})
    return ids


async def test_scheduled_and_has_error_filters(live_server: LiveServer, alice: ApiUser) -> None:
    url = live_server.database_url
    later = insert_jobs(url, alice, 2, "queued")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.jobs SET run_at = now() + interval '1 hour' WHERE id = ANY(%s)", [later])
    now = insert_jobs(url, alice, 3, "queued")
    dead = insert_jobs(url, alice, 4, "dead")
    async with live_server.client(alice) as http:
        scheduled = (await http.get("/jobs", params={"scheduled": "true"})).json()
        not_scheduled = (await http.get("/jobs", params={"scheduled": "false", "status": "queued"})).json()
        with_error = (await http.get("/jobs", params={"has_error": "true"})).json()
        without_error = (await http.get("/jobs", params={"has_error": "false"})).json()
        bad = await http.get("/jobs", params={"has_error": "maybe"})
    assert sorted(j["id"] for j in scheduled["jobs"]) == later and scheduled["total"] == 2
    assert sorted(j["id"] for j in not_scheduled["jobs"]) == now
    assert sorted(j["id"] for j in with_error["jobs"]) == dead
    assert without_error["total"] == 5
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "has_error"


async def test_small_filter_wide_retry_runs_inline_and_only_on_own_jobs(
        live_server: LiveServer, alice: ApiUser, bob: ApiUser) -> None:
    url = live_server.database_url
    mine = insert_jobs(url, alice, 5, "dead")
    theirs = insert_jobs(url, bob, 3, "dead")
    done = insert_jobs(url, alice, 2, "succeeded")
    async with live_server.client(alice) as http:
        response = await http.post("/jobs/bulk/filter", json={"action": "retry", "filter": {"status": ["dead"]}})
        everything = await http.post("/jobs/bulk/filter", json={"action": "retry"})
    assert response.status_code == 200, response.text
    assert response.json() == {"action": "retry", "matched": 5, "background": False, "job_id": None,
                               "succeeded": 5, "failed": 0, "errors": {}}
    statuses = dict(query(url, "SELECT id, status FROM pgqueue.jobs"))
    assert all(statuses[i] == "queued" for i in mine)
    assert all(statuses[i] == "dead" for i in theirs), "bob's jobs are not alice's to retry"
    # no filter: all of alice's jobs; queued and succeeded ones cannot be retried, and say so
    body = everything.json()
    assert body["matched"] == 7 and body["succeeded"] == 0 and body["errors"] == {"invalid_transition": 7}
    assert all(statuses[i] == "succeeded" for i in done)


async def test_large_filter_wide_cancel_runs_as_a_job_with_progress(
        live_server_with_worker: LiveServer, alice: ApiUser, bob: ApiUser) -> None:
    server = live_server_with_worker
    url = server.database_url
    with psycopg.connect(url, autocommit=True) as conn:  # nobody claims them meanwhile
        conn.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('default', true)")
    mine = insert_jobs(url, alice, INLINE_MAX * 3, "queued")
    theirs = insert_jobs(url, bob, 10, "queued")
    async with server.client(alice) as http:
        response = await http.post("/jobs/bulk/filter", json={"action": "cancel",
                                                              "filter": {"kind": ["notification"], "queue": ["default"]}})
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["background"] and body["matched"] == len(mine)
        job_id = body["job_id"]

        async def finished() -> dict[str, Any] | None:
            detail = (await http.get(f"/jobs/{job_id}")).json()
            return detail if detail["job"]["status"] in ("succeeded", "dead") else None

        detail = await wait_for(finished, 60, message="the bulk_action job")
    assert detail["job"]["status"] == "succeeded", detail["job"]["last_error"]
    assert detail["job"]["kind"] == "bulk_action" and detail["job"]["owner_id"] == str(alice.id)
    assert detail["job"]["result"]["succeeded"] == len(mine) and detail["job"]["result"]["failed"] == 0
    percents = [e["data"]["percent"] for e in detail["events"] if e["type"] == "progress"]
    assert percents[-1] == 100 and len(percents) >= 2
    statuses = dict(query(url, "SELECT id, status FROM pgqueue.jobs"))
    assert all(statuses[i] == "cancelled" for i in mine)
    assert all(statuses[i] == "queued" for i in theirs)


async def test_bulk_filter_bad_input_is_a_json_4xx(live_server: LiveServer, alice: ApiUser) -> None:
    async with live_server.client(alice) as http:
        bad = {
            "unknown action": {"action": "explode"},
            "unknown status": {"action": "retry", "filter": {"status": ["sleeping"]}},
            "unknown kind": {"action": "retry", "filter": {"kind": ["nope"]}},
            "unknown field": {"action": "retry", "filter": {"colour": "red"}},
            "empty range": {"action": "retry", "filter": {"created_after": "2026-01-02T00:00:00Z",
                                                          "created_before": "2026-01-01T00:00:00Z"}},
            "no timezone": {"action": "retry", "filter": {"created_after": "2026-01-02T00:00:00"}},
        }
        for label, body in bad.items():
            response = await http.post("/jobs/bulk/filter", json=body)
            assert response.status_code == 422, (label, response.text)
            assert response.json()["error"]["details"], label
        assert (await http.post("/jobs/bulk/filter", content=b"{", headers={"Content-Type": "application/json"})
                ).status_code == 400
    async with live_server.client(None) as anonymous:
        assert (await anonymous.post("/jobs/bulk/filter", json={"action": "retry"})).status_code == 401


async def test_retry_with_its_unique_key_taken_is_a_409(live_server: LiveServer, alice: ApiUser) -> None:
    url = live_server.database_url
    [dead] = insert_jobs(url, alice, 1, "dead", unique_key="report:42")
    [live] = insert_jobs(url, alice, 1, "queued", unique_key="report:42")
    async with live_server.client(alice) as http:
        response = await http.post(f"/jobs/{dead}/retry")
        bulk = (await http.post("/jobs/bulk", json={"action": "retry", "ids": [dead]})).json()
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "unique_key_taken" and f"job {live}" in error["message"]
    assert bulk["results"][0]["error"]["code"] == "unique_key_taken"
    assert scalar(url, "SELECT status FROM pgqueue.jobs WHERE id = %s", [dead]) == "dead"
    # once the holder is gone the retry goes through
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", [live])
    async with live_server.client(alice) as http:
        assert (await http.post(f"/jobs/{dead}/retry")).status_code == 200


async def test_run_now_makes_a_scheduled_job_runnable(live_server: LiveServer, alice: ApiUser, bob: ApiUser) -> None:
    url = live_server.database_url
    [later] = insert_jobs(url, alice, 1, "queued")
    [dead] = insert_jobs(url, alice, 1, "dead")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.jobs SET run_at = now() + interval '1 day' WHERE id = %s", [later])
    async with live_server.client(alice) as http, live_server.client(bob) as as_bob:
        assert (await as_bob.post(f"/jobs/{later}/run-now")).status_code == 404
        response = await http.post(f"/jobs/{later}/run-now")
        again = await http.post(f"/jobs/{later}/run-now")
        finished = await http.post(f"/jobs/{dead}/run-now")
    assert response.status_code == 200, response.text
    assert scalar(url, "SELECT run_at <= now() FROM pgqueue.jobs WHERE id = %s", [later]) is True
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    assert finished.status_code == 409


async def test_a_jobs_related_sections_are_its_owners(live_server: LiveServer, alice: ApiUser, bob: ApiUser) -> None:
    url = live_server.database_url
    [job] = insert_jobs(url, alice, 1, "succeeded")
    with psycopg.connect(url, autocommit=True) as conn:
        file_id = conn.execute(
            """INSERT INTO app.files (owner_id, name, content_type, size, sha256, storage_url, storage_key, job_id,
                                      lines_total, lines_valid, lines_invalid)
               VALUES (%s, 'app.jsonl', 'application/jsonl', 100, repeat('a', 64), 'file:///tmp', 'k1', %s, 3, 1, 2)
               RETURNING id""", [str(alice.id), job]).fetchone()[0]
        conn.execute("""INSERT INTO app.ingest_errors (file_id, line_no, job_id, reason, excerpt)
                        VALUES (%s, 3, %s, 'not JSON', '<script>x</script>'), (%s, 2, %s, 'no ts', '{}')""",
                     [file_id, job, file_id, job])
    async with live_server.client(alice) as http, live_server.client(bob) as as_bob:
        mine = await http.get(f"/dashboard/api/jobs/{job}/related")
        theirs = await as_bob.get(f"/dashboard/api/jobs/{job}/related")
        missing = await http.get("/dashboard/api/jobs/999999/related")
        bad = await http.get("/dashboard/api/jobs/abc/related")
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["file"]["name"] == "app.jsonl" and body["file"]["lines_invalid"] == 2
    assert [line["line_no"] for line in body["bad_lines"]] == [2, 3] and body["sync"] is None
    assert theirs.status_code == 404 and missing.status_code == 404 and bad.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"


async def test_total_max_caps_the_count_and_says_so(live_server: LiveServer, alice: ApiUser) -> None:
    insert_jobs(live_server.database_url, alice, 5, "dead")
    async with live_server.client(alice) as http:
        capped = (await http.get("/jobs", params={"total_max": "3"})).json()
        exact = (await http.get("/jobs", params={"total_max": "5"})).json()
        plain = (await http.get("/jobs")).json()
        bad = await http.get("/jobs", params={"total_max": "0"})
    assert (capped["total"], capped["total_capped"], len(capped["jobs"])) == (3, True, 5)
    assert (exact["total"], exact.get("total_capped")) == (5, None), "left out unless capped"
    assert (plain["total"], plain.get("total_capped")) == (5, None)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "total_max"


def _filter_conditions(sql: str, statement: str) -> list[str]:
    """The filter conditions of one named statement: its lines from the owner_id condition to
    the has_error one, whitespace and the leading WHERE/AND stripped."""
    body = sql.split(f"-- name: {statement} ", 1)[1].split("-- name: ", 1)[0]
    lines = [line.strip() for line in body.splitlines()]
    start = next(i for i, line in enumerate(lines) if "%(owner_id)s::text IS NULL" in line)
    end = next(i for i, line in enumerate(lines) if "%(has_error)s::bool IS NULL" in line)
    return [re.sub(r"^(WHERE|AND)\s+", "", line) for line in lines[start:end + 1]]


def test_the_bulk_walk_filters_exactly_like_the_jobs_list() -> None:
    """app/sql/bulk.sql repeats list_jobs' WHERE (a keyset walk cannot share list_jobs' CTE):
    a filter-wide action must touch exactly the jobs the page showed as matching."""
    sql_dir = Path(__file__).resolve().parent.parent / "app" / "sql"
    listed = _filter_conditions((sql_dir / "queries.sql").read_text(), "list_jobs")
    walked = _filter_conditions((sql_dir / "bulk.sql").read_text(), "bulk_job_ids")
    assert len(listed) >= 9
    assert walked == listed

