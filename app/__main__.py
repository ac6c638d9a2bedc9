"""Command line of the web app.

    python -m app run [--host H --port P --workers N --concurrency C]   API + dashboard + worker
    python -m app serve [--host H --port P --workers N]                 API + dashboard only
    python -m app create-user NAME [--admin]                            prints a new API token
    python -m app add-token NAME                                        another token for NAME
    python -m app bench-sse [--clients N --workers W --rounds 3]      SSE at scale (1,000 / 5,000 clients)
    python -m app bench-ingest [--lines 1000000 --memory-mb 100 1000]   log-file ingest rate, memory
    python -m app ingest-api --config source.json | --url U [--api-key K --target T]   API ingest
    python -m app bench-api-ingest [--events 1000000 --rate 20 --page-size 1000]   API ingest rate
    python -m app bench-webhooks [--deliveries 5000 --rounds 3]         webhook deliveries/s, latency

Without PGQUEUE_DATABASE_URL an embedded PostgreSQL is started (data in --data-dir, default
.data) and migrated, so `make run` needs nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any

from pgqueue.__main__ import run_command

log = logging.getLogger("app")


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The database URL (starting the embedded server when none is set, and stopping it at the
    end when this command started it), migrated."""
    from pgqueue.__main__ import dev_database
    from pgqueue.migrate import migrate

    # stdout is for what a script reads (a token); the start-up chatter goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        database = dev_database(args.data_dir)
        url = database.__enter__()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            os.environ["PGQUEUE_DATABASE_URL"] = url
            applied = migrate(url)
            if applied:
                print(f"migrations applied: {', '.join(applied)}")
        yield url
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            database.__exit__(*sys.exc_info())


def _serve(args: argparse.Namespace, *, run_worker: bool) -> int:
    from pgqueue.config import check_concurrency
    from pgqueue.errors import ConfigError

    if run_worker:
        check_concurrency(args.concurrency, "--concurrency")
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers must be an integer from 1 to 64, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {args.port}")
    with _database(args):
        return _run_uvicorn(args, run_worker=run_worker)


def _run_uvicorn(args: argparse.Namespace, *, run_worker: bool) -> int:
    import uvicorn

    os.environ["APP_RUN_WORKER"] = "true" if run_worker else "false"
    if run_worker:
        os.environ["APP_WORKER_CONCURRENCY"] = str(args.concurrency)
    # several processes must accept each other's stream tokens: share one secret
    os.environ.setdefault("APP_SECRET", secrets.token_urlsafe(32))
    from app.settings import AppSettings

    AppSettings.from_env()  # fail here, with a clear message, on a bad setting
    base = f"http://{args.host}:{args.port}"
    print(f"pgqueue app at {base}  (API docs: {base}/docs, health: {base}/readyz)"
          + (f"; worker with {args.concurrency} slot(s) per process" if run_worker else "; no worker"),
          flush=True)
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level.lower(), log_config=_log_config(args.log_level),
                timeout_graceful_shutdown=15)
    return 0


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus our loggers (pgqueue.*, app.*): with --workers N the processes are
    spawned and would not inherit this process's logging set-up."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["app"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["app"] = {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}
    config["loggers"]["pgqueue"] = {"handlers": ["app"], "level": level.upper(), "propagate": False}
    config["loggers"]["app"] = {"handlers": ["app"], "level": level.upper(), "propagate": False}
    return config


def cmd_run(args: argparse.Namespace) -> int:
    return _serve(args, run_worker=True)


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args, run_worker=False)


def cmd_create_user(args: argparse.Namespace) -> int:
    import psycopg

    from app.auth import hash_token, new_api_token
    from app.store import create_user_sync
    from pgqueue.db import connect_sync

    with _database(args) as url, connect_sync(url) as conn:
        token = new_api_token()
        try:
            user = create_user_sync(conn, args.name, args.admin, hash_token(token), label="cli")
        except psycopg.errors.UniqueViolation:
            print(f"error: a user named {args.name!r} exists (python -m app add-token {args.name} gives them "
                  "another token)", file=sys.stderr)
            return 1
        except psycopg.errors.CheckViolation:
            print("error: a user name has 1 to 100 characters", file=sys.stderr)
            return 2
        conn.commit()
    role = "admin" if user.is_admin else "user"
    print(f"created {role} {user.name!r} (id {user.id}). API token (shown once, keep it secret):", file=sys.stderr)
    print(token)
    return 0


def cmd_add_token(args: argparse.Namespace) -> int:
    from app.auth import hash_token, new_api_token
    from app.store import add_token_sync
    from pgqueue.db import connect_sync

    with _database(args) as url, connect_sync(url) as conn:
        token = new_api_token()
        user = add_token_sync(conn, args.name, hash_token(token), label="cli")
        conn.commit()
    if user is None:
        print(f"error: no user named {args.name!r}", file=sys.stderr)
        return 1
    print(f"new API token for {user.name!r} (shown once):", file=sys.stderr)
    print(token)
    return 0


def cmd_bench_sse(args: argparse.Namespace) -> int:
    from app.bench.sse import main as bench_main

    return bench_main(args)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from app.bench_ingest import main as bench_main

    return bench_main(args)


def cmd_bench_webhooks(args: argparse.Namespace) -> int:
    from app.bench.webhooks import main as bench_main

    return bench_main(args)


def cmd_ingest_api(args: argparse.Namespace) -> int:
    from app.kinds.api_ingest_cli import main as ingest_main

    with _database(args) as url:
        return ingest_main(args, url)


def cmd_bench_api_ingest(args: argparse.Namespace) -> int:
    from app.bench.api_ingest import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="pgqueue web app")
    parser.add_argument("--log-level", default=os.environ.get("PGQUEUE_LOG_LEVEL", "INFO"))
    parser.add_argument("--data-dir", default=".data",
                        help="where the embedded PostgreSQL keeps its files when PGQUEUE_DATABASE_URL is unset")
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--workers", type=int, default=1, help="uvicorn processes (default 1)")

    p = sub.add_parser("run", help="API + dashboard + a worker for the app's job kinds, in one process")
    server_options(p)
    p.add_argument("--concurrency", type=int, default=10, help="job slots of the worker in each process")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="API + dashboard only (run workers with `python -m pgqueue worker --app app.jobs`)")
    server_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("create-user", help="create a user and print an API token")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="sees every job and may use the /worker endpoints")
    p.set_defaults(func=cmd_create_user)

    p = sub.add_parser("add-token", help="print another API token for an existing user")
    p.add_argument("name")
    p.set_defaults(func=cmd_add_token)

    p = sub.add_parser("bench-sse", help="SSE at scale: 1,000 clients on one app process, 5,000 on four (p50/p99, lost)")
    from app.bench.sse import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench_sse)

    p = sub.add_parser("bench-ingest", help="ingest rate of a 1,000,000-line file; worker memory for 100 MB / 1 GB")
    from app.bench_ingest import add_arguments as add_ingest_arguments

    add_ingest_arguments(p)
    p.set_defaults(func=cmd_bench_ingest)

    p = sub.add_parser("ingest-api", help="copy a paginated HTTP API into a table, in the foreground")
    from app.kinds.api_ingest_cli import add_arguments as add_ingest_api_arguments

    add_ingest_api_arguments(p)
    p.set_defaults(func=cmd_ingest_api)

    p = sub.add_parser("bench-api-ingest", help="API ingest rate vs a bare loop; paced cursor mode; worker memory")
    from app.bench.api_ingest import add_arguments as add_bench_api_arguments

    add_bench_api_arguments(p)
    p.set_defaults(func=cmd_bench_api_ingest)

    p = sub.add_parser("bench-webhooks", help="webhook deliveries/s to a local receiver; enqueue -> received p50/p99")
    from app.bench.webhooks import add_arguments as add_webhook_arguments

    add_webhook_arguments(p)
    p.set_defaults(func=cmd_bench_webhooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
