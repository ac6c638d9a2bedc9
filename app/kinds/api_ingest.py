"""API ingest: the ``api_ingest`` job kind copies every item of a paginated HTTP API into a table
of schema app (``id text PRIMARY KEY, ts timestamptz, data jsonb, source, ingested_at``).

The source (`SourceConfig`, msgspec-typed) is paged one of two ways:

- ``cursor``: ``GET url?limit=P[&cursor=C]``; the items, the next cursor and the has-more flag are
  found at body paths (dotted; found under their common names when not given: items at
  ``data``/``items``/``results``/``events``/``records``, cursor at ``nextCursor``/``next_cursor``/
  ``next``/``cursor_next``/``nextPageToken``, has-more at ``hasMore``/``has_more``/``more``, top
  level or one object down). The chain ends only when has-more is false (or, without a flag, the
  cursor is null): short or empty pages while more remains are just pages. One chain runs at
  the rate limit, the next page fetched while the previous one is written.
- ``range``: ``GET url?from=N&count=K`` answering NDJSON (one item per line, like Mixpanel's
  raw export), ``in_flight`` ranges at once. A range answered with fewer items than asked is
  finished by fetching the rest; the end is the announced total (``X-Total-Count``) or a
  range that comes back empty.

Each page is one transaction under the job's lease (what ``ctx.transaction()`` gives, in five
round trips instead of eight): BEGIN and the lease check together, a binary COPY into a
temporary staging table, ``INSERT … SELECT DISTINCT ON (id) … ON CONFLICT (id) DO NOTHING``
into the target, then the checkpoint (next cursor, or the ranges done) with the part's counts
in one statement sent together with the COMMIT; without the lease that statement raises, so
the COMMIT behind it rolls the page back.
``writers`` (3) pages are written at once on their own connections and commit in page order
(`Committer`), so a checkpoint never runs ahead of the rows it covers.
A killed worker's job is rescued and resumes at its checkpoint; the primary key makes any
overlap harmless. A cursor the API refuses on resume (expired, invalid: a 4xx other than
401/403/429 on a request that carried a cursor) restarts the chain at ``since_param=<the largest
since_field committed>`` when configured, else from the beginning (the primary key skips what
is stored), with a log line; five refusals without a page in between fail the attempt (the
engine retries with backoff), never a crash loop. 401/403, or a first page without items,
ids or a valid shape, is dead at once (`PermanentFailure`): retrying cannot help.

Timestamps (``ts_field``) become UTC: ISO 8601 with ``Z``/offset/fractions, naive ISO or
``YYYY-MM-DD HH:MM:SS`` (in ``naive_timezone``, default UTC), epoch seconds / milliseconds /
microseconds as numbers or numeric strings (told apart by magnitude: below 1e11 seconds, below
1e14 ms, below 1e17 µs), RFC 2822. An item whose timestamp (or id) cannot be read goes to
app.api_ingest_errors with the reason; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import email.utils
import re
import struct
import time
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from psycopg import sql
from psycopg.pq import TransactionStatus

from app.outbound import (
    BadResponse,
    DeadlineExceeded,
    OutboundClient,
    OutboundMetrics,
    Pacer,
    RequestFailed,
    Response,
    RetryPolicy,
    TransportError,
)
from pgqueue import JobContext, JobRegistry, LeaseLost, PermanentFailure
from pgqueue.db import translate_errors
from pgqueue.sql import parse_queries

QUERIES = parse_queries((Path(__file__).resolve().parent.parent / "sql" / "api_ingest.sql").read_text())

KIND = "api_ingest"
QUEUE = "api_ingest"
DEFAULT_TARGET = "api_events"
TARGET_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# app tables a sync must never write into (a target is created, or must already look like one)
RESERVED_TARGETS = frozenset({"users", "tokens", "api_tokens", "files", "log_entries", "ingest_errors", "api_syncs",
                              "api_sync_parts", "api_ingest_errors"})
TARGET_COLUMNS = [("id", "text"), ("ts", "timestamp with time zone"), ("data", "jsonb"), ("source", "text"),
                  ("ingested_at", "timestamp with time zone")]
ITEM_PATHS = ("data", "items", "results", "events", "records")
CURSOR_PATHS = ("nextCursor", "next_cursor", "next", "cursor_next", "nextPageToken", "next_page_token")
HAS_MORE_PATHS = ("hasMore", "has_more", "more")
# A page goes to the staging table as one binary COPY stream built in the fetching thread (the
# event loop then sends it in one write): per row 3 fields, each a length and its bytes; the id
# as UTF-8, ts as microseconds since 2000-01-01 UTC, data as jsonb's binary form (a version byte
# 1 and the JSON text as received). PostgreSQL's "COPY ... FORMAT BINARY" documents the layout.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
_ROW_AND_ID = struct.Struct(">hi")  # 3 fields; the id's length
_TS_AND_DATA = struct.Struct(">iqib")  # ts: 8 bytes, microseconds; data: length, jsonb version 1
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CURSOR_REFUSALS = 5
LEASE_LOST_SQLSTATE = "PQ409"  # raised by record_page without the job's lease (schema/0017)
_NUMERIC = re.compile(r"^-?\d+(?:\.\d+)?$")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
FieldPath = Annotated[str, msgspec.Meta(pattern=r"^[^.\s][^\s]{0,199}$")]
Param = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-\[\]]{1,100}$")]


class SourceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to ingest from where (the ``config`` of POST /api/v1/syncs, or ``--config source.json``)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    source: Name | None = None  # a name for metrics and the rows' source column (default: the URL's host)
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=63)] = DEFAULT_TARGET
    pagination: Literal["cursor", "range"] = "cursor"
    headers: dict[str, str] = {}
    api_key: str | None = None
    auth_header: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,100}$")] = "X-API-Key"
    query: dict[str, str] = {}  # extra query parameters on every request
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    limit_param: Param = "limit"
    cursor_param: Param = "cursor"
    items_path: FieldPath | None = None
    cursor_path: FieldPath | None = None
    has_more_path: FieldPath | None = None
    total_path: FieldPath | None = None
    id_field: FieldPath = "id"
    ts_field: FieldPath = "timestamp"
    naive_timezone: str = "UTC"
    since_param: Param | None = None  # resume a refused cursor chain at since_param=<max since_field>
    since_field: FieldPath | None = None
    # range mode
    from_param: Param = "from"
    count_param: Param = "count"
    range_start: Annotated[int, msgspec.Meta(ge=0)] = 0
    range_end: Annotated[int, msgspec.Meta(ge=1)] | None = None
    in_flight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    # pages written at once, each in its own transaction on its own (pooled) connection, committed
    # in order: one page COPYs while the one before inserts and the one before that commits
    writers: Annotated[int, msgspec.Meta(ge=1, le=8)] = 3
    count_header: str = "X-Event-Count"
    total_header: str = "X-Total-Count"
    # several jobs: range mode splits [range_start, range_end) in `parts`; cursor mode runs one
    # chain per value of split_param
    parts: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    split_param: Param | None = None
    split_values: list[Annotated[str, msgspec.Meta(max_length=200)]] = []
    # the client
    max_rps: Annotated[float, msgspec.Meta(gt=0)] | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    read_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=50)] = 8
    backoff_base: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.25


class PartSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    part: int = 0
    range_start: int | None = None
    range_end: int | None = None
    filter_value: str | None = None


class ApiIngestJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The payload of an ``api_ingest`` job: one part of a sync."""

    sync_id: Annotated[int, msgspec.Meta(ge=1)]
    config: SourceConfig
    part: PartSpec = PartSpec()


class ConfigProblem(ValueError):
    """A source config that cannot work (message names the field and the problem)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- the config ----------------------------------------------------------------------------------

def check_config(cfg: SourceConfig) -> SourceConfig:
    """The checks msgspec's types cannot express; returns the config with its defaults filled in."""
    parts = urlsplit(cfg.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigProblem("url", f"must be an http:// or https:// URL with a host, got {cfg.url[:200]!r}")
    try:
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ConfigProblem("url", f"has a malformed port: {cfg.url[:200]!r}") from None
    if not TARGET_NAME.match(cfg.target):
        raise ConfigProblem("target", f"{cfg.target!r} is not a valid table name: lower-case letters, digits and "
                                      "_, starting with a letter or _, at most 63 characters")
    if cfg.target in RESERVED_TARGETS:
        raise ConfigProblem("target", f"{cfg.target!r} is one of the app's own tables")
    naive_zone(cfg)
    if (cfg.since_param is None) != (cfg.since_field is None):
        raise ConfigProblem("since_param", "since_param and since_field go together")
    if cfg.split_values and cfg.split_param is None:
        raise ConfigProblem("split_values", "needs split_param")
    if cfg.pagination == "range" and cfg.parts > 1 and cfg.range_end is None:
        raise ConfigProblem("parts", "splitting a range source needs range_end")
    if cfg.range_end is not None and cfg.range_end <= cfg.range_start:
        raise ConfigProblem("range_end", "must be greater than range_start")
    for name, value in cfg.headers.items():
        if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", name) or "\n" in value or "\r" in value:
            raise ConfigProblem("headers", f"{name[:100]!r} is not a valid header")
    source = cfg.source or parts.hostname
    return msgspec.structs.replace(cfg, source=source[:100])


def naive_zone(cfg: SourceConfig) -> tzinfo:
    if cfg.naive_timezone.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(cfg.naive_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigProblem("naive_timezone", f"unknown time zone {cfg.naive_timezone!r}") from None


def split_parts(cfg: SourceConfig) -> list[PartSpec]:
    if cfg.split_param and cfg.split_values:
        return [PartSpec(part=i, filter_value=v) for i, v in enumerate(cfg.split_values)]
    if cfg.pagination == "range" and cfg.parts > 1 and cfg.range_end is not None:
        size = -(-(cfg.range_end - cfg.range_start) // cfg.parts)
        return [PartSpec(part=i, range_start=cfg.range_start + i * size,
                         range_end=min(cfg.range_end, cfg.range_start + (i + 1) * size)) for i in range(cfg.parts)
                if cfg.range_start + i * size < cfg.range_end]
    return [PartSpec(part=0)]


def request_headers(cfg: SourceConfig) -> dict[str, str]:
    headers = {"Accept": "application/json", **cfg.headers}
    if cfg.api_key:
        value = cfg.api_key
        if cfg.auth_header.lower() == "authorization" and " " not in value:
            value = f"Bearer {value}"
        headers[cfg.auth_header] = value
    return headers


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query and extra else parts.query or extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


# -- timestamps ----------------------------------------------------------------------------------

def _from_micros(micros: int) -> datetime:
    try:
        return EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError("out of range") from None


def _epoch(number: int | float | decimal.Decimal) -> datetime:
    magnitude = abs(number)
    scale = 1_000_000 if magnitude < 1e11 else 1000 if magnitude < 1e14 else 1 if magnitude < 1e17 else 0
    if not scale:
        raise ValueError(f"epoch number {number} is too large for seconds, milliseconds or microseconds")
    if isinstance(number, int):
        return _from_micros(number * scale)
    if isinstance(number, decimal.Decimal):
        return _from_micros(int((number * scale).to_integral_value()))
    return _from_micros(round(number * scale))


def parse_instant(value: Any, naive: tzinfo = UTC) -> datetime:
    """An item's timestamp as an aware UTC datetime; ValueError with the reason otherwise."""
    if value.__class__ is str:
        if value[4:5] == "-":  # ISO 8601 or "YYYY-MM-DD HH:MM:SS", the common case: straight to it
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                pass  # the slow path below says why
            else:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=naive)
                try:
                    return when.astimezone(UTC)
                except OverflowError:
                    raise ValueError(f"timestamp {value[:60]!r} is out of range in UTC") from None
        text = value.strip()
        if not text:
            raise ValueError("empty timestamp")
        if _NUMERIC.match(text):
            return _epoch(int(text) if text.lstrip("-").isdigit() else decimal.Decimal(text))
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                raise ValueError(f"unreadable timestamp {text[:60]!r}") from None
            if when.tzinfo is None:  # RFC 2822 "-0000": UTC
                when = when.replace(tzinfo=UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=naive)
        try:
            return when.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"timestamp {text[:60]!r} is out of range in UTC") from None
    if value.__class__ is int or value.__class__ is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("timestamp is not a finite number")
        return _epoch(value)
    if value is None or value is msgspec.UNSET:
        raise ValueError("no timestamp")
    raise ValueError(f"timestamp of type {type(value).__name__} (expected a string or a number)")


def pg_micros(value: Any, naive: tzinfo = UTC) -> int:
    """``parse_instant(value, naive)`` as PostgreSQL's binary timestamptz (microseconds since
    2000-01-01 UTC); the common ISO 8601 form without the detour through a UTC datetime (aware
    datetimes subtract in UTC whatever their offset)."""
    if value.__class__ is str and value[4:5] == "-":
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            pass  # parse_instant says why
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=naive)
            if when.tzinfo is UTC or 1 < when.year < 9999:  # an offset cannot leave datetime's range
                return (when - PG_EPOCH) // ONE_MICROSECOND
    return (parse_instant(value, naive) - PG_EPOCH) // ONE_MICROSECOND


# -- pages ---------------------------------------------------------------------------------------

class Page(msgspec.Struct, kw_only=True):
    stage: bytes  # the binary COPY stream of the rows for the staging table (signature to trailer)
    row_count: int
    errors: list[tuple[str | None, str, str]]  # (item id, reason, JSON text)
    events: int
    bytes: int
    next_cursor: str | None = None
    more: bool = False
    total: int | None = None
    since: Any = None  # the largest since_field value of the page
    range_start: int = 0
    range_count: int = 0  # items the range answered (range mode)


def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return msgspec.UNSET
        obj = obj[key]
    return obj


def _find(top: dict[str, Any], names: tuple[str, ...], want: Callable[[Any], bool]) -> str | None:
    for name in names:
        if name in top and want(top[name]):
            return name
    for key, value in top.items():
        if isinstance(value, dict):
            for name in names:
                if name in value and want(value[name]):
                    return f"{key}.{name}"
    return None


class Paths(msgspec.Struct, frozen=True):
    items: str
    cursor: str | None
    has_more: str | None
    total: str | None


def resolve_paths(cfg: SourceConfig, top: Any) -> Paths:
    """Where items, next cursor and has-more sit in a first response (given or found by name)."""
    if not isinstance(top, dict):
        raise PermanentFailure("the API's first response is not a JSON object")
    raw = {k: v for k, v in top.items()}
    items = cfg.items_path or _find(raw, ITEM_PATHS, lambda v: isinstance(v, list))
    if items is None or not isinstance(_get(raw, items), list):
        where = repr(cfg.items_path) if cfg.items_path else "any of " + "/".join(ITEM_PATHS)
        raise PermanentFailure(f"items_path: the first response has no list of items at {where} "
                               f"(top-level keys: {', '.join(list(raw)[:10])})")
    cursor = cfg.cursor_path or _find(raw, CURSOR_PATHS, lambda v: v is None or isinstance(v, str | int))
    has_more = cfg.has_more_path or _find(raw, HAS_MORE_PATHS, lambda v: isinstance(v, bool))
    total = cfg.total_path or _find(raw, ("total", "total_count", "totalCount"), lambda v: isinstance(v, int))
    if cursor is None and has_more is None:
        raise PermanentFailure("cursor_path: the first response has neither a next cursor nor a has-more flag "
                               f"(looked for {'/'.join(CURSOR_PATHS)} and {'/'.join(HAS_MORE_PATHS)})")
    return Paths(items=items, cursor=cursor, has_more=has_more, total=total)


class PageReader:
    """Fetches and decodes pages of one source (thread-safe; runs in worker threads)."""

    def __init__(self, cfg: SourceConfig, part: PartSpec, metrics: OutboundMetrics | None = None,
                 pacer: Pacer | None = None) -> None:
        self.cfg = cfg
        self.part = part
        self.naive = naive_zone(cfg)
        self.client = OutboundClient(pool_size=cfg.in_flight + 2, connect_timeout=min(10.0, cfg.request_timeout),
                                     read_timeout=cfg.read_timeout, deadline=cfg.request_timeout,
                                     retry=RetryPolicy(attempts=cfg.retries + 1, backoff_base=cfg.backoff_base,
                                                       backoff_max=30.0),
                                     pacer=pacer or Pacer(max_rate=cfg.max_rps), metrics=metrics)
        self.headers = request_headers(cfg)
        parts = urlsplit(cfg.url)
        self.rate_key = f"{parts.scheme}://{parts.netloc}{parts.path}"
        fields = [("item_id", Any, msgspec.UNSET), ("item_ts", Any, msgspec.UNSET)]
        rename = {"item_id": cfg.id_field, "item_ts": cfg.ts_field}
        if cfg.since_field:
            fields.append(("item_since", Any, msgspec.UNSET))
            rename["item_since"] = cfg.since_field
        item_type = msgspec.defstruct("Item", fields, rename=rename)  # type: ignore[arg-type]
        self._item = msgspec.json.Decoder(item_type)
        self._items = msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]
        self._top = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._raws = msgspec.json.Decoder(list[msgspec.Raw])
        self.paths: Paths | None = None
        self.cancel: Any = None

    def close(self) -> None:
        self.client.close()

    def _params(self) -> dict[str, str]:
        params = dict(self.cfg.query)
        if self.part.filter_value is not None and self.cfg.split_param:
            params[self.cfg.split_param] = self.part.filter_value
        return params

    def _get(self, params: dict[str, str], validate: Callable[[Response], None]) -> Response:
        url = with_query(self.cfg.url, {**self._params(), **params})
        try:
            response = self.client.request("GET", url, headers=self.headers, validate=validate,
                                           rate_key=self.rate_key, cancel=self.cancel)
        except (RequestFailed, DeadlineExceeded) as exc:
            raise SourceUnavailable(f"{self.cfg.source}: {exc}") from exc
        except TransportError as exc:
            raise SourceUnavailable(f"{self.cfg.source}: {exc}") from exc
        if response.status in (401, 403):
            raise PermanentFailure(f"the API refused the credentials: HTTP {response.status} "
                                   f"{response.text()[:200]!r}")
        return response

    def _rows(self, raws: list[Any], page: Page, body: bytes, ndjson: bool = False) -> None:
        decode_item = self._item.decode
        # every item's id and timestamp in one call (the items of a JSON array, or the lines of
        # an NDJSON body, which decode_lines splits as the reader did); item by item otherwise
        try:
            items: Any = self._item.decode_lines(body) if ndjson else self._items.decode(b"[" + b",".join(raws) + b"]")
        except msgspec.DecodeError:
            items = None
        if items is None or len(items) != len(raws):
            items = [None] * len(raws)
        naive = self.naive
        since_field = self.cfg.since_field
        nul_possible = b"\\u0000" in body  # looked for per item only when the page has one
        parts: list[Any] = [COPY_SIGNATURE]
        add = parts.extend
        row_and_id, ts_and_data = _ROW_AND_ID.pack, _TS_AND_DATA.pack
        since_max = None
        for raw, item in zip(raws, items, strict=True):
            if item is None:
                try:
                    item = decode_item(raw)
                except msgspec.DecodeError as exc:
                    page.errors.append((None, f"not a JSON object: {exc}", _error_json(bytes(raw))))
                    continue
            item_id = item.item_id
            if item_id.__class__ is not str:
                if item_id.__class__ is int:
                    item_id = str(item_id)
                else:
                    page.errors.append((None, f"no usable id at {self.cfg.id_field!r}", _error_json(bytes(raw))))
                    continue
            if nul_possible and b"\\u0000" in bytes(raw):
                page.errors.append((item_id, "contains \\u0000, which PostgreSQL jsonb cannot store",
                                    _error_json(bytes(raw))))
                continue
            try:
                micros = pg_micros(item.item_ts, naive)
            except ValueError as exc:
                page.errors.append((item_id, f"{self.cfg.ts_field}: {exc}", bytes(raw).decode("utf-8", "replace")))
                continue
            id_bytes = item_id.encode()
            add((row_and_id(3, len(id_bytes)), id_bytes, ts_and_data(8, micros, len(raw) + 1, 1), raw))
            if since_field is not None:
                since = item.item_since
                with contextlib.suppress(TypeError):
                    if since is not msgspec.UNSET and (since_max is None or since > since_max):
                        since_max = since
        page.since = since_max
        page.row_count = (len(parts) - 1) // 4
        parts.append(COPY_TRAILER)
        page.stage = b"".join(parts)

    # cursor mode -------------------------------------------------------------------------------

    def cursor_page(self, cursor: str | None, since: Any = None) -> Page:
        params = {self.cfg.limit_param: str(self.cfg.page_size)}
        if cursor is not None:
            params[self.cfg.cursor_param] = cursor
        elif since is not None and self.cfg.since_param:
            params[self.cfg.since_param] = str(since)
        decoded: dict[str, Any] = {}

        def validate(response: Response) -> None:
            try:
                top = self._top.decode(response.body)
            except msgspec.DecodeError as exc:
                raise BadResponse(f"the body is not a JSON object: {exc}") from exc
            # the first page is decoded whole once, to find the paths; later pages only where needed
            paths = self.paths or resolve_paths(self.cfg, msgspec.json.decode(response.body))
            decoded["paths"] = paths
            decoded["top"] = top
            decoded["raws"] = self._dig(top, paths.items, list_of_raw=True)

        response = self._get(params, validate)
        if not 200 <= response.status < 300:
            if cursor is not None and 400 <= response.status < 500 and response.status not in (408, 429):
                raise CursorRefused(f"HTTP {response.status}: {response.text()[:200]}")
            raise PermanentFailure(f"the API answered the {'first' if cursor is None else 'next'} page with HTTP "
                                   f"{response.status}: {response.text()[:200]!r}")
        paths: Paths = decoded["paths"]
        top = decoded["top"]
        self.paths = paths
        raws = decoded["raws"]
        page = Page(stage=b"", row_count=0, errors=[], events=len(raws), bytes=len(response.body))
        self._rows(raws, page, response.body)
        cursor_value = self._dig(top, paths.cursor) if paths.cursor else None
        more_value = self._dig(top, paths.has_more) if paths.has_more else None
        page.next_cursor = None if cursor_value in (None, "", msgspec.UNSET) else str(cursor_value)
        page.more = bool(more_value) if isinstance(more_value, bool) else page.next_cursor is not None
        if page.more and page.next_cursor is None:
            raise SourceUnavailable("the API says there is more but gave no next cursor")
        total = self._dig(top, paths.total) if paths.total else None
        page.total = total if isinstance(total, int) else None
        return page

    def _dig(self, top: dict[str, msgspec.Raw], path: str, list_of_raw: bool = False) -> Any:
        """The value at a dotted path of a page decoded one level at a time (items stay raw)."""
        obj: dict[str, msgspec.Raw] = top
        keys = path.split(".")
        for key in keys[:-1]:
            raw = obj.get(key)
            if raw is None or bytes(raw)[:1] != b"{":
                return self._missing(path, list_of_raw)
            obj = self._top.decode(raw)
        raw = obj.get(keys[-1])
        if raw is None:
            return self._missing(path, list_of_raw)
        if list_of_raw:
            try:
                return self._raws.decode(raw)
            except msgspec.ValidationError:
                raise BadResponse(f"{path!r} is not a list") from None
        return msgspec.json.decode(raw)

    @staticmethod
    def _missing(path: str, list_of_raw: bool) -> Any:
        if list_of_raw:
            raise BadResponse(f"no items at {path!r}")
        return msgspec.UNSET

    # range mode --------------------------------------------------------------------------------

    def range_page(self, start: int, count: int) -> Page:
        params = {self.cfg.from_param: str(start), self.cfg.count_param: str(count)}
        decoded: dict[str, Any] = {}
        header = self.cfg.count_header

        def validate(response: Response) -> None:
            lines = [line for line in response.body.split(b"\n") if line.strip()]
            announced = response.headers.get(header)
            if announced is not None and announced.isdigit() and int(announced) != len(lines):
                raise BadResponse(f"{header} announced {announced} items, the body has {len(lines)}")
            if lines and not response.body.endswith(b"\n") and announced is None:
                raise BadResponse("the body ends in the middle of a line")
            decoded["lines"] = lines

        response = self._get(params, validate)
        if not 200 <= response.status < 300:
            raise PermanentFailure(f"the API answered range {start}+{count} with HTTP {response.status}: "
                                   f"{response.text()[:200]!r}")
        lines = decoded["lines"]
        page = Page(stage=b"", row_count=0, errors=[], events=len(lines), bytes=len(response.body), range_start=start,
                    range_count=len(lines))
        self._rows(lines, page, response.body, ndjson=True)
        total = response.headers.get(self.cfg.total_header)
        page.total = int(total) if total is not None and total.isdigit() else None
        return page


def _is_list(raw: msgspec.Raw) -> bool:
    return bytes(raw)[:1] == b"["


def _error_json(data: bytes) -> str:
    text = data.decode("utf-8", "replace").replace("\\u0000", "\\ufffd")
    try:
        msgspec.json.decode(text)
        return text
    except msgspec.DecodeError:
        return msgspec.json.encode(text).decode()


class SourceUnavailable(Exception):
    """The API did not answer usefully within the retries: the attempt fails, the engine retries."""


class CursorRefused(Exception):
    """The API refused a cursor (expired, invalid)."""


# -- the database side ---------------------------------------------------------------------------

def target_identifier(target: str) -> sql.Composable:
    if not TARGET_NAME.match(target):
        raise ConfigProblem("target", f"{target!r} is not a valid table name")
    return sql.Identifier("app", target)


def statement(name: str, target: str | None = None) -> sql.Composable:
    text = sql.SQL(QUERIES[name].sql)  # type: ignore[arg-type]
    return text.format(target=target_identifier(target)) if target is not None else text


async def ensure_target(conn: Any, target: str) -> None:
    """Create the target table if needed; refuse an existing table of another shape."""
    await conn.execute(statement("lock_targets"))
    cursor = await conn.execute(statement("target_columns"), {"target": target})
    columns = [(name, kind) for name, kind in await cursor.fetchall()]
    if columns and columns != TARGET_COLUMNS:
        raise ConfigProblem("target", f"app.{target} exists and is not an ingest target table")
    if not columns:
        await conn.execute(statement("create_target", target))


class PartProgress(msgspec.Struct, kw_only=True):
    """A part's checkpoint."""

    cursor: str | None = None
    since: Any = None
    started: bool = False  # the first page is committed (a missing cursor then means: resume by since)
    frontier: int | None = None  # range mode: every range below is committed
    done: list[tuple[int, int]] = []  # range mode: committed ranges above the frontier
    end: int | None = None
    finished: bool = False
    pages: int = 0
    events: int = 0
    inserted: int = 0
    invalid: int = 0
    restarts: int = 0


class EarlierPageFailed(Exception):
    """A page's transaction rolled back because the one before it did not commit."""


class Committer:
    """Writes pages, ``writers`` transactions at once, committed in the order they were submitted.

    Each page is one transaction under the job's lease, on a connection of its own: its COPY
    into staging runs while the pages before are still inserting or committing (the backends
    share the work); its insert runs after the earlier page's insert; then it waits for the
    earlier page to commit, and writes the checkpoint and the part's counts. So a committed
    checkpoint never covers a page whose rows are not committed: if a transaction fails, every
    later one rolls back too, and the attempt resumes at the last committed checkpoint.
    """

    def __init__(self, ctx: JobContext, payload: ApiIngestJob, metrics: OutboundMetrics,
                 progress: PartProgress) -> None:
        self.ctx = ctx
        self.payload = payload
        self.cfg = payload.config
        self.metrics = metrics
        self.progress = progress
        self.seen = metrics.snapshot()
        self.started = time.monotonic()
        self.last_report = 0.0
        self.total: int | None = None
        self.slots = asyncio.Semaphore(self.cfg.writers)
        self.tail: asyncio.Future[None] | None = None  # the last page's commit
        self.insert_tail: asyncio.Future[None] | None = None  # the last page's insert statements
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        # connections whose staging tables exist (created on a page that committed: a rollback
        # takes the CREATE with it); a pooled connection reconnected is a new object
        self.staged: weakref.WeakSet[Any] = weakref.WeakSet()

    async def submit(self, page: Page, advance: Callable[[PartProgress], None]) -> None:
        """Start writing ``page``; returns once it has a writer (at most ``writers`` pages in
        flight). ``advance`` moves the checkpoint past the page: it runs in commit order, inside
        the page's transaction, after every earlier page has committed."""
        self.raise_failure()
        await self.slots.acquire()
        self.raise_failure()
        loop = asyncio.get_running_loop()
        previous, done = self.tail, loop.create_future()
        previous_insert, inserted = self.insert_tail, loop.create_future()
        self.tail, self.insert_tail = done, inserted
        task = asyncio.create_task(self._write(page, advance, (previous, previous_insert), (done, inserted)),
                                   name="api-ingest-page")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        """Wait for every submitted page; raises the first failure."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.raise_failure()

    async def abort(self) -> None:
        """Roll back whatever is still being written (the attempt is ending with an error)."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _write(self, page: Page, advance: Callable[[PartProgress], None],
                     before: tuple[asyncio.Future[None] | None, asyncio.Future[None] | None],
                     mine: tuple[asyncio.Future[None], asyncio.Future[None]]) -> None:
        # Inserts run in page order too: were a later page's insert first, an id both pages
        # hold (overlap) would make the earlier page wait in Postgres for the later one, which
        # waits here for the earlier one's commit: a deadlock Postgres cannot see. In page
        # order every wait points at an older transaction, which never waits for a newer one.
        (previous, previous_insert), (done, insert_done) = before, mine
        try:
            async with self._transaction() as conn:
                creates = await self._stage(conn, page)
                if previous_insert is not None:
                    await asyncio.wait([previous_insert])
                try:
                    inserted = await self._insert(conn, page)
                finally:
                    insert_done.set_result(None)
                if previous is not None:
                    await asyncio.wait([previous])
                    if previous.exception() is not None:
                        raise EarlierPageFailed("an earlier page did not commit")
                progress, seen = await self._commit(conn, page, inserted, advance)
            # committed: this is now the checkpoint the next page builds on
            if creates:
                self.staged.add(conn)
            for name in PartProgress.__struct_fields__:
                setattr(self.progress, name, getattr(progress, name))
            self.seen = seen
            if page.total is not None:
                self.total = page.total
        except BaseException as exc:
            if not insert_done.done():
                insert_done.set_result(None)
            if self.failure is None or isinstance(self.failure, EarlierPageFailed):
                self.failure = exc
            done.set_exception(EarlierPageFailed(str(exc)))
            done.exception()  # marked retrieved: the next page reads it after wait()
            if not isinstance(exc, Exception):
                raise
        else:
            done.set_result(None)
            self.report(self.progress)
        finally:
            self.slots.release()

    async def _stage(self, conn: Any, page: Page) -> bool:
        """COPY the page's rows (and its bad items) into the staging tables, created first on a
        connection that has none yet (and then True)."""
        creates = conn not in self.staged
        if creates:
            await conn.execute(statement("create_stage"))
            await conn.execute(statement("create_error_stage"))
        if page.row_count:
            async with conn.cursor().copy(statement("copy_stage")) as copy:
                await copy.write(page.stage)
        if page.errors:
            async with conn.cursor().copy(statement("copy_errors")) as copy:
                for row in page.errors:
                    await copy.write_row(row)
        return creates

    async def _insert(self, conn: Any, page: Page) -> int:
        """Insert what is new from the staging tables; returns the rows new."""
        inserted = 0
        if page.row_count:
            cursor = await conn.execute(statement("insert_from_stage", self.cfg.target), {"source": self.cfg.source})
            inserted = cursor.rowcount
        if page.errors:
            await conn.execute(statement("insert_errors_from_stage"),
                               {"sync_id": self.payload.sync_id, "part": self.payload.part.part})
        return inserted

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A page's transaction: what ``ctx.transaction()`` gives (a pooled connection, the job's
        lease checked first and its row locked until the end), in fewer round trips: BEGIN and the
        lease check go together (one pipeline), and ``_commit`` sends the checkpoint and the
        COMMIT together. Whatever is left open when the block ends (an error) is rolled back."""
        ctx, job = self.ctx, self.ctx.job
        try:
            with translate_errors():
                async with ctx.queue.pool.connection() as conn:  # type: ignore[attr-defined]
                    try:
                        async with conn.pipeline():
                            await conn.execute(statement("begin_page"))
                            check = await conn.execute(statement("lease_check"),
                                                       {"job_id": job.id, "token": job.lease_token})
                        if await check.fetchone() is None:
                            raise LeaseLost(job.id)
                        yield conn
                    finally:
                        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                            with contextlib.suppress(Exception):  # a broken connection: the pool drops it
                                await conn.rollback()
        except LeaseLost:
            ctx.lease_lost = True  # as ctx.transaction() does: the worker discards the outcome
            ctx.cancelled.set()
            raise

    async def _commit(self, conn: Any, page: Page, inserted: int,
                      advance: Callable[[PartProgress], None]) -> tuple[PartProgress, dict[str, float]]:
        """In commit order: the checkpoint past this page and the part's counts (record_page),
        then COMMIT, in one round trip. Returns the checkpoint and the metrics it counted: the
        committed state from now on. Without the lease, record_page fails, which aborts the
        transaction before the COMMIT (then rolled back): LeaseLost, nothing of the page written."""
        progress = msgspec.structs.replace(self.progress)
        advance(progress)
        progress.pages += 1
        progress.events += page.events
        progress.inserted += inserted
        progress.invalid += len(page.errors)
        now = self.metrics.snapshot()
        job = self.ctx.job
        try:
            async with conn.pipeline():
                await conn.execute(statement("record_page"), {
                    "job_id": job.id, "token": job.lease_token, "state": msgspec.json.encode(progress).decode(),
                    "sync_id": self.payload.sync_id, "part": self.payload.part.part, "events": page.events,
                    "inserted": inserted, "invalid": len(page.errors),
                    "retries": int(now["retries"] - self.seen["retries"]),
                    "rate_limited": int(now["rate_limited"] - self.seen["rate_limited"]), "bytes": page.bytes,
                    "restarts": progress.restarts, "total": page.total, "finished": progress.finished})
                await conn.execute(statement("commit_page"))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == LEASE_LOST_SQLSTATE:
                raise LeaseLost(job.id) from None
            raise
        return progress, now

    def report(self, progress: PartProgress, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < 0.5:
            return
        self.last_report = now
        rate = progress.events / max(now - self.started, 1e-9)
        metrics = self.metrics.snapshot()
        percent = min(100.0, 100.0 * progress.events / self.total) if self.total else 0.0
        self.ctx.progress(100.0 if progress.finished else percent,
                          f"{progress.events:,} events ({progress.inserted:,} new), {rate:,.0f}/s, "
                          f"{progress.pages:,} pages, {int(metrics['retries'])} retries, "
                          f"{int(metrics['rate_limited'])} 429s")


# -- the job -------------------------------------------------------------------------------------

api_ingest_jobs = JobRegistry()


async def _run_cursor(ctx: JobContext, reader: PageReader, committer: Committer, progress: PartProgress) -> None:
    refusals = 0

    def fetch(cursor: str | None, since: Any) -> asyncio.Future[Page]:
        return asyncio.ensure_future(asyncio.to_thread(reader.cursor_page, cursor, since))

    fetching = fetch(progress.cursor, progress.since if progress.cursor is None and progress.started else None)
    since_seen = progress.since  # the largest since_field fetched (committed or still being written)
    restarts = 0
    try:
        while True:
            try:
                page = await fetching
            except CursorRefused as exc:
                refusals += 1
                if refusals > MAX_CURSOR_REFUSALS:
                    raise SourceUnavailable(f"the API refused {refusals} cursors in a row ({exc}); "
                                            "retrying the job later") from exc
                restarts += 1  # counted in the checkpoint of the next page
                # since is what was fetched, not only committed: a page still being written
                # either commits or fails the whole attempt (and every page after it)
                if reader.cfg.since_param and since_seen is not None:
                    ctx.log(f"the API refused the saved cursor ({exc}); resuming at "
                            f"{reader.cfg.since_param}={since_seen}", level="warning")
                    fetching = fetch(None, since_seen)
                else:
                    ctx.log(f"the API refused the saved cursor ({exc}); restarting the chain from the beginning "
                            "(rows already stored are skipped by their id)", level="warning")
                    fetching = fetch(None, None)
                continue
            refusals = 0
            if page.more:
                fetching = fetch(page.next_cursor, None)  # the next page comes in while this one is written
            if page.since is not None and (since_seen is None or page.since > since_seen):
                since_seen = page.since
            await committer.submit(page, _cursor_advance(page, restarts))
            restarts = 0
            if not page.more:
                break
            ctx.raise_if_cancelled()
        await committer.drain()
    finally:
        await committer.abort()
        with contextlib.suppress(BaseException):
            await fetching


def _cursor_advance(page: Page, restarts: int) -> Callable[[PartProgress], None]:
    def advance(progress: PartProgress) -> None:
        progress.restarts += restarts
        progress.cursor = page.next_cursor if page.more else None
        progress.started = True
        if page.since is not None and (progress.since is None or page.since > progress.since):
            progress.since = page.since
        progress.finished = not page.more
    return advance


def _next_gap(position: int, done: list[tuple[int, int]]) -> int:
    for start, end in sorted(done):
        if start <= position < end:
            position = end
    return position


async def _run_range(ctx: JobContext, reader: PageReader, committer: Committer, progress: PartProgress) -> None:
    cfg = reader.cfg
    part = reader.part
    start = part.range_start if part.range_start is not None else cfg.range_start
    if progress.frontier is None:
        progress.frontier = start
    end = part.range_end if part.range_end is not None else cfg.range_end
    if progress.end is not None:
        end = progress.end if end is None else min(end, progress.end)
    position = _next_gap(progress.frontier, progress.done)
    in_flight: dict[asyncio.Future[Page], tuple[int, int]] = {}
    pending: list[tuple[int, int]] = []  # remainders of short ranges
    size = cfg.page_size
    try:
        while True:
            while len(in_flight) < cfg.in_flight:
                if pending:
                    lo, count = pending.pop(0)
                elif end is None or position < end:
                    lo = position
                    count = size if end is None else min(size, end - position)
                    position = _next_gap(position + count, progress.done)
                else:
                    break
                future = asyncio.ensure_future(asyncio.to_thread(reader.range_page, lo, count))
                in_flight[future] = (lo, count)
            if not in_flight:
                break
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                lo, count = in_flight.pop(future)
                page = future.result()
                got = page.range_count
                if page.total is not None:
                    end = page.total if end is None else min(end, page.total)
                    if got == 0 and lo < end:
                        raise SourceUnavailable(f"range {lo}+{count} came back empty below the announced "
                                                f"total of {page.total}")
                elif got == 0 and (end is None or lo < end):
                    end = lo  # an empty range without an announced total: the data ends here
                covered = (lo, lo + count) if got == 0 or got >= count else (lo, lo + got)
                if 0 < got < count and (end is None or lo + got < end):
                    pending.append((lo + got, count - got))
                await committer.submit(page, _range_advance(covered, end, pending))
            ctx.raise_if_cancelled()
        await committer.drain()
        if not progress.finished:  # cannot happen: every range below the end is committed by now
            raise SourceUnavailable(f"range ingest stopped at {progress.frontier} before its end {end}")
    finally:
        await committer.abort()
        for future in in_flight:
            with contextlib.suppress(BaseException):
                await future


def _range_advance(covered: tuple[int, int], end: int | None,
                   pending: list[tuple[int, int]]) -> Callable[[PartProgress], None]:
    def advance(progress: PartProgress) -> None:
        progress.done = _merge([*progress.done, covered], progress.frontier or 0)
        progress.frontier, progress.done = _advance(progress.frontier or 0, progress.done)
        progress.end = end
        # pending as it is when this page commits: a remainder still to fetch is not finished
        progress.finished = not pending and end is not None and progress.frontier >= end
    return advance


def _merge(ranges: list[tuple[int, int]], frontier: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if hi <= frontier:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _advance(frontier: int, done: list[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    rest = []
    for lo, hi in done:
        if lo <= frontier:
            frontier = max(frontier, hi)
        else:
            rest.append((lo, hi))
    return frontier, rest


@api_ingest_jobs.kind(KIND, queue=QUEUE, max_attempts=20, backoff_base=2.0, backoff_max=300.0)
async def api_ingest(ctx: JobContext, payload: ApiIngestJob) -> dict[str, Any]:
    """Copy one part of a source into its target table (see the module docstring)."""
    try:
        cfg = check_config(payload.config)
    except ConfigProblem as exc:
        raise PermanentFailure(str(exc)) from None
    payload = msgspec.structs.replace(payload, config=cfg)
    checkpoint = await ctx.load_checkpoint()
    progress = msgspec.convert(checkpoint, PartProgress) if checkpoint else PartProgress()
    if progress.finished:
        return _result(payload, progress)
    async with ctx.transaction() as conn:
        if conn is None:
            raise PermanentFailure("api_ingest writes PostgreSQL tables: it needs the PostgreSQL queue backend")
        try:
            await ensure_target(conn, cfg.target)
        except ConfigProblem as exc:
            raise PermanentFailure(str(exc)) from None
    if progress.pages:
        ctx.log(f"resuming after {progress.pages:,} pages ({progress.events:,} events)")
    metrics = OutboundMetrics()
    reader = PageReader(cfg, payload.part, metrics)
    reader.cancel = ctx.cancelled
    committer = Committer(ctx, payload, metrics, progress)
    try:
        if cfg.pagination == "cursor":
            await _run_cursor(ctx, reader, committer, progress)
        else:
            await _run_range(ctx, reader, committer, progress)
    except SourceUnavailable as exc:
        raise RuntimeError(str(exc)) from None  # an ordinary failure: retried with backoff, resumes
    finally:
        await asyncio.to_thread(reader.close)
    committer.report(progress, force=True)
    return _result(payload, progress)


def _result(payload: ApiIngestJob, progress: PartProgress) -> dict[str, Any]:
    return {"sync_id": payload.sync_id, "part": payload.part.part, "pages": progress.pages,
            "events": progress.events, "inserted": progress.inserted, "invalid": progress.invalid,
            "restarts": progress.restarts}


# -- starting a sync (REST and CLI) --------------------------------------------------------------

def probe(cfg: SourceConfig, timeout: float = 15.0) -> None:
    """Fetch the first page the way the job will, to refuse a config that cannot work before
    anything is written: raises ConfigProblem (401/403, no items, no ids, not JSON, unreachable)."""
    quick = msgspec.structs.replace(cfg, page_size=min(cfg.page_size, 100), request_timeout=timeout,
                                    retries=min(cfg.retries, 2))
    reader = PageReader(quick, PartSpec())
    try:
        page = reader.range_page(cfg.range_start, quick.page_size) if cfg.pagination == "range" \
            else reader.cursor_page(None)
    except PermanentFailure as exc:
        message = str(exc)
        if message.startswith(("items_path", "cursor_path")):
            field, message = message.split(": ", 1)
        else:
            field = "api_key" if "credentials" in message else "url"
        raise ConfigProblem(field, message) from None
    except (SourceUnavailable, BadResponse) as exc:
        raise ConfigProblem("url", f"the API gave no usable first page: {exc}") from None
    finally:
        reader.close()
    missing = [reason for item_id, reason, _ in page.errors if item_id is None]
    if missing and not page.row_count:
        raise ConfigProblem("id_field", f"the first page's items have no id at {cfg.id_field!r}")


async def start_sync(queue: Any, conn: Any, cfg: SourceConfig, *, owner_id: str | None = None) -> tuple[int, list[int]]:
    """Record a sync and enqueue one job per part, in the caller's transaction (``conn``): all of
    it exists only if the caller commits. ``cfg`` must have passed check_config (and probe)."""
    await ensure_target(conn, cfg.target)
    cursor = await conn.execute(statement("insert_sync"), {
        "source": cfg.source, "target": cfg.target, "config": msgspec.json.encode(_redacted(cfg)).decode(),
        "owner_id": owner_id})
    sync_id = (await cursor.fetchone())[0]
    job_ids = []
    for part in split_parts(cfg):
        payload = ApiIngestJob(sync_id=sync_id, config=cfg, part=part)
        job = await queue.enqueue(KIND, msgspec.to_builtins(payload), conn=conn, owner_id=owner_id)
        await conn.execute(statement("insert_sync_part"), {"sync_id": sync_id, "part": part.part, "job_id": job.id})
        job_ids.append(job.id)
    return sync_id, job_ids


def _redacted(cfg: SourceConfig) -> dict[str, Any]:
    """The config as recorded in app.api_syncs: without secrets (the job's payload has them)."""
    out = msgspec.to_builtins(cfg)
    if out.get("api_key"):
        out["api_key"] = "***"
    out["headers"] = {k: ("***" if k.lower() in ("authorization", "x-api-key", "cookie") else v)
                      for k, v in out.get("headers", {}).items()}
    return out


# -- running a sync in the foreground (python -m app ingest-api, tests, the bench) ----------------

class SyncCounts(msgspec.Struct, kw_only=True):
    """What a sync (or one part of it) has done so far: SyncStatus here, the REST and dashboard
    shapes (app/routes/syncs.py, app/dashboard/api.py) build on it."""

    id: int
    source: str
    target: str
    pages: int
    events: int
    inserted: int
    invalid: int
    retries: int
    rate_limited: int
    bytes: int
    restarts: int
    total: int | None  # as the API announced it
    last_page_at: datetime | None


class SyncStatus(SyncCounts, kw_only=True):
    owner_id: str | None
    status: str  # queued | running | succeeded | failed (a part is dead or cancelled)
    parts: int
    job_ids: list[int]
    part_statuses: list[str]
    errors: list[str]
    created_at: datetime


def overall_status(statuses: list[str]) -> str:
    if any(s in ("dead", "cancelled") for s in statuses):
        return "failed"
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    if any(s in ("running", "retrying", "failed") for s in statuses):
        return "running"
    return "queued"


async def sync_status(conn: Any, sync_id: int) -> SyncStatus | None:
    cursor = await conn.execute(statement("list_syncs"), {"owner_id": None, "sync_id": sync_id, "limit": 1})
    row = await cursor.fetchone()
    return None if row is None else _sync_of(row)


async def recent_syncs(conn: Any, owner_id: str | None, limit: int) -> list[SyncStatus]:
    """The newest syncs, of one owner (or everyone's for None)."""
    cursor = await conn.execute(statement("list_syncs"), {"owner_id": owner_id, "sync_id": None, "limit": limit})
    return [_sync_of(row) for row in await cursor.fetchall()]


def _sync_of(row: Any) -> SyncStatus:
    (sid, source, target, owner_id, created_at, parts, pages, events, inserted, invalid, retries, limited, size,
     restarts, total, last_page_at, job_ids, statuses, errors) = row
    return SyncStatus(id=sid, source=source, target=target, owner_id=owner_id, status=overall_status(statuses), parts=parts,
                      pages=pages, events=events, inserted=inserted, invalid=invalid, retries=retries,
                      rate_limited=limited, bytes=size, restarts=restarts, total=total, last_page_at=last_page_at,
                      job_ids=job_ids, part_statuses=statuses, errors=[e[-500:] for e in errors if e],
                      created_at=created_at)


async def create_sync(queue: Any, cfg: SourceConfig, *, owner_id: str | None = None,
                      probe_first: bool = True) -> tuple[int, list[int]]:
    """Check, probe, then record and enqueue a sync in one transaction. ConfigProblem when the
    config cannot work (nothing is written then)."""
    cfg = check_config(cfg)
    if probe_first:
        await asyncio.to_thread(probe, cfg)
    async with queue.pool.connection() as conn, conn.transaction():
        return await start_sync(queue, conn, cfg, owner_id=owner_id)


async def run_foreground(database_url: str, cfg: SourceConfig, *, concurrency: int | None = None,
                         on_progress: Callable[[SyncStatus, float], None] | None = None,
                         sync_id: int | None = None) -> SyncStatus:
    """Create a sync (unless ``sync_id`` names one) and run a worker for it in this process until
    every part is finished; returns the final status."""
    from app.jobs import jobs
    from pgqueue.queue import Queue
    from pgqueue.worker import Worker

    parts = max(1, cfg.parts, len(cfg.split_values))
    # a connection per writer of every part running at once, and a few for the worker and the polls
    queue = await Queue.connect(database_url, jobs, max_size=max(4, (concurrency or parts) * cfg.writers + 3))
    try:
        if sync_id is None:
            sync_id, job_ids = await create_sync(queue, cfg)
        else:
            job_ids = []
        worker = Worker(queue, [QUEUE], concurrency or max(parts, len(job_ids)), shutdown_grace=5.0)
        task = asyncio.create_task(worker.run(), name="api-ingest-foreground")
        started = time.monotonic()
        try:
            while True:
                async with queue.pool.connection() as conn:
                    status = await sync_status(conn, sync_id)
                assert status is not None
                if on_progress is not None:
                    on_progress(status, time.monotonic() - started)
                if status.status in ("succeeded", "failed"):
                    return status
                if task.done():
                    await task
                    raise RuntimeError("the worker stopped before the sync finished")
                await asyncio.sleep(0.5)
        finally:
            worker.stop()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await queue.close()
