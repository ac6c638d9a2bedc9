"""The outbound HTTP client (app/outbound/): keep-alive, gzip, retries, 429, deadline, pacing.

A scripted stdlib HTTP server on 127.0.0.1 answers each request with the next behaviour of its
script; nothing here sleeps to wait (backoffs are set to a millisecond)."""

from __future__ import annotations

import gzip
import http.server
import itertools
import queue
import socket
import threading
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from app.outbound import (
    NO_RETRY,
    BadResponse,
    DeadlineExceeded,
    OutboundClient,
    Pacer,
    RequestFailed,
    RetryPolicy,
    TransportError,
    parse_rate_limit,
    parse_retry_after,
)
from tests.helpers import FakeTime

FAST = RetryPolicy(attempts=4, backoff_base=0.001, backoff_max=0.002)


class Scripted(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: queue.Queue[tuple] = queue.Queue()
        self.peers: list[tuple[str, int]] = []
        self.request_headers: list[dict[str, str]] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.peers.append(self.client_address)
        self.server.request_headers.append(dict(self.headers))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        try:
            action, *args = self.server.script.get_nowait()
        except queue.Empty:
            action, args = "ok", [b'{"ok": true}']
        if action == "ok":
            body, headers = args[0], (args[1] if len(args) > 1 else {})
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif action == "status":
            status, headers = args[0], (args[1] if len(args) > 1 else {})
            body = b"<html>error</html>"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif action == "gzip":
            body = gzip.compress(args[0])
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif action == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"data": [1, 2')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif action == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif action == "stall":
            self.server.release.wait(30)
            self.close_connection = True

    do_POST = do_GET  # noqa: N815


@pytest.fixture
def server() -> Iterator[Scripted]:
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def test_keep_alive_reuses_one_connection(server: Scripted) -> None:
    with OutboundClient() as client:
        for _ in range(3):
            assert client.request("GET", server.url + "/a").json() == {"ok": True}
    assert len({port for _, port in server.peers}) == 1


def test_gzip_is_asked_for_and_decoded(server: Scripted) -> None:
    server.script.put(("gzip", b'{"items": [1, 2, 3]}'))
    with OutboundClient() as client:
        response = client.request("GET", server.url)
    assert response.json() == {"items": [1, 2, 3]}
    assert "gzip" in server.request_headers[0]["Accept-Encoding"]


@pytest.mark.parametrize("fault", [("status", 503), ("status", 500), ("truncate",), ("drop",)])
def test_retries_connection_errors_5xx_and_truncated_bodies(server: Scripted, fault: tuple) -> None:
    server.script.put(fault)
    server.script.put(("ok", b'{"n": 1}'))
    with OutboundClient(retry=FAST) as client:
        response = client.request("GET", server.url)
        metrics = client.metrics.snapshot()
    assert response.json() == {"n": 1}
    assert response.attempts == 2
    assert metrics["retries"] == 1
    counter = "retries_5xx" if fault[0] == "status" else "retries_connection"
    assert metrics[counter] == 1


def test_gives_up_after_the_bounded_attempts(server: Scripted) -> None:
    for _ in range(4):
        server.script.put(("status", 502))
    with OutboundClient(retry=FAST) as client, pytest.raises(RequestFailed) as failed:
        client.request("GET", server.url)
    assert failed.value.response is not None and failed.value.response.status == 502
    assert "after 4 attempts" in failed.value.reason


def test_validate_retries_a_body_that_does_not_parse(server: Scripted) -> None:
    server.script.put(("ok", b'{"data": [1, 2'))  # complete per Content-Length, but not JSON
    server.script.put(("ok", b'{"data": [1, 2]}'))

    def must_parse(response):
        try:
            response.json()
        except Exception as exc:
            raise BadResponse(str(exc)) from exc

    with OutboundClient(retry=FAST) as client:
        assert client.request("GET", server.url, validate=must_parse).json() == {"data": [1, 2]}
        assert client.metrics.snapshot()["retries_bad_body"] == 1


@pytest.mark.parametrize("retry_after", ["0", formatdate(0, usegmt=True)])
def test_429_waits_retry_after_seconds_or_http_date(server: Scripted, retry_after: str) -> None:
    server.script.put(("status", 429, {"Retry-After": retry_after}))
    server.script.put(("ok", b"{}"))
    with OutboundClient(retry=FAST, pacer=Pacer()) as client:
        assert client.request("GET", server.url).status == 200
        metrics = client.metrics.snapshot()
    assert metrics["rate_limited"] == 1
    assert metrics["failures"] == 0


def test_a_retry_after_longer_than_allowed_fails_at_once(server: Scripted) -> None:
    server.script.put(("status", 429, {"Retry-After": "3600"}))
    with OutboundClient(retry=FAST) as client, pytest.raises(DeadlineExceeded) as exceeded:
        client.request("GET", server.url)
    assert exceeded.value.retry_after == 3600


def test_no_retry_returns_every_answer_as_it_is(server: Scripted) -> None:
    server.script.put(("status", 503))
    server.script.put(("status", 429, {"Retry-After": "7"}))
    server.script.put(("drop",))
    with OutboundClient() as client:
        assert client.request("POST", server.url, body=b"{}", retry=NO_RETRY).status == 503
        limited = client.request("POST", server.url, body="{}", retry=NO_RETRY)
        assert limited.status == 429 and limited.headers["retry-after"] == "7"
        with pytest.raises(TransportError):
            client.request("POST", server.url, body=b"{}", retry=NO_RETRY)
        assert client.metrics.snapshot()["retries"] == 0


def test_4xx_is_an_answer_not_a_retry(server: Scripted) -> None:
    server.script.put(("status", 401))
    with OutboundClient(retry=FAST) as client:
        assert client.request("GET", server.url).status == 401
        assert client.metrics.snapshot()["requests"] == 1


def test_a_stalled_response_is_cut_by_the_deadline(server: Scripted) -> None:
    server.script.put(("stall",))
    with OutboundClient(read_timeout=0.2, retry=NO_RETRY) as client, pytest.raises(TransportError) as failed:
        client.request("GET", server.url, timeout=0.3)
    assert "timed out" in failed.value.reason.lower() or "deadline" in failed.value.reason


def test_the_deadline_covers_every_attempt(server: Scripted) -> None:
    for _ in range(3):
        server.script.put(("status", 503))
    slow = RetryPolicy(attempts=10, backoff_base=5.0, backoff_max=5.0)
    with OutboundClient(retry=slow) as client, pytest.raises(DeadlineExceeded):
        client.request("GET", server.url, timeout=1.0)


# -- headers and the pacer ---------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "30"}, (100, 7, 30)),
    ({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": str(int(NOW) + 12)},
     (100, 7, 12)),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW * 1000) + 1500)}, (None, 0, 1.5)),
    ({"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "2"}, (10, 3, 2)),
    ({"RateLimit-Limit": "10, 10;w=1", "RateLimit-Remaining": "3", "RateLimit-Reset": "0.5"}, (10, 3, 0.5)),
    ({"RateLimit": "limit=50, remaining=20, reset=4"}, (50, 20, 4)),
])
def test_rate_limit_headers_in_every_form(headers: dict, expected: tuple) -> None:
    info = parse_rate_limit(headers, NOW)
    assert info is not None
    assert (info.limit, info.remaining, pytest.approx(info.reset_after)) == expected


def test_no_rate_limit_headers_means_none() -> None:
    assert parse_rate_limit({"Content-Type": "application/json"}, NOW) is None


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30)
    assert parse_retry_after("soon", NOW) is None


def test_pacer_spreads_the_quota_over_the_window() -> None:
    fake = FakeTime()
    pacer = Pacer(clock=fake.clock, wall=lambda: NOW + fake.now, sleep=fake.sleep)
    first = pacer.acquire("api")
    pacer.observe(first, {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "X-RateLimit-Reset": "1"})
    sent = []
    for _ in range(9):
        ticket = pacer.acquire("api")
        sent.append(fake.now)
        pacer.observe(ticket, None)
    # nine requests spread over the second the window has left, none past it, none bunched up
    assert sent[-1] < 1.0
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap == pytest.approx(1 / 9) for gap in gaps)
    # the quota is spent: the tenth waits for the reset
    pacer.acquire("api")
    assert fake.now >= 1.0


def test_pacer_counts_requests_in_flight_against_the_quota() -> None:
    fake = FakeTime()
    pacer = Pacer(clock=fake.clock, wall=lambda: NOW, sleep=fake.sleep)
    first = pacer.acquire("api")
    in_flight = [pacer.acquire("api") for _ in range(3)]  # sent before the first answer
    # the first answer says 3 left, but the three in flight will use them
    pacer.observe(first, {"RateLimit-Remaining": "3", "RateLimit-Reset": "5"})
    assert pacer.snapshot("api")["remaining"] == 0
    for ticket in in_flight:
        pacer.observe(ticket, None)


def test_pacer_block_holds_every_request_on_the_key() -> None:
    fake = FakeTime()
    pacer = Pacer(clock=fake.clock, sleep=fake.sleep)
    pacer.block("api", 2.5)
    pacer.acquire("api")
    assert fake.now >= 2.5
    pacer.acquire("other")  # another key is not held
    assert fake.now < 2.6
