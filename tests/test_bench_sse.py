"""The SSE bench end to end, small: real app processes (`python -m app serve --workers N`), raw SSE
clients in client processes of their own, real events; what it reports must add up."""

from __future__ import annotations

import math

from app.bench.sse import Plan, render, run_sse_bench


def test_sse_bench_delivers_every_event_to_every_client_once_on_two_app_processes(db_url: str) -> None:
    # 30 clients: 6 on GET /events (every event), 24 spread over 3 jobs (8 each); 12 events,
    # 4 per job: each job client should get 4, each global client 12
    plan = Plan(clients=30, workers=2, jobs=3, global_share=0.2, events=12, rate=40, client_processes=2)
    result = run_sse_bench(db_url, [plan], rounds=1)
    scenario = result["scenarios"][plan.name]
    (round_,) = scenario["rounds"]
    assert round_["deliveries_expected"] == 24 * 4 + 6 * 12
    assert round_["deliveries"] == round_["deliveries_expected"], round_
    assert round_["lost"] == round_["duplicates"] == round_["misrouted"] == round_["client_errors"] == 0
    # one LISTEN connection per app process, seen in pg_stat_activity while emitting
    assert round_["listen_connections"]["hub_min"] == round_["listen_connections"]["hub_max"] == 2
    assert scenario["listen_connections_per_process"] == 1
    latency = round_["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert not math.isnan(latency["p99"])
    assert round_["server_rss_mib"]["before"] > 0 and round_["server_rss_mib"]["after"] > 0
    # CPU is read in clock ticks (10 ms): a 0.3 s emission may show 0 for the small client side
    assert round_["server_cpu_cores"] >= 0 and round_["client_cpu_cores"] >= 0
    assert len(round_["server_cpu_cores_per_process"]) == 3  # the supervisor and its two workers
    table = render(result)
    assert "lost / duplicates               0 / 0" in table and "latency p99" in table
