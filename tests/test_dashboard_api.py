"""The dashboard's overview endpoint against the database: its counts, charts, queues and
workers say what SQL says, it is admin-only, and a large table gets labelled estimates."""

from __future__ import annotations

import psycopg

from app.dashboard.api import EXACT_COUNT_MAX_ROWS
from tests.process_fixtures import query, scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer


def seed(url: str) -> None:
    """Jobs in every state, finished over the last hours, on two queues; one live and one gone worker."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO pgqueue.jobs (queue, kind, status, run_at, created_at, started_at, finished_at, attempts)
            SELECT CASE WHEN g % 3 = 0 THEN 'mail' ELSE 'reports' END, 'noop', s.status,
                   now() - make_interval(mins => g % 50), now() - make_interval(mins => g % 50 + 1),
                   CASE WHEN s.status <> 'queued' THEN now() - make_interval(mins => g % 50) END,
                   CASE WHEN s.status IN ('succeeded', 'dead', 'cancelled') THEN now() - make_interval(mins => g % 50) END,
                   CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END
            FROM generate_series(1, 40) AS g,
                 unnest(ARRAY['queued', 'succeeded', 'succeeded', 'dead', 'cancelled', 'failed']) AS s(status)""")
        conn.execute("""
            INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, started_at, heartbeat_at)
            VALUES ('w-live', 'host-a', 101, '{mail}', 4, now() - interval '1 hour', now()),
                   ('w-gone', 'host-b', 102, '{reports}', 2, now() - interval '2 hours', now() - interval '1 hour')""")


async def test_overview_numbers_match_the_database(live_server: LiveServer, admin: ApiUser, alice: ApiUser) -> None:
    url = live_server.database_url
    seed(url)
    async with live_server.client(admin) as http, live_server.client(alice) as as_alice:
        assert (await as_alice.get("/dashboard/api/overview")).status_code == 403
        response = await http.get("/dashboard/api/overview")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unavailable"] == {}
    by_status = dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs GROUP BY status"))
    assert {s: c["jobs"] for s, c in body["counts"].items() if c["jobs"]} == by_status
    assert not any(c["estimated"] for c in body["counts"].values())

    ended = dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs WHERE finished_at IS NOT NULL GROUP BY status"))
    assert sum(m["succeeded"] for m in body["per_minute"]) == ended["succeeded"]
    assert sum(m["dead"] for m in body["per_minute"]) == ended["dead"]
    assert len(body["per_minute"]) == 60
    # the 7-day chart counts a few missing hours per request, newest first, then keeps them
    missing = [body["per_hour_missing"]]
    async with live_server.client(admin) as http:
        while missing[-1] and len(missing) < 40:
            hours = (await http.get("/dashboard/api/overview")).json()
            missing.append(hours["per_hour_missing"])
    assert missing == sorted(missing, reverse=True) and missing[-1] == 0, missing
    assert len(hours["per_hour"]) == 7 * 24
    assert sum(h["dead"] for h in hours["per_hour"]) == ended["dead"]
    assert sum(h["succeeded"] for h in hours["per_hour"]) == ended["succeeded"]

    queues = {q["queue"]: q for q in body["queues"]}
    for name in ("mail", "reports"):
        expected = dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs WHERE queue = %s GROUP BY status", [name]))
        assert queues[name]["queued"] == expected["queued"] and queues[name]["failed_waiting"] == expected["failed"]
        oldest = scalar(url, "SELECT extract(epoch FROM now() - min(run_at)) FROM pgqueue.jobs "
                             "WHERE queue = %s AND status IN ('queued', 'failed')", [name])
        assert abs(queues[name]["oldest_wait_seconds"] - float(oldest)) < 60
    workers = {w["id"]: w for w in body["workers"]}
    assert workers["w-live"]["alive"] and not workers["w-gone"]["alive"]
    assert workers["w-live"]["hostname"] == "host-a" and workers["w-live"]["pid"] == 101
    # queued jobs created 1-50 minutes ago and still waiting: the last point counts all of them
    last = body["depth"]["points"][-1]["waiting"]
    waiting_now = dict(query(url, "SELECT queue, count(*) FROM pgqueue.jobs WHERE status IN ('queued', 'failed') "
                                  "AND run_at <= date_trunc('minute', now()) GROUP BY queue"))
    assert last == waiting_now


async def test_a_large_table_gets_labelled_estimates(live_server: LiveServer, admin: ApiUser) -> None:
    url = live_server.database_url
    seed(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE pgqueue.jobs")
        # the planner believes the table is large (as after ANALYZE of a big one): no exact scan
        conn.execute("UPDATE pg_class SET reltuples = %s WHERE oid = 'pgqueue.jobs'::regclass",
                     [EXACT_COUNT_MAX_ROWS * 10])
    async with live_server.client(admin) as http:
        body = (await http.get("/dashboard/api/overview")).json()
    counts = body["counts"]
    assert counts["succeeded"]["estimated"] and counts["succeeded"]["jobs"] > 1000
    # live statuses are still counted exactly (from their partial indexes)
    assert not counts["queued"]["estimated"] and counts["queued"]["jobs"] == 40
    assert not counts["running"]["estimated"]
