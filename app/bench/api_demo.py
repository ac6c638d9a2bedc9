"""``make demo-api-ingest``: the whole API-ingest story on this machine.

Starts the local simulator (100,000 events, 50 requests/s, 1 % faults, mixed timestamp forms,
capped and overlapping pages), runs ``python -m app ingest-api`` against it in the foreground,
then compares the target table with the simulator's ids and prints the verification.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from app.bench.api_simulator import FAULTS, SimConfig, SimulatedApi

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = "demo_events"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench.api_demo")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--data-dir", default=".data")
    args = parser.parse_args(argv)
    from pgqueue.__main__ import dev_database
    from pgqueue.migrate import migrate

    config = SimConfig(events=args.events, rate=args.rate, fault_rate=0.01, faults=tuple(f for f in FAULTS
                       if f != "stall"), ts_mode="mixed", page_max=1000, overlap=3, bad_ts_rate=0.001,
                       api_key="demo-key")
    with dev_database(args.data_dir) as url, SimulatedApi(config) as api:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:  # a fresh demo table each time
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("app", TARGET)))
            conn.execute("DELETE FROM app.api_syncs WHERE target = %s", [TARGET])
        print(f"simulator at {api.url}: {args.events:,} events, {args.rate:g} requests/s, 1% faults", flush=True)
        command = [sys.executable, "-m", "app", "--data-dir", args.data_dir, "ingest-api", "--url",
                   api.url + "/events", "--api-key", "demo-key", "--target", TARGET, "--source", "demo"]
        print("$ python -m app ingest-api --url", api.url + "/events", "--api-key demo-key --target", TARGET,
              flush=True)
        done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "PGQUEUE_DATABASE_URL": url})
        expected = api.expected()
        with psycopg.connect(url) as conn:
            rows = dict(conn.execute(sql.SQL("SELECT id, ts FROM {}").format(sql.Identifier("app", TARGET))).fetchall())
            errors = conn.execute("SELECT count(DISTINCT item_id) FROM app.api_ingest_errors e "
                                  "JOIN app.api_syncs s ON s.id = e.sync_id WHERE s.target = %s",
                                  [TARGET]).fetchone()[0]
        missing = set(expected) - set(rows)
        extra = set(rows) - set(expected)
        wrong = sum(1 for key, ts in rows.items() if key in expected and expected[key] != ts)
        print(f"\nverification: {len(rows):,} rows for {len(expected):,} readable events; missing {len(missing)}, "
              f"unexpected {len(extra)}, wrong ts {wrong}; {errors} unreadable timestamps in "
              f"app.api_ingest_errors (the simulator served {len(api.unreadable())}); simulator saw "
              f"{api.stats['requests']:,} requests, {api.stats['faults']} faults, {api.stats['rate_limited']} 429s")
        ok = done.returncode == 0 and not missing and not extra and not wrong
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
