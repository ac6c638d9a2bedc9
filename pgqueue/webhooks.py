"""Standard Webhooks signatures (HMAC-SHA256, ``v1``): sign a delivery, and verify one in the
app that receives it. Standard library only, so a receiving app needs nothing but this file.

    headers = webhook_headers(["whsec_..."], "msg_42", body)          # sender
    verify_webhook(["whsec_..."], request_headers, body)              # receiver; raises if bad

The signed content is ``{id}.{timestamp}.{body}`` (the body exactly as sent, as bytes); the
``Webhook-Signature`` header is a space-separated list of ``v1,<base64>`` signatures, one per
secret, so a secret can be rotated without downtime (sign with the old and the new one for a while;
a receiver accepts the delivery when any signature matches any secret it knows). Secrets are
``whsec_<base64 of 24-64 random bytes>`` (``new_webhook_secret()`` makes one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping

from pgqueue.errors import PgQueueError

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
# how far a delivery's timestamp may be from the receiver's clock (either way): a replayed old
# delivery is refused; the Standard Webhooks libraries use the same five minutes
DEFAULT_TOLERANCE_SECONDS = 300
# a message id is an idempotency key the receiver may store; it must not contain '.', the
# separator of the signed content (else two different (id, timestamp) pairs could sign alike)
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_\-:]{1,256}$")


class WebhookVerificationError(PgQueueError):
    """A delivery whose headers are missing or malformed, too old or too new, or whose
    signature matches none of the receiver's secrets. Answer it with 400 (or 401)."""


def new_webhook_secret(size: int = 32) -> str:
    """A fresh ``whsec_`` secret of ``size`` random bytes (24 to 64)."""
    if not 24 <= size <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def decode_secret(secret: str | bytes) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret (the prefix may be left out); bytes are
    taken as the key itself."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.strip().removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _signed_content(msg_id: str, timestamp: int, body: bytes | str) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return f"{msg_id}.{timestamp}.".encode() + raw


def sign_webhook(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """One ``v1,<base64>`` signature of ``{msg_id}.{timestamp}.{body}``."""
    if not _MESSAGE_ID.match(msg_id):
        raise ValueError("a webhook message id has 1-256 characters of letters, digits, _ - : (no '.')")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("a webhook timestamp is whole seconds since the Unix epoch")
    digest = hmac.new(decode_secret(secret), _signed_content(msg_id, timestamp, body), hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def webhook_headers(secrets_: Iterable[str | bytes], msg_id: str, body: bytes | str,
                    timestamp: int | None = None) -> dict[str, str]:
    """The three headers of a delivery, signed with every secret (the current one and, while a
    rotation lasts, the old one). ``timestamp`` defaults to now: each attempt is signed anew."""
    keys = list(secrets_)
    if not keys:
        raise ValueError("at least one webhook secret is needed to sign a delivery")
    moment = int(time.time()) if timestamp is None else timestamp
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(moment),
        "Webhook-Signature": " ".join(sign_webhook(key, msg_id, moment, body) for key in keys),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header whatever its case (Starlette's headers ignore case; a plain dict does not)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise WebhookVerificationError(f"missing {name} header")
    return value.strip()


def verify_webhook(secrets_: str | bytes | Iterable[str | bytes], headers: Mapping[str, str], body: bytes | str, *,
                   tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None) -> str:
    """Check a received delivery; returns its message id (an idempotency key: remember the ids
    you processed for longer than the tolerance and skip repeats). Raises WebhookVerificationError.

    ``body`` must be the raw bytes received (``await request.body()``), not JSON parsed and
    re-encoded. ``secrets_`` is one secret or several (during a rotation)."""
    keys = [secrets_] if isinstance(secrets_, str | bytes) else list(secrets_)
    if not keys:
        raise ValueError("at least one webhook secret is needed to verify a delivery")
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise WebhookVerificationError("Webhook-Timestamp is not a number of seconds since the epoch")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("Webhook-Timestamp is too old (a replayed or long-delayed delivery)")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("Webhook-Timestamp is too far in the future (check the clocks)")
    content = _signed_content(msg_id, timestamp, body)
    expected = [base64.b64encode(hmac.new(decode_secret(key), content, hashlib.sha256).digest()) for key in keys]
    matched = False
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version != SIGNATURE_VERSION:
            continue  # another scheme (v1a: asymmetric) or a future version: not ours to judge
        candidate = value.encode()
        for digest in expected:
            # compare every pair without stopping early: the time taken says nothing about which matched
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise WebhookVerificationError("no Webhook-Signature matches (wrong secret, or body/id/timestamp changed)")
    return msg_id
