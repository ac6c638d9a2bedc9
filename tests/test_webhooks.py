"""Webhook delivery: Standard Webhooks signatures (pgqueue/webhooks.py), the URL guard, and the
``webhook`` kind (app/kinds/webhooks.py) delivering through a real worker to a real local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from app.kinds.webhooks import (
    UnsafeWebhookUrl,
    refusal_reason,
    resolve_webhook_url,
    webhook_jobs,
)
from app.settings import AppSettings
from pgqueue import ConfigError
from pgqueue.queue import Queue
from pgqueue.webhooks import (
    WebhookVerificationError,
    new_webhook_secret,
    sign_webhook,
    verify_webhook,
    webhook_headers,
)
from tests.engine_fixtures import fast_settings, fetch, running_worker, wait_for_status
from tests.helpers import wait_for
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

# The Standard Webhooks reference libraries' test vector (their test_sign_function)
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = new_webhook_secret()


# -- signatures ------------------------------------------------------------------------------------

def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert sign_webhook(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    # the whsec_ prefix is optional, and bytes bodies sign alike
    assert sign_webhook(VECTOR_SECRET.removeprefix("whsec_"), VECTOR_ID, VECTOR_TIMESTAMP,
                        VECTOR_BODY.encode()) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": VECTOR_SIGNATURE}
    assert verify_webhook(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10) == VECTOR_ID


def test_round_trip_and_tampering_refused() -> None:
    body = b'{"event":"invoice.paid","amount":12}'
    headers = webhook_headers([SECRET], "msg_42", body)
    assert set(headers) == {"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"}
    assert verify_webhook(SECRET, headers, body) == "msg_42"
    # header names in any case (a plain dict, as some frameworks hand them over)
    assert verify_webhook(SECRET, {k.upper(): v for k, v in headers.items()}, body) == "msg_42"

    with pytest.raises(WebhookVerificationError, match="no Webhook-Signature matches"):
        verify_webhook(SECRET, headers, body.replace(b"12", b"13"))
    with pytest.raises(WebhookVerificationError, match="no Webhook-Signature matches"):
        verify_webhook(SECRET, {**headers, "Webhook-Timestamp": str(int(headers["Webhook-Timestamp"]) - 1)}, body)
    with pytest.raises(WebhookVerificationError, match="no Webhook-Signature matches"):
        verify_webhook(SECRET, {**headers, "Webhook-Id": "msg_43"}, body)
    with pytest.raises(WebhookVerificationError, match="no Webhook-Signature matches"):
        verify_webhook(new_webhook_secret(), headers, body)
    for missing in headers:
        with pytest.raises(WebhookVerificationError, match=f"missing {missing.lower()}"):
            verify_webhook(SECRET, {k: v for k, v in headers.items() if k != missing}, body)
    with pytest.raises(WebhookVerificationError, match="not a number"):
        verify_webhook(SECRET, {**headers, "Webhook-Timestamp": "hello"}, body)


def test_old_and_future_timestamps_refused() -> None:
    body = b"{}"
    now = time.time()
    old = webhook_headers([SECRET], "msg_1", body, timestamp=int(now) - 301)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, old, body, now=now)
    future = webhook_headers([SECRET], "msg_1", body, timestamp=int(now) + 301)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(SECRET, future, body, now=now)
    # within the tolerance, and a wider tolerance when the receiver asks for it
    assert verify_webhook(SECRET, webhook_headers([SECRET], "msg_1", body, timestamp=int(now) - 299), body, now=now)
    assert verify_webhook(SECRET, old, body, now=now, tolerance_seconds=600)


def test_several_signatures_for_a_rotation() -> None:
    old_secret, new_secret = new_webhook_secret(), new_webhook_secret()
    body = b'{"a":1}'
    headers = webhook_headers([new_secret, old_secret], "msg_7", body)
    assert len(headers["Webhook-Signature"].split()) == 2
    assert verify_webhook(old_secret, headers, body) == "msg_7"  # a receiver not yet rotated
    assert verify_webhook(new_secret, headers, body) == "msg_7"  # one already rotated
    assert verify_webhook([new_webhook_secret(), old_secret], headers, body) == "msg_7"
    # signatures of other schemes or versions are skipped, not failed on (the reference libraries' case)
    vector = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": " ".join([
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        VECTOR_SIGNATURE, "v1a,bm90IGEgc2lnbmF0dXJl"])}
    assert verify_webhook(VECTOR_SECRET, vector, VECTOR_BODY, now=VECTOR_TIMESTAMP) == VECTOR_ID
    only_others = {**vector, "webhook-signature": "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(VECTOR_SECRET, only_others, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_bad_secrets_and_ids_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        sign_webhook("whsec_not base64!", "msg_1", 1, b"")
    with pytest.raises(ValueError, match=r"no '\.'"):
        sign_webhook(SECRET, "msg.1", 1, b"")
    with pytest.raises(ConfigError, match="APP_WEBHOOK_SECRET"):
        AppSettings(webhook_secret="whsec_ok== not-a-secret!")
    with pytest.raises(ConfigError, match="APP_WEBHOOK_ALLOW_HOSTS"):
        AppSettings(webhook_allow_hosts="good.example, bad host")
    settings = AppSettings(webhook_secret=f"{SECRET} {VECTOR_SECRET}", webhook_allow_hosts="127.0.0.1, Receiver.Local.")
    assert settings.webhook_secrets() == [SECRET, VECTOR_SECRET]
    assert settings.webhook_allowed_hosts() == {"127.0.0.1", "receiver.local"}


# -- the URL guard ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("100.64.0.1", "private"),  # carrier-grade NAT: not global
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
])
def test_refused_addresses(address: str, kind: str) -> None:
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason
    with pytest.raises(UnsafeWebhookUrl, match=kind):
        resolve_webhook_url(f"http://[{address}]/hook" if ":" in address else f"http://{address}/hook")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    url = f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook"
    assert resolve_webhook_url(url).addresses == (str(ipaddress.ip_address(address)),)


@pytest.mark.parametrize("url, message", [
    ("ftp://example.com/", "http:// or https://"), ("example.com/hook", "http:// or https://"),
    ("http:///path", "no host"), ("http://user:pw@8.8.8.8/", "credentials"),
    ("http://8.8.8.8:99999/", "not a valid URL"), ("http://8.8.8.8/a b", "without spaces"),
    ("http://localhost:8000/", "localhost resolves to 127.0.0.1, a loopback"),
    ("http://0x7f000001/", "loopback"),  # the resolver reads hex and decimal forms as IPv4
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match=message):
        resolve_webhook_url(url)


def test_allow_list_by_host_address_or_network() -> None:
    assert resolve_webhook_url("http://127.0.0.1:9/", ["127.0.0.1"]).host == "127.0.0.1"
    assert resolve_webhook_url("http://LOCALHOST./", ["localhost"]).addresses[0] == "127.0.0.1"
    assert resolve_webhook_url("http://10.9.8.7/", ["10.0.0.0/8"]).port == 80
    assert resolve_webhook_url("http://[::ffff:127.0.0.1]/", ["127.0.0.0/8"]).host == "::ffff:127.0.0.1"
    with pytest.raises(UnsafeWebhookUrl):
        resolve_webhook_url("http://10.9.8.7/", ["192.168.0.0/16", "other.example"])


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with a public and a private address is refused (the connection could take either)."""
    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "mixed.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:192.168.0.10", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(UnsafeWebhookUrl, match=r"mixed.example resolves to ::ffff:c0a8:a, a private"):
        resolve_webhook_url("https://mixed.example/hook")
    assert resolve_webhook_url("https://mixed.example/hook", ["mixed.example"]).addresses == (
        "93.184.216.34", "::ffff:192.168.0.10")


# -- delivery through a real worker ----------------------------------------------------------------

class Received(msgspec.Struct):
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers from a script per path:
    a list of (status, headers, body) used in turn (the last one repeats); status 0 means hang
    until the test ends (for timeouts)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.partition("?")[0]
                with receiver.lock:
                    receiver.received.append(Received(path, dict(self.headers.items()), body, time.time()))
                    script = receiver.scripts.get(path, [(200, {}, b'{"ok":true}')])
                    status, headers, answer = script.pop(0) if len(script) > 1 else script[0]
                if status == 0:
                    receiver.release.wait(30)
                    return
                self.send_response(status)
                for name, value in {"Content-Length": str(len(answer)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str, *answers: tuple[int, dict[str, str], bytes]) -> str:
        self.scripts[path] = list(answers) or [(200, {}, b"")]
        return self.url(path)

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("APP_WEBHOOK_ALLOW_HOSTS", "127.0.0.1,localhost")


@pytest.fixture
async def webhook_queue(db_url: str, webhook_env: None) -> AsyncIterator[Queue]:
    queue = await Queue.connect(db_url, webhook_jobs, settings=fast_settings(db_url), max_size=6)
    try:
        yield queue
    finally:
        await queue.close()


@contextlib.asynccontextmanager
async def worker_for(queue: Queue) -> AsyncIterator[Any]:
    async with running_worker(queue, ("webhooks",), 4) as worker:
        yield worker


async def make_due(queue: Queue, job_id: int) -> None:
    """Bring a scheduled retry forward (the test does not wait out a backoff)."""
    await fetch(queue, "UPDATE pgqueue.jobs SET run_at = now() WHERE id = %s", (job_id,))
    await fetch(queue, "SELECT pg_notify('pgqueue_jobs', 'webhooks')")


async def test_delivery_is_signed_and_verifiable(webhook_queue: Queue, receiver: Receiver) -> None:
    url = receiver.on("/ok", (200, {"Content-Type": "text/plain"}, b"thanks"))
    body = {"type": "invoice.paid", "data": {"id": "inv_1", "amount": 1250, "note": "caf\u00e9"}}
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": url, "body": body})
        done = await wait_for_status(webhook_queue, job.id, "succeeded", "failed", "dead")
    assert done.status == "succeeded", done.last_error
    [request] = receiver.requests_to("/ok")
    assert request.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(request.body) == body
    assert verify_webhook(SECRET, request.headers, request.body) == f"msg_{job.id}"
    assert done.result is not None
    assert done.result["status"] == 200 and done.result["response_excerpt"] == "thanks"
    assert done.result["webhook_id"] == f"msg_{job.id}"


async def test_a_host_name_is_pinned_to_the_checked_address(webhook_queue: Queue, receiver: Receiver) -> None:
    """http://localhost:port is sent to the address that was checked, with the name as Host."""
    receiver.on("/named")
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": receiver.url("/named", "localhost"), "body": [1, 2]})
        done = await wait_for_status(webhook_queue, job.id, "succeeded", "failed", "dead")
    assert done.status == "succeeded", done.last_error
    [request] = receiver.requests_to("/named")
    assert request.headers["Host"] == f"localhost:{receiver.port}"
    assert verify_webhook(SECRET, request.headers, request.body) == f"msg_{job.id}"


async def slots_freed(worker: Any) -> None:
    """Fails unless the worker holds no job within 5 s: a failed attempt's slot is given back when
    its task ends, just after the failure's commit that wait_for_status saw (asserting at once
    raced that last step), and long before the retry delay."""
    async def freed() -> bool:
        return not worker.running
    await wait_for(freed, timeout=5.0, message="the failed attempt's slot to be given back")


async def test_500_is_retried_with_backoff_then_succeeds(webhook_queue: Queue, receiver: Receiver) -> None:
    url = receiver.on("/flaky", (500, {}, b"<html>oops</html>"), (200, {}, b"ok"))
    async with worker_for(webhook_queue) as worker:
        job = await webhook_queue.enqueue("webhook", {"url": url, "body": {"n": 1}})
        failed = await wait_for_status(webhook_queue, job.id, "failed", "dead", "succeeded")
        assert failed.status == "failed"
        assert failed.last_error is not None and f"HTTP 500 from {url}: <html>oops</html>" in failed.last_error
        # the kind's backoff: 5 s +-25 % after the first attempt, and no slot held meanwhile
        [(wait,)] = await fetch(webhook_queue, "SELECT extract(epoch FROM run_at - updated_at) FROM pgqueue.jobs "
                                               "WHERE id = %s", (job.id,))
        assert 3.7 <= float(wait) <= 6.3
        await slots_freed(worker)
        await make_due(webhook_queue, job.id)
        done = await wait_for_status(webhook_queue, job.id, "succeeded", "dead")
    assert done.status == "succeeded" and done.attempts == 2
    first, second = receiver.requests_to("/flaky")
    # one id for every attempt (the receiver's idempotency key); each attempt signed anew
    assert first.headers["Webhook-Id"] == second.headers["Webhook-Id"] == f"msg_{job.id}"
    assert verify_webhook(SECRET, second.headers, second.body)


@pytest.mark.parametrize("retry_after", ["120", "http-date"])
async def test_429_with_retry_after_reschedules_without_holding_a_slot(webhook_queue: Queue, receiver: Receiver,
                                                                       retry_after: str) -> None:
    if retry_after == "http-date":
        from email.utils import formatdate

        retry_after = formatdate(time.time() + 120, usegmt=True)
    url = receiver.on("/busy", (429, {"Retry-After": retry_after}, b"slow down"), (200, {}, b""))
    async with worker_for(webhook_queue) as worker:
        job = await webhook_queue.enqueue("webhook", {"url": url, "body": {}})
        failed = await wait_for_status(webhook_queue, job.id, "failed", "dead", "succeeded")
        assert failed.status == "failed" and failed.attempts == 1
        assert failed.last_error is not None and "HTTP 429" in failed.last_error and "Retry-After" in failed.last_error
        [(wait, token)] = await fetch(webhook_queue, "SELECT extract(epoch FROM run_at - updated_at), lease_token "
                                                     "FROM pgqueue.jobs WHERE id = %s", (job.id,))
        assert 115 <= float(wait) <= 121  # the receiver's delay, not the kind's 5 s backoff
        assert token is None and not worker.running  # released: no slot waits out the 2 minutes
        await make_due(webhook_queue, job.id)
        done = await wait_for_status(webhook_queue, job.id, "succeeded", "dead")
    assert done.status == "succeeded" and len(receiver.requests_to("/busy")) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
async def test_client_errors_are_dead_at_once_with_the_status(webhook_queue: Queue, receiver: Receiver,
                                                              status: int) -> None:
    path = f"/refuse{status}"
    url = receiver.on(path, (status, {"Location": "http://127.0.0.1:1/"} if status == 301 else {},
                             b'{"error":"no such hook"}'))
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": url + "?token=secret", "body": {}})
        dead = await wait_for_status(webhook_queue, job.id, "dead", "failed", "succeeded")
    assert dead.status == "dead" and dead.attempts == 1
    assert dead.last_error is not None and f"HTTP {status} from {url}" in dead.last_error
    assert "token=secret" not in dead.last_error  # the query string is kept out of errors
    assert len(receiver.requests_to(path)) == 1  # never followed, never retried


async def test_private_urls_refused_at_delivery_without_the_allow_list(webhook_queue: Queue, receiver: Receiver,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_WEBHOOK_ALLOW_HOSTS")
    async with worker_for(webhook_queue):
        jobs = [await webhook_queue.enqueue("webhook", {"url": url, "body": {}}) for url in (
            receiver.url("/private"), receiver.url("/private", "localhost"), f"http://[::ffff:127.0.0.1]:{receiver.port}/private")]
        dead = [await wait_for_status(webhook_queue, job.id, "dead", "failed", "succeeded") for job in jobs]
    assert [job.status for job in dead] == ["dead"] * 3
    assert all(job.last_error is not None and "loopback" in job.last_error for job in dead)
    assert receiver.requests_to("/private") == []


async def test_no_secret_is_dead_with_a_clear_error(webhook_queue: Queue, receiver: Receiver,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_WEBHOOK_SECRET")
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": receiver.url("/unsigned"), "body": {}})
        dead = await wait_for_status(webhook_queue, job.id, "dead", "failed", "succeeded")
    assert dead.status == "dead" and dead.last_error is not None and "APP_WEBHOOK_SECRET" in dead.last_error
    assert receiver.requests_to("/unsigned") == []


async def test_timeout_fails_the_attempt_for_a_retry(webhook_queue: Queue, receiver: Receiver) -> None:
    url = receiver.on("/hang", (0, {}, b""))
    async with worker_for(webhook_queue) as worker:
        job = await webhook_queue.enqueue("webhook", {"url": url, "body": {}, "timeout_seconds": 0.3})
        failed = await wait_for_status(webhook_queue, job.id, "failed", "dead", "succeeded")
        await slots_freed(worker)
    assert failed.status == "failed" and failed.last_error is not None
    assert "timed out" in failed.last_error.lower() and "timeout 0.3 s" in failed.last_error
    assert len(receiver.requests_to("/hang")) == 1


async def test_refused_connection_is_retried(webhook_queue: Queue) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": f"http://127.0.0.1:{port}/", "body": {}})
        failed = await wait_for_status(webhook_queue, job.id, "failed", "dead", "succeeded")
    assert failed.status == "failed" and failed.last_error is not None and "POST http://127.0.0.1" in failed.last_error



async def test_several_secrets_sign_every_delivery_for_a_rotation(webhook_queue: Queue, receiver: Receiver,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """APP_WEBHOOK_SECRET="new old": one v1 signature per secret, so receivers verify with either."""
    old_secret, new_secret = SECRET, new_webhook_secret()
    monkeypatch.setenv("APP_WEBHOOK_SECRET", f"{new_secret} {old_secret}")
    url = receiver.on("/rotating")
    async with worker_for(webhook_queue):
        job = await webhook_queue.enqueue("webhook", {"url": url, "body": {"n": 1}})
        done = await wait_for_status(webhook_queue, job.id, "succeeded", "failed", "dead")
    assert done.status == "succeeded", done.last_error
    [request] = receiver.requests_to("/rotating")
    assert [sig.partition(",")[0] for sig in request.headers["Webhook-Signature"].split()] == ["v1", "v1"]
    for secrets in ([old_secret], [new_secret], [new_webhook_secret(), old_secret]):
        assert verify_webhook(secrets, request.headers, request.body) == f"msg_{job.id}"
    with pytest.raises(WebhookVerificationError):
        verify_webhook([new_webhook_secret()], request.headers, request.body)


def _certificate(directory: Any, name: str) -> tuple[str, str]:
    """A self-signed certificate (and its key) for the DNS name ``name``."""
    cert, key = str(directory / f"{name}.crt"), str(directory / f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def _rebinding_dns(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[list[str]]:
    """``name`` resolves to 127.0.0.1 while the URL guard checks it, and to a private address
    (10.255.255.1, refused and unroutable) for anyone else: DNS rebinding with TTL 0. Yields
    the lookups made outside the check (a pinned connection makes none)."""
    import app.kinds.webhooks as webhooks_module

    real_getaddrinfo, checking, elsewhere = socket.getaddrinfo, threading.local(), []
    check = webhooks_module.resolve_webhook_url

    def resolve_and_check(*args: Any, **kwargs: Any) -> Any:
        checking.on = True
        try:
            return check(*args, **kwargs)
        finally:
            checking.on = False

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real_getaddrinfo(host, port, *args, **kwargs)
        if not getattr(checking, "on", False):
            elsewhere.append(host)
        address = "127.0.0.1" if getattr(checking, "on", False) else "10.255.255.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(webhooks_module, "resolve_webhook_url", resolve_and_check)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield elsewhere


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_checked_address_is_the_one_connected_to_despite_dns_rebinding(
        webhook_queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, scheme: str) -> None:
    """The guard resolves the host once and the request goes to that address (allowed here:
    127.0.0.1), though the name now resolves to a private one; for https the TLS handshake
    still names the host (SNI) and the certificate is checked against the host name."""
    import ssl

    import app.kinds.webhooks as webhooks_module
    from app.outbound import NO_RETRY, OutboundClient

    name = "rebind.test"
    server = Receiver()
    server_names: list[str | None] = []
    if scheme == "https":
        cert, key = _certificate(tmp_path, name)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        tls.sni_callback = lambda _sock, server_name, _ctx: server_names.append(server_name)
        server.server.socket = tls.wrap_socket(server.server.socket, server_side=True)
        client = OutboundClient(retry=NO_RETRY, ca_certs=cert)  # trusts our test certificate
        monkeypatch.setattr(webhooks_module, "_clients", [client])
    server.on("/pinned")
    server.thread.start()
    try:
        with _rebinding_dns(monkeypatch, name) as lookups_elsewhere:
            async with worker_for(webhook_queue):
                job = await webhook_queue.enqueue("webhook", {
                    "url": f"{scheme}://{name}:{server.port}/pinned", "body": {"x": 1}, "timeout_seconds": 5})
                done = await wait_for_status(webhook_queue, job.id, "succeeded", "failed", "dead")
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
    assert done.status == "succeeded", done.last_error
    assert lookups_elsewhere == []  # nobody resolved the name again after the check
    [request] = server.requests_to("/pinned")
    assert request.headers["Host"] == f"{name}:{server.port}"
    assert verify_webhook(SECRET, request.headers, request.body) == f"msg_{job.id}"
    if scheme == "https":
        assert server_names == [name]


async def test_a_pinned_https_connection_still_checks_the_certificate_name(
        webhook_queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Connecting to the checked address does not relax TLS: a certificate for another name fails."""
    import ssl

    import app.kinds.webhooks as webhooks_module
    from app.outbound import NO_RETRY, OutboundClient

    cert, key = _certificate(tmp_path, "other.test")
    server = Receiver()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.server.socket = tls.wrap_socket(server.server.socket, server_side=True)
    monkeypatch.setattr(webhooks_module, "_clients", [OutboundClient(retry=NO_RETRY, ca_certs=cert)])
    server.thread.start()
    try:
        with _rebinding_dns(monkeypatch, "rebind.test"):
            async with worker_for(webhook_queue):
                job = await webhook_queue.enqueue("webhook", {
                    "url": f"https://rebind.test:{server.port}/x", "body": {}, "timeout_seconds": 5})
                failed = await wait_for_status(webhook_queue, job.id, "failed", "dead", "succeeded")
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
    assert failed.status == "failed" and failed.last_error is not None
    assert "certificate" in failed.last_error.lower() or "hostname" in failed.last_error.lower(), failed.last_error
    assert server.requests_to("/x") == []

# -- REST ------------------------------------------------------------------------------------------

async def test_rest_webhooks_are_for_admins_and_urls_are_checked(start_server: Any, alice: ApiUser, admin: ApiUser,
                                                                 receiver: Receiver, webhook_env: None) -> None:
    server: LiveServer = start_server(webhook_allow_hosts="127.0.0.1")
    async with server.client(alice) as http:
        response = await http.post("/jobs", json={"kind": "webhook", "payload": {"url": receiver.url("/"), "body": {}}})
        assert response.status_code == 403, response.text
        assert "admins" in response.json()["error"]["message"]
    async with server.client(admin) as http:
        for url, message in [("http://10.1.2.3/hook", "10.1.2.3 is a private"),
                             ("http://[::1]:8000/hook", "::1 is a loopback"),
                             ("http://[::ffff:169.254.169.254]/", "link-local"),
                             ("gopher://example.com/", "http:// or https://"),
                             ("http://nothing.invalid/", "does not resolve")]:
            response = await http.post("/jobs", json={"kind": "webhook", "payload": {"url": url, "body": {}}})
            assert response.status_code == 422, (url, response.text)
            [detail] = response.json()["error"]["details"]
            assert detail["field"] == "payload.url" and message in detail["message"], detail
        response = await http.post("/jobs", json={"kind": "webhook", "payload": {"url": receiver.url("/"), "body": 1,
                                                                                 "timeout_seconds": 0}})
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "payload.timeout_seconds"
        response = await http.post("/jobs", json={"kind": "webhook", "priority": 4,
                                                  "payload": {"url": receiver.url("/rest"), "body": {"via": "rest"}}})
        assert response.status_code == 201, response.text
        assert response.json()["queue"] == "webhooks"
    [(count,)] = await asyncio.to_thread(_count_webhook_jobs, server.database_url)
    assert count == 1  # the refused ones wrote nothing


def _count_webhook_jobs(url: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE kind = 'webhook'").fetchall()


async def test_delivered_through_the_app_worker(start_server: Any, admin: ApiUser, receiver: Receiver,
                                                webhook_env: None) -> None:
    server: LiveServer = start_server(run_worker=True, worker_concurrency=4, worker_shutdown_grace=2.0,
                                      webhook_allow_hosts="127.0.0.1")
    async with server.client(admin) as http:
        response = await http.post("/jobs", json={"kind": "webhook",
                                                  "payload": {"url": receiver.url("/app"), "body": {"x": 1}}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        async def finished() -> dict[str, Any] | None:
            job = (await http.get(f"/jobs/{job_id}")).json()["job"]
            return job if job["status"] in ("succeeded", "dead", "failed") else None

        job = await wait_for(finished, message="the webhook job to finish")
    assert job["status"] == "succeeded", job
    [request] = receiver.requests_to("/app")
    assert verify_webhook(SECRET, request.headers, request.body) == f"msg_{job_id}"
    assert datetime.fromtimestamp(int(request.headers["Webhook-Timestamp"]), UTC).year >= 2024


def test_bench_runs_small(db_url: str) -> None:
    """The bench's machinery (worker process, receiver, figures) on a small round; no timing asserted."""
    from app.bench.webhooks import render, run_webhook_bench

    result = run_webhook_bench(db_url, deliveries=40, latency_deliveries=5, latency_rate=100, concurrency=4, rounds=1)
    [round_] = result["rounds"]
    assert round_["deliveries"] == 40 and round_["deliveries_per_s"] > 0
    assert 0 < round_["latency_p50_ms"] <= round_["latency_p99_ms"]
    assert "deliveries/s" in render(result)
