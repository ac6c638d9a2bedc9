"""Outbound HTTP: the one client everything that calls out uses (app/outbound/client.py) and the
pacer that spaces requests by the rate-limit headers a server sends (app/outbound/pacing.py)."""

from app.outbound.client import (
    NO_RETRY,
    BadResponse,
    DeadlineExceeded,
    OutboundClient,
    OutboundError,
    OutboundMetrics,
    RequestFailed,
    Response,
    RetryPolicy,
    TransportError,
)
from app.outbound.pacing import Pacer, parse_rate_limit, parse_retry_after

__all__ = [
    "NO_RETRY",
    "BadResponse",
    "DeadlineExceeded",
    "OutboundClient",
    "OutboundError",
    "OutboundMetrics",
    "Pacer",
    "RequestFailed",
    "Response",
    "RetryPolicy",
    "TransportError",
    "parse_rate_limit",
    "parse_retry_after",
]
