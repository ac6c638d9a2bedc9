"""Bad data on the PostgreSQL side: rows a worker cannot read (put there by raw SQL, an old
version or another language) are buried as dead instead of crashing the worker, and bad input
through SyncQueue and the `enqueue` command is refused with one clear line.

(The refusals both backends share are in test_contract.py.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator

import psycopg
import pytest

from pgqueue import InvalidPayload, SyncQueue
from pgqueue.__main__ import main
from pgqueue.config import Settings
from pgqueue.errors import ConfigError
from pgqueue.queue import Queue
from tests.engine_fixtures import fetch, open_fast_queue, running_worker, wait_for_status
from tests.jobs import jobs

# A run_at whose year Python cannot hold, and a number no float holds (jsonb keeps any numeric;
# 1e400 would come back as an integer, which Python holds).
UNREADABLE_ROWS = {
    "before year 1": "INSERT INTO pgqueue.jobs (kind, payload, priority, run_at) "
                     "VALUES ('noop', '{}', 5, '0001-12-31 10:00:00+00 BC') RETURNING id",
    "number out of range": "INSERT INTO pgqueue.jobs (kind, payload, priority) "
                           "VALUES ('noop', ('{\"n\": 1' || repeat('0', 400) || '.5}')::jsonb, 5) RETURNING id",
}


@pytest.fixture
async def fast_queue(db_url: str) -> AsyncIterator[Queue]:
    async with open_fast_queue(db_url) as queue:
        yield queue


async def insert_unreadable_rows(queue: Queue) -> dict[str, int]:
    return {name: (await fetch(queue, sql))[0][0] for name, sql in UNREADABLE_ROWS.items()}


async def assert_buried(queue: Queue, job_id: int, reason: str) -> None:
    [(status, last_error, token, expires, finished)] = await fetch(
        queue, "SELECT status, last_error, lease_token, lease_expires_at, finished_at FROM pgqueue.jobs WHERE id = %s",
        (job_id,))
    assert (status, token, expires) == ("dead", None, None) and finished is not None
    assert last_error.startswith("cannot read the claimed job: ") and reason in last_error, last_error
    [(error,)] = await fetch(queue, "SELECT error FROM pgqueue.job_errors WHERE job_id = %s", (job_id,))
    assert error == last_error
    events = await fetch(queue, "SELECT type, data->>'error' FROM pgqueue.events WHERE job_id = %s ORDER BY id",
                         (job_id,))
    assert events[-1] == ("dead", last_error)


async def test_a_claimed_row_that_cannot_be_read_is_dead_with_the_reason(fast_queue: Queue,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    queue = fast_queue
    good = await queue.enqueue_many([("noop", {"n": n}) for n in range(3)])
    bad = await insert_unreadable_rows(queue)  # priority 5: claimed first, in the same batch

    with caplog.at_level(logging.WARNING, logger="pgqueue"):
        claimed = await queue.claim(["default"], 10, "w1")

    assert sorted(job.id for job in claimed) == sorted(good)
    await assert_buried(queue, bad["before year 1"], "BC")
    await assert_buried(queue, bad["number out of range"], "out of range")
    assert sum("cannot read" in record.getMessage() for record in caplog.records) == 2
    # the bad run_at is replaced (the reason keeps it) so the row can be read, re-driven, deleted
    assert (await queue.get(bad["before year 1"])).status == "dead"
    assert await queue.claim(["default"], 10, "w1") == []


async def test_a_worker_buries_unreadable_rows_and_runs_the_rest(fast_queue: Queue) -> None:
    queue = fast_queue
    bad = await insert_unreadable_rows(queue)
    good = await queue.enqueue_many([("noop", {"n": n}) for n in range(5)])
    async with running_worker(queue, concurrency=10):
        for job_id in good:
            await wait_for_status(queue, job_id, "succeeded")
    for name, job_id in bad.items():
        await assert_buried(queue, job_id, "BC" if name == "before year 1" else "out of range")


def test_the_payload_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_MAX_PAYLOAD_BYTES", "2048")
    assert Settings.from_env().max_payload_bytes == 2048
    assert SyncQueue("postgresql://nobody@127.0.0.1:1/none", jobs).settings.max_payload_bytes == 2048
    monkeypatch.setenv("PGQUEUE_MAX_PAYLOAD_BYTES", "0")
    with pytest.raises(ConfigError, match="PGQUEUE_MAX_PAYLOAD_BYTES"):
        Settings.from_env()


def test_sync_queue_refuses_bad_input_before_connecting() -> None:
    queue = SyncQueue("postgresql://nobody@127.0.0.1:1/none", jobs, settings=Settings(max_payload_bytes=100))
    for payload, options in (({"a": "\x00"}, {}), ({"a": math.nan}, {}), ({"a": "x" * 100}, {}),
                             ({}, {"delay": math.inf}), ({}, {"unique_key": "\x00"})):
        with pytest.raises(InvalidPayload):
            queue.enqueue("noop", payload, **options)


@pytest.mark.parametrize("args", [
    ['{"text": "a\\u0000b"}'],
    ['{"key\\u0000": 1}'],
    ["{}", "--delay", "nan"],
    ["{}", "--delay", "1e300"],
    ["{}", "--run-at", "0001-01-01T05:00:00+10:00"],
    ["{}", "--unique-key", "k", "--run-at", "9999-12-31T23:00:00-05:00"],
])
def test_enqueue_command_prints_one_line_for_bad_input(db_url: str, args: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", "--database-url", db_url, "--untyped", "noop", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid job: ") and err.count("\n") == 1, err
    assert "\x00" not in err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
