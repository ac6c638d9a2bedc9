"""The one outbound HTTP client of the app (API ingest, webhook delivery), on urllib3.

    client = OutboundClient(connect_timeout=5, read_timeout=30, deadline=60)
    response = client.request("GET", "https://api.example.com/events?limit=1000",
                              headers={"X-API-Key": key})
    response.status, response.headers["content-type"], response.body      # bytes, gunzipped
    response.json()                                                         # msgspec-decoded

    client.request("POST", url, body=payload, headers=..., retry=NO_RETRY)  # one attempt only
    client.close()

API (stable; everything else is private):

- ``OutboundClient(*, pool_size=10, connect_timeout=5.0, read_timeout=30.0, deadline=120.0,
  retry=RetryPolicy(), pacer=None, metrics=None, max_body_bytes=256 MiB, user_agent=...)``.
  Thread-safe: share one per API (its keep-alive pool and its pacer are per client).
- ``request(method, url, *, headers=None, body=None, timeout=None, retry=None, validate=None,
  rate_key=None, cancel=None, connect_to=None) -> Response``. ``timeout`` is the total deadline of this call in
  seconds (every attempt, backoff and rate-limit wait included; default: the client's
  ``deadline``); ``body`` is bytes or str; ``validate(response)`` may raise `BadResponse` to have
  an answer that looks fine but is not (a JSON body that does not parse, fewer items than the
  response announced) retried like a truncated body; ``rate_key`` names the pacer's bucket (default:
  scheme://host:port); ``cancel`` (a threading.Event) cuts every wait short; ``connect_to`` (an
  IP address) connects there instead of resolving the URL's host again, while the Host header,
  TLS SNI and the certificate check still use the host name (webhooks: the address that was
  checked is the address reached, so DNS rebinding cannot redirect the request).
- ``ca_certs`` (constructor): a CA bundle file to verify https servers with instead of the
  system's.
- ``Response(status, headers, body, url, attempts, elapsed)`` with ``json()`` and ``text()``;
  ``headers`` is case-insensitive.
- ``RetryPolicy(attempts=5, backoff_base=0.25, backoff_max=30.0, rate_limited_attempts=20,
  max_retry_after=300.0)``; ``NO_RETRY`` = one attempt, and every HTTP answer (5xx and 429
  included) is returned as it is: webhook delivery retries through the job engine instead.
- ``OutboundMetrics``: thread-safe counters (``snapshot()`` -> dict) of requests, responses, retries
  by reason, 429s, seconds waited on backoff / Retry-After / the pacer, bytes received, failures.
- Errors (all `OutboundError`): `TransportError` (no usable answer: refused, reset, timed out,
  cut off, undecodable gzip; ``.reason``), `RequestFailed` (retries used up; ``.response`` is the
  last answer when there was one, ``.reason`` says why), `DeadlineExceeded` (the total deadline
  passed, or a Retry-After / pacer wait would pass it; ``.retry_after`` when the server set one).

Retried (with ``retry`` > 1 attempt): connection errors and timeouts, 5xx, a body shorter than
its Content-Length or not decodable, `BadResponse` from ``validate``: exponential backoff
(base * 2**n, capped) with jitter (50-100 % of it). 429: waits Retry-After (seconds or HTTP
date; else the backoff), tells the pacer so no other request on that key goes out meanwhile,
and counts against ``rate_limited_attempts``, not ``attempts``. Other 4xx and 3xx are answers:
returned, never retried (redirects are not followed: a webhook must not be bounced to an
address nobody vetted).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from app.outbound.pacing import Pacer, PacerDeadline, parse_retry_after

DEFAULT_USER_AGENT = "pgqueue-app/0.1 (+urllib3)"
READ_CHUNK = 256 * 1024


class OutboundError(Exception):
    """Base of the client's errors."""


class TransportError(OutboundError):
    """No usable answer: connection refused/reset, timeout, a body cut short or undecodable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadResponse(OutboundError):
    """Raised by a ``validate`` callback: the answer is broken (retry it like a truncated body)."""


class RequestFailed(OutboundError):
    """Every allowed attempt failed; ``response`` is the last answer when there was one."""

    def __init__(self, reason: str, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


class DeadlineExceeded(OutboundError):
    """The call's total deadline passed (or a wait the server asked for would pass it)."""

    def __init__(self, reason: str, retry_after: float | None = None, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.response = response


class Response(msgspec.Struct):
    status: int
    headers: Any  # urllib3.HTTPHeaderDict: a case-insensitive Mapping[str, str]
    body: bytes
    url: str = ""
    attempts: int = 1
    elapsed: float = 0.0

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def text(self, errors: str = "replace") -> str:
        return self.body.decode("utf-8", errors)


class RetryPolicy(msgspec.Struct, frozen=True):
    attempts: int = 5  # attempts in all for errors and 5xx (1 = no retry)
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    rate_limited_attempts: int = 20  # 429s tolerated in one call before giving up
    max_retry_after: float = 300.0  # a longer Retry-After fails the call instead of sleeping

    def backoff(self, retry_number: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(retry_number - 1, 0))
        return delay * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(attempts=1, rate_limited_attempts=0)


class OutboundMetrics:
    """Counters of one client (or of everything sharing it), thread-safe."""

    NAMES = ("requests", "responses", "retries", "retries_connection", "retries_5xx", "retries_bad_body",
             "rate_limited", "retry_wait_seconds", "rate_limit_wait_seconds", "pacer_waits",
             "pacer_wait_seconds", "bytes_received", "failures")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


def _rate_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class OutboundClient:
    def __init__(self, *, pool_size: int = 10, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 deadline: float = 120.0, retry: RetryPolicy | None = None, pacer: Pacer | None = None,
                 metrics: OutboundMetrics | None = None, max_body_bytes: int = 256 * 1024 * 1024,
                 user_agent: str = DEFAULT_USER_AGENT, ca_certs: str | None = None) -> None:
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout),
                            ("deadline", deadline)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.pacer = pacer
        self.metrics = metrics or OutboundMetrics()
        self.max_body_bytes = max_body_bytes
        self.user_agent = user_agent
        # retries=False: we retry ourselves (with the deadline, the pacer and the metrics);
        # block=False: a burst past pool_size opens extra connections instead of waiting
        tls = {"ca_certs": ca_certs} if ca_certs else {}
        self._pool = urllib3.PoolManager(num_pools=16, maxsize=pool_size, block=False, retries=False, **tls)

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> OutboundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | str | None = None, timeout: float | None = None, retry: RetryPolicy | None = None,
                validate: Callable[[Response], None] | None = None, rate_key: str | None = None,
                cancel: threading.Event | None = None, connect_to: str | None = None) -> Response:
        policy = retry or self.retry
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else self.deadline)
        key = rate_key or _rate_key(url)
        send_headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip"}
        if headers:
            send_headers.update(headers)
        payload = body.encode() if isinstance(body, str) else body
        failures = 0
        rate_limited = 0
        attempts = 0
        last: Response | None = None
        reason = ""
        while True:
            if cancel is not None and cancel.is_set():
                raise DeadlineExceeded("cancelled", response=last)
            ticket = None
            if self.pacer is not None:
                try:
                    ticket = self.pacer.acquire(key, deadline, cancel)
                except PacerDeadline as exc:
                    raise DeadlineExceeded(str(exc), retry_after=exc.wait, response=last) from None
                if ticket.waited > 0:
                    self.metrics.add("pacer_waits")
                    self.metrics.add("pacer_wait_seconds", ticket.waited)
            attempts += 1
            self.metrics.add("requests")
            try:
                response = self._attempt(method, url, send_headers, payload, deadline, connect_to)
            except TransportError as exc:
                if ticket is not None:
                    self.pacer.observe(ticket, None)  # type: ignore[union-attr]
                reason = exc.reason
                failures += 1
                if failures >= policy.attempts:
                    self.metrics.add("failures")
                    if policy.attempts == 1:
                        raise
                    raise RequestFailed(f"{reason} (after {attempts} attempts)", last) from exc
                self._pause(policy.backoff(failures), "retries_connection", "retry_wait_seconds", deadline,
                            cancel, reason, last)
                continue
            if ticket is not None:
                self.pacer.observe(ticket, response.headers)  # type: ignore[union-attr]
            response.attempts = attempts
            response.elapsed = time.monotonic() - started
            self.metrics.add("responses")
            self.metrics.add("bytes_received", len(response.body))
            last = response
            if policy.attempts == 1 and policy.rate_limited_attempts == 0:
                # no retries at all: every answer goes back as it is (webhooks decide for themselves)
                if validate is not None and 200 <= response.status < 300:
                    try:
                        validate(response)
                    except BadResponse as exc:
                        self.metrics.add("failures")
                        raise RequestFailed(f"bad response: {exc}", response) from exc
                return response
            if response.status == 429:
                rate_limited += 1
                self.metrics.add("rate_limited")
                wait = parse_retry_after(response.headers.get("retry-after"))
                if wait is None:
                    wait = policy.backoff(rate_limited)
                if self.pacer is not None:
                    self.pacer.block(key, wait)
                if rate_limited > policy.rate_limited_attempts:
                    self.metrics.add("failures")
                    raise RequestFailed(f"HTTP 429 {rate_limited} times in a row", response)
                if wait > policy.max_retry_after:
                    self.metrics.add("failures")
                    raise DeadlineExceeded(f"Retry-After of {wait:.0f} s is longer than {policy.max_retry_after:.0f} s",
                                           retry_after=wait, response=response)
                if self.pacer is not None:
                    continue  # the pacer holds every request on this key, this one included
                self._pause(wait, None, "rate_limit_wait_seconds", deadline, cancel, "HTTP 429", response,
                            retry_after=wait)
                continue
            reason = ""
            retry_counter = None
            if response.status >= 500:
                reason, retry_counter = f"HTTP {response.status}", "retries_5xx"
            elif validate is not None and 200 <= response.status < 300:
                try:
                    validate(response)
                except BadResponse as exc:
                    reason, retry_counter = f"bad response: {exc}", "retries_bad_body"
            if retry_counter is None:
                return response
            failures += 1
            if failures >= policy.attempts:
                self.metrics.add("failures")
                raise RequestFailed(f"{reason} (after {attempts} attempts)", response)
            self._pause(policy.backoff(failures), retry_counter, "retry_wait_seconds", deadline, cancel, reason,
                        response)

    def _pause(self, seconds: float, counter: str | None, wait_counter: str, deadline: float,
               cancel: threading.Event | None, reason: str, last: Response | None,
               retry_after: float | None = None) -> None:
        if time.monotonic() + seconds > deadline:
            self.metrics.add("failures")
            raise DeadlineExceeded(f"{reason}; the request's deadline passed before the next attempt",
                                   retry_after=retry_after, response=last)
        if counter is not None:
            self.metrics.add("retries")
            self.metrics.add(counter)
        self.metrics.add(wait_counter, seconds)
        if cancel is not None:
            cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def _pinned(self, url: str, address: str,
                headers: dict[str, str]) -> tuple[Any, str, dict[str, str]]:
        """The pool that connects to ``address`` for ``url``, the request target, and headers
        with the URL's Host. For https the pool's TLS name is the URL's host, so SNI and the
        certificate check are those of the name, not of the address."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"cannot pin a connection for {url[:100]!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        tls = {"server_hostname": parts.hostname, "assert_hostname": parts.hostname} if parts.scheme == "https" else {}
        pool = self._pool.connection_from_host(address.strip("[]"), port, parts.scheme, pool_kwargs=tls)
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        return pool, target, {**headers, "Host": parts.netloc.rpartition("@")[2]}

    def _attempt(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                 deadline: float, connect_to: str | None = None) -> Response:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError("the request's deadline passed")
        timeout = urllib3.Timeout(connect=min(self.connect_timeout, left), read=min(self.read_timeout, left))
        try:
            if connect_to is None:
                raw = self._pool.request(method, url, body=body, headers=headers, timeout=timeout,
                                         preload_content=False, decode_content=True, redirect=False, retries=False)
            else:
                pool, target, headers = self._pinned(url, connect_to, headers)
                raw = pool.urlopen(method, target, body=body, headers=headers, timeout=timeout,
                                   preload_content=False, decode_content=True, redirect=False, retries=False,
                                   assert_same_host=False)
        except Urllib3Error as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        try:
            chunks: list[bytes] = []
            size = 0
            while True:
                # read in chunks so a body that trickles in cannot outlive the deadline
                chunk = raw.read(READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise TransportError(f"response body over {self.max_body_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TransportError("the request's deadline passed while reading the body")
            # urllib3 2 checks Content-Length itself (enforce_content_length): a short body raises
            # ProtocolError/IncompleteRead above, never a silent short read
            return Response(status=raw.status, headers=raw.headers, body=b"".join(chunks), url=url)
        except TransportError:
            raw.close()  # the connection holds an unread body: not reusable
            raise
        except (Urllib3Error, OSError) as exc:
            raw.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        finally:
            raw.release_conn()
