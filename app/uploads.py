"""Log-file upload and ingest status: ``POST /api/v1/files/upload`` and ``GET /api/v1/jobs/{id}``.

The upload is parsed as it arrives (python-multipart's streaming parser over
``request.stream()``) and the file part is piped straight into storage: the file is never
held whole in memory nor spooled to a temporary file first. What the route decides:

- 415 ``unsupported_media_type``: the request is not ``multipart/form-data``.
- 415 ``unsupported_file_type``: the file name does not end in ``.jsonl``, or its content
  does not look like JSON lines: after an optional UTF-8 byte order mark and whitespace it
  must start with ``{``, and (the test git and grep use for binary files) its first 512
  bytes must hold no NUL byte. Everything else is judged line by line by the ingest job:
  invalid UTF-8, a NUL further on, or garbage after a good start become invalid lines.
- 422 ``empty_file``: nothing but whitespace (or nothing at all).
- 413 ``payload_too_large``: more than ``APP_MAX_UPLOAD_BYTES`` (default 100 MB); refused
  from Content-Length before reading when it says so, else as soon as the stream passes it.
- 422 ``validation_error``: no ``file`` part, a second file, or any other form field.
- 400 ``bad_request``: a malformed multipart body.
- 202: ``{"job_id", "file_id"}``. The file row and its ingest job are inserted in one
  transaction, after the object is complete in storage.

Whatever fails, nothing is left behind: a refused or broken stream stores no object (the
storage layer's guarantee), and if recording the upload fails the object is deleted again.
The storage key is generated (``YYYY/MM/DD/<uuid>.jsonl`` under the storage URL, which says
where: ``.data/uploads`` by default, so nothing is stored under ``uploads/uploads/``); the client's file name
is only recorded, reduced to its last path segment without control characters, so
``../../x.jsonl`` is stored under a fresh key and listed as ``x.jsonl``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from psycopg.rows import class_row
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.api import parse_job_id, read_query
from app.auth import authenticate, may_see
from app.errors import ApiError, not_found, validation_error
from app.ingest import QUERIES, enqueue_ingest
from app.openapi import operation
from app.redact import exception_message
from pgqueue.db import transaction
from pgqueue.storage import ObjectTooLarge, Storage, StorageError, open_storage

log = logging.getLogger("app.uploads")

FILE_FIELD = "file"
ALLOWED_EXTENSION = ".jsonl"
MAX_NAME_CHARS = 255
SNIFF_BYTES = 512
MAX_BOUNDARY_BYTES = 70
# Room for the multipart framing around the file when judging Content-Length.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$")


def unsupported_file_type(message: str) -> ApiError:
    return ApiError(415, "unsupported_file_type", message)


# -- the multipart stream ------------------------------------------------------------------------

class PartStart(msgspec.Struct):
    name: str | None
    filename: str | None
    content_type: str


class PartData(msgspec.Struct):
    data: bytes


class PartEnd(msgspec.Struct):
    pass


async def multipart_events(body: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[PartStart | PartData | PartEnd]:
    """python-multipart's push parser as an async stream of part starts, data and ends.

    Holds at most one network chunk at a time. Raises 400 on a malformed body.
    """
    events: list[PartStart | PartData | PartEnd] = []
    header_name, header_value = bytearray(), bytearray()
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name, filename = options.get(b"name"), options.get(b"filename")
        events.append(PartStart(
            name=None if name is None else name.decode("utf-8", "replace"),
            filename=None if filename is None else filename.decode("utf-8", "replace"),
            content_type=headers.get(b"content-type", b"").decode("latin-1").strip(),
        ))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(PartData(data[start:end]))

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": lambda: events.append(PartEnd()),
    })
    try:
        async for chunk in body:
            parser.write(chunk)
            for event in events:
                yield event
            events.clear()
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    for event in events:
        yield event


class ContentCheck:
    """Watches the start of an upload: JSON lines are text (no NUL) opening with ``{``."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.leading = True  # still in the byte order mark / whitespace before the content
        self.done = False
        self.position = 0

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        if self.leading:
            if self.position == 0 and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            self.position += len(chunk)
            chunk = chunk.lstrip(_WHITESPACE)
            if not chunk:
                return
            self.leading = False
        self.head.extend(chunk[: SNIFF_BYTES - len(self.head)])
        if len(self.head) >= SNIFF_BYTES:
            self._judge()

    def finish(self) -> None:
        if self.leading:
            raise ApiError(422, "empty_file", "the file is empty: it holds no JSON lines")
        if not self.done:
            self._judge()

    def _judge(self) -> None:
        self.done = True
        if not self.head.startswith(b"{") or b"\x00" in self.head:
            raise unsupported_file_type("the file does not look like JSON lines: it must be text with one JSON "
                                        "object per line, starting with `{`")


async def file_data(events: AsyncIterator[PartStart | PartData | PartEnd], check: ContentCheck) -> AsyncIterator[bytes]:
    """The data of the current (file) part, checked as it passes; ends with the part."""
    async for event in events:
        if isinstance(event, PartData):
            check.feed(event.data)
            yield event.data
        elif isinstance(event, PartEnd):
            check.finish()
            return
        else:
            break
    raise ApiError(400, "bad_request", "malformed multipart body: the file part does not end")


def clean_file_name(raw: str) -> str:
    """The name to record: the last path segment, printable characters only, at most 255."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(char for char in name if char.isprintable()).strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - len(ALLOWED_EXTENSION)] + ALLOWED_EXTENSION
    return name


def new_storage_key() -> str:
    return f"{datetime.now(UTC):%Y/%m/%d}/{uuid.uuid4().hex}{ALLOWED_EXTENSION}"


def _boundary(request: Request) -> bytes:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       f"send the file as multipart/form-data in a `{FILE_FIELD}` field")
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "the multipart/form-data Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY_BYTES:  # RFC 2046: 1 to 70 characters
        raise ApiError(400, "bad_request", f"the multipart boundary is longer than {MAX_BOUNDARY_BYTES} characters")
    return boundary


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the file is larger than the upload limit of {limit} bytes")


async def _bounded(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, refused once it passes the file limit plus the multipart allowance: the
    bytes around the file part (preamble, epilogue) count too, as they do in Content-Length."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit + MULTIPART_OVERHEAD_BYTES:
            raise _too_large(limit)
        yield chunk


# -- routes --------------------------------------------------------------------------------------

class UploadAccepted(msgspec.Struct, kw_only=True):
    job_id: int
    file_id: int


@operation(summary="Upload a .jsonl log file and start its ingestion", tag="files", response=UploadAccepted,
           status=202, errors=(400, 413, 415, 422, 503),
           description="multipart/form-data with the file in a `file` field. The file is streamed to storage "
                       "(never held in memory) and an `ingest_file` job is enqueued in the same transaction "
                       "as the file's row; follow it with GET /api/v1/jobs/{job_id} or GET /jobs/{job_id}/events.")
async def upload_file(request: Request) -> Response:
    user = await authenticate(request)
    settings = request.state.settings
    limit = settings.max_upload_bytes
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(limit)
    try:
        storage = open_storage(settings.upload_storage_url())
    except StorageError as exc:
        raise ApiError(503, "storage_unavailable", f"file storage is not configured correctly: {exc}") from None

    stored = None
    try:
        name, content_type = None, ""
        events = multipart_events(_bounded(request.stream(), limit), boundary)
        async for event in events:
            if not isinstance(event, PartStart):
                continue  # data of a part we refused never gets here: refusing raises
            if event.name != FILE_FIELD or event.filename is None:
                raise validation_error([{"field": event.name or "$",
                                         "message": f"unexpected form field: send only the file, in `{FILE_FIELD}`"}])
            if stored is not None:
                raise validation_error([{"field": FILE_FIELD, "message": "send one file per upload"}])
            name = clean_file_name(event.filename)
            if not name.lower().endswith(ALLOWED_EXTENSION) or len(name) == len(ALLOWED_EXTENSION):
                raise unsupported_file_type(f"only {ALLOWED_EXTENSION} files are accepted, not {name or '(no name)'!r}")
            content_type = event.content_type if _MEDIA_TYPE.match(event.content_type) else "application/octet-stream"
            try:
                stored = await storage.awrite(new_storage_key(), file_data(events, ContentCheck()), max_bytes=limit)
            except ObjectTooLarge:
                raise _too_large(limit) from None
        if stored is None or name is None:
            raise validation_error([{"field": FILE_FIELD, "message": "no file: send it in the `file` field"}])
        queue = request.state.queue
        async with transaction(queue.pool) as conn:
            file_id, job_id = await enqueue_ingest(
                queue, conn, storage, stored, owner_id=user.owner_id, name=name, content_type=content_type,
                batch_lines=settings.ingest_batch_lines,
                line_delay_max_seconds=settings.ingest_line_delay_max_seconds)
    except BaseException as exc:
        if stored is not None:
            # shielded: even a cancelled request must not leave its object behind
            await asyncio.shield(_delete_quietly(storage, stored.key))
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "bad_request", "the client went away before the upload ended") from None
        if isinstance(exc, StorageError):
            raise ApiError(503, "storage_unavailable", f"file storage failed: {exc}") from None
        raise
    return Response(msgspec.json.encode(UploadAccepted(job_id=job_id, file_id=file_id)), status_code=202,
                    media_type="application/json")


async def _delete_quietly(storage: Storage, key: str) -> None:
    try:
        await storage.adelete(key)
    except StorageError as exc:
        log.warning("could not delete the object %r of a failed upload: %s", key, exc)


class LineCounts(msgspec.Struct, kw_only=True):
    total: int
    valid: int
    invalid: int
    blank: int


class FileInfo(msgspec.Struct, kw_only=True):
    id: int
    name: str
    size: int
    bytes_read: int


class JobProgress(msgspec.Struct, kw_only=True):
    """A job's state in the words of the upload API."""

    job_id: int
    kind: str
    status: Annotated[Literal["queued", "processing", "completed", "failed"], msgspec.Meta(
        description="the upload API's word: processing = running or waiting to retry after a failed attempt; "
                    "failed = dead or cancelled. It differs from `job_status` on purpose")]
    job_status: Annotated[str, msgspec.Meta(
        description="the engine's own status, as GET /jobs/{id} shows it: queued, running, failed (= a failed "
                    "attempt, waiting to retry), succeeded, dead, cancelled")]
    percent: float | None
    lines: LineCounts | None  # ingest jobs only
    file: FileInfo | None  # ingest jobs only
    attempts: int
    max_attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class _JobStatusRow(msgspec.Struct, kw_only=True):
    job_id: int
    kind: str
    status: str
    owner_id: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    file_id: int | None
    file_name: str | None
    file_size: int | None
    bytes_read: int | None
    lines_total: int | None
    lines_valid: int | None
    lines_invalid: int | None
    lines_blank: int | None
    reported_percent: float | None


# queued: not started; processing: running, or failed and waiting for its retry; completed;
# failed: dead (out of attempts, or a permanent failure) or cancelled.
_API_STATUS = {"waiting": "queued", "queued": "queued", "running": "processing", "failed": "processing", "succeeded": "completed",
               "dead": "failed", "cancelled": "failed"}


def _progress_of(row: _JobStatusRow, *, admin: bool) -> JobProgress:
    lines, file, percent = None, None, row.reported_percent
    if row.file_id is not None:
        assert row.file_name is not None and row.file_size is not None and row.bytes_read is not None
        lines = LineCounts(total=row.lines_total or 0, valid=row.lines_valid or 0, invalid=row.lines_invalid or 0,
                           blank=row.lines_blank or 0)
        file = FileInfo(id=row.file_id, name=row.file_name, size=row.file_size, bytes_read=row.bytes_read)
        percent = 100.0 if row.file_size == 0 else round(100.0 * row.bytes_read / row.file_size, 2)
    if row.status == "succeeded":
        percent = 100.0
    status = _API_STATUS[row.status]
    if status == "queued" and row.attempts > 0:
        status = "processing"  # released by a stopping worker or rescued: it has started before
    return JobProgress(job_id=row.job_id, kind=row.kind, status=status, job_status=row.status,  # type: ignore[arg-type]
                       percent=percent, lines=lines, file=file, attempts=row.attempts,
                       max_attempts=row.max_attempts,
                       error=(row.last_error if admin else exception_message(row.last_error)) if status == "failed" else None,
                       created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


@operation(summary="A job's status, percent and (for file ingestion) line counts", tag="files",
           response=JobProgress, path_params={"job_id": "the job's id (from the upload's answer)"}, errors=(404,),
           description="status is queued, processing (running, or waiting to retry after a failed attempt), "
                       "completed or failed; `job_status` is the engine's own word. Another user's job is a 404.")
async def job_progress(request: Request) -> Response:
    user = await authenticate(request)
    job_id = parse_job_id(request.path_params["job_id"])
    async with request.state.queue.pool.connection() as conn:
        cursor = conn.cursor(row_factory=class_row(_JobStatusRow))
        await cursor.execute(QUERIES["job_status"].sql, {"job_id": job_id})
        row = await cursor.fetchone()
    if row is None or not may_see(user, row.owner_id):
        raise not_found(f"job {job_id} not found")
    return Response(msgspec.json.encode(_progress_of(row, admin=user.is_admin)), media_type="application/json")


class FileListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class UploadOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    size: int
    bytes_read: int
    lines_total: int
    lines_valid: int
    lines_invalid: int
    lines_blank: int
    job_id: int | None
    job_status: Annotated[str | None, msgspec.Meta(description="the ingest job's status; null once it was pruned")]
    owner_id: str
    created_at: datetime
    finished_at: datetime | None


class UploadList(msgspec.Struct, kw_only=True):
    files: list[UploadOut]


@operation(summary="Uploaded files, newest first, with their line counts and ingest status", tag="files",
           query=FileListQuery, response=UploadList,
           description="Your own uploads; an admin sees everyone's.")
async def list_files(request: Request) -> Response:
    user = await authenticate(request)
    query = read_query(request, FileListQuery)
    params = {"owner_id": None if user.is_admin else user.owner_id, "limit": query.limit}
    async with request.state.queue.pool.connection() as conn:
        cursor = conn.cursor(row_factory=class_row(UploadOut))
        await cursor.execute(QUERIES["list_files"].sql, params)
        files = await cursor.fetchall()
    return Response(msgspec.json.encode(UploadList(files=files)), media_type="application/json")


ROUTES: list[BaseRoute] = [
    Route("/api/v1/files", list_files, methods=["GET"]),
    Route("/api/v1/files/upload", upload_file, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}", job_progress, methods=["GET"]),
]
