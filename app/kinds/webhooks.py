"""Webhook delivery: the ``webhook`` job kind POSTs a JSON body to a URL, signed the Standard
Webhooks way (pgqueue/webhooks.py), through the app's outbound client; and the guard that keeps
webhooks off loopback, private and link-local addresses.

How an attempt ends
-------------------
- 2xx: succeeded; the result holds the status, a short excerpt of the response body, the
  ``Webhook-Id`` and the time the request took.
- 429, or a 5xx/408 with ``Retry-After``: ``RetryAfter`` -- the job is rescheduled for when the
  receiver asked (at least 1 s, at most a day); no slot waits in between. The attempt counts.
- 408, any other 5xx, a timeout, a refused or dropped connection, a DNS failure: an ordinary
  failure, retried with the kind's exponential backoff (5 s doubling up to an hour, 12 attempts).
- any other 4xx (400, 401, 404, 410 ...) and 3xx (redirects are not followed: update the URL):
  dead at once, the status and excerpt in the error. Retrying would get the same answer.
- a URL that is malformed or resolves to a refused address, or no APP_WEBHOOK_SECRET: dead at once.

The same ``Webhook-Id`` (``msg_<job id>``) is sent on every attempt, so the receiver can drop
repeats; the timestamp and signatures are made anew for each attempt, one ``v1`` signature per
secret in APP_WEBHOOK_SECRET (several during a rotation).

Before each attempt the host is resolved once and every address checked; the request then
connects to the first checked address (http and https alike; the Host header, TLS SNI and the
certificate check keep the host name), so DNS rebinding between check and connect cannot
reach an internal address.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import threading
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from app.outbound import NO_RETRY, OutboundClient, OutboundError, Response, parse_retry_after
from pgqueue import JobContext, JobRegistry, PermanentFailure, RetryAfter
from pgqueue.webhooks import webhook_headers

WEBHOOK_KIND = "webhook"
WEBHOOK_QUEUE = "webhooks"
# how much of a receiver's answer is kept in the job's result or error
EXCERPT_CHARS = 200
# bounds on a receiver's Retry-After: a zero would retry in a hot loop, a year would park the job
RETRY_AFTER_MIN_SECONDS = 1.0
RETRY_AFTER_MAX_SECONDS = 24 * 3600.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

webhook_jobs = JobRegistry()


class WebhookPayload(msgspec.Struct, forbid_unknown_fields=True):
    """A ``webhook`` job: POST ``body`` (any JSON) to ``url``."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048,
                                     description="http(s) URL of the receiver; loopback, private and link-local "
                                                 "addresses are refused unless APP_WEBHOOK_ALLOW_HOSTS names them")]
    body: Annotated[Any, msgspec.Meta(description="the JSON sent as the request body (and signed)")]
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300, description=(
        "for the whole request (connect, send, answer); default APP_WEBHOOK_TIMEOUT_SECONDS"))] | None = None


class UnsafeWebhookUrl(ValueError):
    """A webhook URL that is malformed or leads somewhere webhooks must not go."""


class WebhookHostUnresolved(OSError):
    """The URL's host did not resolve (DNS may be down for a moment: delivery retries)."""


class WebhookTarget(msgspec.Struct, frozen=True):
    """A checked URL: where to connect, and what to call the host (Host header, TLS name)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    def display(self, url: str) -> str:
        """The URL without query and fragment (which may carry tokens), for errors and logs."""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path or '/'}"


def parse_webhook_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, the host lower-case without brackets or a
    trailing dot; UnsafeWebhookUrl when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrl(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("must not carry credentials (user:password@); the signature authenticates us")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeWebhookUrl("has no host")
    if any(ch.isspace() for ch in url) or not url.isascii():
        raise UnsafeWebhookUrl("must be ASCII without spaces (percent-encode the rest; IDNA for host names)")
    return parts.scheme, host.lower(), port if port is not None else (443 if parts.scheme == "https" else 80)


def refusal_reason(address: IPAddress) -> str | None:
    """What kind of address webhooks may not go to ``address`` is ("a loopback address"), or
    None for a public address. An IPv6 address that carries an IPv4 one (IPv4-mapped
    ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged by that IPv4 address too."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and (reason := refusal_reason(embedded)):
        return f"{reason} ({embedded}) in IPv6 form"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or not address.is_global:
        return "a private or reserved address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if embedded := address.ipv4_mapped or address.sixtofour:
        return embedded
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None


def _allowed_by(address: IPAddress, host: str, allow_hosts: frozenset[str]) -> bool:
    """Whether the allow-list names the host, or a network holding the address (or the IPv4
    address an IPv6 one carries)."""
    if host in allow_hosts:
        return True
    candidates = [address] + [v4 for v4 in (_embedded_ipv4(address),) if v4 is not None]
    for entry in allow_hosts:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue  # a host name
        if any(candidate.version == network.version and candidate in network for candidate in candidates):
            return True
    return False


def resolve_webhook_url(url: str, allow_hosts: Iterable[str] = ()) -> WebhookTarget:
    """Parse ``url``, resolve its host and check every address it resolves to (IPv4 and IPv6):
    each must be public, or named by ``allow_hosts`` (host names, addresses, networks).

    UnsafeWebhookUrl when the URL or one of the addresses is refused; WebhookHostUnresolved
    when the host does not resolve. Blocking (DNS): from async code use ``asyncio.to_thread``."""
    allowed = frozenset(entry.strip().lower().rstrip(".") for entry in allow_hosts if entry.strip())
    scheme, host, port = parse_webhook_url(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise WebhookHostUnresolved(f"host {host!r} does not resolve ({exc})") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise WebhookHostUnresolved(f"host {host!r} resolves to no address")
    for text in addresses:
        address = ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
        reason = refusal_reason(address)
        if reason is not None and not _allowed_by(address, host, allowed):
            where = f"{address} is" if literal is not None else f"{host} resolves to {address},"
            raise UnsafeWebhookUrl(f"is refused: {where} {reason}; APP_WEBHOOK_ALLOW_HOSTS can allow it")
    return WebhookTarget(scheme=scheme, host=host, port=port, addresses=tuple(addresses))


# -- settings, read by the worker from the environment -------------------------------------------

_SETTING_NAMES = ("APP_WEBHOOK_SECRET", "APP_WEBHOOK_ALLOW_HOSTS", "APP_WEBHOOK_TIMEOUT_SECONDS")


class WebhookConfig(msgspec.Struct, frozen=True):
    secrets: tuple[str, ...]
    allow_hosts: frozenset[str]
    timeout_seconds: float


def webhook_config() -> WebhookConfig:
    """The webhook settings of this process (APP_WEBHOOK_*), re-read when they change: a worker
    started with ``python -m pgqueue worker --app app.jobs`` has no app object to hand them over."""
    return _config_for(tuple(os.environ.get(name) for name in _SETTING_NAMES))


@functools.lru_cache(maxsize=8)
def _config_for(_values: tuple[str | None, ...]) -> WebhookConfig:
    from app.settings import AppSettings

    settings = AppSettings.from_env()
    return WebhookConfig(secrets=tuple(settings.webhook_secrets()), allow_hosts=settings.webhook_allowed_hosts(),
                         timeout_seconds=settings.webhook_timeout_seconds)


# -- delivery --------------------------------------------------------------------------------------

USER_AGENT = "pgqueue-webhooks/0.1"


class WebhookDeliveryError(Exception):
    """An attempt that failed in a way a later attempt may not: retried with the kind's backoff."""


_client_lock = threading.Lock()
_clients: list[OutboundClient] = []


def _client() -> OutboundClient:
    """The process's client for deliveries (one keep-alive pool shared by every slot). No retries
    inside it: an attempt is one request, and the job engine retries (a slot never waits)."""
    with _client_lock:
        if not _clients:
            _clients.append(OutboundClient(pool_size=32, connect_timeout=10.0, read_timeout=300.0, deadline=300.0,
                                           retry=NO_RETRY, user_agent=USER_AGENT))
        return _clients[0]


def _excerpt(body: bytes) -> str:
    text = body[:EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
    return text.replace("\x00", "\ufffd")


def _pinned_address(target: WebhookTarget) -> str | None:
    """The address just checked, for the client to connect to (``connect_to``) instead of
    resolving the host again: a DNS answer that changes between our check and the connection
    (DNS rebinding) cannot send the request elsewhere. The Host header, TLS SNI and the https
    certificate check keep the host name. None when the URL names an address itself."""
    if target.host == target.addresses[0]:
        return None
    return target.addresses[0].partition("%")[0]


def _retry_after_seconds(response: Response) -> float | None:
    wait = parse_retry_after(response.headers.get("retry-after"))
    if wait is None:
        return None
    return min(max(wait, RETRY_AFTER_MIN_SECONDS), RETRY_AFTER_MAX_SECONDS)


@webhook_jobs.kind(WEBHOOK_KIND, queue=WEBHOOK_QUEUE, max_attempts=12, backoff_base=5.0, backoff_max=3600.0)
def deliver_webhook(ctx: JobContext, hook: WebhookPayload) -> dict[str, Any]:
    """POST the signed body once; see the module docstring for how each answer ends the attempt.
    A sync handler: the worker runs it in its thread pool, one thread per slot."""
    config = webhook_config()
    if not config.secrets:
        raise PermanentFailure("APP_WEBHOOK_SECRET is not set on this worker: deliveries cannot be signed")
    try:
        target = resolve_webhook_url(hook.url, config.allow_hosts)  # again: DNS may have changed since enqueue
    except UnsafeWebhookUrl as exc:
        raise PermanentFailure(f"url {exc}") from None
    except WebhookHostUnresolved as exc:
        raise WebhookDeliveryError(str(exc)) from None
    shown = target.display(hook.url)
    body = msgspec.json.encode(hook.body)
    msg_id = f"msg_{ctx.job.id}"
    headers = {"Content-Type": "application/json", **webhook_headers(config.secrets, msg_id, body)}
    timeout = hook.timeout_seconds or config.timeout_seconds
    try:
        response = _client().request("POST", hook.url, headers=headers, body=body, timeout=timeout, retry=NO_RETRY,
                                     cancel=ctx.cancelled, connect_to=_pinned_address(target))
    except OutboundError as exc:
        ctx.raise_if_cancelled()
        raise WebhookDeliveryError(f"POST {shown} failed: {exc} (timeout {timeout:g} s)") from None
    excerpt = _excerpt(response.body)
    status = response.status
    if 200 <= status < 300:
        ctx.log(f"delivered {msg_id} to {shown}: HTTP {status}")
        return {"status": status, "response_excerpt": excerpt, "webhook_id": msg_id,
                "elapsed_ms": round(response.elapsed * 1000, 1)}
    answer = f"HTTP {status} from {shown}" + (f": {excerpt}" if excerpt else "")
    if status == 429 or status == 408 or status >= 500:
        wait = _retry_after_seconds(response)
        if wait is not None:
            ctx.log(f"{answer}; retrying in {wait:g} s as its Retry-After asks", level="warning")
            raise RetryAfter(wait, f"{answer} (Retry-After: {wait:g} s)")
        raise WebhookDeliveryError(answer)
    # other 4xx (410 Gone included: the receiver wants no more), and 3xx (redirects not followed)
    raise PermanentFailure(answer + (" (redirects are not followed: update the URL)" if status < 400 else ""))
