"""Maintenance services run by one elected worker: the lease rescuer, the pruner and the
events partition keeper.

Each has a `run_once()` that works in bounded batches (tests call it directly) and is
driven by the worker's maintenance loop while that worker holds the leader lock.
"""

from __future__ import annotations

import logging

from pgqueue.config import Settings
from pgqueue.db import AsyncConnection
from pgqueue.store import Store

log = logging.getLogger("pgqueue.maintenance")

BATCH = 1000
MAX_BATCHES = 20  # per run_once, so one pass never holds the loop for long


class LeaseRescuer:
    """Makes jobs whose worker stopped heartbeating runnable again (or dead)."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        # after a server restart, leases are rescued only once it has been up this long
        self.lease_seconds = lease_seconds

    async def run_once(self, conn: AsyncConnection | None = None) -> int:
        total = 0
        for _ in range(MAX_BATCHES):
            rows = await self.store.rescue_expired_leases(BATCH, self.lease_seconds, conn)
            for job_id, status, worker in rows:
                log.warning("job %s rescued from worker %s (lease expired) -> %s", job_id, worker, status)
            total += len(rows)
            if len(rows) < BATCH:
                break
        return total


class Pruner:
    """Deletes finished jobs past their retention and has old events' partitions dropped (see
    README, "What we keep"); returns the number of jobs deleted."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def run_once(self, conn: AsyncConnection | None = None) -> int:
        total = 0
        plans = [
            (("succeeded", "cancelled"), self.settings.keep_succeeded_seconds),
            (("dead",), self.settings.keep_failed_seconds),
        ]
        for statuses, keep in plans:
            for _ in range(MAX_BATCHES):
                deleted = await self.store.prune_finished_jobs(statuses, keep, BATCH, conn)
                total += deleted
                if deleted < BATCH:
                    break
        # events go by whole day partitions, not by DELETE (not counted here: partitions, not rows)
        await EventPartitions(self.store, self.settings).run_once(conn)
        # a killed worker's row goes after max(10 of its heartbeats, 2 leases, 5 minutes): README "Workers"
        await self.store.prune_workers(max(300.0, self.settings.lease_seconds * 2), conn)
        # token buckets that are full again (no row reads as a full bucket): README "Queues"
        total += await self.store.prune_rate_buckets(conn)
        if total:
            log.info("pruned %s rows", total)
        return total


class EventPartitions:
    """Keeps pgqueue.events partitioned by day (schema/0012): partitions for today and the days
    ahead, strays moved out of the default partition, and whole days past keep_events_seconds
    detached and dropped. Returns the names of the partitions dropped."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def run_once(self, conn: AsyncConnection | None = None) -> list[str]:
        # create first: it empties the default partition into day partitions, which the drop
        # then sees as whole days (a stray row older than retention goes with its day)
        default_rows, _ = await self.store.event_partition_health(conn)
        if default_rows:
            log.warning("%s events found in the default partition (no partition for their day): moving them",
                        default_rows)
        created = await self.store.create_event_partitions(self.settings.event_partitions_ahead_days, conn)
        if created:
            log.info("created events partitions %s", ", ".join(created))
        dropped = await self.store.drop_event_partitions(self.settings.keep_events_seconds, conn)
        if dropped:
            log.info("dropped events partitions past retention: %s", ", ".join(dropped))
        return dropped
