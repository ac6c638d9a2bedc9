"""pgqueue.events partitioned by UTC day (schema/0012): partitions ahead, retention by whole
partitions, the default partition that maintenance empties, replay order across partitions, the
NOTIFY trigger on the partitioned table, and the migration of existing rows both ways."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue import bench_history
from pgqueue.config import Settings
from pgqueue.errors import ConfigError
from pgqueue.maintenance import EventPartitions
from pgqueue.migrate import migrate, rollback, shipped_migrations
from pgqueue.queue import Queue
from tests.conftest import PgServer
from tests.engine_fixtures import (
    fast_settings,
    fetch,
    listening,
    notifications_so_far,
    open_fast_queue,
    running_worker,
    wait_for_status,
)
from tests.process_fixtures import empty_db, query, scalar  # noqa: F401 - a fixture
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer


@pytest.fixture
async def fast_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        yield queue


def today() -> date:
    return datetime.now(UTC).date()


MIGRATION_DAY = ("SELECT (min(range_from) AT TIME ZONE 'UTC')::date FROM pgqueue.event_partitions "
                 "WHERE NOT is_default")


async def migration_day(queue: Queue) -> date:
    """The UTC day the migration made its partitions from: the first partition of a fresh clone of
    the template database, which the suite migrates once at its start, so a run that crosses
    midnight migrated 'yesterday' (today() there made these tests fail after midnight)."""
    return (await fetch(queue, MIGRATION_DAY))[0][0]


def partition_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


async def partitions(queue: Queue) -> list[str]:
    return [name for (name,) in await fetch(queue, "SELECT name FROM pgqueue.event_partitions WHERE NOT is_default")]


async def default_rows(queue: Queue) -> int:
    return (await fetch(queue, "SELECT count(*) FROM pgqueue.events_default"))[0][0]


async def add_event(queue: Queue, job_id: int, created_at: datetime, event_type: str = "progress") -> int:
    rows = await fetch(queue, "INSERT INTO pgqueue.events (job_id, type, created_at) VALUES (%s, %s, %s) RETURNING id",
                       (job_id, event_type, created_at))
    return rows[0][0]


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def test_the_migration_leaves_a_week_of_partitions_ahead_and_maintenance_extends_it(fast_queue: Queue,
                                                                                          db_url: str) -> None:
    first = await migration_day(fast_queue)
    week = [partition_name(first + timedelta(days=n)) for n in range(8)]
    assert set(week) <= set(await partitions(fast_queue))
    assert await fetch(fast_queue, "SELECT relkind FROM pg_class WHERE oid = 'pgqueue.events'::regclass") == [("p",)]

    keeper = EventPartitions(fast_queue.store, fast_settings(db_url, event_partitions_ahead_days=10))
    assert await keeper.run_once() == []  # nothing past retention
    ahead = [partition_name(today() + timedelta(days=n)) for n in range(11)]
    assert set(ahead) <= set(await partitions(fast_queue))
    before = await partitions(fast_queue)
    await keeper.run_once()
    assert await partitions(fast_queue) == before  # a second pass creates nothing
    _, covered_until = await fast_queue.store.event_partition_health()
    assert covered_until == datetime.combine(today() + timedelta(days=11), datetime.min.time(), UTC)


async def test_retention_drops_whole_partitions_past_it_and_only_those(fast_queue: Queue, db_url: str) -> None:
    old, recent = today() - timedelta(days=10), today() - timedelta(days=2)
    for day in (old, old + timedelta(days=1), recent):
        await fetch(fast_queue, "SELECT pgqueue.create_event_partition(%s)", (day,))
    old_ids = [await add_event(fast_queue, 1, noon(old)), await add_event(fast_queue, 1, noon(old + timedelta(days=1)))]
    recent_id = await add_event(fast_queue, 1, noon(recent))
    today_id = await add_event(fast_queue, 1, datetime.now(UTC))

    # 5 days: the two old days go; two days ago is inside retention, and so is today
    keeper = EventPartitions(fast_queue.store, fast_settings(db_url, keep_events_seconds=5 * 86400))
    assert await keeper.run_once() == [partition_name(old), partition_name(old + timedelta(days=1))]
    assert [e.id for e in await fast_queue.events(1)] == [recent_id, today_id]
    assert not set(old_ids) & {row[0] for row in await fetch(fast_queue, "SELECT id FROM pgqueue.events")}
    # dropped, not only detached
    assert await fetch(fast_queue, "SELECT to_regclass(%s)", (f"pgqueue.{partition_name(old)}",)) == [(None,)]
    assert partition_name(recent) in await partitions(fast_queue)

    # the partition that holds the retention boundary stays whole: between 2 and 3 days ago
    boundary = EventPartitions(fast_queue.store, fast_settings(db_url, keep_events_seconds=2.5 * 86400))
    assert await boundary.run_once() == []
    assert [e.id for e in await fast_queue.events(1)] == [recent_id, today_id]


async def test_a_reader_holding_the_table_makes_retention_wait_for_the_next_pass(fast_queue: Queue,
                                                                                 db_url: str) -> None:
    old = today() - timedelta(days=30)
    await fetch(fast_queue, "SELECT pgqueue.create_event_partition(%s)", (old,))
    await add_event(fast_queue, 1, noon(old))
    async with await psycopg.AsyncConnection.connect(db_url) as reader:  # a transaction left open
        await reader.execute("SELECT count(*) FROM pgqueue.events")
        dropped = await fetch(fast_queue, "SELECT pgqueue.drop_event_partitions(now() - interval '7 days', '20ms')")
        assert dropped == []  # gave up on the lock instead of queueing every insert behind it
        await add_event(fast_queue, 2, datetime.now(UTC))  # writes carry on meanwhile
        await reader.rollback()
    assert await EventPartitions(fast_queue.store, fast_settings(db_url)).run_once() == [partition_name(old)]


async def test_without_maintenance_past_the_lead_time_rows_wait_in_the_default_partition(fast_queue: Queue,
                                                                                      db_url: str) -> None:
    # as if no maintenance had run for longer than the lead time: today's partition is missing
    await fetch(fast_queue, f"ALTER TABLE pgqueue.events DETACH PARTITION pgqueue.{partition_name(today())}")
    await fetch(fast_queue, f"DROP TABLE pgqueue.{partition_name(today())}")
    job_id = (await fast_queue.enqueue("noop", {})).id
    async with running_worker(fast_queue, maintenance=False):
        await wait_for_status(fast_queue, job_id, "succeeded")  # nothing fails for want of a partition
    spilled = await default_rows(fast_queue)
    assert spilled >= 1  # the 'succeeded' event at least
    assert (await fast_queue.store.event_partition_health())[0] == spilled  # reported (/readyz, /metrics)
    ids_before = [e.id for e in await fast_queue.events(job_id)]

    assert await EventPartitions(fast_queue.store, fast_settings(db_url)).run_once() == []
    assert await default_rows(fast_queue) == 0
    assert partition_name(today()) in await partitions(fast_queue)
    assert [e.id for e in await fast_queue.events(job_id)] == ids_before
    assert scalar(db_url, f"SELECT count(*) FROM pgqueue.{partition_name(today())}") == spilled


async def test_a_worker_writes_no_row_into_the_default_partition(fast_queue: Queue) -> None:
    job_ids = await fast_queue.enqueue_many([("noop", {"n": n}) for n in range(20)])
    async with running_worker(fast_queue):
        for job_id in job_ids:
            await wait_for_status(fast_queue, job_id, "succeeded")
    assert scalar(fast_queue.settings.database_url, "SELECT count(*) FROM pgqueue.events") >= 20
    assert await default_rows(fast_queue) == 0


async def test_rows_across_a_partition_boundary_replay_in_id_order(fast_queue: Queue) -> None:
    # ids come from one sequence whatever the day: insert tomorrow's row first, then yesterday's
    first = await migration_day(fast_queue)
    ids = [await add_event(fast_queue, 7, noon(first + timedelta(days=1))),
           await add_event(fast_queue, 7, datetime.combine(first, datetime.min.time(), UTC) - timedelta(seconds=1)),
           await add_event(fast_queue, 8, datetime.combine(first, datetime.min.time(), UTC)),
           await add_event(fast_queue, 7, datetime.now(UTC))]
    assert ids == sorted(ids)
    assert await default_rows(fast_queue) == 1  # the day before has no partition: the migration made its day onwards
    assert [e.id for e in await fast_queue.events(7)] == [ids[0], ids[1], ids[3]]
    assert [e.id for e in await fast_queue.events(7, after_id=ids[0])] == [ids[1], ids[3]]
    assert [e.id for e in await fast_queue.store.events_after(ids[0] - 1)] == ids
    assert [e.id for e in await fast_queue.store.events_after(ids[1], limit=1)] == [ids[2]]
    assert await fast_queue.store.latest_event_id() == ids[3]
    await EventPartitions(fast_queue.store, fast_settings(fast_queue.settings.database_url)).run_once()
    assert [e.id for e in await fast_queue.store.events_after(ids[0] - 1)] == ids  # same after the move


async def test_one_notification_per_statement_across_partitions(fast_queue: Queue, db_url: str) -> None:
    async with listening(db_url, "pgqueue_events") as listener:
        rows = await fetch(fast_queue, """
            INSERT INTO pgqueue.events (job_id, type, created_at)
            VALUES (1, 'progress', now()), (2, 'progress', now() + interval '2 days'),
                   (3, 'progress', now() - interval '3 days')
            RETURNING id""")
        notes = await notifications_so_far(listener, db_url, "pgqueue_events")
    ids = [row[0] for row in rows]
    assert notes == [f"{ids[0]} 1 progress\n{ids[1]} 2 progress\n{ids[2]} 3 progress"]


async def test_resume_reads_each_partition_through_an_index(fast_queue: Queue) -> None:
    await fetch(fast_queue, "SET enable_seqscan = off")
    for sql in ("SELECT id FROM pgqueue.events WHERE job_id = 1 AND id > 5 ORDER BY id LIMIT 100",
                "SELECT id FROM pgqueue.events WHERE id > 5 ORDER BY id LIMIT 100"):
        plan = "\n".join(row[0] for row in await fetch(fast_queue, "EXPLAIN " + sql))
        assert "Seq Scan" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan


def test_partitions_ahead_must_be_a_sensible_number_of_days() -> None:
    for bad in (0, -1, 367, True):
        with pytest.raises(ConfigError, match="PGQUEUE_EVENT_PARTITIONS_AHEAD_DAYS"):
            Settings(database_url="postgresql://localhost/x", event_partitions_ahead_days=bad)


def events_layout(url: str) -> dict[str, Any]:
    return {
        "relkind": scalar(url, "SELECT relkind FROM pg_class WHERE oid = 'pgqueue.events'::regclass"),
        "rows": query(url, "SELECT id, job_id, type, data, created_at FROM pgqueue.events ORDER BY id"),
        "triggers": [name for (name,) in query(url, "SELECT tgname FROM pg_trigger "
                                                    "WHERE tgrelid = 'pgqueue.events'::regclass AND NOT tgisinternal")],
    }


def test_the_migration_moves_existing_rows_and_the_rollback_brings_them_back(empty_db: str) -> None:  # noqa: F811
    url = empty_db
    shipped = shipped_migrations()
    later = shipped[shipped.index("0012.partitioned-events") + 1:]  # rolled back and applied again around it
    migrate(url)
    assert rollback(url, len(later) + 1) == [*later[::-1], "0012.partitioned-events"]
    with psycopg.connect(url, autocommit=True) as conn:  # history under the old, plain table
        conn.execute("""INSERT INTO pgqueue.events (job_id, type, data, created_at)
                        SELECT g % 5, 'progress', jsonb_build_object('n', g), now() - g * interval '3 hours'
                        FROM generate_series(1, 200) AS g""")
        conn.execute("INSERT INTO pgqueue.events (job_id, type, created_at) VALUES (9, 'log', now() - interval '400 days')")
    before = events_layout(url)
    assert before["relkind"] == "r"

    assert migrate(url) == ["0012.partitioned-events", *later]
    after = events_layout(url)
    assert after["relkind"] == "p" and after["rows"] == before["rows"]
    assert after["triggers"] == ["events_inserted_notify"]
    assert scalar(url, "SELECT count(*) FROM pgqueue.events_default") == 0
    # each row in its UTC day's partition: 200 rows over 25 days, and the one 400 days back
    days = {row[4].astimezone(UTC).date() for row in before["rows"]}
    misplaced = query(url, """SELECT e.id FROM pgqueue.events e JOIN pgqueue.event_partitions p
                              ON p.name = e.tableoid::regclass::text
                              WHERE NOT (e.created_at >= p.range_from AND e.created_at < p.range_to)""")
    assert misplaced == []
    assert {partition_name(day) for day in days} <= {row[0] for row in query(url, "SELECT name FROM pgqueue.event_partitions")}
    last = max(row[0] for row in before["rows"])
    assert scalar(url, "INSERT INTO pgqueue.events (job_id, type) VALUES (1, 'progress') RETURNING id") == last + 1
    with pytest.raises(psycopg.errors.GeneratedAlways):  # ids stay ours to hand out
        scalar(url, "INSERT INTO pgqueue.events (id, job_id, type) VALUES (1, 1, 'progress') RETURNING id")

    partitioned = events_layout(url)
    assert rollback(url, len(later) + 1) == [*later[::-1], "0012.partitioned-events"]
    back = events_layout(url)
    assert back["relkind"] == "r" and back["rows"] == partitioned["rows"]
    assert len(back["rows"]) == len(before["rows"]) + 1 and back["triggers"] == ["events_inserted_notify"]
    assert scalar(url, "INSERT INTO pgqueue.events (job_id, type) VALUES (1, 'progress') RETURNING id") == last + 2
    assert scalar(url, "SELECT to_regclass('pgqueue.event_partitions')") is None
    assert migrate(url) == ["0012.partitioned-events", *later]  # and forward again
    assert len(events_layout(url)["rows"]) == len(before["rows"]) + 2


def test_a_small_history_bench_reports_every_figure(pg_server: PgServer, tmp_path: Path) -> None:
    """python -m pgqueue.bench_history at a small size (the README's figures come from the full one)."""
    output = tmp_path / "bench-results.json"
    output.write_text(json.dumps({"other": {"kept": True}}))
    assert bench_history.main(["--server-url", pg_server.url, "--day-events", "3000", "--kept-events", "300",
                               "--history-events", "5000", "--jobs", "200", "--rounds", "1",
                               "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["other"] == {"kept": True}  # other benches' sections stay
    pruning, history = results["history"]["pruning"], results["history"]["with_history"]
    delete, drop = pruning["batched_delete"], pruning["drop_partition"]
    assert delete["rows_deleted"] == drop["rows_deleted"] == 3000 and delete["rows_left"] == drop["rows_left"] == 300
    assert delete["dead_tuples_after_delete"] == 3000
    assert delete["table_bytes_after_delete"] >= delete["table_bytes_before"]  # DELETE gives no space back
    assert drop["table_bytes_after"] < drop["table_bytes_before"] and len(drop["partitions_dropped"]) == 1
    assert history["history_events"] == {"partitioned": 5000, "plain": 5000}
    for name in ("partitioned", "plain"):
        assert history["drain_jobs_per_s"][name]["median"] > 0
        assert set(history["replay_median_ms"][name]) == {"job_events_after_id", "events_after_id"}
    with pg_server.admin() as conn:  # its databases are gone
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'history_%'").fetchone() == (0,)


def _gauge(text: str, name: str) -> float:
    [value] = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return value


async def test_readyz_and_metrics_report_rows_in_the_default_partition(live_server: LiveServer,
                                                                       admin: ApiUser) -> None:
    url = live_server.settings.database_url
    assert url is not None
    far = datetime.now(UTC) + timedelta(days=30)  # past the week of partitions ahead
    query(url, "INSERT INTO pgqueue.events (job_id, type, created_at) VALUES (1, 'progress', %s) RETURNING id", (far,))
    async with live_server.client(admin) as http:
        ready, metrics = await http.get("/readyz"), await http.get("/metrics")
        assert ready.status_code == 200  # still ready: the row is kept, only not where it belongs
        assert ready.json()["events"]["default_partition_rows"] == 1
        assert _gauge(metrics.text, "pgqueue_events_default_partition_rows") == 1
        week_ahead = _gauge(metrics.text, "pgqueue_events_partitions_until_timestamp_seconds")
        first = query(url, MIGRATION_DAY)[0][0]
        assert week_ahead == datetime.combine(first + timedelta(days=8), datetime.min.time(), UTC).timestamp()

        async with open_fast_queue(url) as queue:
            await EventPartitions(queue.store, fast_settings(url)).run_once()
        ready, metrics = await http.get("/readyz"), await http.get("/metrics")
    events = ready.json()["events"]
    assert events["default_partition_rows"] == 0
    assert events["partitions_until"].startswith((far.date() + timedelta(days=1)).isoformat())  # its day made
    assert _gauge(metrics.text, "pgqueue_events_default_partition_rows") == 0
