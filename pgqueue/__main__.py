"""Command line: `python -m pgqueue {migrate,worker,enqueue,stats,dev,bench,chaos} --help`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from pgqueue.config import Settings, check_concurrency, check_seconds
from pgqueue.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidPayload,
    PgQueueError,
    SchemaNotMigrated,
    UnknownKind,
)
from pgqueue.registry import JobRegistry

log = logging.getLogger("pgqueue")


def load_registry(spec: str | None) -> JobRegistry:
    """`module` or `module:attribute`; without an attribute, the module's JobRegistry."""
    if not spec:
        return JobRegistry()
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import --app module {module_name!r}: {exc}") from None
    if attr:
        registry = getattr(module, attr, None)
    else:
        found = [value for value in vars(module).values() if isinstance(value, JobRegistry)]
        registry = found[0] if len(found) == 1 else getattr(module, "jobs", None)
    if not isinstance(registry, JobRegistry):
        raise ConfigError(f"--app {spec!r} does not name a JobRegistry (use module:attribute)")
    return registry


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(database_url=getattr(args, "database_url", None))
    if not settings.database_url:
        raise ConfigError("no database URL: pass --database-url or set PGQUEUE_DATABASE_URL")
    return settings


def _url(args: argparse.Namespace) -> str:
    url = _settings(args).database_url
    assert url is not None
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from pgqueue.migrate import migrate, rollback

    # the migration lock is a session advisory lock: never through a pooler
    url = _settings(args).session_url()
    assert url is not None
    if args.rollback:
        done = rollback(url, args.rollback)
        print("rolled back: " + (", ".join(done) or "nothing"))
    else:
        done = migrate(url)
        print("applied: " + (", ".join(done) if done else "nothing (up to date)"))
    return 0


async def run_worker(settings: Settings, registry: JobRegistry, queues: list[str], concurrency: int,
                     grace: float) -> None:
    from pgqueue.queue import Queue
    from pgqueue.worker import Worker

    queue = await Queue.connect(settings.database_url, registry, settings=settings,
                                max_size=min(concurrency, 20) + 2)
    worker = Worker(queue, queues, concurrency, shutdown_grace=grace)
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal(signum: int) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            log.info("%s received: no new jobs; finishing running ones (up to %.0fs)",
                     signal.Signals(signum).name, grace)
            worker.stop()
        else:
            log.info("second signal: releasing running jobs now")
            worker.release_now()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await worker.run()
    finally:
        await queue.close()


def _queues(raw: str | None, registry: JobRegistry) -> list[str]:
    if raw:
        return [q.strip() for q in raw.split(",") if q.strip()]
    return sorted({spec.queue for spec in registry.kinds.values()}) or ["default"]


def _check_worker_options(args: argparse.Namespace) -> None:
    check_concurrency(args.concurrency, "--concurrency")
    check_seconds("--grace", args.grace, 0.0)


def cmd_worker(args: argparse.Namespace) -> int:
    _check_worker_options(args)
    registry = load_registry(args.app)
    asyncio.run(run_worker(_settings(args), registry, _queues(args.queues, registry), args.concurrency, args.grace))
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from pgqueue.db import connect_sync
    from pgqueue.queue import SyncQueue
    from pgqueue.store import live_jobs_by_unique_key_sync

    registry = load_registry(args.app)
    if not registry.kinds:
        if not args.untyped:
            # no registry: nothing could validate the payload or say which queue its workers read
            print(f"error: unknown job kind {args.kind!r}: pass --app MODULE (for the web app: --app app.jobs) "
                  "to validate it and use its queue, or --untyped --queue QUEUE to enqueue it as it is",
                  file=sys.stderr)
            return EXIT_UNKNOWN_KIND
        registry.declare(args.kind, queue=args.queue or "default")
    try:
        payload = msgspec.json.decode(args.payload) if args.payload else {}
    except msgspec.DecodeError as exc:
        raise InvalidPayload([{"field": "payload", "message": f"not valid JSON: {exc}"}]) from None
    run_at = None
    if args.run_at:
        try:
            run_at = datetime.fromisoformat(args.run_at)
        except ValueError:
            raise InvalidPayload([{"field": "run_at", "message": "not an ISO 8601 datetime"}]) from None
    options: dict[str, Any] = {
        "priority": args.priority, "queue": args.queue, "delay": args.delay, "run_at": run_at,
        "unique_key": args.unique_key, "max_attempts": args.max_attempts, "concurrency_key": args.concurrency_key,
    }
    if args.depends_on:
        options["depends_on"] = _job_ids(args.depends_on)
        options["run_if_parent_fails"] = args.run_if_parent_fails
    jobs = [(args.kind, payload, {k: v for k, v in options.items() if v is not None})] * args.count
    url = _url(args)
    with connect_sync(url) as conn:
        # a live job holding the key before this statement is what the insert hands back instead
        held = {job.id for job in live_jobs_by_unique_key_sync(conn, [args.unique_key])} if args.unique_key else set()
        created = SyncQueue(url, registry).enqueue_many(jobs, conn=conn)
        conn.commit()
    for job in created[:10]:
        line = (f"job {job.id}: {job.kind} on {job.queue}, priority {job.priority}, {job.status}, "
                f"run_at {job.run_at:%Y-%m-%d %H:%M:%S%z}")
        if job.id in held:
            line += f" (deduplicated: this job already held unique key {args.unique_key!r}; nothing new enqueued)"
        print(line)
    if len(created) > 10:
        print(f"... {len(created)} jobs")
    if args.wait is None:
        return 0
    waiter = SyncQueue(url, registry)
    finished = [waiter.wait(job.id, timeout=args.wait) for job in created]  # WaitTimeout: exit 1
    for job in finished[:10]:
        print(f"job {job.id}: {job.status}" + (f": {msgspec.json.encode(job.result).decode()}" if job.result is not None
                                               else f": {job.last_error}" if job.last_error else ""))
    return 0 if all(job.status == "succeeded" for job in finished) else 1


def _job_ids(raw: str) -> list[int]:
    """--depends-on 12,15 as [12, 15]."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() for part in parts):
        raise InvalidPayload([{"field": "depends_on", "message": "must be job ids separated by commas, e.g. 12,15"}])
    return [int(part) for part in parts]


def cmd_stats(args: argparse.Namespace) -> int:
    from pgqueue.queue import Queue

    async def fetch() -> dict[str, dict[str, int]]:
        async with await Queue.connect(_url(args), max_size=1) as queue:
            return await queue.stats()

    stats = asyncio.run(fetch())
    columns = ["waiting", "queued", "running", "failed", "succeeded", "dead", "cancelled"]
    print(f"{'queue':<20}" + "".join(f"{c:>11}" for c in columns))
    for name, counts in sorted(stats.items()):
        print(f"{name:<20}" + "".join(f"{counts.get(c, 0):>11}" for c in columns))
    if not stats:
        print("(no jobs)")
    return 0


@contextlib.contextmanager
def dev_database(data_dir: str) -> Iterator[str]:
    """PGQUEUE_DATABASE_URL when set; otherwise the embedded server kept in data_dir, started when
    it is not running and then stopped again when the block ends (Ctrl-C, SIGTERM, an error).
    A server some other command started is left to that command."""
    from pgqueue.embedded import EmbeddedPostgres

    if url := os.environ.get("PGQUEUE_DATABASE_URL"):
        yield url
        return
    port_file = Path(data_dir) / "pgqueue-port"
    port = int(port_file.read_text()) if port_file.exists() else None
    server = EmbeddedPostgres(Path(data_dir) / "pg", port=port, fast=False)
    started = not server.is_running()
    if started:
        server.start()
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    port_file.write_text(str(server.port))
    owner = "stopped when this command ends" if started else f"already running; stop it with: {server.stop_command()}"
    print(f"embedded PostgreSQL at {server.url} (data in {data_dir}; {owner})\n"
          f"  psql and `python -m pgqueue` in another shell: export PGQUEUE_DATABASE_URL={server.url}", flush=True)
    try:
        yield server.url
    finally:
        if started:
            server.stop()
            print("embedded PostgreSQL stopped", flush=True)


def cmd_dev(args: argparse.Namespace) -> int:
    from pgqueue.migrate import migrate

    _check_worker_options(args)
    registry = load_registry(args.app)
    with dev_database(args.data_dir) as url:
        os.environ["PGQUEUE_DATABASE_URL"] = url
        migrate(url)
        settings = Settings.from_env(database_url=url)
        asyncio.run(run_worker(settings, registry, _queues(args.queues, registry), args.concurrency, args.grace))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pgqueue.bench import main as bench_main

    return bench_main(args)


def cmd_queues(args: argparse.Namespace) -> int:
    from pgqueue.queues_cli import main as queues_main

    return queues_main(args, _url(args))


def cmd_chaos(args: argparse.Namespace) -> int:
    from pgqueue.chaos.cli import main as chaos_main

    return chaos_main(args)


# -- schedules (periodic jobs, pgqueue/scheduler.py) ---------------------------------------------


def cmd_schedules(args: argparse.Namespace) -> int:
    """`schedules add|list|pause|resume|remove`: bad input is one `error:` line and exit 2."""
    from pgqueue.errors import InvalidSchedule
    from pgqueue.queue import Queue
    from pgqueue.scheduler import upcoming_fires

    registry = load_registry(getattr(args, "app", None))
    if args.action == "add" and args.kind not in registry.kinds:
        registry.declare(args.kind, queue=args.queue or "default")  # without --app any kind, untyped payload
    try:
        payload = msgspec.json.decode(args.payload) if getattr(args, "payload", None) else {}
    except msgspec.DecodeError as exc:
        print(f"error: invalid schedule: payload: not valid JSON: {exc}", file=sys.stderr)
        return 2

    async def act() -> int:
        async with await Queue.connect(_url(args), registry, max_size=1) as queue:
            if args.action == "add":
                try:
                    schedule = await queue.schedules.add(
                        args.name, args.expression, args.kind, payload, timezone=args.timezone, queue=args.queue,
                        priority=args.priority, max_attempts=args.max_attempts, catch_up=args.catch_up,
                        catch_up_window=args.catch_up_window, paused=args.paused)
                except InvalidSchedule as exc:
                    print(f"error: invalid schedule: {exc}", file=sys.stderr)
                    return 2
                print(f"schedule {schedule.name}: {schedule.expression} ({schedule.timezone}) -> {schedule.kind} on "
                      f"{schedule.queue}, next {_when(schedule.next_fire_at)}")
            elif args.action == "list":
                now = await queue.store.now()
                schedules = await queue.schedules.list()
                print(f"{'name':<24}{'expression':<22}{'timezone':<18}{'kind':<16}{'catch-up':<14}{'state':<9}next fire times")
                for s in schedules:
                    fires = ", ".join(_when(f) for f in upcoming_fires(s, now, 3))
                    print(f"{s.name:<24}{s.expression:<22}{s.timezone:<18}{s.kind:<16}"
                          f"{s.catch_up + ('/' + format(s.catch_up_window, 'g') + 's' if s.catch_up != 'latest' else ''):<14}"
                          f"{'paused' if s.paused else 'active':<9}{fires}")
                if not schedules:
                    print("(no schedules)")
            elif args.action in ("pause", "resume"):
                schedule = await getattr(queue.schedules, args.action)(args.name)
                print(f"schedule {schedule.name}: {'paused' if schedule.paused else 'active'}, next "
                      f"{_when(schedule.next_fire_at) if not schedule.paused else '-'}")
            else:
                await queue.schedules.remove(args.name)
                print(f"schedule {args.name}: removed")
            return 0

    return asyncio.run(act())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S%z") if moment is not None else "never"


def add_schedules_parser(sub: Any, database: Any) -> None:
    p = sub.add_parser("schedules", help="periodic jobs: add, list, pause, resume, remove")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a schedule (cron: [second] minute hour day month weekday, or @daily ...)")
    database(add)
    add.add_argument("name")
    add.add_argument("expression", help='e.g. "*/5 * * * *", "0 9 * * MON-FRI", "@hourly"')
    add.add_argument("kind")
    add.add_argument("payload", nargs="?", help="JSON payload (default {})")
    add.add_argument("--app", help="module holding your JobRegistry (validates kind and payload)")
    add.add_argument("--timezone", default="UTC", help="IANA zone the expression is read in (default UTC)")
    add.add_argument("--queue")
    add.add_argument("--priority", type=int)
    add.add_argument("--max-attempts", type=int)
    add.add_argument("--catch-up", default="skip", help="after missed fire times: skip (default), latest, all")
    add.add_argument("--catch-up-window", type=float, default=60.0,
                     help="seconds: how late a fire may still run (skip), how far back all goes (default 60)")
    add.add_argument("--paused", action="store_true", help="create it paused")
    lst = actions.add_parser("list", help="every schedule with its next 3 fire times")
    database(lst)
    for action in ("pause", "resume", "remove"):
        one = actions.add_parser(action, help=f"{action} a schedule")
        database(one)
        one.add_argument("name")
    p.set_defaults(func=cmd_schedules)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgqueue", description="Postgres-native job queue")
    parser.add_argument("--log-level", default=os.environ.get("PGQUEUE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    def database(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", help="postgresql:// URL (default: $PGQUEUE_DATABASE_URL)")

    def worker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--app", help="module (or module:attribute) holding your JobRegistry")
        p.add_argument("--queues", help="comma-separated queues (default: the queues of the app's kinds)")
        p.add_argument("--concurrency", type=int, default=50, help="job slots (default 50; README \"Tuning --concurrency\")")
        p.add_argument("--grace", type=float, default=30.0, help="seconds running jobs get on SIGTERM (default 30)")

    p = sub.add_parser("migrate", help="apply the schema migrations (idempotent, safe to run concurrently)")
    database(p)
    p.add_argument("--rollback", type=int, metavar="N", help="roll back the last N migrations instead")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run a worker")
    database(p)
    worker_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="enqueue a job")
    database(p)
    p.add_argument("kind")
    p.add_argument("payload", nargs="?", help="JSON payload (default {})")
    p.add_argument("--app", help="module holding your JobRegistry (validates the payload, picks the kind's queue)")
    p.add_argument("--untyped", action="store_true",
                   help="without --app: enqueue the kind as given, unvalidated (on --queue, default 'default')")
    p.add_argument("--priority", type=int, help="1-5, higher runs first (default: the kind's, else 3)")
    p.add_argument("--queue")
    p.add_argument("--delay", type=float, help="seconds from now")
    p.add_argument("--run-at", help="ISO 8601 datetime with a time zone")
    p.add_argument("--unique-key")
    p.add_argument("--concurrency-key", help="the queue's per-key limits apply to this key (a tenant, an account)")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--count", type=int, default=1, help="enqueue this many copies in one round trip")
    p.add_argument("--depends-on", metavar="ID[,ID]", help="wait (status waiting) until these jobs have succeeded")
    p.add_argument("--run-if-parent-fails", action="store_true", help="with --depends-on: run once they finished, "
                   "even if one ended dead or cancelled")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="then wait until the job finished; exit 0 if it "
                   "succeeded, 1 if it ended dead or cancelled or did not finish in time")
    p.set_defaults(func=cmd_enqueue)

    from pgqueue.queues_cli import add_arguments as queues_arguments

    p = sub.add_parser("queues", help="pause, resume and limit queues (concurrency, rate; per concurrency key too)")
    queues_arguments(p, database)
    p.set_defaults(func=cmd_queues)

    add_schedules_parser(sub, database)

    p = sub.add_parser("stats", help="queue depth by queue and status")
    database(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("dev", help="embedded PostgreSQL (unless PGQUEUE_DATABASE_URL is set) + migrate + worker")
    worker_options(p)
    p.add_argument("--data-dir", default=".data", help="where the embedded server keeps its files (default .data)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("bench", help="measure enqueue, drain, wake-up latency against the raw Postgres ceiling")
    database(p)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--output", default="bench-results.json")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.set_defaults(func=cmd_bench)

    from pgqueue.chaos.cli import add_arguments as chaos_arguments

    p = sub.add_parser("chaos", help="kill workers, restart or crash the server, exhaust connections; count "
                                     "jobs lost, run twice, rescued from a live worker")
    database(p)
    chaos_arguments(p)
    p.set_defaults(func=cmd_chaos)
    return parser


# Exit codes, one per class of error (README, "Command line"); argparse's usage errors are 2 too.
EXIT_FAILURE = 1  # the engine refused (job not found, not in a state for that, ...), or a bug
EXIT_BAD_INPUT = 2  # a bad job, option or setting
EXIT_UNKNOWN_KIND = 3  # no such job kind (or no --app to know kinds from)
EXIT_DATABASE = 4  # the database is unreachable, or its schema is not migrated
EXIT_INTERRUPTED = 130


def run_command(args: argparse.Namespace) -> int:
    """Set up logging and run ``args.func``, turning our errors into one `error:` line and an
    exit code (the EXIT_* above). Shared with `python -m app`."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("yoyo").setLevel(logging.WARNING)  # one line per migration step otherwise
    try:
        return int(args.func(args) or 0)
    except InvalidPayload as exc:
        print(f"error: invalid job: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnknownKind as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN_KIND
    except (DatabaseUnavailable, SchemaNotMigrated) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except PgQueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
