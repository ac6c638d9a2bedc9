"""``python -m app ingest-api``: run an API ingest in the foreground with a progress line.

    python -m app ingest-api --config source.json
    python -m app ingest-api --url https://api.example.com/v1/events --api-key KEY --target partner_events

Flags override the file's fields. With no paths given, items, next cursor and has-more are found
under their common names. Exit 0 only when every part succeeded; bad input is one ``error:``
line and exit 2; a sync that ends dead is exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from app.kinds.api_ingest import ConfigProblem, SourceConfig, SyncStatus, run_foreground

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

# flag -> SourceConfig field (type from the field)
FLAGS = {
    "--url": "url", "--api-key": "api_key", "--auth-header": "auth_header", "--target": "target",
    "--source": "source", "--pagination": "pagination", "--page-size": "page_size",
    "--items-path": "items_path", "--cursor-path": "cursor_path", "--has-more-path": "has_more_path",
    "--id-field": "id_field", "--ts-field": "ts_field", "--in-flight": "in_flight", "--max-rps": "max_rps",
    "--parts": "parts", "--range-end": "range_end", "--since-param": "since_param",
    "--since-field": "since_field", "--naive-timezone": "naive_timezone",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a JSON file with the source config (fields of SourceConfig)")
    for flag, field in FLAGS.items():
        parser.add_argument(flag, dest=field, default=None, help=f"config field {field}")
    parser.add_argument("--concurrency", type=int, default=None, help="job slots of the foreground worker")


def _config(args: argparse.Namespace) -> SourceConfig:
    fields: dict[str, Any] = {}
    if args.config is not None:
        try:
            fields = msgspec.json.decode(args.config.read_bytes())
        except OSError as exc:
            raise ConfigProblem("--config", f"cannot read {args.config}: {exc.strerror}") from None
        except msgspec.DecodeError as exc:
            raise ConfigProblem("--config", f"{args.config} is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ConfigProblem("--config", f"{args.config} must hold a JSON object")
    for field in FLAGS.values():
        value = getattr(args, field, None)
        if value is not None:
            fields[field] = value
    if "url" not in fields:
        raise ConfigProblem("url", "give --url or a --config file with a url")
    try:
        return msgspec.convert(fields, SourceConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigProblem("config", str(exc)) from None


def _line(status: SyncStatus, elapsed: float) -> str:
    rate = status.events / elapsed if elapsed > 0 else 0.0
    line = (f"sync {status.id} [{status.status}]: {status.events:,} events ({status.inserted:,} new, "
            f"{status.invalid:,} invalid), {rate:,.0f}/s, {status.pages:,} pages, {status.retries:,} retries, "
            f"{status.rate_limited:,} 429s")
    if status.total and rate > 0 and status.status == "running":
        line += f", ETA {max(0.0, (status.total - status.inserted - status.invalid) / rate):.0f}s"
    return line


def main(args: argparse.Namespace, database_url: str) -> int:
    try:
        cfg = _config(args)
    except ConfigProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tty = sys.stderr.isatty()
    last = [0.0]
    seconds = [0.0]

    def on_progress(status: SyncStatus, elapsed: float) -> None:
        seconds[0] = elapsed
        if tty:
            print("\r" + _line(status, elapsed), end="", file=sys.stderr, flush=True)
        elif elapsed - last[0] >= 2.0:
            last[0] = elapsed
            print(_line(status, elapsed), file=sys.stderr, flush=True)

    try:
        status = asyncio.run(run_foreground(database_url, cfg, concurrency=args.concurrency, on_progress=on_progress))
    except ConfigProblem as exc:
        print(("\n" if tty else "") + f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(("\r" if tty else "") + _line(status, seconds[0]), file=sys.stderr)
    if status.status != "succeeded":
        reason = status.errors[0].strip().splitlines()[-1] if status.errors else "a part ended without succeeding"
        print(f"error: sync {status.id} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(f"sync {status.id}: done, {status.inserted:,} rows new in app.{status.target}")
    return 0
