"""Maintenance services run by one elected worker: the lease rescuer and the pruner.

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
    """Deletes finished jobs and old events past their retention (see README, "What we keep")."""

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
        for _ in range(MAX_BATCHES):
            deleted = await self.store.prune_events(self.settings.keep_events_seconds, BATCH * 5, conn)
            total += deleted
            if deleted < BATCH * 5:
                break
        # a killed worker's row goes after max(10 of its heartbeats, 2 leases, 5 minutes): README "Workers"
        await self.store.prune_workers(max(300.0, self.settings.lease_seconds * 2), conn)
        if total:
            log.info("pruned %s rows", total)
        return total
