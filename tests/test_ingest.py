"""Log-file ingestion end to end, over a real uvicorn server and real PostgreSQL: upload, follow
the SSE stream, exact counts on 100,000 lines, SIGKILL and database outages mid-file, every
documented edge case of the upload and of the line format, and the job-status endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.ingest import MAX_LINE_BYTES, LineParser, LineReader, LogEntry
from pgqueue.queue import Queue
from pgqueue.storage import open_storage
from tests import s3server
from tests.conftest import PgServer
from tests.helpers import wait_for, wait_for_sync
from tests.ingest_fixtures import *  # noqa: F403
from tests.ingest_fixtures import (
    file_rows,
    follow_events,
    invalid_line_numbers,
    job_progress,
    jsonl,
    make_log_lines,
    multipart_body,
    stored_objects,
    upload,
    wait_until_finished,
)
from tests.process_fixtures import query, scalar, try_scalar
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

s3_server = s3server.s3_server

VALID = {"timestamp": "2024-05-01T12:00:00Z", "level": "info", "message": "hello"}


def root_of(storage_url: str) -> Path:
    return Path(storage_url.removeprefix("file://"))


def parse_all(data: bytes, batch: int = 1000) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """Run the ingest job's reader and parser over bytes (no database): (rows, errors, blank lines)."""
    parser = LineParser(1, 1, LineReader(io.BytesIO(data), 0), line_no=0)
    rows, errors, blank = [], [], 0
    while True:
        parsed = parser.next_batch(batch)
        rows += parsed.rows
        errors += parsed.errors
        blank += parsed.blank
        if parsed.at_end:
            return rows, errors, blank


# -- reading lines -------------------------------------------------------------------------------

def lines_by_storage(data: bytes, max_line_bytes: int) -> list[tuple[bytes, int]]:
    """The reference: Storage.iter_lines' (line, end offset) pairs, line endings dropped."""
    storage = open_storage(Path(tempfile.mkdtemp()).as_uri())
    storage.write("f.jsonl", [data])
    return [(line.removesuffix(b"\n")[: max_line_bytes + 1], end)
            for line, end in storage.iter_lines("f.jsonl", max_line_bytes=max_line_bytes)]


def drain(reader: LineReader) -> list[bytes]:
    lines = []
    while batch := reader.take(3):
        lines += batch
    return lines


@pytest.mark.parametrize("seed", range(40))
def test_line_reader_agrees_with_storage_and_resumes_exactly(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [b"", b"\n", b"\r\n", b"x", b"{}", b"ab" * 17, b"y" * 70, b"\xef\xbb\xbf", b" "]
    data = (b"\xef\xbb\xbf" if seed % 3 == 0 else b"") + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 80)))
    max_line_bytes, chunk = 50, rng.randint(1, 51)
    expected = lines_by_storage(data, max_line_bytes)
    if data == b"\xef\xbb\xbf":  # the reader drops the file's byte order mark: nothing is left
        expected = []
    elif data.startswith(b"\xef\xbb\xbf"):
        expected[0] = (data[3:].split(b"\n")[0][: max_line_bytes + 1], expected[0][1])
    # taken in random batch sizes; after each batch, a fresh reader from its offset must go on identically
    reader = LineReader(io.BytesIO(data), 0, max_line_bytes=max_line_bytes, chunk_bytes=chunk)
    got: list[tuple[bytes, int]] = []
    while batch := reader.take(rng.randint(1, 7)):
        got += [(line, -1) for line in batch]
        got[-1] = (got[-1][0], reader.offset)
        rest = LineReader(io.BytesIO(data[reader.offset:]), reader.offset, max_line_bytes=max_line_bytes,
                          chunk_bytes=chunk)
        remaining = [line for line, _ in expected[len(got):]]
        assert drain(rest) == remaining
    assert reader.at_end and reader.offset == len(data)
    assert [line for line, _ in got] == [line for line, _ in expected]
    assert [end for _, end in got if end != -1] == [end for (_, end), (_, mine) in zip(expected, got, strict=True)
                                                      if mine != -1]


def test_line_reader_keeps_at_most_one_line_limit_of_a_long_line() -> None:
    data = b"a\n" + b"b" * 5000 + b"\nc"
    reader = LineReader(io.BytesIO(data), 0, max_line_bytes=100, chunk_bytes=64)
    assert reader.take(10) == [b"a", b"b" * 101, b"c"]
    assert reader.offset == len(data) and reader.take(10) == [] and reader.at_end


# -- the line format (the parser alone: fast, exhaustive) ----------------------------------------

@pytest.mark.parametrize(("timestamp", "expected"), [
    ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00"),
    ("2024-05-01T14:30:00.25+02:30", "2024-05-01T12:00:00.250000+00:00"),
    ("2024-05-01 12:00:00-05:00", "2024-05-01T17:00:00+00:00"),
    ("2024-05-01T12:00:00", "2024-05-01T12:00:00+00:00"),  # no offset: UTC
    (1714564800, "2024-05-01T12:00:00+00:00"),  # epoch seconds
    (1714564800.5, "2024-05-01T12:00:00.500000+00:00"),
    (0, "1970-01-01T00:00:00+00:00"),
])
def test_timestamps_are_normalised_to_utc(timestamp: Any, expected: str) -> None:
    rows, errors, _ = parse_all(jsonl({**VALID, "timestamp": timestamp}))
    assert errors == []
    assert rows[0][3] == datetime.fromisoformat(expected)
    assert rows[0][3].tzinfo is UTC


@pytest.mark.parametrize(("level", "expected"), [
    ("info", "info"), ("INFO", "info"), ("Warn", "warning"), ("WARNING", "warning"), ("err", "error"),
    ("Fatal", "critical"), ("notice", "info"), ("TRACE", "trace"), ("dEbUg", "debug"),
])
def test_levels_are_normalised(level: str, expected: str) -> None:
    rows, errors, _ = parse_all(jsonl({**VALID, "level": level}))
    assert errors == [] and rows[0][4] == expected


@pytest.mark.parametrize(("line", "reason"), [
    (b'{"timestamp": "2024-05-01T12:00:00Z", "level": "info"', "not valid JSON"),
    (b'{"timestamp": "2024-05-01T12:00:00Z", "level": "info"}', "missing required field `message`"),
    (b'{"timestamp": "2024-05-01T12:00:00Z", "level": "loud", "message": "x"}', "unknown level 'loud'"),
    (b'{"timestamp": "yesterday", "level": "info", "message": "x"}', "Invalid RFC3339"),
    (b'{"timestamp": 1714564800000, "level": "info", "message": "x"}', "milliseconds?"),
    (b'{"timestamp": -1, "level": "info", "message": "x"}', "out of range"),
    (b'{"timestamp": "9999-12-31T23:00:00-05:00", "level": "info", "message": "x"}', "out of range in UTC"),
    (b'{"timestamp": NaN, "level": "info", "message": "x"}', "NaN and Infinity"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "attributes": {"v": -Infinity}}', "NaN and Infinity"),
    (b'{"timestamp": 1, "level": "info", "message": 5}', "Expected `str`, got `int`"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "host": "a"}', "unknown field `host`"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "attributes": [1]}', "attributes must be a JSON object"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "attributes": {"k": "\\udc00"}}', "not valid JSON"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "attributes": {"k": "\xff"}}', "not valid UTF-8"),
    (b'{"timestamp": 1, "level": "info", "message": "caf\xe9"}', "not valid UTF-8"),
    (b'{"timestamp": 1, "level": "info", "message": "a\x00b"}', "NUL byte"),
    (b'{"timestamp": 1, "level": "info", "message": "a\\u0000b"}', "NUL character"),
    (b'{"timestamp": 1, "level": "info", "message": "x", "attributes": {"k": "\\u0000"}}', "NUL character"),
    (b'{"timestamp": 1, "level": "info", "message": "\\ud800"}', "not valid JSON"),
    (b'\xef\xbb\xbf{"timestamp": 1, "level": "info", "message": "x"}', "byte order mark"),
    (b"[1, 2, 3]", "Expected `object`, got `array`"),
    (b"\x89PNG\r\x1a binary", "not valid"),
    (b'{"timestamp": 1, "level": "info", "message": "' + b"m" * 70_000 + b'"}', "length <= 65536"),
    (b'{"timestamp": 1, "level": "info", "service": "", "message": "x"}', "length >= 1"),
])
def test_invalid_lines_are_reported_with_a_reason(line: bytes, reason: str) -> None:
    data = jsonl(VALID) + line + b"\n" + jsonl(VALID)  # line 2: a BOM there is not the file's
    rows, errors, _ = parse_all(data)
    assert [row[2] for row in rows] == [1, 3], "the good lines around it are kept"
    ((file_id, job_id, line_no, why, excerpt),) = errors
    assert (file_id, job_id, line_no) == (1, 1, 2)
    assert reason in why
    assert "\x00" not in excerpt and len(excerpt) <= 200


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    rows, errors, _ = parse_all(jsonl({**VALID, "message": "C:\\u0000dir"}))
    assert errors == [] and rows[0][6] == "C:\\u0000dir"


def test_blank_lines_crlf_bom_and_no_final_newline() -> None:
    data = (b"\xef\xbb\xbf" + jsonl(VALID).replace(b"\n", b"\r\n") + b"\r\n   \n\t\n"
            + jsonl({**VALID, "message": "last"}).rstrip(b"\n"))
    rows, errors, blank = parse_all(data)
    assert errors == [] and blank == 3
    assert [(row[2], row[6]) for row in rows] == [(1, "hello"), (5, "last")]


def test_attributes_service_and_message_are_kept_as_sent() -> None:
    entry = {**VALID, "service": "billing", "message": "tab\there\nnewline \\ backslash",
             "attributes": {"user": {"id": 7, "tags": ["a", "b"]}, "big": 123456789012345678901234567890}}
    rows, errors, _ = parse_all(jsonl(entry))
    assert errors == []
    _, _, _, _, _, service, message, attributes = rows[0]
    assert (service, message) == ("billing", entry["message"])
    assert LogEntry.__struct_fields__ == ("timestamp", "level", "message", "service", "attributes")
    assert attributes[:1] == b"\x01"  # jsonb's binary form: version 1, then the JSON text as sent
    assert json.loads(attributes[1:]) == entry["attributes"]


def test_a_long_line_is_cut_and_reported(tmp_path: Path) -> None:
    storage = open_storage(tmp_path.as_uri())
    huge = b'{"timestamp": 1, "level": "info", "message": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}\n'
    storage.write("f.jsonl", [jsonl(VALID), huge, jsonl(VALID)])
    parsed = LineParser(1, 1, LineReader(storage.open_read("f.jsonl"), 0), line_no=0).next_batch(100)
    assert [row[2] for row in parsed.rows] == [1, 3]
    assert [(e[2], e[3]) for e in parsed.errors] == [(2, f"line is longer than {MAX_LINE_BYTES} bytes")]
    assert parsed.end_offset == len(jsonl(VALID)) * 2 + len(huge)


# -- upload, SSE, counts -------------------------------------------------------------------------

def assert_progress_milestones(events: list[Any]) -> None:
    reports = [(event.data["percent"], event.data.get("message")) for event in events if event.type == "progress"]
    percents = [percent for percent, _ in reports]
    assert percents[-1] == 100, percents
    assert percents == sorted(percents), "progress never goes back"
    assert len(set(reports)) == len(reports), f"no report repeats another: {reports}"
    assert events[-1].type == "succeeded"


async def test_upload_then_follow_the_event_stream_to_completion(start_server: Callable[..., LiveServer],
                                                                 alice: ApiUser, ingest_storage_url: str) -> None:
    server = start_server(run_worker=True, storage_url=ingest_storage_url, ingest_batch_lines=100)
    content = b"".join(make_log_lines(2_000, invalid_every=50))
    response = await upload(server, alice, content, "service.jsonl")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"job_id", "file_id"}

    events = await follow_events(server, alice, accepted["job_id"])
    assert_progress_milestones(events)
    assert "started" in [event.type for event in events]

    progress = await job_progress(server, alice, accepted["job_id"])
    assert progress["status"] == "completed" and progress["percent"] == 100
    assert progress["lines"] == {"total": 2_000, "valid": 1_960, "invalid": 40, "blank": 0}
    assert progress["file"] == {"id": accepted["file_id"], "name": "service.jsonl", "size": len(content),
                                "bytes_read": len(content)}

    rows = file_rows(server.database_url, accepted["file_id"])
    assert rows["entries"] == rows["distinct_entries"] == 1_960
    assert sorted(rows["errors"]) == invalid_line_numbers(2_000, 50)
    assert rows["job_id"] == accepted["job_id"] and rows["owner_id"] == str(alice.id)
    assert rows["sha256"] == hashlib.sha256(content).hexdigest()
    assert stored_objects(root_of(ingest_storage_url)) == [rows["storage_key"]]
    # YYYY/MM/DD/<uuid>.jsonl: the storage URL alone says where (no uploads/uploads/)
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.jsonl", rows["storage_key"]), rows["storage_key"]
    # what landed, exactly: UTC timestamps, normalised levels, attributes as jsonb
    (ts, level, service, message, attributes), = query(
        server.database_url, "SELECT ts, level, service, message, attributes FROM app.log_entries "
                             "WHERE file_id = %s AND line_no = 2", [accepted["file_id"]])
    assert ts == datetime(2024, 5, 1, 10, 0, 2, 2000, tzinfo=UTC)  # sent as 12:00:02.002+02:00
    assert (level, service, message, attributes) == ("error", "api", "request 2 handled",  # sent as ERROR
                                                     {"path": "/items/2", "status": 200})


async def test_upload_to_s3_then_follow_the_event_stream(start_server: Callable[..., LiveServer], alice: ApiUser,
                                                         s3_server: s3server.S3TestServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)  # read by open_storage in the server and its worker
    bucket = s3_server.create_bucket()
    server = start_server(run_worker=True, storage_url=f"s3://{bucket}/logs", ingest_batch_lines=200)
    content = b"".join(make_log_lines(1_000, invalid_every=100))
    response = await upload(server, alice, content)
    assert response.status_code == 202, response.text
    accepted = response.json()
    events = await follow_events(server, alice, accepted["job_id"])
    assert_progress_milestones(events)
    rows = file_rows(server.database_url, accepted["file_id"])
    assert (rows["lines_total"], rows["lines_valid"], rows["lines_invalid"]) == (1_000, 990, 10)
    assert rows["entries"] == 990 and sorted(rows["errors"]) == invalid_line_numbers(1_000, 100)
    assert rows["storage_url"] == f"s3://{bucket}/logs"
    assert s3_server.object_names(bucket) == [f"logs/{rows['storage_key']}"]


async def test_100000_lines_with_one_percent_invalid_give_exact_counts(
        start_server: Callable[..., LiveServer], alice: ApiUser, ingest_storage_url: str) -> None:
    server = start_server(run_worker=True, storage_url=ingest_storage_url)
    response = await upload(server, alice, make_log_lines(100_000, invalid_every=100), "big.jsonl")
    assert response.status_code == 202, response.text
    accepted = response.json()
    progress = await wait_until_finished(server, alice, accepted["job_id"], timeout=120)
    assert progress["status"] == "completed", progress
    assert progress["lines"] == {"total": 100_000, "valid": 99_000, "invalid": 1_000, "blank": 0}
    rows = file_rows(server.database_url, accepted["file_id"])
    assert rows["entries"] == rows["distinct_entries"] == 99_000
    expected_invalid = invalid_line_numbers(100_000, 100)
    assert sorted(rows["errors"]) == expected_invalid
    assert rows["entry_lines"] == [number for number in range(1, 100_001) if number % 100]
    reasons = {reason.split(":")[0] for reason, _ in rows["errors"].values()}
    assert reasons == {"not valid JSON", "unknown level 'loud'", "not a valid log entry",
                       "NaN and Infinity are not valid JSON numbers"}


# -- crashes and outages mid-file ----------------------------------------------------------------

async def test_worker_killed_mid_file_resumes_and_writes_each_line_once(
        start_server: Callable[..., LiveServer], alice: ApiUser, ingest_storage_url: str,
        spawn_ingest_worker: Callable[[str], Any]) -> None:
    # a slow ingest (random 0-2 ms per line, 100-line batches) so the kill lands mid-file
    server = start_server(storage_url=ingest_storage_url, ingest_batch_lines=100,
                          ingest_line_delay_max_seconds=0.002)
    total = 4_000
    response = await upload(server, alice, make_log_lines(total, invalid_every=40))
    assert response.status_code == 202, response.text
    file_id, job_id = response.json()["file_id"], response.json()["job_id"]
    url = server.database_url

    first = spawn_ingest_worker(url)
    wait_for_sync(lambda: scalar(url, "SELECT lines_total FROM app.files WHERE id = %s", [file_id]) >= 500,
                  timeout=60, message="the first worker to commit a few batches")
    first.kill()  # SIGKILL: no goodbye, the lease just expires
    done_before = scalar(url, "SELECT lines_total FROM app.files WHERE id = %s", [file_id])
    assert 500 <= done_before < total, "killed mid-file"
    assert scalar(url, "SELECT status FROM pgqueue.jobs WHERE id = %s", [job_id]) == "running"

    spawn_ingest_worker(url)  # rescues the expired lease and resumes from the checkpoint
    progress = await wait_until_finished(server, alice, job_id, timeout=120)
    assert progress["status"] == "completed", progress
    # the kill is not charged to the job (nothing proves the job caused it): the rescued run,
    # alone in its worker, is attempt 1 again (README, "One bad job")
    assert progress["attempts"] == 1
    rows = file_rows(url, file_id)
    expected_invalid = invalid_line_numbers(total, 40)
    assert rows["entries"] == rows["distinct_entries"] == total - len(expected_invalid)
    assert rows["entry_lines"] == [n for n in range(1, total + 1) if n not in set(expected_invalid)]
    assert sorted(rows["errors"]) == expected_invalid
    assert progress["lines"] == {"total": total, "valid": total - len(expected_invalid),
                                 "invalid": len(expected_invalid), "blank": 0}
    logs = [r[0] for r in query(url, "SELECT data->>'line' FROM pgqueue.events WHERE job_id = %s AND type = 'log'",
                                [job_id])]
    assert any(line.startswith("resuming at line ") for line in logs), logs


async def test_database_outage_mid_file_is_retried_and_resumed(
        start_server: Callable[..., LiveServer], alice: ApiUser, ingest_storage_url: str,
        pg_server: PgServer) -> None:
    if pg_server.embedded is None:
        pytest.skip("needs the suite's own PostgreSQL to stop and start it")
    server = start_server(run_worker=True, storage_url=ingest_storage_url, ingest_batch_lines=100,
                          ingest_line_delay_max_seconds=0.002)
    total = 5_000
    response = await upload(server, alice, make_log_lines(total, invalid_every=50))
    assert response.status_code == 202, response.text
    file_id, job_id = response.json()["file_id"], response.json()["job_id"]
    url = server.database_url

    await wait_for(lambda: asyncio.to_thread(scalar, url, "SELECT lines_total >= 500 FROM app.files WHERE id = %s",
                                             [file_id]), timeout=60, message="a few committed batches")
    before = scalar(url, "SELECT lines_total FROM app.files WHERE id = %s", [file_id])
    assert before < total
    await asyncio.to_thread(pg_server.embedded.stop)  # every connection is cut mid-file
    await asyncio.to_thread(pg_server.embedded.start)

    async def finished() -> bool:
        status = await asyncio.to_thread(try_scalar, url, "SELECT status FROM pgqueue.jobs WHERE id = %s", [job_id])
        return status == "succeeded"

    await wait_for(finished, timeout=120, interval=0.1, message="the ingest to finish after the outage")
    assert scalar(url, "SELECT attempts FROM pgqueue.jobs WHERE id = %s", [job_id]) >= 2
    assert scalar(url, "SELECT count(*) FROM pgqueue.job_errors WHERE job_id = %s", [job_id]) >= 1
    rows = file_rows(url, file_id)
    expected_invalid = invalid_line_numbers(total, 50)
    assert rows["entries"] == rows["distinct_entries"] == total - len(expected_invalid)
    assert sorted(rows["errors"]) == expected_invalid
    assert (rows["lines_total"], rows["lines_valid"], rows["lines_invalid"]) == (
        total, total - len(expected_invalid), len(expected_invalid))


async def run_ingest_worker_until_finished(server: LiveServer, user: ApiUser, job_id: int) -> dict[str, Any]:
    """An in-process worker for the ingest queue, until the job is over; its status."""
    from app.jobs import jobs
    from pgqueue.worker import Worker

    queue = await Queue.connect(server.database_url, jobs, max_size=4)
    worker = Worker(queue, ["ingest"], 1)
    task = asyncio.create_task(worker.run())
    try:
        return await wait_until_finished(server, user, job_id)
    finally:
        worker.stop()
        await task
        await queue.close()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
async def test_object_missing_or_changed_in_storage_kills_the_job_with_a_clear_error(
        start_server: Callable[..., LiveServer], alice: ApiUser, ingest_storage_url: str, damage: str) -> None:
    server = start_server(storage_url=ingest_storage_url)  # no worker yet
    response = await upload(server, alice, jsonl(VALID, VALID))
    assert response.status_code == 202, response.text
    file_id, job_id = response.json()["file_id"], response.json()["job_id"]
    key = file_rows(server.database_url, file_id)["storage_key"]
    if damage == "deleted":
        open_storage(ingest_storage_url).delete(key)
    else:
        open_storage(ingest_storage_url).write(key, [jsonl(VALID)])

    progress = await run_ingest_worker_until_finished(server, alice, job_id)
    assert progress["status"] == "failed" and progress["job_status"] == "dead"
    assert progress["attempts"] == 1, "retrying cannot bring the object back: no retries"
    expected = f"{key!r} is missing from storage" if damage == "deleted" else "it changed since the upload"
    assert "PermanentFailure" in progress["error"] and expected in progress["error"], progress["error"]
    assert file_rows(server.database_url, file_id)["entries"] == 0


async def test_an_empty_object_given_to_the_job_completes_with_no_lines(
        live_server: LiveServer, alice: ApiUser, ingest_storage_url: str) -> None:
    # the upload refuses empty files; a job enqueued for one by other means still ends cleanly
    from app.ingest import enqueue_ingest
    from app.jobs import jobs
    from pgqueue.db import transaction

    storage = open_storage(ingest_storage_url)
    stored = storage.write("empty.jsonl", [b""])
    async with await Queue.connect(live_server.database_url, jobs, max_size=2) as queue, \
            transaction(queue.pool) as conn:
        _, job_id = await enqueue_ingest(queue, conn, storage, stored, owner_id=str(alice.id), name="empty.jsonl",
                                         content_type="application/x-ndjson")
    progress = await run_ingest_worker_until_finished(live_server, alice, job_id)
    assert progress["status"] == "completed" and progress["percent"] == 100
    assert progress["lines"] == {"total": 0, "valid": 0, "invalid": 0, "blank": 0}


# -- upload outcomes -----------------------------------------------------------------------------

def nothing_recorded(url: str) -> bool:
    return (scalar(url, "SELECT count(*) FROM app.files") == 0
            and scalar(url, "SELECT count(*) FROM pgqueue.jobs") == 0)


@pytest.fixture
def upload_server(start_server: Callable[..., LiveServer], ingest_storage_url: str) -> LiveServer:
    """API only (no worker), a 10,000-byte upload limit."""
    return start_server(storage_url=ingest_storage_url, max_upload_bytes=10_000)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversize_upload_is_413_and_leaves_nothing(upload_server: LiveServer, alice: ApiUser,
                                                         ingest_storage_url: str, chunked: bool) -> None:
    content = b"".join(make_log_lines(200))  # ~25 KB: past the limit, within Content-Length slack
    assert len(content) > 10_000
    response = await upload(upload_server, alice, content, chunked=chunked)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {"code": "payload_too_large", "details": [],
                                        "message": "the file is larger than the upload limit of 10000 bytes"}
    assert stored_objects(root_of(ingest_storage_url)) == []
    assert nothing_recorded(upload_server.database_url)


async def test_upload_is_streamed_to_storage_not_held_in_memory(start_server: Callable[..., LiveServer],
                                                                 alice: ApiUser, ingest_storage_url: str) -> None:
    server = start_server(storage_url=ingest_storage_url)  # default limit: 100 MB
    block = b"".join(make_log_lines(1_000))  # ~125 KB
    repeats = 320  # ~40 MB, generated as it is sent: the client holds one block at a time
    body_head, content_type = multipart_body(b"", "big.jsonl")
    head, tail = body_head.split(b"\r\n--")[0], b"\r\n--" + body_head.split(b"\r\n--", 1)[1]
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(repeats):
            digest.update(block)
            yield block
        yield tail

    tracemalloc.start()
    try:
        async with server.client(alice, timeout=120) as http:
            response = await http.post("/api/v1/files/upload", content=body(), headers={"Content-Type": content_type})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 202, response.text
    rows = file_rows(server.database_url, response.json()["file_id"])
    assert rows["size"] == len(block) * repeats and rows["sha256"] == digest.hexdigest()
    # everything this process allocated at its peak (client, server, storage) is far below the file
    assert peak < rows["size"] / 4, f"peak {peak / 2**20:.1f} MiB for a {rows['size'] / 2**20:.0f} MiB upload"


async def test_content_length_far_past_the_limit_is_refused_before_reading(upload_server: LiveServer,
                                                                           alice: ApiUser) -> None:
    response = await upload(upload_server, alice, b"{" + b" " * 200_000)
    assert response.status_code == 413
    assert nothing_recorded(upload_server.database_url)


@pytest.mark.parametrize(("name", "content", "status", "code"), [
    ("notes.txt", jsonl(VALID), 415, "unsupported_file_type"),
    ("logs.json", jsonl(VALID), 415, "unsupported_file_type"),
    ("logs.jsonl.exe", jsonl(VALID), 415, "unsupported_file_type"),
    (".jsonl", jsonl(VALID), 415, "unsupported_file_type"),
    ("empty.jsonl", b"", 422, "empty_file"),
    ("blank.jsonl", b"\xef\xbb\xbf \r\n\n\t\n", 422, "empty_file"),
    ("garbage.jsonl", bytes(range(256)) * 8, 415, "unsupported_file_type"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "unsupported_file_type"),
    ("nul.jsonl", b'{"timestamp": 1, "level": "info", "message": "a\x00"}\n', 415, "unsupported_file_type"),
    ("array.jsonl", b"[1, 2]\n", 415, "unsupported_file_type"),
    ("utf16.jsonl", jsonl(VALID).decode().encode("utf-16"), 415, "unsupported_file_type"),
])
async def test_refused_uploads_leave_nothing(upload_server: LiveServer, alice: ApiUser, ingest_storage_url: str,
                                            name: str, content: bytes, status: int, code: str) -> None:
    response = await upload(upload_server, alice, content, name)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert stored_objects(root_of(ingest_storage_url)) == []
    assert nothing_recorded(upload_server.database_url)


async def test_upload_request_errors(upload_server: LiveServer, alice: ApiUser) -> None:
    async with upload_server.client(alice) as http:
        not_multipart = await http.post("/api/v1/files/upload", json={"file": "x"})
        no_file = await http.post("/api/v1/files/upload", data={"name": "x"}, files={"other": ("a.jsonl", b"{}")})
        two_files = await http.post("/api/v1/files/upload", files=[("file", ("a.jsonl", jsonl(VALID))),
                                                                     ("file", ("b.jsonl", jsonl(VALID)))])
        broken = await http.post("/api/v1/files/upload", content=b"--xyz\r\nnot a part",
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        no_boundary = await http.post("/api/v1/files/upload", content=b"x",
                                      headers={"Content-Type": "multipart/form-data"})
    async with upload_server.client() as http:
        anonymous = await http.post("/api/v1/files/upload", files={"file": ("a.jsonl", jsonl(VALID))})
    assert (not_multipart.status_code, not_multipart.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert no_file.status_code == 422 and no_file.json()["error"]["details"][0]["field"] in ("name", "other")
    assert two_files.status_code == 422
    assert two_files.json()["error"]["details"] == [{"field": "file", "message": "send one file per upload"}]
    assert broken.status_code in (400, 422), broken.text
    assert no_boundary.status_code == 400
    assert anonymous.status_code == 401
    assert nothing_recorded(upload_server.database_url)
    assert stored_objects(root_of(upload_server.settings.upload_storage_url())) == []


async def test_traversal_file_name_is_recorded_clean_and_stored_under_a_generated_key(
        upload_server: LiveServer, alice: ApiUser, ingest_storage_url: str, tmp_path: Path) -> None:
    response = await upload(upload_server, alice, jsonl(VALID), "../../x.jsonl")
    assert response.status_code == 202, response.text
    rows = file_rows(upload_server.database_url, response.json()["file_id"])
    assert rows["name"] == "x.jsonl"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.jsonl", rows["storage_key"]), rows["storage_key"]
    assert stored_objects(root_of(ingest_storage_url)) == [rows["storage_key"]]
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path.parent / "x.jsonl").exists()
    for raw, clean in [("..\\..\\windows\\y.jsonl", "y.jsonl"), ("/etc/z.jsonl", "z.jsonl"),
                       ("a\x00b\x1f\u202e.jsonl", "ab.jsonl"), ("caf\u0065\u0301.jsonl", "caf\u00e9.jsonl")]:
        # sent by hand (chunked): httpx would percent-encode the control characters
        response = await upload(upload_server, alice, jsonl(VALID), raw, chunked=True)
        assert response.status_code == 202, response.text
        assert file_rows(upload_server.database_url, response.json()["file_id"])["name"] == clean


async def test_a_database_failure_while_recording_deletes_the_stored_object(
        upload_server: LiveServer, alice: ApiUser, ingest_storage_url: str) -> None:
    # the connection dies while the file row is inserted (after the object was stored)
    query(upload_server.database_url, """
        CREATE FUNCTION test_cut_connection() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
        CREATE TRIGGER test_cut_connection BEFORE INSERT ON app.files
            FOR EACH ROW EXECUTE FUNCTION test_cut_connection();
    """)
    response = await upload(upload_server, alice, jsonl(VALID))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert stored_objects(root_of(ingest_storage_url)) == []
    assert nothing_recorded(upload_server.database_url)


# -- line-level edge cases, over HTTP with a worker ----------------------------------------------

EDGE_CASES: dict[str, tuple[bytes, dict[int, str], list[int]]] = {
    # name: (file, {line: reason fragment}, valid lines)
    "crlf": (jsonl(VALID, VALID).replace(b"\n", b"\r\n"), {}, [1, 2]),
    "bom": (b"\xef\xbb\xbf" + jsonl(VALID, VALID, b"\xef\xbb\xbf" + jsonl(VALID).rstrip(b"\n")),
            {3: "byte order mark"}, [1, 2]),
    "blank lines": (jsonl(VALID) + b"\n  \n" + jsonl(VALID), {}, [1, 4]),
    "invalid utf-8": (b'{"timestamp": 1, "level": "info", "message": "caf\xe9"}\n' + jsonl(VALID),
                      {1: "not valid UTF-8"}, [2]),
    # (a NUL byte in the first 512 bytes makes the whole file binary: refused at upload)
    "nul": (jsonl(VALID) * 10 + b'{"timestamp": 1, "level": "info", "message": "a\x00"}\n'
            + jsonl({**VALID, "message": "a\u0000b"}) + jsonl(VALID), {11: "NUL byte", 12: "NUL character"},
            [*range(1, 11), 13]),
    "nan and infinity": (jsonl(VALID) + b'{"timestamp": NaN, "level": "info", "message": "x"}\n'
                         + b'{"timestamp": 1, "level": "info", "message": "x", "attributes": {"v": Infinity}}\n',
                         {2: "NaN and Infinity", 3: "NaN and Infinity"}, [1]),
    "binary garbage after the start": (jsonl(VALID) * 10 + bytes(range(256)) + b"\n" + jsonl(VALID),
                                       {11: "NUL byte", 12: "not valid"}, [*range(1, 11), 13]),
}


@pytest.fixture
def edge_server(start_server: Callable[..., LiveServer], ingest_storage_url: str) -> LiveServer:
    return start_server(run_worker=True, storage_url=ingest_storage_url)


@pytest.mark.parametrize("case", list(EDGE_CASES))
async def test_line_edge_cases_end_to_end(edge_server: LiveServer, alice: ApiUser, case: str) -> None:
    content, invalid, valid = EDGE_CASES[case]
    response = await upload(edge_server, alice, content)
    assert response.status_code == 202, response.text
    progress = await wait_until_finished(edge_server, alice, response.json()["job_id"])
    assert progress["status"] == "completed", progress
    rows = file_rows(edge_server.database_url, response.json()["file_id"])
    assert rows["entry_lines"] == valid
    assert sorted(rows["errors"]) == sorted(invalid)
    for line_no, fragment in invalid.items():
        reason, excerpt = rows["errors"][line_no]
        assert fragment in reason, (line_no, reason)
        assert "\x00" not in excerpt
    assert progress["lines"]["valid"] == len(valid) and progress["lines"]["invalid"] == len(invalid)
    messages = [r[0] for r in query(edge_server.database_url, "SELECT message FROM app.log_entries WHERE file_id = %s",
                                    [response.json()["file_id"]])]
    assert all("\r" not in message for message in messages)


async def test_a_10_mb_single_line_is_an_invalid_line(edge_server: LiveServer, alice: ApiUser) -> None:
    huge = b'{"timestamp": 1, "level": "info", "message": "' + b"x" * (10 * 1024 * 1024) + b'"}\n'
    response = await upload(edge_server, alice, [jsonl(VALID), huge, jsonl(VALID)])
    assert response.status_code == 202, response.text
    progress = await wait_until_finished(edge_server, alice, response.json()["job_id"])
    assert progress["status"] == "completed", progress
    assert progress["lines"] == {"total": 3, "valid": 2, "invalid": 1, "blank": 0}
    rows = file_rows(edge_server.database_url, response.json()["file_id"])
    assert rows["entry_lines"] == [1, 3]
    reason, excerpt = rows["errors"][2]
    assert reason == f"line is longer than {MAX_LINE_BYTES} bytes" and len(excerpt) == 200


# -- the status endpoint -------------------------------------------------------------------------

async def test_job_status_is_owner_checked(upload_server: LiveServer, alice: ApiUser, bob: ApiUser,
                                           admin: ApiUser) -> None:
    response = await upload(upload_server, alice, jsonl(VALID))
    job_id = response.json()["job_id"]
    queued = await job_progress(upload_server, alice, job_id)
    assert queued["status"] == "queued" and queued["kind"] == "ingest_file" and queued["percent"] == 0
    assert queued["lines"] == {"total": 0, "valid": 0, "invalid": 0, "blank": 0}
    assert (await job_progress(upload_server, admin, job_id))["job_id"] == job_id
    async with upload_server.client(bob) as http:
        other = await http.get(f"/api/v1/jobs/{job_id}")
        missing = await http.get("/api/v1/jobs/999999")
        bad = await http.get("/api/v1/jobs/abc")
    async with upload_server.client() as http:
        anonymous = await http.get(f"/api/v1/jobs/{job_id}")
    assert other.status_code == 404 and other.json()["error"]["message"] == f"job {job_id} not found"
    assert missing.status_code == 404 and bad.status_code == 404
    assert anonymous.status_code == 401


async def test_job_status_of_a_job_that_is_not_an_ingest(live_server_with_worker: LiveServer, alice: ApiUser) -> None:
    async with live_server_with_worker.client(alice) as http:
        response = await http.post("/jobs", json={"kind": "report", "payload": {"name": "r", "rows": 10}})
    assert response.status_code == 201, response.text
    progress = await wait_until_finished(live_server_with_worker, alice, response.json()["id"])
    assert progress["status"] == "completed" and progress["percent"] == 100
    assert progress["lines"] is None and progress["file"] is None



# -- the bench, as a smoke test ------------------------------------------------------------------

def test_ingest_bench_runs_and_reports(db_url: str) -> None:
    from app.bench_ingest import render, run_ingest_bench

    result = run_ingest_bench(db_url, lines=3_000, memory_sizes_mb=(1,))
    assert result["rate"]["lines"] == 3_000 and result["rate"]["lines_per_s"] > 0
    assert result["memory"][0]["file_mb"] == 1 and result["memory"][0]["worker_peak_rss_mib"] > 10
    assert "lines/s" in render(result)
    assert scalar(db_url, "SELECT count(*) FROM app.log_entries") == 0, "the bench removes its rows"
