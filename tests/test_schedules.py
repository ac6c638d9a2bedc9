"""Periodic jobs: the schedules contract on both backends, the scheduler's one-statement pass on
Postgres (atomic, deduplicated, 70 schedules), the worker's scheduler task, and real worker
processes (exactly once per fire time with 3 workers; kill -9 and restart under each catch-up
policy; a scheduler that dies takes its worker down)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgqueue import MemoryQueue, Queue, QueueBackend
from pgqueue.errors import InvalidSchedule, ScheduleExists, ScheduleNotFound, SchedulerFailed
from pgqueue.registry import JobRegistry
from pgqueue.scheduler import Scheduler, upcoming_fires
from tests.engine_fixtures import fast_settings, fetch, running_worker
from tests.helpers import wait_for
from tests.jobs import jobs

DAY = 86400


@pytest.fixture(params=["postgres", "memory"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[QueueBackend]:
    if request.param == "memory":
        yield MemoryQueue(jobs, fast_settings(None))
        return
    url = request.getfixturevalue("db_url")
    queue = await Queue.connect(url, jobs, settings=fast_settings(url), max_size=4)
    try:
        yield queue
    finally:
        await queue.close()


async def downtime(backend: QueueBackend, days: int) -> None:
    """As if no scheduler had run for ``days``: the memory clock jumps; in Postgres (whose clock
    only the server moves) every schedule's next fire goes back as many days."""
    if isinstance(backend, MemoryQueue):
        backend.advance(days * DAY)
        return
    assert isinstance(backend, Queue)
    await fetch(backend, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - make_interval(days => %s)",
                (days,))


async def job_count(backend: QueueBackend) -> int:
    return sum(sum(counts.values()) for counts in (await backend.stats()).values())


# -- the contract, both backends -----------------------------------------------------------------


async def test_add_get_list_pause_resume_remove(backend: QueueBackend) -> None:
    created = await backend.schedules.add("mails", "*/5 * * * *", "email", {"to": "a@example.com"},
                                          timezone="Europe/Paris", catch_up="latest")
    assert (created.name, created.kind, created.queue, created.priority) == ("mails", "email", "mail", 3)
    assert created.payload == {"to": "a@example.com", "subject": ""}  # validated and converted by the kind's type
    assert created.timezone == "Europe/Paris" and not created.paused and not created.declared_in_code
    assert created.next_fire_at is not None and created.next_fire_at.minute % 5 == 0
    assert await backend.schedules.get("mails") == created
    await backend.schedules.add("beat", "* * * * * *", "noop", priority=5, max_attempts=1)
    assert [s.name for s in await backend.schedules.list()] == ["beat", "mails"]

    paused = await backend.schedules.pause("mails")
    assert paused.paused and paused.revision > created.revision
    upcoming = upcoming_fires(paused, datetime.now(UTC), 3)
    assert len(upcoming) == 3 and upcoming == sorted(upcoming)
    resumed = await backend.schedules.resume("mails")
    assert not resumed.paused and resumed.next_fire_at is not None
    await backend.schedules.remove("mails")
    assert [s.name for s in await backend.schedules.list()] == ["beat"]
    for action in (backend.schedules.get, backend.schedules.pause, backend.schedules.resume,
                   backend.schedules.remove):
        with pytest.raises(ScheduleNotFound, match="no schedule named 'mails'"):
            await action("mails")
    with pytest.raises(ScheduleExists):
        await backend.schedules.add("beat", "@daily", "noop")


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"expression": "* * 32 * *"}, "expression", "32 is out of range 1-31 at position 5 (day-of-month field)"),
    ({"expression": "0 0 30 2 *"}, "expression", "never fires"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"catch_up": "sometimes"}, "catch_up", "must be one of skip, latest, all"),
    ({"catch_up_window": 0}, "catch_up_window", "from 1 to"),
    ({"catch_up_window": float("nan")}, "catch_up_window", "from 1 to"),
    ({"kind": "nope"}, "kind", "unknown job kind"),
    ({"payload": {"subject": "hi"}}, "payload.to", "missing required field"),
    ({"priority": 9}, "priority", "from 1 to 5"),
    ({"name": "bad name!"}, "name", "letters, digits"),
])
async def test_bad_definitions_are_refused_and_nothing_is_written(backend: QueueBackend, options: dict[str, Any],
                                                                  field: str, message: str) -> None:
    arguments: dict[str, Any] = {"name": "s", "expression": "@hourly", "kind": "email", "payload": {"to": "x@y.z"}}
    arguments.update(options)
    with pytest.raises(InvalidSchedule) as caught:
        await backend.schedules.add(arguments.pop("name"), arguments.pop("expression"), arguments.pop("kind"),
                                    arguments.pop("payload"), **arguments)
    assert any(e["field"] == field and message in e["message"] for e in caught.value.errors), caught.value.errors
    assert await backend.schedules.list() == []


async def test_each_fire_time_becomes_one_job_whatever_the_policy(backend: QueueBackend) -> None:
    """After five days without a scheduler, a daily schedule catches up by its policy; passes
    after that add nothing for the same fire times."""
    await backend.schedules.add("all", "0 0 * * *", "noop", catch_up="all", catch_up_window=10 * DAY)
    await backend.schedules.add("latest", "0 0 * * *", "noop", catch_up="latest")
    await backend.schedules.add("skip", "0 0 * * *", "noop", catch_up="skip")  # 60 s late at most
    await backend.schedules.add("skip-wide", "0 0 * * *", "noop", catch_up="skip", catch_up_window=2 * DAY)
    await backend.schedules.add("window", "0 0 * * *", "noop", catch_up="all", catch_up_window=2 * DAY + 1)
    await downtime(backend, 5)
    fires = await backend.schedules.fire_due()
    by_name: dict[str, list[datetime]] = {}
    for fire in fires:
        by_name.setdefault(fire.schedule, []).append(fire.fire_at)
    assert len(by_name["all"]) == 5 and all(b - a == timedelta(days=1) for a, b in zip(by_name["all"], by_name["all"][1:], strict=False))
    assert len(by_name["latest"]) == 1 and by_name["latest"][0] == by_name["all"][-1]
    assert "skip" not in by_name  # its latest fire time is hours late
    assert by_name["skip-wide"] == by_name["latest"]
    assert by_name["window"] == by_name["all"][-2:]  # the midnights of the last two days and a second
    assert len({fire.job_id for fire in fires}) == len(fires) == await job_count(backend)
    jobs_made = [await backend.get(fire.job_id) for fire in fires]
    assert all(job.run_at == fire.fire_at and job.kind == "noop" for job, fire in zip(jobs_made, fires, strict=True))

    assert await backend.schedules.fire_due() == []  # nothing due again until the next midnight
    assert await job_count(backend) == len(fires)
    for schedule in await backend.schedules.list():
        assert schedule.next_fire_at is not None and schedule.next_fire_at > by_name["all"][-1]
        assert schedule.last_fire_at == (by_name["all"][-1] if schedule.name != "skip" else None)


async def test_paused_schedules_do_not_fire_and_resume_from_now(backend: QueueBackend) -> None:
    await backend.schedules.add("d", "0 0 * * *", "noop", catch_up="all", catch_up_window=10 * DAY)
    await backend.schedules.pause("d")
    await downtime(backend, 3)
    assert await backend.schedules.fire_due() == []
    resumed = await backend.schedules.resume("d")
    assert resumed.next_fire_at is not None and resumed.next_fire_at > await _now(backend)
    assert await backend.schedules.fire_due() == []  # what passed while paused is not caught up
    assert await job_count(backend) == 0


async def _now(backend: QueueBackend) -> datetime:
    return backend.now() if isinstance(backend, MemoryQueue) else await backend.store.now()  # type: ignore[attr-defined]


async def test_declared_schedules_keep_their_next_fire_over_restarts(backend: QueueBackend) -> None:
    """river#791: a worker that restarts more often than a schedule's interval must not push the
    next fire back. Declared schedules are upserted at every start; an unchanged one is not touched."""
    registry = JobRegistry()
    registry.include(jobs)

    @registry.periodic("0 0 * * *", kind="nightly", payload={"n": 1}, catch_up="latest")
    async def nightly(ctx: Any, payload: dict) -> None:
        return None

    backend.registry = registry
    if isinstance(backend, Queue):
        backend.schedules.registry = registry  # type: ignore[attr-defined]
    [first] = await backend.schedules.sync_declared()
    assert first.declared_in_code and first.kind == "nightly" and first.payload == {"n": 1}
    await downtime(backend, 1)  # its fire time passed while "no worker ran"
    for _ in range(3):  # three restarts
        assert await backend.schedules.sync_declared() == []
    assert (await backend.schedules.get("nightly")).next_fire_at == _shifted(first.next_fire_at, backend)
    [fire] = await backend.schedules.fire_due()
    assert fire.schedule == "nightly"
    # a changed definition is written (and a changed expression starts over from now)
    registry.schedules["nightly"] = msgspec_replace(registry.schedules["nightly"], expression="0 12 * * *")
    [changed] = await backend.schedules.sync_declared()
    assert changed.expression == "0 12 * * *" and changed.next_fire_at is not None
    assert changed.next_fire_at.hour == 12


def _shifted(moment: datetime | None, backend: QueueBackend) -> datetime | None:
    return moment if isinstance(backend, MemoryQueue) or moment is None else moment - timedelta(days=1)


def msgspec_replace(struct: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(struct, **changes)


def test_periodic_declarations_are_checked_at_import() -> None:
    registry = JobRegistry()
    registry.include(jobs)
    with pytest.raises(ValueError, match=r"expression: .*position 1"):
        registry.declare_schedule("x", "61 * * * *", kind="noop")
    async def cleanup(ctx: Any, payload: dict) -> None:
        return None

    with pytest.raises(ValueError, match="unknown time zone"):
        registry.periodic("@daily", timezone="Nowhere/Land")(cleanup)
    assert "cleanup" not in registry.kinds  # nothing half-declared
    registry.periodic("@daily", timezone="Europe/Paris")(cleanup)
    assert registry.schedules["cleanup"].kind == "cleanup" and registry.kinds["cleanup"].handler is cleanup
    registry.declare_schedule("x", "@daily", kind="noop")
    with pytest.raises(ValueError, match="declared twice"):
        registry.declare_schedule("x", "@hourly", kind="noop")

    @registry.periodic("*/5 * * * *", payload={"to": "a@b.c"}, name="mail-every-5")
    @registry.kind("mailer", queue="mail")
    async def mailer(ctx: Any, payload: dict) -> None:
        return None

    spec = registry.schedules["mail-every-5"]
    assert (spec.kind, spec.queue, spec.payload) == ("mailer", "mail", {"to": "a@b.c"})


# -- Postgres: the one-statement pass ------------------------------------------------------------


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[Queue]:
    queue = await Queue.connect(db_url, jobs, settings=fast_settings(db_url), max_size=8)
    try:
        yield queue
    finally:
        await queue.close()


async def test_seventy_schedules_all_fire(pg: Queue) -> None:
    """procrastinate#1464: with many schedules, some never fired. 70 due schedules (more than one
    batch of the pass is not needed: each pass takes up to 100) all fire, once each."""
    for i in range(70):
        await pg.schedules.add(f"s{i:02}", f"{i % 60} * * * *", "noop", {"i": i}, catch_up="latest")
    await fetch(pg, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - interval '1 hour'")
    fires = await Scheduler(pg.store).run_once()
    assert sorted(f.schedule for f in fires) == [f"s{i:02}" for i in range(70)]
    assert await Scheduler(pg.store).run_once() == []
    [(jobs_made, fire_rows)] = await fetch(pg, "SELECT (SELECT count(*) FROM pgqueue.jobs), "
                                               "(SELECT count(*) FROM pgqueue.schedule_fires)")
    assert jobs_made == fire_rows == 70
    states = await fetch(pg, "SELECT state, count(*) FROM pgqueue.schedule_status GROUP BY state")
    assert states == [("scheduled", 70)]


async def test_concurrent_passes_fire_each_time_once(pg: Queue) -> None:
    """Five schedulers on five connections at once (as five workers would): one job per fire time."""
    await pg.schedules.add("sec", "* * * * * *", "noop", catch_up="all", catch_up_window=3600)
    await pg.schedules.add("min", "* * * * *", "noop", catch_up="all", catch_up_window=3600)
    await fetch(pg, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - interval '10 minutes'")
    conns = [await psycopg.AsyncConnection.connect(pg.settings.database_url, autocommit=True) for _ in range(5)]
    try:
        for _ in range(3):
            results = await asyncio.gather(*(Scheduler(pg.store).run_once(conn) for conn in conns))
            assert sum(len(r) for r in results) >= 0
    finally:
        for conn in conns:
            await conn.close()
    rows = await fetch(pg, "SELECT s.name, count(*), count(DISTINCT f.fire_at), count(DISTINCT j.id) "
                           "FROM pgqueue.schedule_fires f JOIN pgqueue.schedules s ON s.id = f.schedule_id "
                           "JOIN pgqueue.jobs j ON j.id = f.job_id AND j.run_at = f.fire_at GROUP BY s.name ORDER BY 1")
    by_name = {name: (fires, distinct, jobs_) for name, fires, distinct, jobs_ in rows}
    assert by_name["min"][0] == by_name["min"][1] == by_name["min"][2] in (10, 11)
    assert by_name["sec"][0] == by_name["sec"][1] == by_name["sec"][2] >= 600
    [(total,)] = await fetch(pg, "SELECT count(*) FROM pgqueue.jobs")
    assert total == by_name["min"][0] + by_name["sec"][0]


async def test_a_failing_pass_writes_nothing_and_the_next_one_fires(pg: Queue) -> None:
    """procrastinate#1495: a crash between recording a fire and inserting its job left the tick
    blocked. Here it is one statement: make the job insert fail inside it, and neither the fire
    record nor the schedule's move happened; once the fault is gone, the next pass fires."""
    await pg.schedules.add("d", "0 0 * * *", "noop", catch_up="latest")
    await fetch(pg, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - interval '1 day'")
    before = await pg.schedules.get("d")
    await fetch(pg, """
        CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected failure'; END $$;
        CREATE TRIGGER test_refuse BEFORE INSERT ON pgqueue.jobs FOR EACH ROW EXECUTE FUNCTION test_refuse();
    """)
    with pytest.raises(psycopg.errors.RaiseException):
        await Scheduler(pg.store).run_once()
    assert await pg.schedules.get("d") == before
    assert await fetch(pg, "SELECT count(*) FROM pgqueue.schedule_fires") == [(0,)]
    await fetch(pg, "DROP TRIGGER test_refuse ON pgqueue.jobs")
    [fire] = await Scheduler(pg.store).run_once()
    assert fire.fire_at == before.next_fire_at


async def test_a_stale_plan_fires_nothing(pg: Queue) -> None:
    """A pass planned from an older revision (another worker fired meanwhile, or an operator
    paused it) changes nothing, and a fire time recorded once is never a second job."""
    await pg.schedules.add("d", "0 0 * * *", "noop", catch_up="latest")
    await fetch(pg, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - interval '1 day'")
    stale = await pg.schedules.get("d")
    assert stale.next_fire_at is not None
    [fire] = await Scheduler(pg.store).run_once()
    assert await pg.store.fire_schedules([(stale.id, stale.revision, stale.next_fire_at, [fire.fire_at])]) == []
    fresh = await pg.schedules.get("d")  # right revision, fire time already recorded: no job either
    assert await pg.store.fire_schedules([(fresh.id, fresh.revision, fresh.next_fire_at, [fire.fire_at])]) == []
    assert await fetch(pg, "SELECT count(*) FROM pgqueue.jobs") == [(1,)]


async def test_a_row_that_does_not_parse_stops_instead_of_blocking_others(pg: Queue) -> None:
    await pg.schedules.add("good", "0 0 * * *", "noop", catch_up="latest")
    await pg.schedules.add("bad", "0 0 * * *", "noop", catch_up="latest")
    await fetch(pg, "UPDATE pgqueue.schedules SET next_fire_at = next_fire_at - interval '1 day', "
                    "expression = CASE name WHEN 'bad' THEN '99 * * * *' ELSE expression END")
    fires = await Scheduler(pg.store).run_once()
    assert [f.schedule for f in fires] == ["good"]
    assert await fetch(pg, "SELECT name, state FROM pgqueue.schedule_status ORDER BY name") == [
        ("bad", "never"), ("good", "scheduled")]


# -- the worker's scheduler task -----------------------------------------------------------------


async def test_worker_fires_schedules_on_its_own_connection_beside_the_heartbeat(pg: Queue) -> None:
    """The scheduler has a connection of its own: while a lock holds it up, the heartbeat goes on."""
    await pg.schedules.add("sec", "* * * * * *", "noop", catch_up="all")
    async with running_worker(pg, ("default",)) as worker:
        await wait_for(lambda: _count(pg, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'succeeded'"),
                       message="a scheduled job to run")
        names = await fetch(pg, "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'pgqueue-worker-%'")
        assert ("pgqueue-worker-scheduler",) in names and ("pgqueue-worker-heartbeat",) in names
        async with await psycopg.AsyncConnection.connect(pg.settings.database_url) as blocker:
            await blocker.execute("LOCK TABLE pgqueue.schedules IN ACCESS EXCLUSIVE MODE")
            [(beat_before,)] = await fetch(pg, "SELECT heartbeat_at FROM pgqueue.workers WHERE id = %s", (worker.worker_id,))

            async def beat_moved() -> bool:
                [(beat,)] = await fetch(pg, "SELECT heartbeat_at FROM pgqueue.workers WHERE id = %s", (worker.worker_id,))
                return beat > beat_before

            await wait_for(beat_moved, message="a heartbeat while the scheduler is blocked")
            await blocker.rollback()


async def _count(queue: Queue, sql: str) -> int:
    return (await fetch(queue, sql))[0][0]


async def test_a_scheduler_that_keeps_failing_stops_its_worker(pg: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """procrastinate PR #1463: a worker whose scheduler died must not go on heartbeating."""
    passes = 0

    async def broken(self: Scheduler, conn: Any = None) -> list[Any]:
        nonlocal passes
        passes += 1
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(Scheduler, "run_once", broken)
    with pytest.raises(SchedulerFailed, match="its scheduler died"):
        async with running_worker(pg, ("default",)) as worker:
            await wait_for(lambda: _stopped(worker), timeout=30, message="the worker to stop itself")
    assert passes == 5
    assert isinstance(worker.scheduler_error, SchedulerFailed)
    assert await fetch(pg, "SELECT count(*) FROM pgqueue.workers") == [(0,)]  # it unregistered and left


async def _stopped(worker: Any) -> bool:
    return worker.stopped.is_set()


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_add_list_pause_resume_remove_and_bad_input(db_url: str) -> None:
    from tests.process_fixtures import query, run_cli

    added = run_cli("schedules", "add", "hourly-mail", "0 * * * *", "email", '{"to": "a@example.com"}',
                    "--app", "tests.jobs", "--timezone", "Europe/Paris", "--catch-up", "latest", database_url=db_url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("schedule hourly-mail: 0 * * * * (Europe/Paris) -> email on mail, next ")
    listed = run_cli("schedules", "list", database_url=db_url)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("hourly-mail")]
    assert row.count(":00:00+") == 3 and "active" in row  # the next three fire times
    for args, fragment in [
        (("pause", "hourly-mail"), "paused"), (("resume", "hourly-mail"), "active"),
        (("remove", "hourly-mail"), "removed"),
    ]:
        done = run_cli("schedules", *args, database_url=db_url)
        assert done.returncode == 0 and fragment in done.stdout, done.stderr
    bad = [
        (("add", "x", "* * 32 * *", "noop"), "at position 5 (day-of-month field)"),
        (("add", "x", "@daily", "noop", "--timezone", "Mars/Olympus"), "unknown time zone"),
        (("add", "x", "@daily", "noop", "--catch-up-window", "0"), "catch_up_window"),
        (("add", "x", "@daily", "noop", "{not json"), "not valid JSON"),
        (("add", "x", "@daily", "email", '{"subject": "s"}', "--app", "tests.jobs"), "payload.to"),
    ]
    for args, fragment in bad:
        result = run_cli("schedules", *args, database_url=db_url)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr, result.stderr
    missing = run_cli("schedules", "pause", "nope", database_url=db_url)
    assert missing.returncode == 1 and "no schedule named 'nope'" in missing.stderr
    assert query(db_url, "SELECT count(*) FROM pgqueue.schedules") == [(0,)]


# -- real worker processes -------------------------------------------------------------------------


def _add_schedules(url: str, *specs: tuple[str, str, dict[str, Any]]) -> None:
    async def add() -> None:
        async with await Queue.connect(url, jobs, max_size=1) as queue:
            for name, expression, options in specs:
                await queue.schedules.add(name, expression, "mark", {"key": name}, **options)

    asyncio.run(add())


def _fires(url: str, name: str) -> list[tuple[datetime, int, int]]:
    """(fire_at, jobs with that run_at made by the schedule, job id) per recorded fire, in order."""
    from tests.process_fixtures import query

    return query(url, """
        SELECT f.fire_at, (SELECT count(*) FROM pgqueue.jobs j WHERE j.payload->>'key' = s.name AND j.run_at = f.fire_at),
               f.job_id
        FROM pgqueue.schedule_fires f JOIN pgqueue.schedules s ON s.id = f.schedule_id
        WHERE s.name = %s ORDER BY f.fire_at""", [name])


def _wait_fires(url: str, name: str, count: int, after: datetime | None = None) -> None:
    from tests.helpers import wait_for_sync

    def enough() -> bool:
        return len([f for f in _fires(url, name) if after is None or f[0] > after]) >= count

    wait_for_sync(enough, timeout=60, interval=0.1, message=f"{count} fires of {name}")


def _gaps(fire_times: list[datetime]) -> int:
    return sum(1 for a, b in itertools.pairwise(fire_times) if b - a != timedelta(seconds=1))


def test_three_workers_fire_each_second_exactly_once_through_a_kill(proc_db: str, spawn_worker: Any) -> None:
    """3 worker processes, a per-second schedule: one job per fire time, none missing, also after
    the worker that had just fired is killed with -9 and started again."""
    _add_schedules(proc_db, ("tick", "* * * * * *", {"catch_up": "all", "catch_up_window": 3600}))
    workers = [spawn_worker(proc_db) for _ in range(3)]
    _wait_fires(proc_db, "tick", 3)
    # the worker that fired last: its log has the latest "schedule tick fired" line
    last_fire = _fires(proc_db, "tick")[-1][0]
    stamp = last_fire.isoformat()
    fired_it = [w for w in workers if f"schedule tick fired for {stamp}" in w.output()]
    assert len(fired_it) == 1, [w.output()[-2000:] for w in workers]
    fired_it[0].kill()
    workers.append(spawn_worker(proc_db))
    _wait_fires(proc_db, "tick", 4, after=last_fire)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        if worker.is_alive():
            assert worker.wait(30) == 0
    fires = _fires(proc_db, "tick")
    assert all(jobs_for_fire == 1 for _, jobs_for_fire, _ in fires), fires
    assert _gaps([f[0] for f in fires]) == 0, [f[0] for f in fires]
    from tests.process_fixtures import scalar

    assert scalar(proc_db, "SELECT count(*) FROM pgqueue.jobs") == len(fires)
    fired_by = {w.pid for w in workers if "schedule tick fired" in w.output()}
    assert len(fired_by) >= 1


def test_kill_and_restart_under_each_catch_up_policy(proc_db: str, spawn_worker: Any) -> None:
    """The only worker is killed with -9 and started again a few seconds later: no fire time is
    doubled under any policy; `all` loses none, `latest` and `skip` leave one gap and go on."""
    from tests.process_fixtures import scalar

    _add_schedules(proc_db, ("all", "* * * * * *", {"catch_up": "all", "catch_up_window": 3600}),
                   ("latest", "* * * * * *", {"catch_up": "latest"}),
                   ("skip", "* * * * * *", {"catch_up": "skip", "catch_up_window": 1}))
    worker = spawn_worker(proc_db)
    for name in ("all", "latest", "skip"):
        _wait_fires(proc_db, name, 2)
    worker.kill()
    killed_at = scalar(proc_db, "SELECT now()")
    from tests.helpers import wait_for_sync

    wait_for_sync(lambda: scalar(proc_db, "SELECT now() > %s + interval '3 seconds'", [killed_at]), timeout=30,
                  interval=0.1, message="3 seconds of downtime")
    restarted = spawn_worker(proc_db)
    for name in ("all", "latest", "skip"):
        _wait_fires(proc_db, name, 3, after=killed_at + timedelta(seconds=3))
    restarted.terminate()
    assert restarted.wait(30) == 0
    for name in ("all", "latest", "skip"):
        fires = _fires(proc_db, name)
        assert all(jobs_for_fire == 1 for _, jobs_for_fire, _ in fires), (name, fires)
        times = [f[0] for f in fires]
        assert len(set(times)) == len(times)
        assert _gaps(times) == (0 if name == "all" else 1), (name, times)
