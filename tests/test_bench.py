"""Smoke test of `python -m pgqueue bench --quick`: it runs to the end and reports every figure
(no timing assertions: the figures depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FakeTime
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


class _NoWorkers:
    def check_alive(self) -> None:
        pass


def test_the_drain_progress_poll_is_asked_when_the_rate_says_the_jobs_are_done(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The poll scans the jobs table (48 ms of server CPU at 200,000 jobs): a 10 s drain at a
    steady rate is asked 7 times (it was 51 at one poll per 0.2 s), never less than 0.2 s nor
    more than 2 s apart, and a dead job still stops the wait at the next poll."""
    import pgqueue.bench as bench

    clock = FakeTime(now=1000.0)
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "say", lambda message: None)
    count, rate, started = 200_000, 20_000.0, clock.now
    polls: list[float] = []

    def progress(_url: str, _sql: str, _params: dict[str, str]) -> list[tuple[int, int]]:
        polls.append(clock.now)
        return [(min(count, int((clock.now - started) * rate)), 0)]

    bench.wait_for_jobs("unused", _NoWorkers(), "bench_noop", count, "drain", timeout=60, execute=progress)  # type: ignore[arg-type]
    assert len(polls) == 7, [round(t - started, 2) for t in polls]
    assert polls[-1] - started == pytest.approx(10.0)
    assert all(bench.POLL_MIN_SECONDS <= s <= bench.POLL_MAX_SECONDS for s in clock.slept), clock.slept

    def one_dead(_url: str, _sql: str, _params: dict[str, str]) -> list[tuple[int, int]]:
        return [(int((clock.now - started) * rate), 1 if clock.now - started > 12 else 0)]

    with pytest.raises(bench.BenchError, match="1 job"):
        bench.wait_for_jobs("unused", _NoWorkers(), "bench_noop", 10 * count, "drain", timeout=60, execute=one_dead)
