"""The chaos scenarios: each starts its workers, enqueues, injects its faults (recording the
jobs in flight at each) and waits for every job to end. `SCENARIOS[name].params(scale)` gives
its sizes; `run_scenario()` runs one and returns its report."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pgqueue.chaos.fleet import WorkerTimings
from pgqueue.chaos.harness import Params, Progress, Run, connect
from pgqueue.chaos.jobs import POISON, SLOW_TX
from pgqueue.chaos.server import ChaosServer
from pgqueue.chaos.sql import CHAOS_QUERIES
from pgqueue.db import CONNECTION_ERRORS, Connection


def _scaled(value: float, scale: float, floor: float) -> float:
    return max(floor, value * scale)


def _jobs(count: int, scale: float, floor: int = 50) -> int:
    return max(floor, int(count * scale))


# -- the scenarios ----------------------------------------------------------------------------


def sigkill(run: Run) -> None:
    """SIGKILL a random worker every few seconds while the jobs drain; each is restarted at once."""
    p = run.params
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    rng = random.Random(7)
    window_ends = time.monotonic() + p.fault_seconds
    while time.monotonic() + p.fault_every <= window_ends:
        run.pause(p.fault_every)
        if run.settled():
            break
        victim = rng.choice(run.fleet.alive())
        fault = run.begin_fault("sigkill", in_flight_query=None)
        run.fleet.kill(victim)
        # the dead worker's jobs stay 'running' until their lease expires: exactly its jobs in flight
        fault.in_flight |= run.probe.ids("running_jobs_of_pid", {"pid": str(victim.pid)})
        run.end_fault(fault, f"pid {victim.pid}")
    run.wait_settled()


def restart_fast(run: Run) -> None:
    """`pg_ctl restart -m fast` a third of the way through the drain."""
    p = run.params
    assert run.server is not None
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    run.wait_for_share(1 / 3)
    fault = run.begin_fault("restart -m fast")
    run.server.restart("fast")
    fault.in_flight |= {row[0] for row in run.probe.retrying("running_claimed_before_start")}
    run.end_fault(fault)
    run.wait_settled()


def outage(run: Run) -> None:
    """A crash (`-m immediate`) with every slot busy, the server kept down longer than a lease.
    The jobs in flight finish their work during the outage; their results must be written when
    the server is back, and nothing must run again."""
    p = run.params
    assert run.server is not None
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    run.wait_for_share(0.25)
    slots = min(p.workers * p.concurrency, p.jobs - len(run.ids) // 4)

    def busy_past_side_effect(progress: Progress) -> bool:
        """Every slot busy with a job that has done its side effect (and now works on, `after`)."""
        if progress.running < slots:
            return False
        running = sorted(run.probe.ids("running_jobs"))
        return len(run.probe.ids("jobs_with_side_effect", {"ids": running})) >= slots

    run.wait(busy_past_side_effect, p.settle_timeout, "every slot busy past its side effect")
    fault = run.begin_fault("outage -m immediate")
    past_side_effect = run.probe.ids("jobs_with_side_effect", {"ids": sorted(fault.in_flight)})
    run.server.stop("immediate")
    run.pause(p.fault_seconds, stop_when_settled=False)
    run.server.start()
    fault.in_flight |= {row[0] for row in run.probe.retrying("running_claimed_before_start")}
    run.end_fault(fault, f"down {p.fault_seconds:.0f}s, lease {p.timings.lease:.0f}s")
    run.wait_settled()
    repeated = dict(run.probe.retrying("repeated_side_effects"))
    run.extra["outage"] = {
        "in_flight_past_side_effect": len(past_side_effect),
        # those jobs had done their work before the crash and finished during the outage
        "of_those_run_again": len(past_side_effect & set(repeated)),
    }


def terminate(run: Run) -> None:
    """pg_terminate_backend() of every pgqueue session (pool, LISTEN, heartbeat), twice."""
    p = run.params
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    for share in (1 / 3, 2 / 3):
        run.wait_for_share(share)
        fault = run.begin_fault("pg_terminate_backend")
        at, killed = run.probe.one("terminate_backends")
        fault.in_flight |= run.probe.ids("running_claimed_before", {"before": at})
        run.end_fault(fault, f"{killed} backends terminated")
        started = time.monotonic()
        if run.wait(lambda _: run.probe.one("listeners")[0] >= p.workers, 60, "the workers to LISTEN again"):
            fault.details["listen_back_seconds"] = round(time.monotonic() - started, 2)
    run.wait_settled()


def xmin_pin(run: Run) -> None:
    """An idle-in-transaction session holding an old snapshot (so nothing can be vacuumed) while
    many jobs drain: throughput per window and pgqueue.jobs' dead tuples before and after."""
    p = run.params
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    dead_before = run.probe.one("dead_tuples")
    run.wait_for_share(0.05)
    pin = connect(run.url)
    try:
        fault = run.begin_fault("xmin pinned")
        pin.execute(CHAOS_QUERIES["begin_repeatable_read"])
        pin.execute(CHAOS_QUERIES["take_snapshot"])
        run.pause(p.fault_seconds)
        time.sleep(1)  # cumulative statistics reach the shared view within a second
        dead_pinned = run.probe.one("dead_tuples")
        pin.execute(CHAOS_QUERIES["rollback"])
        fault.in_flight |= run.probe.ids("running_jobs")
        run.end_fault(fault, f"pinned {time.time() - fault.started:.0f}s")
    finally:
        pin.close()
    run.wait_settled()
    time.sleep(1)
    dead_after = run.probe.one("dead_tuples")
    finish_times = [row[0] for row in run.probe.rows("finish_times", {"queue": "chaos"})]
    run.extra["xmin_pin"] = {
        "pinned_from": round(fault.started - run.enqueued_at, 1),
        "pinned_until": round((fault.ended or fault.started) - run.enqueued_at, 1),
        "n_dead_tup": {"before": dead_before[0], "end_of_pin": dead_pinned[0], "after": dead_after[0]},
        "throughput_per_window": run.buckets(finish_times, p.bucket_seconds, run.enqueued_at),
        "window_seconds": p.bucket_seconds,
    }


def slow_tx(run: Run) -> None:
    """Jobs that keep ctx.transaction() (and their row lock) open for seconds, among short ones:
    their heartbeats must still go through; no live worker may lose a job to the rescuer."""
    p = run.params
    run.start_fleet()
    # the slow jobs first: claimed together, they hold every slot (and queue for the pool's
    # connections) while the heartbeat has to extend all their leases; the short jobs follow
    run.enqueue([(SLOW_TX, {"hold": p.hold})] * p.slow_jobs + run.work_items(p.jobs))
    run.wait_settled()


def poison(run: Run) -> None:
    """One job that kills its worker process on every attempt, in the middle of the others: it
    must end dead after its attempts, every other job must succeed (the harness restarts the
    worker each time it dies; each death is a fault, with the jobs the dead worker held)."""
    p = run.params
    run.start_fleet()
    half = p.jobs // 2
    items: list[tuple[str, Any]] = [*run.work_items(half), (POISON, {}), *run.work_items(p.jobs - half)]
    run.enqueue(items)
    run.wait_settled()


def conn_exhaust(run: Run) -> None:
    """Idle connections open until the server refuses more, held for a while, then closed: the
    workers keep going on the connections they have (or recover afterwards); nothing is lost."""
    p = run.params
    run.start_fleet()
    run.enqueue(run.work_items(p.jobs, after=p.work_after))
    run.wait_for_share(1 / 3)
    held: list[Connection] = []
    refused = None
    fault = run.begin_fault("connections exhausted")
    try:
        while len(held) < p.idle_connections:
            try:
                conn = connect(run.url)
                conn.execute(CHAOS_QUERIES["idle_connection"])
                held.append(conn)
            except CONNECTION_ERRORS as exc:
                refused = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                break
        before = run.progress()
        run.pause(p.fault_seconds)
        during = run.progress()
    finally:
        for conn in held:
            conn.close()
    fault.in_flight |= run.probe.ids("running_jobs")
    run.end_fault(fault, f"{len(held)} idle connections" + (f", then refused: {refused}" if refused else
                                                             " (never refused)"))
    fault.details["idle_connections"] = len(held)
    fault.details["refused"] = refused
    fault.details["succeeded_while_exhausted"] = (during.succeeded - before.succeeded) if before and during else None
    run.wait_settled()


# -- the table of scenarios ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    drive: Callable[[Run], None]
    params: Callable[[float], Params]
    needs_server: bool = False  # restarts or stops the server: needs one the harness controls


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("sigkill", "SIGKILL a worker every 3 s for 30 s while 40,000 jobs drain (2 workers)", sigkill,
             lambda k: Params(jobs=_jobs(40_000, k), fault_every=_scaled(3, k, 0.5), fault_seconds=_scaled(30, k, 2))),
    Scenario("restart_fast", "pg_ctl restart -m fast a third of the way through 20,000 jobs", restart_fast,
             lambda k: Params(jobs=_jobs(20_000, k)), needs_server=True),
    Scenario("outage", "crash (-m immediate), down 10 s with a 5 s lease, every slot of 4 workers busy", outage,
             lambda k: Params(jobs=_jobs(400, k, 40), workers=4, concurrency=10, work_after=2.0,
                              fault_seconds=_scaled(10, k, 3)),
             needs_server=True),
    Scenario("terminate", "pg_terminate_backend of every pgqueue session, twice, during 20,000 jobs", terminate,
             lambda k: Params(jobs=_jobs(20_000, k))),
    Scenario("xmin_pin", "an idle transaction pins xmin for 120 s during 300,000 jobs", xmin_pin,
             lambda k: Params(jobs=_jobs(300_000, k), fault_seconds=_scaled(120, k, 2),
                              bucket_seconds=_scaled(10, k, 1), settle_timeout=600)),
    Scenario("slow_tx", "50 jobs hold ctx.transaction() for 2 s, then 2,000 short ones (lease 5 s, heartbeat 1 s)",
             slow_tx, lambda k: Params(jobs=_jobs(2_000, k), workers=1, concurrency=50, slow_jobs=50, hold=2.0)),
    Scenario("poison", "a job that kills its worker (os._exit) on every attempt, among 2,000", poison,
             lambda k: Params(jobs=_jobs(2_000, k), workers=1, concurrency=10)),
    Scenario("conn_exhaust", "300 idle connections exhaust the server's slots for 10 s during 20,000 jobs",
             conn_exhaust, lambda k: Params(jobs=_jobs(20_000, k), fault_seconds=_scaled(10, k, 2))),
]}


def run_scenario(name: str, url: str, server: ChaosServer | None, *, scale: float = 1.0,
                 say: Callable[[str], None] = lambda line: None, timings: WorkerTimings | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """Run one scenario against `url` (on `server`, which it may restart) and return its report.
    `overrides` replace fields of the scenario's Params (e.g. jobs=500)."""
    scenario = SCENARIOS[name]
    params = replace(scenario.params(scale), **overrides)
    if timings is not None:
        params.timings = timings
    if scenario.needs_server and server is None:
        return {"scenario": name, "skipped": "needs a server the harness starts itself (it stops and restarts "
                                             "it): run without --database-url"}
    say(f"[{name}] {scenario.summary} (scale {scale:g})")
    run = Run(name, url, server, params, say)
    try:
        scenario.drive(run)
    finally:
        report = run.finish()
    report["summary"] = scenario.summary
    report["problems"] = problems(report)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What went wrong, in words (empty when the engine came through the scenario clean)."""
    found = []
    if report["lost"]:
        found.append(f"{report['lost']} job(s) lost")
    if report["duplicated_outside_in_flight"]:
        found.append(f"{len(report['duplicated_outside_in_flight'])} job(s) ran twice without being in flight at a fault")
    if report["rescues_of_live_worker"]:
        found.append(f"{report['rescues_of_live_worker']} rescue(s) of a live worker's job")
    if report["innocent_dead"]:
        found.append(f"{len(report['innocent_dead'])} innocent job(s) dead")
    if report["deadlocks"]:
        found.append(f"{report['deadlocks']} deadlock(s) in the server log")
    if report["scenario"] == "poison" and report["poison_dead"] != 1:
        found.append("the poison job did not end dead")
    return found
