"""The thin store: one method per named statement of sql/queries.sql.

Typed parameters in, msgspec Structs out; driver errors become pgqueue errors here.
Every method takes an optional connection so callers can act inside their own transaction.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import msgspec
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.rows import dict_row, kwargs_row
from psycopg_pool import AsyncConnectionPool

from pgqueue.db import AsyncConnection, Connection, fetch, transaction, translate_errors
from pgqueue.dependencies import GraphPlan, check_parents
from pgqueue.errors import UniqueKeyTaken
from pgqueue.limits import QueueInfo
from pgqueue.models import Event, Job, JobError, NewJob, Schedule, ScheduleFire, ScheduleSpec
from pgqueue.sql import QUERIES

_encode_json = msgspec.json.Encoder().encode

log = logging.getLogger("pgqueue.store")

_CHANNEL = re.compile(r"[a-z_]{1,63}")

# Arbitrary constant naming pgqueue's maintenance leader lock (pg_try_advisory_lock key).
LEADER_LOCK_KEY = 0x70677175  # "pgqu"


def _json_text(value: Any) -> str:
    return _encode_json(value).decode()


def _payload_text(job: NewJob) -> str:
    """The JSON the registry encoded while validating, else the payload encoded now."""
    return _json_text(job.payload) if job.payload_json is None else job.payload_json


def insert_params(jobs: Sequence[NewJob]) -> dict[str, list[Any]]:
    """Column arrays for insert_jobs (shared by the async store and the sync enqueue)."""
    return {
        "queues": [j.queue for j in jobs],
        "kinds": [j.kind for j in jobs],
        "payloads": [_payload_text(j) for j in jobs],
        "priorities": [j.priority for j in jobs],
        "run_ats": [j.run_at for j in jobs],
        "delays": [float(j.delay_seconds) for j in jobs],
        "max_attempts": [j.max_attempts for j in jobs],
        "unique_keys": [j.unique_key for j in jobs],
        "owner_ids": [j.owner_id for j in jobs],
        "concurrency_keys": [j.concurrency_key for j in jobs],
    }


def _job_values(job: NewJob, payload: Any) -> dict[str, Any]:
    """One job's columns for insert_job (payload as JSON text) and insert_shared_jobs (as raw JSON)."""
    return {"queue": job.queue, "kind": job.kind, "payload": payload, "priority": job.priority,
            "run_at": job.run_at, "delay": float(job.delay_seconds), "max_attempts": job.max_attempts,
            "owner_id": job.owner_id, "concurrency_key": job.concurrency_key}


def complete_params(items: Sequence[tuple[int, uuid.UUID, Any]]) -> dict[str, str]:
    """complete_jobs' one JSON array of {id, token, result}."""
    return {"items": _json_text([{"id": i[0], "token": i[1], "result": i[2]} for i in items])}


def order_like_input(jobs: Sequence[NewJob], inserted: list[Job], existing: list[Job]) -> list[Job] | None:
    """Map returned rows back to the input order; None when a duplicate's holder vanished meanwhile."""
    by_key = {job.unique_key: job for job in existing}
    by_key.update({job.unique_key: job for job in inserted if job.unique_key is not None})
    plain = iter(job for job in inserted if job.unique_key is None)
    ordered: list[Job] = []
    for new in jobs:
        if new.unique_key is None:
            ordered.append(next(plain))
        elif new.unique_key in by_key:
            ordered.append(by_key[new.unique_key])
        else:
            return None
    return ordered


def live_jobs_by_unique_key_sync(conn: Connection, unique_keys: Sequence[str]) -> list[Job]:
    """The live holders of unique keys (the CLI says when its job was deduplicated)."""
    with translate_errors(), conn.cursor(row_factory=kwargs_row(Job)) as cur:
        cur.execute(QUERIES["live_jobs_by_unique_key"].sql, {"unique_keys": list(unique_keys)})
        return cur.fetchall()


def insert_jobs_sync(conn: Connection, jobs: Sequence[NewJob]) -> list[Job]:
    """insert_jobs on a plain psycopg connection (the sync enqueue for scripts and sync web apps)."""
    with translate_errors():
        for _ in range(5):
            with conn.cursor(row_factory=kwargs_row(Job)) as cur:
                cur.execute(QUERIES["insert_jobs"].sql, insert_params(jobs))
                inserted = cur.fetchall()
                existing: list[Job] = []
                missing = _missing_unique_keys(jobs, inserted)
                if missing:
                    cur.execute(QUERIES["live_jobs_by_unique_key"].sql, {"unique_keys": missing})
                    existing = cur.fetchall()
            ordered = order_like_input(jobs, inserted, existing)
            if ordered is not None:
                return ordered
    raise RuntimeError("unique-key holders kept finishing while enqueueing; giving up")


class UndecodableJob(msgspec.Struct, frozen=True):
    """A claimed row the engine cannot read into a Job, and why (claim_jobs buries it)."""

    id: int
    lease_token: uuid.UUID
    reason: str


class _LeaseKey(msgspec.Struct):
    id: int
    lease_token: uuid.UUID


_decode_jobs = msgspec.json.Decoder(list[Job]).decode
_decode_rows = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_job = msgspec.json.Decoder(Job).decode
_decode_lease_key = msgspec.json.Decoder(_LeaseKey).decode
_TIMESTAMPS = ("run_at", "lease_expires_at", "created_at", "updated_at", "started_at", "finished_at")


def decode_jobs(text: str | None) -> tuple[list[Job], list[UndecodableJob]]:
    """Jobs from a JSON array of claimed jobs rows (NULL: none), and apart from them the rows
    that cannot be read even one by one (a year outside 1-9999, a number no float holds)."""
    if text is None:
        return [], []
    try:
        return _decode_jobs(text), []
    except msgspec.ValidationError:
        pass
    jobs: list[Job] = []
    undecodable: list[UndecodableJob] = []
    for raw in _decode_rows(text):  # each row's JSON, not parsed yet
        try:
            jobs.append(_decode_job_leniently(raw))
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            key = _decode_lease_key(raw)
            reason = f"cannot read the claimed job: {exc}".replace("\x00", "\ufffd")[:2000]
            undecodable.append(UndecodableJob(id=key.id, lease_token=key.lease_token, reason=reason))
    return jobs, undecodable


def _decode_job_leniently(raw: msgspec.Raw) -> Job:
    try:
        return _decode_job(raw)
    except msgspec.ValidationError:
        # a timestamp that is not RFC 3339 (a session time zone whose historical offset has
        # seconds, such as LMT +00:19:32): fromisoformat reads those
        row = msgspec.json.decode(raw)
        row.update({key: datetime.fromisoformat(row[key]) for key in _TIMESTAMPS if row.get(key)})
        return msgspec.convert(row, Job)


def _missing_unique_keys(jobs: Sequence[NewJob], inserted: list[Job]) -> list[str]:
    got = {job.unique_key for job in inserted}
    return sorted({j.unique_key for j in jobs if j.unique_key is not None and j.unique_key not in got})


# -- job dependencies (pgqueue/dependencies.py, README "Job dependencies") ------------------------

class _Parent(msgspec.Struct, frozen=True):
    id: int
    status: str
    owner_id: str | None


def graph_insert_params(jobs: Sequence[NewJob], plan: GraphPlan, ids: Sequence[int]) -> dict[str, list[Any]]:
    params = insert_params(jobs)
    params["ids"] = list(ids)
    params["statuses"] = ["waiting" if waits else "queued" for waits in plan.waiting]
    parents_in_batch = {edge.parent_index for edge in plan.edges}
    params["has_dependents"] = [index in parents_in_batch for index in range(len(jobs))]
    return params


def graph_edge_params(plan: GraphPlan, ids: Sequence[int | None]) -> dict[str, list[Any]]:
    """The edges whose child was inserted (a child skipped for its unique key keeps the holder's)."""
    edges = [edge for edge in plan.edges if ids[edge.child] is not None]
    return {"job_ids": [ids[edge.child] for edge in edges],
            "parent_ids": [plan.parent_of(edge, ids) for edge in edges],
            "run_if_failed": [edge.run_if_failed for edge in edges]}


def _inserted_or_none(reserved: Sequence[int], inserted: set[int]) -> list[int | None]:
    return [job_id if job_id in inserted else None for job_id in reserved]


def _order_graph(jobs: Sequence[NewJob], ids: Sequence[int | None], rows: list[Job], holders: list[Job]) -> list[Job]:
    by_id = {job.id: job for job in rows}
    by_key = {job.unique_key: job for job in holders}
    ordered = []
    for new, job_id in zip(jobs, ids, strict=True):
        job = by_id.get(job_id) if job_id is not None else by_key.get(new.unique_key)
        if job is None:
            raise RuntimeError("a unique-key holder finished while enqueueing; try again")
        ordered.append(job)
    return ordered


def insert_graph_sync(conn: Connection, jobs: Sequence[NewJob], plan: GraphPlan,
                      parents_owned_by: str | None = None) -> list[Job]:
    """Store.insert_graph on a plain psycopg connection, in a transaction of its own (or the caller's)."""
    with translate_errors(), conn.transaction():
        with conn.cursor(row_factory=kwargs_row(_Parent)) as cur:
            cur.execute(QUERIES["lock_dependency_parents"].sql, {"ids": plan.existing_parents})
            check_parents(plan, [(p.id, p.status, p.owner_id) for p in cur.fetchall()], parents_owned_by)
        with conn.cursor() as cur:
            cur.execute(QUERIES["reserve_job_ids"].sql, {"count": len(jobs)})
            row = cur.fetchone()
            assert row is not None
            reserved = row[0]
            cur.execute(QUERIES["insert_dependent_jobs"].sql, graph_insert_params(jobs, plan, reserved))
            ids = _inserted_or_none(reserved, {r[0] for r in cur.fetchall()})
            edges = graph_edge_params(plan, ids)
            if edges["job_ids"]:
                cur.execute(QUERIES["insert_dependencies"].sql, edges)
                cur.execute(QUERIES["resolve_waiting"].sql, {"ids": sorted(set(edges["job_ids"]))})
        with conn.cursor(row_factory=kwargs_row(Job)) as cur:
            cur.execute(QUERIES["jobs_by_ids"].sql, {"ids": [i for i in ids if i is not None]})
            rows = cur.fetchall()
            holders: list[Job] = []
            missing = sorted({j.unique_key for j, i in zip(jobs, ids, strict=True) if i is None and j.unique_key})
            if missing:
                cur.execute(QUERIES["live_jobs_by_unique_key"].sql, {"unique_keys": missing})
                holders = cur.fetchall()
    return _order_graph(jobs, ids, rows, holders)


def get_job_sync(conn: Connection, job_id: int) -> Job | None:
    with translate_errors(), conn.cursor(row_factory=kwargs_row(Job)) as cur:
        cur.execute(QUERIES["get_job"].sql, {"id": job_id})
        return cur.fetchone()


def listen_sync(conn: Connection, channel: str) -> None:
    """LISTEN on a plain connection (autocommit). See Store.listen for why this is composed."""
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(f"bad channel name {channel!r}")
    with translate_errors():
        conn.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.SQL(channel)))


def notifies_sync(conn: Connection, timeout: float) -> Iterator[str]:
    """The payloads of the notifications arriving within ``timeout`` seconds (stop reading any time)."""
    with translate_errors():
        for note in conn.notifies(timeout=timeout):
            yield note.payload


class Store:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _many(self, name: str, params: dict[str, Any], conn: AsyncConnection | None, row: Any = None) -> list[Any]:
        return await fetch(self.pool, QUERIES[name].sql, params, conn, row)

    async def _one(self, name: str, params: dict[str, Any], conn: AsyncConnection | None, row: Any = None) -> Any:
        rows = await self._many(name, params, conn, row)
        return rows[0] if rows else None

    # -- enqueue ---------------------------------------------------------------------------

    async def insert_jobs(self, jobs: Sequence[NewJob], conn: AsyncConnection | None = None) -> list[Job]:
        if len(jobs) == 1 and jobs[0].unique_key is None:
            params = _job_values(jobs[0], _payload_text(jobs[0]))
            return [_decode_job_leniently((await self._one("insert_job", params, conn))[0])]
        if all(job.unique_key is None for job in jobs):
            # nothing can be skipped: one autocommit statement, one round trip
            return await self._many("insert_jobs", insert_params(jobs), conn, kwargs_row(Job))
        async with transaction(self.pool, conn) as c:
            for _ in range(5):
                inserted = await self._many("insert_jobs", insert_params(jobs), c, kwargs_row(Job))
                missing = _missing_unique_keys(jobs, inserted)
                existing = (
                    await self._many("live_jobs_by_unique_key", {"unique_keys": missing}, c, kwargs_row(Job))
                    if missing
                    else []
                )
                ordered = order_like_input(jobs, inserted, existing)
                if ordered is not None:
                    return ordered
        raise RuntimeError("unique-key holders kept finishing while enqueueing; giving up")

    async def insert_shared_jobs(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Jobs without unique keys in one autocommit statement, returned in input order."""
        items = [_job_values(j, msgspec.Raw(_payload_text(j).encode())) for j in jobs]
        (text,) = await self._one("insert_shared_jobs", {"jobs": _json_text(items)}, None)
        return [_decode_job_leniently(raw) for raw in _decode_rows(text)]

    async def copy_jobs(self, jobs: Sequence[NewJob], conn: AsyncConnection | None = None) -> list[int]:
        """COPY a batch of jobs runnable now and without unique keys.

        The ids come from the sequence first (one round trip) so they can be returned.
        """
        async with transaction(self.pool, conn) as c:
            ids = (await self._one("reserve_job_ids", {"count": len(jobs)}, c))[0]
            async with c.cursor() as cur, cur.copy(QUERIES["copy_jobs"].sql) as copy:
                for job_id, job in zip(ids, jobs, strict=True):
                    await copy.write_row(
                        (job_id, job.queue, job.kind, _payload_text(job), job.priority,
                         job.max_attempts, job.owner_id, job.concurrency_key)
                    )
        return ids

    # -- the worker's cycle ------------------------------------------------------------------

    async def claim_jobs(self, queues: Sequence[str], limit: int, worker_id: str, lease_seconds: float,
                         record_started: bool = True, conn: AsyncConnection | None = None, *,
                         charged: bool = True, include_suspects: bool = True) -> list[Job]:
        # the claim's commit skips the WAL flush only on a pooled autocommit connection, where the
        # statement is the whole transaction; a caller's own transaction keeps its durability
        params = {"queues": list(queues), "limit": limit, "worker_id": worker_id, "lease_seconds": lease_seconds,
                  "record_started": record_started, "async_commit": conn is None, "charged": charged,
                  "include_suspects": include_suspects}
        return await self._readable_claims((await self._one("claim_jobs", params, conn))[0], conn)

    async def claim_suspect_job(self, queues: Sequence[str], worker_id: str, lease_seconds: float,
                                conn: AsyncConnection | None = None) -> list[Job]:
        params = {"queues": list(queues), "worker_id": worker_id, "lease_seconds": lease_seconds, "limit": 1}
        return await self._readable_claims((await self._one("claim_suspect_job", params, conn))[0], conn)

    async def _readable_claims(self, claimed: str | None, conn: AsyncConnection | None) -> list[Job]:
        """The claimed jobs the engine can read; the others are made dead with the reason, so no
        odd row (written by raw SQL, another version, another language) reaches a worker."""
        jobs, undecodable = decode_jobs(claimed)
        if undecodable:
            for row in undecodable:
                log.warning("job %s is dead: %s", row.id, row.reason)
            await self.bury_undecodable_jobs(undecodable, conn)
        return jobs

    async def bury_undecodable_jobs(self, rows: Sequence[UndecodableJob], conn: AsyncConnection | None = None) -> list[int]:
        params = {"ids": [r.id for r in rows], "tokens": [r.lease_token for r in rows], "reasons": [r.reason for r in rows]}
        return [row[0] for row in await self._many("bury_undecodable_jobs", params, conn)]

    async def suspects_waiting(self, queues: Sequence[str], conn: AsyncConnection | None = None) -> bool:
        return bool((await self._one("suspects_waiting", {"queues": list(queues)}, conn))[0])

    async def complete_jobs(self, items: Sequence[tuple[int, uuid.UUID, Any]],
                            conn: AsyncConnection | None = None) -> set[int]:
        for attempt in range(3):
            try:
                return {row[0] for row in await self._many("complete_jobs", complete_params(items), conn)}
            except pg_errors.DeadlockDetected:
                # releasing dependents locks them after the batch: an enqueue holding one of them
                # FOR SHARE while waiting for a job of this batch is a (rare) deadlock, which
                # Postgres breaks by failing one side; on our own connection the statement is its
                # whole transaction, so it can simply run again
                if conn is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def fail_job(self, job_id: int, token: uuid.UUID, error: str, *, retry_delay: float,
                       permanent: bool = False, conn: AsyncConnection | None = None) -> Job | None:
        params = {"id": job_id, "token": token, "error": error, "retry_delay": retry_delay, "permanent": permanent}
        return await self._one("fail_job", params, conn, kwargs_row(Job))

    async def finish_cancelled_job(self, job_id: int, token: uuid.UUID, conn: AsyncConnection | None = None) -> Job | None:
        return await self._one("finish_cancelled_job", {"id": job_id, "token": token}, conn, kwargs_row(Job))

    async def release_jobs(self, items: Sequence[tuple[int, uuid.UUID]], conn: AsyncConnection | None = None) -> list[int]:
        params = {"ids": [i[0] for i in items], "tokens": [i[1] for i in items]}
        return [row[0] for row in await self._many("release_jobs", params, conn)]

    async def extend_leases(self, items: Sequence[tuple[int, uuid.UUID]], lease_seconds: float,
                            conn: AsyncConnection | None = None) -> list[tuple[int, uuid.UUID, bool, bool]]:
        """(id, token, cancel_requested, extended) per lease still held (see extend_leases)."""
        params = {"ids": [i[0] for i in items], "tokens": [i[1] for i in items], "lease_seconds": lease_seconds}
        return await self._many("extend_leases", params, conn)

    async def lease_held(self, job_id: int, token: uuid.UUID, conn: AsyncConnection | None = None) -> bool:
        return await self._one("lease_held", {"id": job_id, "token": token}, conn) is not None

    # -- maintenance -------------------------------------------------------------------------

    async def rescue_expired_leases(self, limit: int, lease_seconds: float,
                                    conn: AsyncConnection | None = None) -> list[tuple[int, str, str]]:
        return await self._many("rescue_expired_leases", {"limit": limit, "lease_seconds": lease_seconds}, conn)

    async def prune_finished_jobs(self, statuses: Sequence[str], older_than_seconds: float, limit: int,
                                  conn: AsyncConnection | None = None) -> int:
        params = {"statuses": list(statuses), "older_than_seconds": older_than_seconds, "limit": limit}
        return len(await self._many("prune_finished_jobs", params, conn))

    async def create_event_partitions(self, days_ahead: int, conn: AsyncConnection | None = None) -> list[str]:
        return [row[0] for row in await self._many("create_event_partitions", {"days_ahead": days_ahead}, conn)]

    async def drop_event_partitions(self, older_than_seconds: float, conn: AsyncConnection | None = None) -> list[str]:
        return [row[0] for row in await self._many("drop_event_partitions", {"older_than_seconds": older_than_seconds},
                                                   conn)]

    async def event_partition_health(self, conn: AsyncConnection | None = None) -> tuple[int, datetime | None]:
        """(rows in the default events partition, the end of the last partition)."""
        default_rows, covered_until = await self._one("event_partition_health", {}, conn)
        return int(default_rows), covered_until

    async def prune_workers(self, older_than_seconds: float, conn: AsyncConnection | None = None) -> int:
        return len(await self._many("prune_workers", {"older_than_seconds": older_than_seconds}, conn))

    async def prune_rate_buckets(self, conn: AsyncConnection | None = None) -> int:
        return len(await self._many("prune_rate_buckets", {}, conn))

    async def listen(self, conn: AsyncConnection, *channels: str) -> None:
        """LISTEN on each of our channels. Not a named query: LISTEN takes no parameters and
        cannot be prepared, so the (lower-case, checked) channel name is composed in."""
        with translate_errors():
            for channel in channels:
                if not _CHANNEL.fullmatch(channel):
                    raise ValueError(f"bad channel name {channel!r}")
                await conn.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.SQL(channel)))

    async def try_leader_lock(self, conn: AsyncConnection) -> bool:
        return bool((await self._one("try_leader_lock", {"key": LEADER_LOCK_KEY}, conn))[0])

    # -- single jobs -------------------------------------------------------------------------

    async def get_job(self, job_id: int, conn: AsyncConnection | None = None) -> Job | None:
        return await self._one("get_job", {"id": job_id}, conn, kwargs_row(Job))

    async def lock_job(self, job_id: int, conn: AsyncConnection) -> Job | None:
        return await self._one("lock_job", {"id": job_id}, conn, kwargs_row(Job))

    async def cancel_queued_job(self, job_id: int, conn: AsyncConnection | None = None) -> Job | None:
        return await self._one("cancel_queued_job", {"id": job_id}, conn, kwargs_row(Job))

    async def request_cancel(self, job_id: int, conn: AsyncConnection | None = None) -> Job | None:
        return await self._one("request_cancel", {"id": job_id}, conn, kwargs_row(Job))

    async def redrive_job(self, job_id: int, conn: AsyncConnection | None = None) -> Job | None:
        try:
            return await self._one("redrive_job", {"id": job_id}, conn, kwargs_row(Job))
        except pg_errors.UniqueViolation as exc:  # a job with its unique key went live meanwhile
            raise UniqueKeyTaken(job_id, "") from exc  # Queue.retry names the key

    async def unique_key_holder(self, unique_key: str, job_id: int, conn: AsyncConnection | None = None) -> int | None:
        """The id of another live job holding ``unique_key``, if there is one."""
        holders = await self._many("live_jobs_by_unique_key", {"unique_keys": [unique_key]}, conn, kwargs_row(Job))
        return next((holder.id for holder in holders if holder.id != job_id), None)

    async def run_job_now(self, job_id: int, conn: AsyncConnection | None = None) -> Job | None:
        return await self._one("run_job_now", {"id": job_id}, conn, kwargs_row(Job))

    async def delete_job(self, job_id: int, conn: AsyncConnection | None = None) -> bool:
        return await self._one("delete_job", {"id": job_id}, conn) is not None

    async def job_errors(self, job_id: int, conn: AsyncConnection | None = None) -> list[JobError]:
        return await self._many("job_errors", {"job_id": job_id}, conn, kwargs_row(JobError))

    # -- events and checkpoints --------------------------------------------------------------

    async def insert_events(self, events: Sequence[tuple[int, str, Any]], conn: AsyncConnection | None = None) -> None:
        params = {
            "job_ids": [e[0] for e in events],
            "types": [e[1] for e in events],
            "datas": [_json_text(e[2]) for e in events],
        }
        await self._many("insert_events", params, conn)

    async def job_events(self, job_id: int, after_id: int = 0, limit: int = 1000,
                         conn: AsyncConnection | None = None) -> list[Event]:
        params = {"job_id": job_id, "after_id": after_id, "limit": limit}
        return await self._many("job_events", params, conn, kwargs_row(Event))

    async def events_after(self, after_id: int, limit: int = 1000, conn: AsyncConnection | None = None) -> list[Event]:
        return await self._many("events_after", {"after_id": after_id, "limit": limit}, conn, kwargs_row(Event))

    async def events_by_ids(self, ids: Sequence[int], conn: AsyncConnection | None = None) -> list[Event]:
        return await self._many("events_by_ids", {"ids": list(ids)}, conn, kwargs_row(Event))

    async def owner_events_after(self, owner_id: str, after_id: int, limit: int = 1000,
                                 conn: AsyncConnection | None = None) -> list[Event]:
        params = {"owner_id": owner_id, "after_id": after_id, "limit": limit}
        return await self._many("owner_events_after", params, conn, kwargs_row(Event))

    async def latest_event_id(self, conn: AsyncConnection | None = None) -> int:
        return (await self._one("latest_event_id", {}, conn))[0]

    async def job_owners(self, ids: Sequence[int], conn: AsyncConnection | None = None) -> dict[int, str | None]:
        """{job_id: owner_id} for the jobs that exist."""
        return dict(await self._many("job_owners", {"ids": list(ids)}, conn))

    async def load_checkpoint(self, job_id: int, conn: AsyncConnection | None = None) -> Any:
        row = await self._one("load_checkpoint", {"job_id": job_id}, conn)
        return None if row is None else row[0]

    async def save_checkpoint(self, job_id: int, token: uuid.UUID, state: Any,
                              conn: AsyncConnection | None = None) -> bool:
        """False when the lease is not the caller's (then nothing is written)."""
        params = {"job_id": job_id, "token": token, "state": _json_text(state)}
        return await self._one("save_checkpoint", params, conn) is not None

    # -- workers and stats -------------------------------------------------------------------

    async def register_worker(self, worker_id: str, hostname: str, pid: int, queues: Sequence[str], concurrency: int,
                              heartbeat_seconds: float, conn: AsyncConnection | None = None) -> None:
        params = {"id": worker_id, "hostname": hostname, "pid": pid, "queues": list(queues), "concurrency": concurrency,
                  "heartbeat_seconds": heartbeat_seconds}
        await self._many("register_worker", params, conn)


    async def listen_for_inserts(self, conn: AsyncConnection, queues: Sequence[str]) -> tuple[bool, bool]:
        """(listening, settled) on ``conn``, a session of the worker's own (schema/0015): see
        queries.sql. When not listening, the caller lets go with stop_listening_for_inserts."""
        listening, settled = await self._one("listen_for_inserts", {"queues": list(queues)}, conn)
        return bool(listening), bool(settled)

    async def stop_listening_for_inserts(self, conn: AsyncConnection) -> None:
        await self._many("stop_listening_for_inserts", {}, conn)

    async def unregister_worker(self, worker_id: str, conn: AsyncConnection | None = None) -> None:
        await self._many("unregister_worker", {"id": worker_id}, conn)

    async def applied_migrations(self, conn: AsyncConnection | None = None) -> set[str]:
        """The ids of the migrations applied to this database; empty when none ever was."""
        if not (await self._one("migrations_table_exists", {}, conn))[0]:
            return set()
        return {row[0] for row in await self._many("applied_migrations", {}, conn)}

    async def next_run_at(self, queues: Sequence[str], conn: AsyncConnection | None = None) -> tuple[datetime | None, datetime]:
        row = await self._one("next_run_at", {"queues": list(queues)}, conn)
        return row[0], row[1]

    async def queue_stats(self, conn: AsyncConnection | None = None) -> list[tuple[str, str, int]]:
        return await self._many("queue_stats", {}, conn)

    # -- queues: pause and limits (README "Queues") ------------------------------------------

    async def queue_statuses(self, conn: AsyncConnection | None = None) -> list[QueueInfo]:
        return await self._many("queue_statuses", {}, conn, kwargs_row(QueueInfo))

    async def queue_status(self, name: str, conn: AsyncConnection | None = None) -> QueueInfo | None:
        return await self._one("queue_status", {"name": name}, conn, kwargs_row(QueueInfo))

    async def set_queue_paused(self, name: str, paused: bool, conn: AsyncConnection | None = None) -> None:
        await self._one("set_queue_paused", {"name": name, "paused": paused}, conn)

    async def set_queue_limits(self, name: str, params: dict[str, Any], conn: AsyncConnection | None = None) -> None:
        """``params`` from pgqueue.limits.limit_params (checked there)."""
        await self._one("set_queue_limits", {"name": name, **params}, conn)

    async def now(self, conn: AsyncConnection | None = None) -> datetime:
        return (await self._one("now", {}, conn))[0]

    # -- job dependencies (pgqueue/dependencies.py, README "Job dependencies") ------------------

    async def insert_graph(self, jobs: Sequence[NewJob], plan: GraphPlan, parents_owned_by: str | None = None,
                           conn: AsyncConnection | None = None) -> list[Job]:
        """Insert jobs with dependencies in one transaction: lock the existing parents FOR SHARE (in
        id order), refuse missing ones (or another owner's), insert with ids drawn in batch order,
        write the edges, and settle the jobs whose parents already finished."""
        async with transaction(self.pool, conn) as c:
            found = await self._many("lock_dependency_parents", {"ids": plan.existing_parents}, c, kwargs_row(_Parent))
            check_parents(plan, [(p.id, p.status, p.owner_id) for p in found], parents_owned_by)
            reserved = (await self._one("reserve_job_ids", {"count": len(jobs)}, c))[0]
            inserted = await self._many("insert_dependent_jobs", graph_insert_params(jobs, plan, reserved), c)
            ids = _inserted_or_none(reserved, {row[0] for row in inserted})
            edges = graph_edge_params(plan, ids)
            if edges["job_ids"]:
                await self._many("insert_dependencies", edges, c)
                await self._many("resolve_waiting", {"ids": sorted(set(edges["job_ids"]))}, c)
            rows = await self._many("jobs_by_ids", {"ids": [i for i in ids if i is not None]}, c, kwargs_row(Job))
            missing = sorted({j.unique_key for j, i in zip(jobs, ids, strict=True) if i is None and j.unique_key})
            holders = (await self._many("live_jobs_by_unique_key", {"unique_keys": missing}, c, kwargs_row(Job))
                       if missing else [])
        return _order_graph(jobs, ids, rows, holders)

    async def job_parents(self, job_id: int, conn: AsyncConnection | None = None) -> list[tuple[int, str, bool]]:
        """(parent id, its status, run_if_failed) for each job ``job_id`` depends on."""
        return await self._many("job_parents", {"job_id": job_id}, conn)

    async def has_waiting_dependents(self, job_id: int, conn: AsyncConnection | None = None) -> bool:
        return bool((await self._one("has_waiting_dependents", {"id": job_id}, conn))[0])

    # -- periodic jobs (pgqueue/scheduler.py) --------------------------------------------------

    async def insert_schedule(self, spec: ScheduleSpec, next_fire_at: datetime | None,
                              conn: AsyncConnection | None = None) -> Schedule | None:
        """The new schedule, or None when its name is taken."""
        params = {"name": spec.name, "expression": spec.expression, "timezone": spec.timezone, "kind": spec.kind,
                  "queue": spec.queue, "payload": spec.payload_json or _json_text(spec.payload),
                  "priority": spec.priority, "max_attempts": spec.max_attempts, "catch_up": spec.catch_up,
                  "catch_up_window": spec.catch_up_window, "paused": spec.paused, "next_fire_at": next_fire_at}
        return await self._one("insert_schedule", params, conn, kwargs_row(Schedule))

    async def upsert_declared_schedules(self, specs: Sequence[ScheduleSpec], next_fire_ats: Sequence[datetime | None],
                                        conn: AsyncConnection | None = None) -> list[Schedule]:
        """Insert or update the schedules declared in code; returns the rows written (unchanged ones are not)."""
        params = {
            "names": [s.name for s in specs], "expressions": [s.expression for s in specs],
            "timezones": [s.timezone for s in specs], "kinds": [s.kind for s in specs],
            "queues": [s.queue for s in specs], "payloads": [s.payload_json or _json_text(s.payload) for s in specs],
            "priorities": [s.priority for s in specs], "max_attempts": [s.max_attempts for s in specs],
            "catch_ups": [s.catch_up for s in specs], "catch_up_windows": [s.catch_up_window for s in specs],
            "next_fire_ats": list(next_fire_ats),
        }
        return await self._many("upsert_declared_schedules", params, conn, kwargs_row(Schedule))

    async def get_schedule(self, name: str, conn: AsyncConnection | None = None) -> Schedule | None:
        return await self._one("get_schedule", {"name": name}, conn, kwargs_row(Schedule))

    async def list_schedules(self, conn: AsyncConnection | None = None) -> list[Schedule]:
        return await self._many("list_schedules", {}, conn, kwargs_row(Schedule))

    async def pause_schedule(self, name: str, conn: AsyncConnection | None = None) -> Schedule | None:
        return await self._one("pause_schedule", {"name": name}, conn, kwargs_row(Schedule))

    async def resume_schedule(self, name: str, next_fire_at: datetime | None,
                              conn: AsyncConnection | None = None) -> Schedule | None:
        params = {"name": name, "next_fire_at": next_fire_at}
        return await self._one("resume_schedule", params, conn, kwargs_row(Schedule))

    async def delete_schedule(self, name: str, conn: AsyncConnection | None = None) -> bool:
        return await self._one("delete_schedule", {"name": name}, conn) is not None

    async def due_schedules(self, limit: int, conn: AsyncConnection | None = None) -> tuple[list[Schedule], datetime]:
        """The due schedules and the database's now() (that of this very statement)."""
        rows = await self._many("due_schedules", {"limit": limit}, conn, dict_row)
        if not rows:
            return [], await self.now(conn)
        now = rows[0]["db_now"]
        return [msgspec.convert({k: v for k, v in row.items() if k != "db_now"}, Schedule) for row in rows], now

    async def fire_schedules(self, plans: Sequence[tuple[int, int, datetime | None, Sequence[datetime]]],
                             conn: AsyncConnection | None = None) -> list[ScheduleFire]:
        """Fire planned schedules in one statement: (id, revision, next_fire_at, fire times) each."""
        params = {
            "ids": [p[0] for p in plans], "revisions": [p[1] for p in plans], "next_fire_ats": [p[2] for p in plans],
            "fire_schedule_ids": [p[0] for p in plans for _ in p[3]],
            "fire_ats": [fire for p in plans for fire in p[3]],
        }
        return await self._many("fire_schedules", params, conn, kwargs_row(ScheduleFire))

    async def next_schedule_due(self, conn: AsyncConnection | None = None) -> tuple[datetime | None, datetime]:
        row = await self._one("next_schedule_due", {}, conn)
        return row[0], row[1]

    async def prune_schedule_fires(self, limit: int, conn: AsyncConnection | None = None) -> int:
        return len(await self._many("prune_schedule_fires", {"limit": limit}, conn))
