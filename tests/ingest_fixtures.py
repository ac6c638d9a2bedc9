"""Fixtures and helpers for the log-file ingestion tests: .jsonl generators, uploads over HTTP,
an SSE follower, database checks, and `python -m pgqueue worker --app app.jobs` subprocesses.

    from tests.ingest_fixtures import *  # noqa: F403  (in a test module)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.ingest import INGEST_QUEUE
from tests.helpers import wait_for
from tests.process_fixtures import WorkerProcess, query, scalar
from tests.web_fixtures import ApiUser, LiveServer

__all__ = [
    "SseEvent", "file_rows", "follow_events", "ingest_storage_url", "invalid_line_numbers", "job_progress",
    "jsonl", "make_log_lines", "multipart_body", "spawn_ingest_worker", "stored_objects", "upload",
    "wait_until_finished",
]

TIMEOUT = 60.0
LEVELS = ("info", "warn", "ERROR", "debug", "critical")


def make_log_lines(count: int, *, invalid_every: int = 0, start: int = 1) -> Iterator[bytes]:
    """``count`` lines numbered from ``start``; every ``invalid_every``-th line is not valid
    (alternating kinds of invalid, so several reasons show up). Deterministic."""
    for number in range(start, start + count):
        if invalid_every and number % invalid_every == 0:
            kind = (number // invalid_every) % 4
            if kind == 0:
                yield b'{"timestamp": "2024-05-01T12:00:00Z", "level": "info"\n'  # malformed JSON
            elif kind == 1:
                yield b'{"timestamp": "2024-05-01T12:00:00Z", "level": "loud", "message": "x"}\n'
            elif kind == 2:
                yield b'{"level": "info", "message": "no timestamp"}\n'
            else:
                yield b'{"timestamp": NaN, "level": "info", "message": "nan"}\n'
            continue
        yield (b'{"timestamp": "2024-05-01T12:%02d:%02d.%03d+02:00", "level": "%s", "service": "api", '
               b'"message": "request %d handled", "attributes": {"path": "/items/%d", "status": 200}}\n'
               % (number // 60 % 60, number % 60, number % 1000, LEVELS[number % 5].encode(), number, number))


def invalid_line_numbers(count: int, invalid_every: int) -> list[int]:
    return [number for number in range(1, count + 1) if invalid_every and number % invalid_every == 0]


def jsonl(*entries: dict[str, Any] | bytes | str) -> bytes:
    """A file from dicts (encoded), or raw lines (bytes/str taken as is, newline added)."""
    lines = []
    for entry in entries:
        if isinstance(entry, dict):
            lines.append(json.dumps(entry).encode())
        else:
            lines.append(entry.encode() if isinstance(entry, str) else entry)
    return b"".join(line + b"\n" for line in lines)


def multipart_body(content: bytes, filename: str, *, field: str = "file",
                   content_type: str = "application/x-ndjson") -> tuple[bytes, str]:
    """A multipart/form-data body by hand (for chunked uploads); returns (body, Content-Type)."""
    boundary = "----pgqueue-test-boundary-7d1c"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def upload(server: LiveServer, user: ApiUser | None, content: bytes | Iterable[bytes], name: str = "app.jsonl",
                 *, content_type: str = "application/x-ndjson", chunked: bool = False) -> httpx.Response:
    """POST /api/v1/files/upload; ``chunked`` sends the body without a Content-Length."""
    data = content if isinstance(content, bytes) else b"".join(content)
    async with server.client(user, timeout=TIMEOUT) as http:
        if not chunked:
            return await http.post("/api/v1/files/upload", files={"file": (name, data, content_type)})
        body, multipart_type = multipart_body(data, name, content_type=content_type)

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start:start + 64 * 1024]

        return await http.post("/api/v1/files/upload", content=pieces(), headers={"Content-Type": multipart_type})


async def job_progress(server: LiveServer, user: ApiUser, job_id: int) -> dict[str, Any]:
    async with server.client(user) as http:
        response = await http.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_until_finished(server: LiveServer, user: ApiUser, job_id: int,
                              timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET /api/v1/jobs/{id} until it says completed or failed."""

    async def finished() -> dict[str, Any] | None:
        progress = await job_progress(server, user, job_id)
        return progress if progress["status"] in ("completed", "failed") else None

    return await wait_for(finished, timeout, interval=0.05, message=f"job {job_id} to finish")


class SseEvent(msgspec.Struct):
    id: int
    type: str
    data: Any


async def follow_events(server: LiveServer, user: ApiUser, job_id: int) -> list[SseEvent]:
    """Every event of the job from GET /jobs/{id}/events, until the server ends the stream
    after the job's terminal event."""
    events: list[SseEvent] = []
    fields: dict[str, str] = {}
    async with server.client(user, timeout=TIMEOUT) as http, http.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200, await response.aread()
        async with asyncio.timeout(TIMEOUT):
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line == "":
                    if "data" in fields:
                        message = json.loads(fields["data"])
                        events.append(SseEvent(int(fields["id"]), fields.get("event", "message"), message["data"]))
                    fields.clear()
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


def file_rows(url: str, file_id: int) -> dict[str, Any]:
    """What the database holds for a file: its row, its entries' line numbers, its errors."""
    columns = ["name", "size", "sha256", "storage_url", "storage_key", "content_type", "job_id", "lines_total",
               "lines_valid", "lines_invalid", "lines_blank", "bytes_read", "owner_id"]
    (row,) = query(url, f"SELECT {', '.join(columns)} FROM app.files WHERE id = %s", [file_id])
    return {
        **dict(zip(columns, row, strict=True)),
        "entry_lines": [r[0] for r in query(url, "SELECT line_no FROM app.log_entries WHERE file_id = %s "
                                                 "ORDER BY line_no", [file_id])],
        "entries": scalar(url, "SELECT count(*) FROM app.log_entries WHERE file_id = %s", [file_id]),
        "distinct_entries": scalar(url, "SELECT count(DISTINCT line_no) FROM app.log_entries WHERE file_id = %s",
                                   [file_id]),
        "errors": {r[0]: (r[1], r[2]) for r in query(url, "SELECT line_no, reason, excerpt FROM app.ingest_errors "
                                                          "WHERE file_id = %s ORDER BY line_no", [file_id])},
    }


def stored_objects(root: Path) -> list[str]:
    """Every file under a local storage root (temp files included), relative to it."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()) if root.exists() else []


@pytest.fixture
def ingest_storage_url(tmp_path: Path) -> str:
    """A local storage root for this test's uploads."""
    return (tmp_path / "storage").as_uri()


@pytest.fixture
def spawn_ingest_worker(spawn_worker: Callable[..., WorkerProcess]) -> Callable[[str], WorkerProcess]:
    """Start `python -m pgqueue worker --app app.jobs --queues ingest` subprocesses with short
    leases; all are killed at teardown and their logs printed."""

    def spawn(database_url: str) -> WorkerProcess:
        return spawn_worker(database_url, app="app.jobs", queues=INGEST_QUEUE, concurrency=2, grace=5.0)

    return spawn
