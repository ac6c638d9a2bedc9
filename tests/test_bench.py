"""Smoke test of `python -m pgqueue bench --quick`: it runs to the end and reports every figure
(no timing assertions: the figures depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.process_fixtures import REPO_ROOT, process_env


def test_quick_bench_reports_every_figure(db_url: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue", "bench", "--quick", "--jobs", "500", "--database-url", db_url,
         "--output", str(output)],
        cwd=REPO_ROOT, env=process_env(None), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    engine = json.loads(output.read_text())["engine"]

    figures = {
        **{f"raw.{k}": v for k, v in engine["raw"].items()},
        **{f"ratios.{k}": v for k, v in engine["ratios"].items()},
        "library.enqueue_many_jobs_per_s": engine["library"]["enqueue_many_jobs_per_s"],
        "library.enqueue_single_jobs_per_s": engine["library"]["enqueue_single_jobs_per_s"],
        "library.store_loop_drain_jobs_per_s": engine["library"]["store_loop_drain_jobs_per_s"],
        "library.drain_1_worker": engine["library"]["drain_1_worker"]["jobs_per_s"],
        "library.drain_2_workers": engine["library"]["drain_2_workers"]["jobs_per_s"],
        "library.wakeup.p50_ms": engine["library"]["wakeup"]["p50_ms"],
        "library.wakeup.p99_ms": engine["library"]["wakeup"]["p99_ms"],
        "library.wakeup.max_ms": engine["library"]["wakeup"]["max_ms"],
        **{f"library.flow_control.{name}": engine["library"]["flow_control"][name]["vs_plain"]
           for name in ("plain", "concurrency_limit", "rate_limit", "keys_1000")},
    }
    assert set(engine["raw"]) >= {
        "copy_no_triggers_rows_per_s", "copy_jobs_table_rows_per_s", "insert_single_rows_per_s",
        "drain_batch_jobs_per_s", "drain_single_jobs_per_s",
    }
    for name, value in figures.items():
        assert isinstance(value, int | float) and value > 0, f"{name} = {value!r}"
    assert engine["library"]["wakeup"]["samples"] == 50
    # wake-up measured at other concurrencies too, each against the same targets
    by_concurrency = engine["library"]["wakeup_by_concurrency"]
    assert set(by_concurrency) == {"1", "10"}
    for c, wake in by_concurrency.items():
        assert wake["concurrency"] == int(c) and wake["samples"] == 50 and wake["p99_ms"] >= wake["p50_ms"] > 0
        assert engine["targets"][f"wakeup_concurrency_{c}_p99_ms"]["target"] == "<= 5"
    for name, target in engine["targets"].items():
        assert isinstance(target["pass"], bool), name
    # the table went to stdout, the bench cleaned up after itself
    periodic = engine["library"]["periodic"]
    assert periodic["fires_per_round"] == 5 and len(periodic["samples"]) == 1
    assert periodic["samples"][0]["fires"] == 5 and periodic["start_after_fire_p50_ms"]["median"] > 0
    assert "periodic: job start - fire time p99" in result.stdout
    assert "fresh worker process(es)" in result.stdout and engine["library"]["drain"]["sizes"] == [500]
    assert "queues: limits never reached" in result.stdout
    assert "PASS" in result.stdout or "MISS" in result.stdout
