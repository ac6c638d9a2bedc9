"""`python -m pgqueue chaos`: run the scenarios, show progress on stderr, print one table per
scenario and write the reports as JSON. Without --database-url the harness starts a PostgreSQL
of its own (durable, max_connections 100, its log read afterwards); with one, the scenarios that
stop or restart the server are skipped."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pgqueue.errors import ConfigError

DEFAULT_OUTPUT = "chaos-results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pgqueue.chaos.scenarios import SCENARIOS

    listing = "; ".join(f"{name}: {scenario.summary}" for name, scenario in SCENARIOS.items())
    parser.add_argument("--scenarios", default="all",
                        help=f"comma-separated scenarios, or 'all' (default). {listing}")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply job counts and fault durations (e.g. 0.1 for a quick run; default 1)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON report (default {DEFAULT_OUTPUT})")
    parser.add_argument("--max-connections", type=int, default=100,
                        help="max_connections of the harness's own server (default 100)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from pgqueue.chaos.harness import prepare_database
    from pgqueue.chaos.scenarios import SCENARIOS, run_scenario
    from pgqueue.chaos.server import ChaosServer

    names = list(SCENARIOS) if args.scenarios == "all" else [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if unknown := [name for name in names if name not in SCENARIOS]:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.scale <= 0:
        raise ConfigError("--scale must be positive")
    server = None
    url = args.database_url
    if url:
        say(f"using {url}: scenarios that stop or restart the server are skipped")
    else:
        server = ChaosServer.own(max_connections=args.max_connections)
        say(f"starting PostgreSQL (fsync on, synchronous_commit on, max_connections {args.max_connections}) "
            f"in {server.embedded.data_dir}, log {server.log_path}")
        server.start()
        url = server.url
    results: dict[str, Any] = {"scale": args.scale, "scenarios": {}}
    try:
        prepare_database(url)
        for name in names:
            results["scenarios"][name] = run_scenario(name, url, server, scale=args.scale, say=say)
            Path(args.output).write_text(json.dumps(results, indent=2, default=sorted) + "\n")
            print(render(results["scenarios"][name]), flush=True)
    finally:
        if server is not None:
            server.destroy()
    say(f"results written to {args.output}")
    return 1 if any(report.get("problems") for report in results["scenarios"].values()) else 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, list):
        return str(len(value))
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(report: dict[str, Any]) -> str:
    name = report["scenario"]
    if "skipped" in report:
        return f"\n== {name}: skipped ({report['skipped']})"
    throughput = " / ".join(f"{key} {_fmt(value)}" for key, value in report["throughput"].items())
    rows = [
        ("jobs enqueued / succeeded / dead / lost",
         f"{_fmt(report['enqueued'])} / {_fmt(report['succeeded'])} / {_fmt(report['dead'])} / {_fmt(report['lost'])}"),
        ("duplicated jobs (runs) / in flight at faults",
         f"{report['duplicated_jobs']} ({report['duplicated_runs']}) / {report['in_flight_at_faults']}"),
        ("duplicated outside in-flight", _fmt(report["duplicated_outside_in_flight"])),
        ("faults", _fmt(len(report["faults"]))),
        ("recovery s (first completion) / in-flight settled s",
         f"{_fmt(report['recovery_seconds'])} / {_fmt(report['in_flight_settled_seconds'])}"),
        ("throughput jobs/s", throughput),
        ("rescues / of a live worker", f"{report['rescues']} / {report['rescues_of_live_worker']}"),
        ("innocent jobs dead", _fmt(report["innocent_dead"])),
        ("deadlocks / lock waits in server log", f"{_fmt(report['deadlocks'])} / {_fmt(report['lock_waits'])}"),
        ("worker restarts", _fmt(report["worker_restarts"])),
        ("settled after s", _fmt(report["settled_seconds"])),
    ]
    for key in ("outage", "xmin_pin"):
        if key in report:
            extra = {k: v for k, v in report[key].items() if k != "throughput_per_window"}
            rows.append((key, json.dumps(extra)))
            if key == "xmin_pin":
                windows = report[key]["throughput_per_window"]
                rows.append(("jobs/s per window", " ".join(_fmt(w["jobs_per_second"]) for w in windows)))
    width = max(len(label) for label, _ in rows)
    lines = [f"\n== {name}: {report['summary']}"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += [f"  note: {note}" for note in report["notes"]]
    lines.append("  PROBLEMS: " + "; ".join(report["problems"]) if report["problems"] else "  no problems found")
    return "\n".join(lines)
