"""API ingest (app/kinds/api_ingest.py) against the local simulator (app/bench/api_simulator.py):
each misbehaviour of issue 9, then what is in Postgres compared with the simulator's ids
(count, none missing, none doubled, every ts the simulator's instant)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from psycopg import sql

from app.bench.api_simulator import SimConfig, SimulatedApi
from app.kinds.api_ingest import (
    ConfigProblem,
    SourceConfig,
    check_config,
    parse_instant,
    run_foreground,
)
from tests.helpers import wait_for_sync
from tests.process_fixtures import REPO_ROOT, process_env, query, scalar
from tests.web_fixtures import *  # noqa: F403  (live_server, admin, alice)

FAST = {"backoff_base": 0.01, "read_timeout": 1.0, "request_timeout": 30.0}


def stored(url: str, target: str = "api_events") -> dict[str, datetime]:
    rows = query(url, sql.SQL("SELECT id, ts FROM {}").format(sql.Identifier("app", target)))
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids))
    return dict(rows)


def assert_complete(url: str, api: SimulatedApi, target: str = "api_events") -> None:
    expected = api.expected()
    got = stored(url, target)
    assert len(got) == len(expected)
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))}, extra {len(set(got) - set(expected))}"
    wrong = [(k, got[k], v) for k, v in expected.items() if got[k] != v]
    assert not wrong[:5]


def run(url: str, cfg: SourceConfig, **options: Any):
    return asyncio.run(run_foreground(url, cfg, **options))


def source(api: SimulatedApi, **fields: Any) -> SourceConfig:
    return SourceConfig(url=api.url + "/events", source="sim", **{**FAST, **fields})


# -- timestamps ----------------------------------------------------------------------------------

INSTANT = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-05-01T10:00:00Z", INSTANT),
    ("2024-05-01T12:30:00+02:30", INSTANT),
    ("2024-05-01T10:00:00.250Z", INSTANT + timedelta(milliseconds=250)),
    ("2024-05-01T05:00:00.000001-05:00", INSTANT + timedelta(microseconds=1)),
    ("2024-05-01 10:00:00", INSTANT),
    ("2024-05-01T10:00:00", INSTANT),
    (1714557600, INSTANT),
    (1714557600.5, INSTANT + timedelta(milliseconds=500)),
    (1714557600250, INSTANT + timedelta(milliseconds=250)),
    (1714557600000001, INSTANT + timedelta(microseconds=1)),
    ("1714557600", INSTANT),
    ("1714557600.125", INSTANT + timedelta(milliseconds=125)),
    ("1714557600250", INSTANT + timedelta(milliseconds=250)),
    ("1714557600000001", INSTANT + timedelta(microseconds=1)),
    ("Wed, 01 May 2024 12:00:00 +0200", INSTANT),
    ("Wed, 01 May 2024 10:00:00 GMT", INSTANT),
])
def test_every_timestamp_form_becomes_the_same_utc_instant(value: Any, expected: datetime) -> None:
    assert parse_instant(value) == expected


def test_naive_timestamps_use_the_configured_zone() -> None:
    from zoneinfo import ZoneInfo

    assert parse_instant("2024-05-01 12:00:00", ZoneInfo("Europe/Paris")) == INSTANT
    assert parse_instant("2024-05-01T12:00:00", timezone(timedelta(hours=2))) == INSTANT


@pytest.mark.parametrize("value", ["yesterday", "", None, True, [1], "2024-13-45T99:00:00Z", 10**20, float("nan")])
def test_unreadable_timestamps_say_why(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_instant(value)


# -- bad configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "field"), [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "http://example.com:99999/x"}, "url"),
    ({"url": "http://example.com/x", "target": "Robert'); DROP TABLE x;--"}, "target"),
    ({"url": "http://example.com/x", "target": "log_entries"}, "target"),
    ({"url": "http://example.com/x", "naive_timezone": "Mars/Olympus"}, "naive_timezone"),
])
def test_configs_that_cannot_work_are_refused_with_the_field_named(fields: dict, field: str) -> None:
    with pytest.raises(ConfigProblem) as problem:
        check_config(msgspec.convert(fields, SourceConfig))
    assert problem.value.field == field


def test_an_unknown_pagination_style_is_a_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="pagination"):
        msgspec.convert({"url": "http://x/y", "pagination": "pages"}, SourceConfig)


# -- against the simulator -----------------------------------------------------------------------

def test_cursor_run_with_mixed_timestamps_capped_short_empty_and_overlapping_pages(db_url: str) -> None:
    config = SimConfig(events=3000, ts_mode="mixed", page_max=300, short_page_rate=0.2, empty_page_rate=0.1,
                       overlap=5, bad_ts_rate=0.01)
    with SimulatedApi(config) as api:
        status = run(db_url, source(api, page_size=1000))
        assert status.status == "succeeded", status
        assert_complete(db_url, api)
        bad = api.unreadable()
        assert bad
        errors = dict(query(db_url, "SELECT item_id, reason FROM app.api_ingest_errors"))
        assert set(errors) == bad
        assert all("timestamp" in reason for reason in errors.values())
        assert status.invalid >= len(bad)  # an unreadable item repeated by the overlap counts each time it came
        assert status.inserted == len(api.expected())


@pytest.mark.parametrize("headers", ["x", "ietf", "combined"])
def test_rate_limit_headers_pace_the_run_without_429_storms(db_url: str, headers: str) -> None:
    config = SimConfig(events=4000, page_max=100, rate=25, rate_headers=headers,
                       reset_style="epoch" if headers == "x" else "delta", penalty=2.0)
    with SimulatedApi(config) as api:
        status = run(db_url, source(api, page_size=100))
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        # 41 pages at 25 requests/s: at most a stray 429 at a window's edge, never a storm
        assert api.stats["rate_limited"] <= 2
        assert api.stats["penalties"] == 0


@pytest.mark.parametrize("style", ["seconds", "date"])
def test_429_with_retry_after_and_no_rate_headers(db_url: str, style: str) -> None:
    # headers the pacer cannot read ("combined" with an unknown shape): only the 429s tell
    config = SimConfig(events=600, page_max=100, rate=3, rate_headers="none", retry_after_style=style)
    with SimulatedApi(config) as api:
        status = run(db_url, source(api, page_size=100))
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        assert api.stats["rate_limited"] >= 1
        assert status.rate_limited == api.stats["rate_limited"]


def test_every_fault_is_retried_and_nothing_is_lost(db_url: str) -> None:
    config = SimConfig(events=3000, page_max=100, fault_rate=0.2, stall_seconds=3.0, gzip=True)
    with SimulatedApi(config) as api:
        status = run(db_url, source(api, page_size=100, read_timeout=0.5))
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        assert status.retries >= api.stats["faults"] - 1
        assert api.stats["faults"] >= 6  # every kind at least once


def test_range_mode_several_in_flight_with_capped_ranges(db_url: str) -> None:
    config = SimConfig(events=5000, export_max=700, fault_rate=0.05, ts_mode="mixed",
                       faults=("500", "truncate", "badjson", "drop"))
    with SimulatedApi(config) as api:
        cfg = SourceConfig(url=api.url + "/export", source="sim-export", pagination="range", page_size=1000,
                           in_flight=4, **FAST)
        status = run(db_url, cfg)
        assert status.status == "succeeded"
        assert_complete(db_url, api)


def test_range_source_split_into_parallel_jobs_each_with_its_checkpoint(db_url: str) -> None:
    with SimulatedApi(SimConfig(events=4000, export_max=500)) as api:
        cfg = SourceConfig(url=api.url + "/export", source="sim-export", pagination="range", page_size=500,
                           range_end=4000, parts=3, target="split_events", **FAST)
        status = run(db_url, cfg)
        assert status.status == "succeeded" and status.parts == 3
        assert_complete(db_url, api, "split_events")
        assert scalar(db_url, "SELECT count(*) FROM pgqueue.checkpoints WHERE job_id = ANY(%s)",
                      [status.job_ids]) in (0, 3)


def test_cursor_refused_on_resume_restarts_the_chain_and_misses_nothing(db_url: str) -> None:
    # 10 requests/s: the run lasts about two seconds, long enough for the invalidation to land mid-chain
    with SimulatedApi(SimConfig(events=2000, page_max=100, rate=10)) as api:
        cfg = source(api, page_size=100)
        invalidated = False

        def on_progress(status: Any, elapsed: float) -> None:
            nonlocal invalidated
            if not invalidated and status.pages >= 3:
                api.invalidate_cursors()  # as after a restart of theirs: every cursor so far is void
                invalidated = True

        status = run(db_url, cfg, on_progress=on_progress)
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        assert invalidated and status.restarts >= 1
        assert api.stats["cursor_refused"] == status.restarts
        # restarted from the beginning: the first pages came twice, the primary key kept one copy
        assert status.events > 2000 and status.inserted == 2000


def test_expired_cursor_resumes_at_the_since_parameter(db_url: str) -> None:
    with SimulatedApi(SimConfig(events=1500, page_max=100, rate=10)) as api:
        cfg = source(api, page_size=100, since_param="since_seq", since_field="seq")
        seen = []

        def on_progress(status: Any, elapsed: float) -> None:
            if status.pages >= 2 and not seen:
                api.invalidate_cursors()
                seen.append(status.pages)

        status = run(db_url, cfg, on_progress=on_progress)
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        assert seen and status.restarts == 1
        # resumed by since: nothing fetched twice
        assert status.events == 1500


def test_a_401_is_refused_before_anything_is_written(db_url: str) -> None:
    with SimulatedApi(SimConfig(events=100, api_key="right")) as api:
        with pytest.raises(ConfigProblem) as problem:
            run(db_url, source(api, api_key="wrong"))
        assert problem.value.field == "api_key"
        assert scalar(db_url, "SELECT count(*) FROM app.api_syncs") == 0
        assert run(db_url, source(api, api_key="right")).status == "succeeded"


@pytest.mark.parametrize(("fields", "field"), [({"items_path": "payload.rows"}, "items_path"),
                                               ({"id_field": "uuid"}, "id_field")])
def test_a_path_or_id_that_finds_nothing_is_refused(db_url: str, fields: dict, field: str) -> None:
    with SimulatedApi(SimConfig(events=100)) as api:
        with pytest.raises(ConfigProblem) as problem:
            run(db_url, source(api, **fields))
        assert problem.value.field == field
        assert scalar(db_url, "SELECT count(*) FROM app.api_syncs") == 0


def test_full_run_of_20000_events_matches_the_simulator_exactly(db_url: str) -> None:
    with SimulatedApi(SimConfig(events=20_000, ts_mode="mixed", overlap=3, page_max=1000)) as api:
        status = run(db_url, source(api, page_size=1000))
        assert status.status == "succeeded"
        assert_complete(db_url, api)
        assert status.inserted == 20_000


@pytest.mark.parametrize("route", ["direct", "pgbouncer"], indirect=True)
def test_pages_written_in_pipelines_through_pgbouncer_too(route: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's BEGIN and lease check, and its checkpoint and COMMIT, go to the server in
    pipelines; through PgBouncer in transaction mode (no prepared statements) they hold one
    server connection per page transaction all the same: every row, no gap, no duplicate."""
    monkeypatch.setenv("PGQUEUE_DIRECT_DATABASE_URL", route.direct_url)
    with SimulatedApi(SimConfig(events=3000, page_max=200, overlap=5)) as api:
        status = run(route.url, source(api, page_size=200))
        assert status.status == "succeeded", status
        assert_complete(route.direct_url, api)
        assert status.pages == scalar(route.direct_url, "SELECT (state->>'pages')::int FROM pgqueue.checkpoints "
                                                        "WHERE job_id = %s", [status.job_ids[0]])


@pytest.mark.parametrize("pagination", ["cursor", "range"])
def test_a_page_that_fails_rolls_back_the_pages_written_after_it(db_url: str, pagination: str) -> None:
    """Two pages are written at once (writers=2); when one's transaction fails, the one after
    it (already staged and inserted on the other connection) must not commit its checkpoint,
    or the retry would resume past the failed page and leave a gap."""
    query(db_url, """
        CREATE SEQUENCE app.fail_once;
        CREATE FUNCTION app.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- the sequence advances even though the raise rolls the transaction back: once only
            IF split_part(NEW.id, '-', 3)::int = 2650 THEN
                IF nextval('app.fail_once') = 1 THEN
                    RAISE EXCEPTION 'injected failure on %', NEW.id;
                END IF;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_once BEFORE INSERT ON app.api_events FOR EACH ROW EXECUTE FUNCTION app.fail_once();
    """)
    with SimulatedApi(SimConfig(events=6000, page_max=250, export_max=250, overlap=2)) as api:
        if pagination == "cursor":
            cfg = source(api, page_size=250, writers=2)
        else:
            cfg = SourceConfig(url=api.url + "/export", source="sim-export", pagination="range", page_size=250,
                               in_flight=3, writers=2, **FAST)
        status = run(db_url, cfg)
        assert status.status == "succeeded"
        assert_complete(db_url, api)
    assert scalar(db_url, "SELECT attempts FROM pgqueue.jobs WHERE id = %s", [status.job_ids[0]]) == 2
    assert scalar(db_url, "SELECT nextval('app.fail_once')") == 3  # it fired, once

@pytest.mark.parametrize("taken", ["before the page", "while the page is written"])
def test_a_page_of_a_worker_whose_job_was_taken_away_commits_nothing(db_url: str, taken: str) -> None:
    """Once the job is another worker's (a new lease token, as after a rescue), the old worker's
    next page writes no row, no count and no checkpoint, though its first page, under its lease,
    committed. Taken before the page: the lease check that starts the page's transaction finds
    it gone. Taken while the page is written (that check locks the job row FOR KEY SHARE, which
    only a FOR UPDATE waits for; this UPDATE does not): record_page, sent together with the
    COMMIT, raises, which aborts the transaction, so the COMMIT behind it rolls the page back."""
    from app.jobs import jobs
    from app.kinds.api_ingest import QUEUE, ApiIngestJob, Committer, PageReader, PartProgress, PartSpec, create_sync
    from app.kinds.api_ingest import _cursor_advance as advance
    from app.outbound import OutboundMetrics
    from pgqueue import JobContext, LeaseLost
    from pgqueue.context import EventBuffer
    from pgqueue.queue import Queue

    def take_away(job_id: int) -> None:
        query(db_url, "UPDATE pgqueue.jobs SET lease_token = gen_random_uuid(), lease_owner = 'new-worker' "
                      "WHERE id = %s", [job_id])

    async def scenario(api: SimulatedApi) -> None:
        queue = await Queue.connect(db_url, jobs, max_size=3)
        try:
            cfg = check_config(source(api, page_size=100))
            sync_id, _ = await create_sync(queue, cfg, probe_first=False)
            [job] = await queue.claim([QUEUE], 1, "old-worker")
            ctx = JobContext(job, queue, EventBuffer(), asyncio.get_running_loop())
            committer = Committer(ctx, ApiIngestJob(sync_id=sync_id, config=cfg), OutboundMetrics(), PartProgress())
            reader = PageReader(cfg, PartSpec())
            try:
                first = await asyncio.to_thread(reader.cursor_page, None)
                await committer.submit(first, advance(first, 0))
                await committer.drain()
                second = await asyncio.to_thread(reader.cursor_page, first.next_cursor)
            finally:
                reader.close()
            if taken == "before the page":
                take_away(job.id)
            else:
                insert = committer._insert

                async def insert_then_take_away(conn: Any, page: Any) -> int:
                    inserted = await insert(conn, page)
                    take_away(job.id)
                    return inserted

                committer._insert = insert_then_take_away  # type: ignore[method-assign]
            await committer.submit(second, advance(second, 0))
            with pytest.raises(LeaseLost):
                await committer.drain()
            await committer.abort()
        finally:
            await queue.close()
        assert ctx.lease_lost
        assert scalar(db_url, "SELECT count(*) FROM app.api_events") == 100  # the first page only
        assert scalar(db_url, "SELECT pages FROM app.api_sync_parts WHERE sync_id = %s", [sync_id]) == 1
        saved = scalar(db_url, "SELECT state FROM pgqueue.checkpoints WHERE job_id = %s", [job.id])
        assert saved["pages"] == 1 and saved["cursor"] == first.next_cursor

    with SimulatedApi(SimConfig(events=300, page_max=100)) as api:
        asyncio.run(scenario(api))


def test_the_page_lease_checks_are_pgqueues() -> None:
    """app/sql/api_ingest.sql repeats pgqueue's lease check (lease_held, and save_checkpoint's
    held CTE and upsert; the page's transaction sends them in pipelines the store's methods
    cannot join): the same rows locked the same way, the same checkpoint written."""
    from app.kinds.api_ingest import QUERIES as APP
    from pgqueue.sql import QUERIES as ENGINE

    def words(text: str) -> str:
        return " ".join(text.replace("%(id)s", "%(job_id)s").split())

    engine_check = words(ENGINE["lease_held"].sql)
    assert words(APP["lease_check"].sql) == engine_check
    engine_checkpoint = words(ENGINE["save_checkpoint"].sql)
    held, upsert = engine_checkpoint.split(") INSERT INTO", 1)
    record = words(APP["record_page"].sql)
    assert record.startswith(held + ")")
    assert ("INSERT INTO" + upsert.removesuffix(" RETURNING job_id")) in record


# -- kill -9 ---------------------------------------------------------------------------------------

def test_kill_9_mid_run_resumes_from_the_checkpoint_with_no_gap_and_no_duplicate(
        proc_db: str, spawn_worker: Any) -> None:
    from app.jobs import jobs
    from app.kinds.api_ingest import create_sync
    from pgqueue.queue import Queue

    with SimulatedApi(SimConfig(events=6000, page_max=100, rate=40, ts_mode="mixed")) as api:
        cfg = source(api, page_size=100)

        async def enqueue() -> int:
            queue = await Queue.connect(proc_db, jobs, max_size=2)
            try:
                return (await create_sync(queue, cfg))[0]
            finally:
                await queue.close()

        sync_id = asyncio.run(enqueue())
        pages = "SELECT pages FROM app.api_sync_parts WHERE sync_id = %s"
        for kill_after in (5, 25):
            worker = spawn_worker(proc_db, app="app.jobs", queues="api_ingest", concurrency=1, grace=5.0)
            wait_for_sync(lambda n=kill_after: scalar(proc_db, pages, [sync_id]) >= n, timeout=60,
                          message=f"{kill_after} pages")
            worker.kill()
        spawn_worker(proc_db, app="app.jobs", queues="api_ingest", concurrency=1, grace=5.0)
        wait_for_sync(lambda: scalar(proc_db, "SELECT finished_at FROM app.api_sync_parts WHERE sync_id = %s",
                                     [sync_id]), timeout=90, message="the sync to finish")
        assert_complete(proc_db, api)
        assert scalar(proc_db, "SELECT attempts FROM pgqueue.jobs WHERE kind = 'api_ingest'") >= 2


# -- the CLI ---------------------------------------------------------------------------------------

def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "ingest-api", *args], cwd=REPO_ROOT,
                          env=process_env(db_url), capture_output=True, text=True, timeout=120)


def test_cli_with_flags_runs_to_the_end_and_exits_0(db_url: str) -> None:
    with SimulatedApi(SimConfig(events=1500, api_key="k")) as api:
        done = cli(db_url, "--url", api.url + "/events", "--api-key", "k", "--target", "cli_events")
        assert done.returncode == 0, done.stderr
        assert "1,500 events" in done.stderr
        assert_complete(db_url, api, "cli_events")


@pytest.mark.parametrize(("args", "words"), [
    (["--url", "nope"], "url"),
    (["--url", "http://127.0.0.1:9/x", "--target", "bad name"], "target"),
    (["--url", "{api}/events", "--api-key", "wrong"], "401"),
])
def test_cli_bad_input_is_one_line_and_a_non_zero_exit(db_url: str, args: list[str], words: str) -> None:
    with SimulatedApi(SimConfig(events=10, api_key="k")) as api:
        done = cli(db_url, *[a.replace("{api}", api.url) for a in args])
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and words in lines[-1] and lines[-1].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr


# -- REST ------------------------------------------------------------------------------------------

async def test_post_sync_runs_it_and_get_reports_counts_metrics_and_readyz(
        live_server_with_worker: Any, admin: Any) -> None:
    from tests.helpers import wait_for

    server = live_server_with_worker
    with SimulatedApi(SimConfig(events=2500, page_max=500, ts_mode="mixed")) as api:
        async with server.client(admin) as client:
            response = await client.post("/api/v1/syncs", json={"url": api.url + "/events", "source": "rest-sim",
                                                                "page_size": 500, "backoff_base": 0.01})
            assert response.status_code == 202, response.text
            created = response.json()
            assert created["events_urls"] == [f"/jobs/{created['job_ids'][0]}/events"]

            async def finished() -> dict | None:
                body = (await client.get(created["status_url"])).json()
                return body if body["status"] in ("succeeded", "failed") else None

            body = await wait_for(finished, timeout=60, message="the sync to finish")
            assert body["status"] == "succeeded", body
            assert (body["inserted"], body["pages"], body["total"]) == (2500, 5, 2500)
            assert_complete(server.database_url, api)
            progress = scalar(server.database_url, "SELECT count(*) FROM pgqueue.events WHERE job_id = %s "
                                                   "AND type = 'progress'", [created["job_ids"][0]])
            assert progress >= 1
            metrics = (await client.get("/metrics")).text
            assert 'pgqueue_api_ingest_inserted_total{source="rest-sim"} 2500' in metrics
            assert 'pgqueue_api_ingest_pages_total{source="rest-sim"} 5' in metrics
            ready = (await client.get("/readyz")).json()
            assert ready["api_ingest"]["last_successful_page_at"] is not None


@pytest.mark.parametrize(("body", "field"), [
    ({}, "url"),
    ({"url": "not-a-url"}, "url"),
    ({"url": "{api}/events", "pagination": "pages"}, "pagination"),
    ({"url": "{api}/events", "items_path": "nothing.here"}, "items_path"),
    ({"url": "{api}/events", "id_field": "uuid"}, "id_field"),
    ({"url": "{api}/events", "api_key": "wrong"}, "api_key"),
    ({"url": "{api}/events", "target": "no such table!"}, "target"),
])
async def test_post_sync_bad_input_is_a_422_naming_the_field_and_writes_nothing(
        live_server: Any, admin: Any, body: dict, field: str) -> None:
    with SimulatedApi(SimConfig(events=50, api_key="right")) as api:
        body = {k: v.replace("{api}", api.url) if isinstance(v, str) else v for k, v in body.items()}
        if "api_key" not in body and body.get("url", "").startswith(api.url):
            body["api_key"] = "right"
        async with live_server.client(admin) as client:
            response = await client.post("/api/v1/syncs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert any(field in detail["field"] for detail in error["details"]), error
    assert scalar(live_server.database_url, "SELECT count(*) FROM app.api_syncs") == 0
    assert scalar(live_server.database_url, "SELECT count(*) FROM pgqueue.jobs") == 0


async def test_post_sync_needs_an_admin_and_get_hides_other_users_syncs(live_server: Any, alice: Any) -> None:
    async with live_server.client(alice) as client:
        response = await client.post("/api/v1/syncs", json={"url": "http://127.0.0.1:9/x"})
        assert response.status_code == 403
        assert (await client.get("/api/v1/syncs/1")).status_code == 404
