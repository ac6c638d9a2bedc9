"""The SSE latency bench end to end, small: a real app process, raw SSE clients, real events."""

from __future__ import annotations

import math

from app.bench.sse import render, run_sse_bench


def test_sse_bench_delivers_every_event_to_every_client_once(db_url: str) -> None:
    result = run_sse_bench(db_url, clients=20, events=10, rate=50)
    assert result["deliveries"] == result["deliveries_expected"] == 200
    assert result["duplicates"] == 0
    assert result["listen_connections"] == 1
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert not math.isnan(latency["p99"])
    table = render(result)
    assert "200 of 200, no duplicates" in table and "latency p99" in table
