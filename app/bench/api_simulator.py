"""A local partner API for tests, the demo and the bench: deterministic events from a seed,
served cursor-paginated (``GET /events?cursor=&limit=``) and as an NDJSON range export
(``GET /export?from=N&count=K``), with every misbehaviour of issue 9 switchable.

    python -m app.bench.api_simulator --events 100000 --rate 20 --fault-rate 0.01 --port 8900
    curl -s 'http://127.0.0.1:8900/events?limit=2'
    curl -s http://127.0.0.1:8900/_sim/ids         # the exact set served: "id<TAB>instant" lines

In-process: ``with SimulatedApi(SimConfig(events=1000)) as api: api.url, api.expected()``.

Behaviours (SimConfig fields / flags):
- ``page_max``: a page size silently capped below what was asked;
  ``short_page_rate`` / ``empty_page_rate``: short or empty pages while more data remains;
- ``rate`` (requests/s per ``window``) with ``rate_headers`` x | ietf | combined and
  ``reset_style`` delta | epoch; a 429 carries Retry-After (``retry_after_style`` seconds | date);
  a request during the Retry-After earns ``penalty`` more seconds of 429s; ``export_rate`` for the
  export;
- ``fault_rate``: that share of requests fail, cycling through ``faults``: 500 (JSON), 503 (an
  HTML page), drop (connection closed mid-body), truncate (200 whose body is cut short of its
  Content-Length), badjson (a 200 with a complete but invalid body), stall (``stall_seconds``
  before answering);
- ``overlap``: each page repeats the last items of the previous one; events are never in time
  order (instants jitter by seconds);
- ``cursor_ttl``: cursors expire (400 ``cursor_expired``); ``invalidate_cursors()`` (or POST
  /_sim/invalidate) makes every cursor handed out so far invalid, as after a restart of theirs;
  ``?since_seq=N`` resumes after the event whose ``seq`` is N;
- ``ts_mode`` iso | mixed: ISO 8601 Z / offsets / fractions, naive, epoch s / ms / µs as numbers
  or strings, RFC 2822; ``bad_ts_rate``: timestamps nothing can read;
- ``api_key``: 401 without it (``X-API-Key`` or ``Authorization: Bearer``); ``gzip``.
"""

from __future__ import annotations

import argparse
import base64
import gzip as gzip_module
import hashlib
import http.server
import math
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime, formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

BASE_INSTANT_US = 1_714_557_600_000_000  # 2024-05-01T10:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS_FORMS = ("iso_z", "iso_offset", "iso_fraction_z", "naive_space", "naive_iso", "epoch_s", "epoch_ms",
            "epoch_us", "epoch_s_string", "epoch_ms_string", "epoch_us_string", "rfc2822", "epoch_s_float")
SECOND_ONLY_FORMS = {"naive_space", "naive_iso", "rfc2822", "epoch_s", "epoch_s_string", "iso_z", "iso_offset"}
MS_FORMS = {"epoch_ms", "epoch_ms_string", "epoch_s_float"}
FAULTS = ("500", "503", "drop", "truncate", "badjson", "stall")
_encode = msgspec.json.Encoder().encode


class SimConfig(msgspec.Struct, kw_only=True):
    events: int = 10_000
    seed: int = 1
    page_max: int = 1000
    short_page_rate: float = 0.0
    empty_page_rate: float = 0.0
    overlap: int = 0
    ts_mode: str = "iso"
    bad_ts_rate: float = 0.0
    rate: float = 0.0  # requests per window, 0 = unlimited
    window: float = 1.0
    rate_headers: str = "x"
    reset_style: str = "delta"
    retry_after_style: str = "seconds"
    penalty: float = 0.0
    export_rate: float = 0.0
    export_max: int = 5000
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    stall_seconds: float = 2.0
    cursor_ttl: float = 0.0
    api_key: str | None = None
    gzip: bool = False
    announce_total: bool = True
    pregenerate: bool = False  # encode every event once at start (the bench: the simulator is then not the ceiling)


def _hash(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


class Window:
    """A fixed-window rate limit aligned to the wall clock, with a penalty for hammering."""

    def __init__(self, limit: float, window: float, penalty: float) -> None:
        self.limit, self.window, self.penalty = limit, window, penalty
        self.start = 0.0
        self.used = 0
        self.blocked_until = 0.0
        self.penalties = 0
        self.lock = threading.Lock()

    def take(self, now: float) -> tuple[bool, float, float, float]:
        """(allowed, remaining, window end (epoch), retry after seconds)."""
        with self.lock:
            start = math.floor(now / self.window) * self.window
            if start != self.start:
                self.start, self.used = start, 0
            end = start + self.window
            if now < self.blocked_until:
                if self.penalty:  # hammering during a Retry-After: the block grows
                    self.blocked_until = max(self.blocked_until, now + self.penalty)
                    self.penalties += 1
                return False, 0, end, self.blocked_until - now
            if self.used >= self.limit:
                self.blocked_until = end
                return False, 0, end, end - now
            self.used += 1
            return True, self.limit - self.used, end, 0.0


class SimulatedApi:
    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.generation = 1
        self.requests = 0
        self.stats: dict[str, int] = {"requests": 0, "rate_limited": 0, "faults": 0, "penalties": 0,
                                      "cursor_refused": 0}
        self._lock = threading.Lock()
        self._windows = {name: Window(rate, self.config.window, self.config.penalty)
                         for name, rate in (("events", self.config.rate), ("export", self.config.export_rate))
                         if rate > 0}
        self._release = threading.Event()
        self._encoded: list[bytes] | None = None
        if self.config.pregenerate:
            self._encoded = [_encode(self.event(seq)[2]) for seq in range(self.config.events)]
        self.server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- the data ----------------------------------------------------------------------------

    def event(self, seq: int) -> tuple[str, int | None, dict[str, Any]]:
        """Event ``seq``: (id, instant in µs since the epoch or None for an unreadable one, item)."""
        cfg = self.config
        h = _hash(cfg.seed, seq)
        event_id = f"ev-{cfg.seed}-{seq:09d}-{h % 65536:04x}"
        form = "iso_fraction_z" if cfg.ts_mode == "iso" else TS_FORMS[h % len(TS_FORMS)]
        # never in time order: up to 5 s of jitter either way
        instant = BASE_INSTANT_US + seq * 10_000 + ((h >> 16) % 10_000_000) - 5_000_000
        if form in SECOND_ONLY_FORMS:
            instant -= instant % 1_000_000
        elif form in MS_FORMS:
            instant -= instant % 1000
        ts: Any
        bad = cfg.bad_ts_rate > 0 and (h >> 40) % 1_000_000 < cfg.bad_ts_rate * 1_000_000
        if bad:
            ts = ["yesterday-ish", "2024-13-45T99:00:00Z", "", None][(h >> 20) % 4]
        else:
            ts = render_instant(instant, form, h)
        item = {"id": event_id, "seq": seq, "timestamp": ts, "type": ("click", "view", "buy")[h % 3],
                "user": f"u{(h >> 8) % 5000}", "value": (h >> 24) % 1000 / 10}
        return event_id, None if bad else instant, item

    def expected(self) -> dict[str, datetime]:
        """Every id served with a readable timestamp, and its instant (what Postgres must hold)."""
        out = {}
        for seq in range(self.config.events):
            event_id, instant, _ = self.event(seq)
            if instant is not None:
                out[event_id] = EPOCH + timedelta(microseconds=instant)
        return out

    def unreadable(self) -> set[str]:
        return {eid for seq in range(self.config.events) for eid, instant, _ in [self.event(seq)] if instant is None}

    def invalidate_cursors(self) -> None:
        with self._lock:
            self.generation += 1

    # -- cursors -----------------------------------------------------------------------------

    def make_cursor(self, position: int, hop: int = 0) -> str:
        raw = f"{self.generation}:{position}:{time.time():.3f}:{hop}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read_cursor(self, cursor: str) -> tuple[int | None, int, str]:
        """(position, hop: pages served in this chain, problem)."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            generation, position, issued, hop = raw.split(":")
            pos, gen, at, hops = int(position), int(generation), float(issued), int(hop)
        except (ValueError, UnicodeDecodeError):
            return None, 0, "cursor_invalid"
        if gen != self.generation:
            return None, 0, "cursor_invalid"
        if self.config.cursor_ttl and time.time() - at > self.config.cursor_ttl:
            return None, 0, "cursor_expired"
        return pos, hops, ""

    def encoded(self, first: int, end: int) -> list[bytes]:
        if self._encoded is not None:
            return self._encoded[first:end]
        return [_encode(self.event(seq)[2]) for seq in range(first, end)]

    def page(self, position: int, limit: int, hop: int = 0) -> tuple[list[bytes], int]:
        cfg = self.config
        limit = max(1, min(limit, cfg.page_max))
        h = _hash(cfg.seed, position, hop, 7)  # the hop: an empty page is not empty again when asked anew
        if position < cfg.events and cfg.empty_page_rate and h % 1000 < cfg.empty_page_rate * 1000:
            count = 0
        elif cfg.short_page_rate and (h >> 12) % 1000 < cfg.short_page_rate * 1000:
            count = max(1, limit // 3)
        else:
            count = limit
        end = min(cfg.events, position + count)
        first = max(0, position - cfg.overlap) if count else position
        return self.encoded(first, end), end

    # -- serving -----------------------------------------------------------------------------

    def start(self) -> SimulatedApi:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="api-simulator")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> SimulatedApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def fault_for(self, number: int) -> str | None:
        rate = self.config.fault_rate
        if rate <= 0 or math.floor(number * rate) == math.floor((number - 1) * rate):
            return None
        return self.config.faults[math.floor(number * rate) % len(self.config.faults)]


def render_instant(instant_us: int, form: str, h: int) -> Any:
    when = EPOCH + timedelta(microseconds=instant_us)
    seconds, _micros = divmod(instant_us, 1_000_000)
    if form == "iso_z":
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == "iso_fraction_z":
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if form == "iso_offset":
        offset = timedelta(minutes=((h >> 30) % 49 - 24) * 30)
        return when.astimezone(timezone(offset)).isoformat()
    if form == "naive_space":
        return when.strftime("%Y-%m-%d %H:%M:%S")
    if form == "naive_iso":
        return when.strftime("%Y-%m-%dT%H:%M:%S")
    if form == "epoch_s":
        return seconds
    if form == "epoch_s_float":
        return round(instant_us / 1_000_000, 3)
    if form == "epoch_ms":
        return instant_us // 1000
    if form == "epoch_us":
        return instant_us
    if form == "epoch_s_string":
        return str(seconds)
    if form == "epoch_ms_string":
        return str(instant_us // 1000)
    if form == "epoch_us_string":
        return str(instant_us)
    if form == "rfc2822":
        return format_datetime(when.astimezone(timezone(timedelta(hours=2))))
    raise ValueError(form)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, api: SimulatedApi) -> None:
        super().__init__(address, handler)
        self.api = api


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        api = self.server.api
        if api.config.gzip and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip_module.compress(body, 1)
            headers = {**(headers or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, _encode({"error": {"code": code, "message": message}}), headers)

    def do_POST(self) -> None:
        if urlsplit(self.path).path == "/_sim/invalidate":
            self.server.api.invalidate_cursors()
            self._send(200, b'{"invalidated": true}')
        else:
            self._error(404, "not_found", "no such endpoint")

    def do_GET(self) -> None:
        api = self.server.api
        cfg = api.config
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/_sim/ids":
            lines = [f"{eid}\t{'' if instant is None else instant}" for seq in range(cfg.events)
                     for eid, instant, _ in [api.event(seq)]]
            self._send(200, ("\n".join(lines) + "\n").encode(), content_type="text/plain")
            return
        if parts.path == "/_sim/stats":
            self._send(200, _encode(api.stats))
            return
        if parts.path not in ("/events", "/export"):
            self._error(404, "not_found", "no such endpoint")
            return
        if cfg.api_key is not None:
            given = self.headers.get("X-API-Key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if given != cfg.api_key:
                self._error(401, "unauthorized", "a valid API key is required")
                return
        with api._lock:
            api.requests += 1
            number = api.requests
            api.stats["requests"] += 1
        headers: dict[str, str] = {}
        window = api._windows.get("events" if parts.path == "/events" else "export")
        if window is not None:
            now = time.time()
            allowed, remaining, end, retry_after = window.take(now)
            headers = _rate_headers(cfg, window.limit, remaining, end, now)
            if not allowed:
                with api._lock:
                    api.stats["rate_limited"] += 1
                    api.stats["penalties"] = sum(w.penalties for w in api._windows.values())
                wait = math.ceil(retry_after)
                headers["Retry-After"] = (str(wait) if cfg.retry_after_style == "seconds"
                                          else formatdate(now + wait, usegmt=True))
                self._error(429, "rate_limited", "slow down", headers)
                return
        fault = api.fault_for(number)
        if fault is not None:
            with api._lock:
                api.stats["faults"] += 1
            if fault == "500":
                self._error(500, "internal", "something broke", headers)
                return
            if fault == "503":
                self._send(503, b"<html><body><h1>503 Service Unavailable</h1></body></html>", headers, "text/html")
                return
            if fault == "drop":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b'{"data": [{"id": "x')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if fault == "stall":
                api._release.wait(cfg.stall_seconds)
        try:
            body, extra = self._events(query) if parts.path == "/events" else self._export(query)
        except _Refused as refused:
            self._error(refused.status, refused.code, refused.message, headers)
            return
        headers.update(extra)
        if fault == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if fault == "badjson":
            body = body[: len(body) // 2]  # complete per Content-Length, not JSON (nor whole NDJSON lines)
        self._send(200, body, headers, "application/json" if parts.path == "/events" else "application/x-ndjson")

    def _events(self, query: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        api = self.server.api
        limit = _int(query.get("limit", "100"), "limit")
        hop = 0
        if query.get("cursor"):
            position, hop, problem = api.read_cursor(query["cursor"])
            if position is None:
                with api._lock:
                    api.stats["cursor_refused"] += 1
                raise _Refused(400, problem, "the cursor is " + ("expired" if problem == "cursor_expired" else "invalid"))
        elif "since_seq" in query:
            position = _int(query["since_seq"], "since_seq") + 1
        else:
            position = 0
        items, end = api.page(position, limit, hop)
        more = end < api.config.events
        meta: dict[str, Any] = {"has_more": more, "next_cursor": api.make_cursor(end, hop + 1) if more else None}
        if api.config.announce_total:
            meta["total"] = api.config.events
        return b'{"data":[' + b",".join(items) + b'],"meta":' + _encode(meta) + b"}", {}

    def _export(self, query: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        api = self.server.api
        start = _int(query.get("from", "0"), "from")
        count = min(_int(query.get("count", "1000"), "count"), api.config.export_max)
        end = min(api.config.events, start + count)
        lines = api.encoded(start, end)
        body = b"\n".join(lines) + (b"\n" if lines else b"")
        headers = {"X-Event-Count": str(len(lines))}
        if api.config.announce_total:
            headers["X-Total-Count"] = str(api.config.events)
        return body, headers


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _int(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise _Refused(400, "bad_parameter", f"{name} must be a non-negative integer")
    return int(raw)


def _rate_headers(cfg: SimConfig, limit: float, remaining: float, end: float, now: float) -> dict[str, str]:
    reset = f"{int(end)}" if cfg.reset_style == "epoch" else f"{max(0.0, end - now):.3f}"
    if cfg.rate_headers == "ietf":
        return {"RateLimit-Limit": str(int(limit)), "RateLimit-Remaining": str(int(remaining)),
                "RateLimit-Reset": reset}
    if cfg.rate_headers == "none":
        return {}
    if cfg.rate_headers == "combined":
        return {"RateLimit": f"limit={int(limit)}, remaining={int(remaining)}, reset={reset}"}
    return {"X-RateLimit-Limit": str(int(limit)), "X-RateLimit-Remaining": str(int(remaining)),
            "X-RateLimit-Reset": reset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench.api_simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    for field in msgspec.structs.fields(SimConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.name == "faults":
            parser.add_argument(flag, default=",".join(FAULTS), help="comma-separated: " + ",".join(FAULTS))
        else:
            kind = int if field.default.__class__ is int else float if field.default.__class__ is float else str
            parser.add_argument(flag, type=kind, default=field.default)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    args["faults"] = tuple(f for f in args["faults"].split(",") if f)
    if host != "127.0.0.1" and host != "localhost":
        print("error: the simulator serves 127.0.0.1 only", file=sys.stderr)
        return 2
    api = SimulatedApi(msgspec.convert(args, SimConfig), host=host, port=port)
    print(f"simulated API at {api.url} ({api.config.events} events)", flush=True)
    try:
        api.server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
