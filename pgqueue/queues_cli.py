"""`python -m pgqueue queues list|show|pause|resume|set`: pause, resume and limit queues.

    python -m pgqueue queues set mail --concurrency 5 --rate 100/m --key-concurrency 1 --key-rate 10/s
    python -m pgqueue queues set mail --rate none          # remove one limit, keep the others

Bad input (a queue name, a limit <= 0, a period that does not parse) is one `error:` line and
exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pgqueue.limits import UNCHANGED, QueueInfo, Rate, check_queue_name, parse_rate

_NONE = ("none", "off", "unlimited")


def add_arguments(parser: argparse.ArgumentParser, database: Any) -> None:
    sub = parser.add_subparsers(dest="queues_command", required=True)
    p = sub.add_parser("list", help="every queue with jobs or settings: state, limits, queued/running counts")
    database(p)
    for action in ("show", "pause", "resume"):
        helps = {"show": "one queue's state, limits and counts",
                 "pause": "stop every worker claiming from NAME (running jobs finish; enqueue still works)",
                 "resume": "let workers claim from NAME again"}
        p = sub.add_parser(action, help=helps[action])
        database(p)
        p.add_argument("name")
    p = sub.add_parser("set", help="set or remove (none) limits; options left out stay as they are")
    database(p)
    p.add_argument("name")
    p.add_argument("--concurrency", metavar="N", help="at most N jobs of the queue running, across all workers")
    p.add_argument("--rate", metavar="N/PERIOD", help="at most N starts per PERIOD (10/s, 600/1m, 5/30s, 1000/h)")
    p.add_argument("--key-concurrency", metavar="N", help="at most N running per concurrency key")
    p.add_argument("--key-rate", metavar="N/PERIOD", help="at most N starts per PERIOD per concurrency key")


def _concurrency(raw: str | None, field: str) -> Any:
    if raw is None:
        return UNCHANGED
    if raw.strip().lower() in _NONE:
        return None
    if not raw.strip().isdigit():
        from pgqueue.errors import InvalidQueueSettings

        raise InvalidQueueSettings([{"field": field, "message": f"{raw!r} is not a whole number (or none)"}])
    return int(raw)


def _rate(raw: str | None, field: str) -> Any:
    if raw is None:
        return UNCHANGED
    return None if raw.strip().lower() in _NONE else parse_rate(raw, field)


def _fmt_rate(rate: Rate | None) -> str:
    return "-" if rate is None else str(rate)


def render(queues: list[QueueInfo]) -> str:
    header = f"{'queue':<24}{'state':<8}{'concurrency':>12}{'rate':>10}{'per key':>9}{'key rate':>10}" \
             f"{'queued':>9}{'scheduled':>10}{'running':>9}"
    lines = [header]
    for q in queues:
        lines.append(f"{q.name:<24}{q.state:<8}{q.concurrency_limit or '-':>12}{_fmt_rate(q.rate):>10}"
                     f"{q.key_concurrency_limit or '-':>9}{_fmt_rate(q.key_rate):>10}"
                     f"{q.queued:>9}{q.scheduled:>10}{q.running:>9}")
    if not queues:
        lines.append("(no queues)")
    return "\n".join(lines)


def main(args: argparse.Namespace, url: str) -> int:
    from pgqueue.queue import Queue

    command = args.queues_command
    changes: dict[str, Any] = {}
    if command != "list":
        check_queue_name(args.name)
    if command == "set":
        # everything is checked before the database is touched
        changes = {"concurrency": _concurrency(args.concurrency, "concurrency"), "rate": _rate(args.rate, "rate"),
                   "key_concurrency": _concurrency(args.key_concurrency, "key_concurrency"),
                   "key_rate": _rate(args.key_rate, "key_rate")}

    async def run() -> list[QueueInfo]:
        async with await Queue.connect(url, max_size=1) as queue:
            if command == "list":
                return await queue.list_queues()
            if command == "pause":
                return [await queue.pause_queue(args.name)]
            if command == "resume":
                return [await queue.resume_queue(args.name)]
            if command == "set":
                return [await queue.set_queue_limits(args.name, **changes)]
            return [await queue.get_queue(args.name)]

    print(render(asyncio.run(run())))
    return 0
