"""Log-file ingestion: the `LogEntry` line format, line-by-line validation, and the
``ingest_file`` job that streams an uploaded ``.jsonl`` file from storage into
``app.log_entries`` with COPY, checkpointing as it goes.

The line format
---------------
One JSON object per line, UTF-8, ``\\n`` or ``\\r\\n`` line endings::

    {"timestamp": "2024-05-01T12:00:00.250+02:00", "level": "warn", "service": "api",
     "message": "slow request", "attributes": {"path": "/items", "ms": 812}}

- ``timestamp`` (required), stored as UTC (``timestamptz``):
  an RFC 3339 string with an offset or ``Z`` (``2024-05-01T10:00:00Z``; a space may replace
  the ``T``; more than 6 fractional digits are rounded to microseconds); the same without an
  offset, which is taken as UTC; or a number of seconds since the Unix epoch (integer or
  fraction) from 0 up to 253402300799 (9999-12-31). Milliseconds since the epoch are out of
  that range, so such a line is invalid and its reason says so.
- ``level`` (required), case-insensitive, normalised to one of ``trace``, ``debug``,
  ``info`` (also ``information``, ``notice``), ``warning`` (``warn``), ``error`` (``err``),
  ``critical`` (``crit``, ``fatal``, ``alert``, ``emerg``, ``emergency``, ``panic``).
- ``message`` (required): a string of at most 65,536 characters.
- ``service`` (optional): 1 to 200 characters, or null.
- ``attributes`` (optional): any JSON object (or null, meaning ``{}``), stored as jsonb as
  sent (its numbers keep their full precision: jsonb numbers are arbitrary-precision).
- Any other top-level field makes the line invalid (put extra data under ``attributes``).
- A line is at most 1 MiB (`MAX_LINE_BYTES`, not counting its ``\\n``).

What happens to each kind of line or file
-----------------------------------------
Lines keep their number in the file (1-based, blank lines included), so an error report
points at the line an editor shows.

- valid line: a row in ``app.log_entries`` (file_id, line_no, job_id, ts, level, service,
  message, attributes).
- invalid line: a row in ``app.ingest_errors`` (line_no, reason, the first 200 characters as
  an excerpt); the job goes on. Invalid are: malformed JSON, a value of the wrong type, a
  missing or unknown field, an unknown level, an out-of-range timestamp, ``NaN`` /
  ``Infinity`` (not JSON), invalid UTF-8, a NUL character (a raw NUL byte or ``\\u0000``:
  PostgreSQL text cannot hold NUL), a UTF-8 byte order mark anywhere but at the start of
  the file, and a line longer than 1 MiB (read past without holding more than 1 MiB of it
  in memory). Anything PostgreSQL itself still refuses is isolated by bisecting the batch
  and reported the same way, so one bad line never fails the file.
- blank line (only whitespace): skipped and counted as blank, neither valid nor invalid.
- ``\\r\\n`` line endings: accepted (``\\r`` is JSON whitespace).
- a UTF-8 byte order mark at the very start of the file: ignored.
- a last line without a final newline: read like any other.
- an empty file: refused at upload (422, see app/uploads.py); a job given one anyway
  completes with 0 lines.
- the file's object missing from storage, or no longer the size recorded at upload: the job
  fails at once without retries (``PermanentFailure``: it is dead, with the reason as its
  error).
- a database or storage outage: the job fails the attempt and is retried with backoff; the
  retry resumes from the last committed batch.

How the job works
-----------------
A reader thread pulls lines from storage (`LineReader`, from the checkpointed byte offset)
and decodes each with a msgspec ``Decoder(LogEntry)``; it parses the next batch while the
event loop COPYs the previous one, so Python and PostgreSQL work at the same time.
Each batch (``batch_lines`` lines, at most `BATCH_BYTES`) commits in one transaction bound
to the job's lease: COPY into ``app.log_entries``, COPY into ``app.ingest_errors``, the
file's counts, and the checkpoint ``{offset, line_no, valid, invalid, blank}``. A crashed or
retried attempt resumes at that offset, so every line lands exactly once; the primary key
(file_id, line_no) is the backstop. Progress is reported at every 10% of the bytes (so 10%,
50% and 100% are always among the events) and, for slow runs, at most once a second in
between. ``line_delay_max_seconds`` (0-1, default 0) sleeps a random 0..max seconds before
each line to imitate a slow worker in demos; batches then also commit at least once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec
import psycopg
from psycopg.rows import class_row

from pgqueue import JobContext, JobRegistry, PermanentFailure
from pgqueue.db import AsyncConnection
from pgqueue.sql import parse_queries
from pgqueue.storage import READ_CHUNK_BYTES, ObjectNotFound, Storage, StorageError, StoredObject, open_storage

QUERIES = parse_queries((Path(__file__).parent / "sql" / "ingest.sql").read_text())

MAX_LINE_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 65_536
MAX_SERVICE_CHARS = 200
EXCERPT_CHARS = 200
DEFAULT_BATCH_LINES = 10_000
# A batch also ends at this many bytes of input, so long lines cannot make it huge in memory.
BATCH_BYTES = 8 * 1024 * 1024
# With a per-line delay, commit at least this often so a slow run still shows progress.
SLOW_COMMIT_SECONDS = 1.0
# Progress between the 10% steps, at most this often (a slow run moves between steps).
PROGRESS_EVERY_SECONDS = 1.0
MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z

# The column types of copy_log_entries, a binary COPY: no text formatting on our side, no
# parsing of numbers and timestamps on the server's. attributes go as "bytea": raw bytes that are already jsonb's binary form (a version byte, 1,
# then the JSON text), so the JSON msgspec checked is passed through, never decoded into
# Python objects and encoded again (that round trip was a third of the per-line cost).
LOG_ENTRY_TYPES = ("int8", "int8", "int8", "timestamptz", "text", "text", "text", "bytea")
JSONB_VERSION = b"\x01"

INGEST_KIND = "ingest_file"
INGEST_QUEUE = "ingest"

_BOM = b"\xef\xbb\xbf"
# \u0000 not preceded by an escaping backslash (an odd run of backslashes ends in the escape)
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_NAN_OR_INFINITY = re.compile(rb"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")

_LEVEL_ALIASES = {
    "trace": "trace",
    "debug": "debug",
    "info": "info", "information": "info", "notice": "info",
    "warning": "warning", "warn": "warning",
    "error": "error", "err": "error",
    "critical": "critical", "crit": "critical", "fatal": "critical", "alert": "critical",
    "emerg": "critical", "emergency": "critical", "panic": "critical",
}
LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
# The spellings seen in practice, found without lower-casing every line's level.
_LEVELS = {spelling: level for alias, level in _LEVEL_ALIASES.items()
           for spelling in (alias, alias.upper(), alias.title())}


class LogEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One line of an uploaded ``.jsonl`` file (see the module docstring for the rules)."""

    timestamp: datetime | float
    level: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    message: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
    service: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SERVICE_CHARS)] | None = None
    # a JSON object, kept as its raw JSON text (see LOG_ENTRY_TYPES); null means {}
    attributes: msgspec.Raw = msgspec.Raw(b"{}")


class IngestFile(msgspec.Struct, forbid_unknown_fields=True):
    """The payload of an ``ingest_file`` job."""

    file_id: Annotated[int, msgspec.Meta(ge=1)]
    batch_lines: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_BATCH_LINES
    line_delay_max_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class StoredFile(msgspec.Struct, kw_only=True):
    """A row of app.files, as the ingest job needs it."""

    id: int
    owner_id: str
    name: str
    size: int
    sha256: str
    storage_url: str
    storage_key: str


class InvalidLineError(ValueError):
    """A line that decoded but breaks a rule msgspec cannot express (the message is the reason)."""


# Everything that makes one line invalid (and nothing else: other errors fail the attempt).
LINE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, InvalidLineError)


# -- one line ------------------------------------------------------------------------------------

def normalise_timestamp(value: datetime | float) -> datetime:
    """An aware UTC datetime; naive means UTC, numbers are seconds since the epoch."""
    if isinstance(value, float):
        if not 0 <= value <= MAX_EPOCH_SECONDS:
            hint = " (milliseconds? use seconds)" if value > MAX_EPOCH_SECONDS else ""
            raise InvalidLineError(f"timestamp {value:g} is out of range: epoch seconds must be 0 to "
                              f"{MAX_EPOCH_SECONDS}{hint}")
        return datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.tzinfo is UTC:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidLineError(f"timestamp {value.isoformat()} is out of range in UTC") from None


def normalise_level(level: str) -> str:
    found = _LEVELS.get(level) or _LEVEL_ALIASES.get(level.lower())
    if found is None:
        raise InvalidLineError(f"unknown level {level[:40]!r}: use one of {', '.join(LEVELS)} (or an alias)")
    return found


def _null_attributes(attributes: bytes) -> bytes:
    if attributes == b"null":
        return b"{}"
    raise InvalidLineError("attributes must be a JSON object (or null)")


def excerpt(line: bytes) -> str:
    """The start of a line as text for the error report (NUL cannot go into PostgreSQL text)."""
    text = line[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
    return text.rstrip("\r\n").replace("\x00", "\ufffd")


def explain(line: bytes, exc: Exception) -> str:
    """Why a line is not a valid entry, in words an uploader can act on."""
    if isinstance(exc, InvalidLineError):
        return str(exc)
    if isinstance(exc, msgspec.ValidationError):  # (a subclass of DecodeError: well-formed JSON, wrong shape)
        return f"not a valid log entry: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8 text"
    if b"\x00" in line:
        return "contains a NUL byte, which PostgreSQL text cannot store"
    if _NAN_OR_INFINITY.search(line):
        return "NaN and Infinity are not valid JSON numbers"
    if line.startswith(_BOM):
        return "a UTF-8 byte order mark is only allowed at the start of the file"
    return f"not valid JSON: {str(exc).removeprefix('JSON is malformed: ')}"


class LineReader:
    """The lines of a stored object from a byte offset, taken a batch at a time.

    It reads 1 MiB chunks and splits each with one ``bytes.split``: a Python step per line
    (``Storage.iter_lines``) was a third of the parser's time. Lines come without their
    ``\\n``. ``offset`` is where the next line starts: the checkpoint position. A line longer
    than ``max_line_bytes`` is kept as its first ``max_line_bytes + 1`` bytes (enough to tell
    and to quote) and the rest is read past without being held in memory. A UTF-8 byte order
    mark at the very start of the object is dropped.
    """

    def __init__(self, stream: BinaryIO, offset: int, *, max_line_bytes: int = MAX_LINE_BYTES,
                 chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        if chunk_bytes > max_line_bytes + 1:
            raise ValueError("chunk_bytes must not exceed max_line_bytes + 1 (so only lines that span chunks "
                             "can be too long)")
        self.offset = offset
        self.at_end = False  # the object has no more lines
        self._stream = stream
        self._max_line_bytes = max_line_bytes
        self._chunk_bytes = chunk_bytes
        self._lines: list[bytes] = []  # complete lines of the current chunk
        self._next = 0  # the first of them not taken yet
        self._sizes: dict[int, int] = {}  # bytes in the object of the lines whose size is not len + 1
        self._partial: list[bytes] = []  # the start of a line whose end is not read yet (at most max + 1 bytes)
        self._partial_kept = 0
        self._partial_size = 0
        self._at_start = offset == 0

    def take(self, max_lines: int, max_bytes: int = BATCH_BYTES) -> list[bytes]:
        """Up to ``max_lines`` lines; fewer at the end, or once ``max_bytes`` have been read."""
        taken: list[bytes] = []
        start = self.offset
        while len(taken) < max_lines and self.offset - start < max_bytes:
            if self._next == len(self._lines) and not self._fill():
                break
            first, end = self._next, min(len(self._lines), self._next + max_lines - len(taken))
            lines = self._lines[first:end]
            self.offset += sum(map(len, lines)) + len(lines)
            for index, size in self._sizes.items():
                if first <= index < end:
                    self.offset += size - len(self._lines[index]) - 1
            taken += lines
            self._next = end
        return taken

    def close(self) -> None:
        self._stream.close()

    def _fill(self) -> bool:
        """Read until the next complete line (or the end); False when there is none."""
        self._lines, self._next, self._sizes = [], 0, {}
        while not self._lines:
            chunk = self._stream.read(self._chunk_bytes)
            if not chunk:
                if not self._partial_size:
                    self.at_end = True
                    return False
                self._lines = [b"".join(self._partial)]  # the last line, without a final newline
                self._sizes[0] = self._partial_size
                self._start_partial()
                return True
            if self._at_start:
                self._at_start = False
                if chunk.startswith(_BOM):
                    chunk = chunk[len(_BOM):]
                    self.offset += len(_BOM)
            lines = chunk.split(b"\n")
            unfinished = lines.pop()
            if lines and self._partial_size:  # the first line began in an earlier chunk
                size = self._partial_size + len(lines[0]) + 1
                self._keep_partial(lines[0])
                lines[0] = b"".join(self._partial)
                if size != len(lines[0]) + 1:
                    self._sizes[0] = size
                self._start_partial()
            self._lines = lines
            if unfinished:
                self._keep_partial(unfinished)
        return True

    def _keep_partial(self, data: bytes) -> None:
        self._partial_size += len(data)
        room = self._max_line_bytes + 1 - self._partial_kept
        if room > 0:
            self._partial.append(data[:room])
            self._partial_kept += min(room, len(data))

    def _start_partial(self) -> None:
        self._partial, self._partial_kept, self._partial_size = [], 0, 0


# -- a batch of lines ----------------------------------------------------------------------------

class ParsedBatch(msgspec.Struct, kw_only=True):
    """What the reader made of the next lines: rows to COPY and where the file got to."""

    rows: list[tuple[Any, ...]]  # app.log_entries columns, in copy_log_entries order
    errors: list[tuple[Any, ...]]  # app.ingest_errors columns
    blank: int
    end_offset: int
    end_line_no: int
    at_end: bool  # the file has no more lines


class LineParser:
    """Turns the lines of one file into entry rows and error rows.

    Runs in a worker thread (``asyncio.to_thread``), one batch at a time; it only knows
    line numbers and offsets, the counts belong to the job (a batch may still lose rows to
    PostgreSQL's own checks).
    """

    def __init__(self, file_id: int, job_id: int, reader: LineReader, *, line_no: int) -> None:
        self.file_id = file_id
        self.job_id = job_id
        self.reader = reader
        self.line_no = line_no
        self._decode = msgspec.json.Decoder(LogEntry).decode

    def row(self, line: bytes, line_no: int) -> tuple[Any, ...]:
        """The app.log_entries row of a line (columns as in copy_log_entries); raises when it is not
        a valid entry. The hot path: one call per line, the common case without a detour."""
        if not line.isascii():
            line.decode()  # msgspec checks the escapes in the raw attributes, not their UTF-8
        entry = self._decode(line)
        if b"\\u0000" in line and _NUL_ESCAPE.search(line):
            raise InvalidLineError("contains a NUL character (\\u0000), which PostgreSQL text cannot store")
        timestamp = entry.timestamp
        if timestamp.__class__ is not datetime or timestamp.tzinfo is not UTC:
            timestamp = normalise_timestamp(timestamp)
        attributes = bytes(entry.attributes)
        if attributes[:1] != b"{":
            attributes = _null_attributes(attributes)
        return (self.file_id, self.job_id, line_no, timestamp, _LEVELS.get(entry.level) or normalise_level(entry.level),
                entry.service, entry.message, JSONB_VERSION + attributes)

    def next_batch(self, max_lines: int, max_bytes: int = BATCH_BYTES, line_delay_max: float = 0.0,
                   max_seconds: float = SLOW_COMMIT_SECONDS) -> ParsedBatch:
        """The next ``max_lines`` lines (fewer past ``max_bytes`` of input). With a per-line
        delay, a batch also ends after ``max_seconds``."""
        if line_delay_max:
            lines: list[bytes] = []
            deadline = time.monotonic() + max_seconds
            while len(lines) < max_lines and time.monotonic() < deadline and (one := self.reader.take(1)):
                time.sleep(random.uniform(0, line_delay_max))
                lines += one
        else:
            lines = self.reader.take(max_lines, max_bytes)
        rows: list[tuple[Any, ...]] = []
        errors: list[tuple[Any, ...]] = []
        blank = 0
        line_no = self.line_no
        row = self.row
        for line in lines:
            line_no += 1
            try:
                if len(line) > MAX_LINE_BYTES:
                    raise InvalidLineError(f"line is longer than {MAX_LINE_BYTES} bytes")
                rows.append(row(line, line_no))
            except LINE_ERRORS as exc:
                if line.strip():
                    errors.append((self.file_id, self.job_id, line_no, explain(line, exc), excerpt(line)))
                else:
                    blank += 1
        self.line_no = line_no
        return ParsedBatch(rows=rows, errors=errors, blank=blank, end_offset=self.reader.offset, end_line_no=line_no,
                           at_end=self.reader.at_end)


# -- the database side ---------------------------------------------------------------------------

class IngestProgress(msgspec.Struct, kw_only=True):
    """Where an ingest got to: the job's checkpoint, and the counts on its app.files row."""

    offset: int = 0  # byte offset of the next line to read
    line_no: int = 0  # number of the last line read
    valid: int = 0
    invalid: int = 0
    blank: int = 0

    @property
    def lines(self) -> int:
        return self.valid + self.invalid + self.blank

    def after(self, batch: ParsedBatch, valid: int, invalid: int) -> IngestProgress:
        return IngestProgress(offset=batch.end_offset, line_no=batch.end_line_no, valid=self.valid + valid,
                              invalid=self.invalid + invalid, blank=self.blank + batch.blank)


# One function per statement of app/sql/ingest.sql, each on the caller's connection (and so in
# the caller's transaction).

async def get_file(conn: AsyncConnection, file_id: int) -> StoredFile | None:
    cursor = conn.cursor(row_factory=class_row(StoredFile))
    await cursor.execute(QUERIES["get_file"].sql, {"file_id": file_id})
    return await cursor.fetchone()


async def insert_file(conn: AsyncConnection, *, owner_id: str, name: str, content_type: str, size: int, sha256: str,
                      storage_url: str, storage_key: str) -> int:
    cursor = await conn.execute(QUERIES["insert_file"].sql, {
        "owner_id": owner_id, "name": name, "content_type": content_type, "size": size, "sha256": sha256,
        "storage_url": storage_url, "storage_key": storage_key,
    })
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def set_file_job(conn: AsyncConnection, file_id: int, job_id: int) -> None:
    await conn.execute(QUERIES["set_file_job"].sql, {"file_id": file_id, "job_id": job_id})


async def copy_log_entries(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """COPY the rows; returns those PostgreSQL refused (found by bisecting in savepoints) as
    app.ingest_errors rows, so one bad row never sinks its batch."""
    if not rows:
        return []
    try:
        # in a savepoint: a refused COPY leaves the batch's transaction usable
        async with conn.transaction(), conn.cursor().copy(QUERIES["copy_log_entries"].sql) as copy:
            copy.set_types(LOG_ENTRY_TYPES)
            for row in rows:
                await copy.write_row(row)
        return []
    except psycopg.DataError as exc:
        if len(rows) == 1:
            file_id, job_id, line_no, *_ = rows[0]
            reason = f"refused by PostgreSQL: {exc.diag.message_primary or exc}"
            return [(file_id, job_id, line_no, reason, excerpt(rows[0][6].encode("utf-8", "replace")))]
    middle = len(rows) // 2
    return await copy_log_entries(conn, rows[:middle]) + await copy_log_entries(conn, rows[middle:])


async def copy_ingest_errors(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        async with conn.cursor().copy(QUERIES["copy_ingest_errors"].sql) as copy:
            for row in rows:
                await copy.write_row(row)


async def record_file_progress(conn: AsyncConnection, file_id: int, progress: IngestProgress) -> None:
    await conn.execute(QUERIES["record_file_progress"].sql, {
        "file_id": file_id, "lines_total": progress.lines, "lines_valid": progress.valid,
        "lines_invalid": progress.invalid, "lines_blank": progress.blank, "bytes_read": progress.offset,
    })


# -- the job -------------------------------------------------------------------------------------

ingest_jobs = JobRegistry()


class _ProgressReporter:
    """Progress by bytes: each 10% step a batch reaches (the furthest one when a batch passes
    several: one event per batch, not nine identical ones), between steps the exact figure at
    most once a second; 100 % is reported once, with the final counts, by the handler."""

    def __init__(self, ctx: JobContext, size: int, start: IngestProgress) -> None:
        self.ctx = ctx
        self.size = size
        self.step = self._step(start.offset)
        self.last_report = time.monotonic()

    def _percent(self, offset: int) -> float:
        return 100.0 if self.size <= 0 else min(100.0, 100.0 * offset / self.size)

    def _step(self, offset: int) -> int:
        return int(self._percent(offset) // 10) * 10

    def report(self, progress: IngestProgress) -> None:
        message = f"{progress.lines:,} lines: {progress.valid:,} valid, {progress.invalid:,} invalid"
        step = self._step(progress.offset)
        now = time.monotonic()
        if step > self.step:
            if step < 100:
                self.ctx.progress(step, message)
            self.step = step
            self.last_report = now
        elif now - self.last_report >= PROGRESS_EVERY_SECONDS:
            self.ctx.progress(self._percent(progress.offset), message)
            self.last_report = now


async def _load_file(ctx: JobContext, file_id: int) -> tuple[StoredFile, Storage]:
    async with ctx.transaction() as conn:
        if conn is None:
            raise PermanentFailure("ingest_file writes PostgreSQL tables: it needs the PostgreSQL queue backend")
        file = await get_file(conn, file_id)
    if file is None:
        raise PermanentFailure(f"file {file_id} does not exist (deleted after the job was enqueued?)")
    try:
        storage = open_storage(file.storage_url)
        stored = await storage.astat(file.storage_key)
    except ObjectNotFound:
        raise PermanentFailure(f"file {file_id} ({file.name!r}): its object {file.storage_key!r} is missing "
                               f"from storage {file.storage_url}") from None
    except StorageError as exc:
        if isinstance(exc, ValueError):  # a malformed storage URL or key: retrying cannot help
            raise PermanentFailure(f"file {file_id}: {exc}") from None
        raise
    if stored.size != file.size:
        raise PermanentFailure(f"file {file_id} ({file.name!r}): the stored object has {stored.size} bytes, "
                               f"{file.size} were uploaded; it changed since the upload")
    return file, storage


async def _commit_batch(ctx: JobContext, file_id: int, batch: ParsedBatch, progress: IngestProgress) -> IngestProgress:
    """One transaction under the job's lease: entries, errors, counts, checkpoint."""
    async with ctx.transaction() as conn:
        refused = await copy_log_entries(conn, batch.rows)
        await copy_ingest_errors(conn, batch.errors + refused)
        progress = progress.after(batch, valid=len(batch.rows) - len(refused),
                                  invalid=len(batch.errors) + len(refused))
        await record_file_progress(conn, file_id, progress)
        await ctx.save_checkpoint(msgspec.to_builtins(progress), conn=conn)
    return progress


@ingest_jobs.kind(INGEST_KIND, queue=INGEST_QUEUE, max_attempts=10, backoff_base=1.0, backoff_max=60.0)
async def ingest_file(ctx: JobContext, request: IngestFile) -> dict[str, Any]:
    """Stream a stored .jsonl file into app.log_entries (see the module docstring)."""
    file, storage = await _load_file(ctx, request.file_id)
    checkpoint = await ctx.load_checkpoint()
    progress = msgspec.convert(checkpoint, IngestProgress) if checkpoint else IngestProgress()
    if progress.offset:
        ctx.log(f"resuming at line {progress.line_no + 1:,} (byte {progress.offset:,} of {file.size:,})")
    reporter = _ProgressReporter(ctx, file.size, progress)
    stream = await asyncio.to_thread(storage.open_read, file.storage_key, progress.offset)
    reader = LineReader(stream, progress.offset)
    parser = LineParser(file.id, ctx.job.id, reader, line_no=progress.line_no)

    def parse_next() -> asyncio.Future[ParsedBatch]:
        return asyncio.ensure_future(asyncio.to_thread(parser.next_batch, request.batch_lines, BATCH_BYTES,
                                                       request.line_delay_max_seconds))

    parsing = parse_next()
    try:
        while True:
            batch = await parsing
            if not batch.at_end:
                parsing = parse_next()  # read ahead while this batch is written
            progress = await _commit_batch(ctx, file.id, batch, progress)
            reporter.report(progress)
            if batch.at_end:
                break
            ctx.raise_if_cancelled()
    finally:
        # The reader thread cannot be interrupted; let it finish before closing the stream it reads.
        with contextlib.suppress(BaseException):
            await parsing
        await asyncio.to_thread(reader.close)
    ctx.progress(100, f"done: {progress.lines:,} lines, {progress.valid:,} valid, {progress.invalid:,} invalid, "
                      f"{progress.blank:,} blank")
    return {"file_id": file.id, "lines_total": progress.lines, "lines_valid": progress.valid,
            "lines_invalid": progress.invalid, "lines_blank": progress.blank, "bytes_read": progress.offset}


async def enqueue_ingest(queue: Any, conn: AsyncConnection, storage: Storage, stored: StoredObject, *, owner_id: str,
                         name: str, content_type: str, batch_lines: int = DEFAULT_BATCH_LINES,
                         line_delay_max_seconds: float = 0.0) -> tuple[int, int]:
    """Record a stored file and enqueue its ingest job in the caller's transaction (``conn``):
    both exist if and only if the caller commits. Returns ``(file_id, job_id)``."""
    assert stored.sha256 is not None, "record the StoredObject returned by Storage.write"
    file_id = await insert_file(conn, owner_id=owner_id, name=name, content_type=content_type, size=stored.size,
                                sha256=stored.sha256, storage_url=storage.url, storage_key=stored.key)
    payload = IngestFile(file_id=file_id, batch_lines=batch_lines, line_delay_max_seconds=line_delay_max_seconds)
    job = await queue.enqueue(INGEST_KIND, msgspec.to_builtins(payload), conn=conn, owner_id=owner_id)
    await set_file_job(conn, file_id, job.id)
    return file_id, job.id
