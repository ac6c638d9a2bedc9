"""Job dependencies without a database: checking the enqueue options and planning a graph batch.

Shared by the PostgreSQL store (which runs the plan in one transaction) and the in-memory
backend. README, "Job dependencies".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from pgqueue.errors import InvalidPayload
from pgqueue.models import NewJob

DEPENDENCY_OPTIONS = frozenset({"depends_on", "ref", "run_if_parent_fails"})
MAX_PARENTS = 1000  # per job: a child's readiness check reads all of its parents
MAX_JOB_ID = 2**63 - 1
MAX_REF_LENGTH = 100


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the registry's options, the dependency options) of one enqueue call."""
    plain = {k: v for k, v in options.items() if k not in DEPENDENCY_OPTIONS}
    deps = {k: v for k, v in options.items() if k in DEPENDENCY_OPTIONS}
    return plain, deps


def check_dependency_options(depends_on: Any = (), ref: Any = None, run_if_parent_fails: Any = False
                             ) -> tuple[tuple[int | str, ...], str | None, bool]:
    """Validated (depends_on without duplicates, ref, run_if_parent_fails); InvalidPayload names the field."""
    errors: list[dict[str, str]] = []
    parents: list[int | str] = []
    if depends_on is None:
        depends_on = ()
    if isinstance(depends_on, str | bytes | dict) or not isinstance(depends_on, Iterable):
        errors.append({"field": "depends_on", "message": "must be a list of job ids (or refs of earlier jobs of the batch)"})
    else:
        for index, parent in enumerate(depends_on):
            if isinstance(parent, bool) or not isinstance(parent, int | str):
                errors.append({"field": f"depends_on.{index}", "message": "must be a job id or a ref"})
            elif isinstance(parent, int) and not 1 <= parent <= MAX_JOB_ID:
                errors.append({"field": f"depends_on.{index}", "message": f"job {parent} does not exist"})
            elif isinstance(parent, str) and not _good_ref(parent):
                errors.append({"field": f"depends_on.{index}", "message": f"a ref is 1-{MAX_REF_LENGTH} characters, no NUL"})
            elif parent not in parents:
                parents.append(parent)
        if len(parents) > MAX_PARENTS:
            errors.append({"field": "depends_on", "message": f"at most {MAX_PARENTS} parents per job"})
    if ref is not None and not (isinstance(ref, str) and _good_ref(ref)):
        errors.append({"field": "ref", "message": f"must be a string of 1-{MAX_REF_LENGTH} characters, no NUL"})
    if not isinstance(run_if_parent_fails, bool):
        errors.append({"field": "run_if_parent_fails", "message": "must be true or false"})
    if errors:
        raise InvalidPayload(errors)
    return tuple(parents), ref, run_if_parent_fails


def _good_ref(ref: str) -> bool:
    return 1 <= len(ref) <= MAX_REF_LENGTH and "\x00" not in ref


def with_dependencies(new: NewJob, options: dict[str, Any]) -> NewJob:
    """``new`` with the dependency options of ``options`` (already split off), checked."""
    if not options:
        return new
    depends_on, ref, run_anyway = check_dependency_options(**options)
    return msgspec.structs.replace(new, depends_on=depends_on, ref=ref, run_if_parent_fails=run_anyway)


def recheck(new: NewJob) -> NewJob:
    """A caller-made NewJob's dependency fields, checked like the enqueue options."""
    if not new.depends_on and new.ref is None and not new.run_if_parent_fails:
        return new
    return with_dependencies(new, {"depends_on": new.depends_on, "ref": new.ref,
                                   "run_if_parent_fails": new.run_if_parent_fails})


def has_dependencies(jobs: Sequence[NewJob]) -> bool:
    return any(job.depends_on or job.ref is not None for job in jobs)


class Edge(msgspec.Struct, frozen=True):
    """child (index in the batch) depends on an existing job (parent_id) or an earlier item (parent_index)."""

    child: int
    parent_id: int | None
    parent_index: int | None
    run_if_failed: bool


class GraphPlan(msgspec.Struct, frozen=True):
    existing_parents: list[int]  # sorted: the lock order
    edges: list[Edge]
    waiting: list[bool]  # per item: it has parents, so it starts as 'waiting'

    def parent_of(self, edge: Edge, ids: Sequence[int | None]) -> int:
        if edge.parent_id is not None:
            return edge.parent_id
        assert edge.parent_index is not None
        parent = ids[edge.parent_index]
        assert parent is not None  # an item with a ref has no unique key, so it is always inserted
        return parent


def plan_graph(jobs: Sequence[NewJob]) -> GraphPlan:
    """Resolve refs to batch positions. A ref names an EARLIER item: a batch is written in order
    and a job depends only on older jobs, so no cycle can be expressed."""
    refs: dict[str, int] = {}
    edges: list[Edge] = []
    existing: set[int] = set()
    errors: list[dict[str, str]] = []
    for index, job in enumerate(jobs):
        where = f"item {index}: " if len(jobs) > 1 else ""
        for parent in job.depends_on:
            if isinstance(parent, str):
                if parent not in refs:
                    errors.append({"field": "depends_on", "message": f"{where}ref {parent!r} names no earlier job "
                                   "of this batch (a job must come after the jobs it depends on)"})
                    continue
                edges.append(Edge(child=index, parent_id=None, parent_index=refs[parent],
                                  run_if_failed=job.run_if_parent_fails))
            else:
                existing.add(parent)
                edges.append(Edge(child=index, parent_id=parent, parent_index=None,
                                  run_if_failed=job.run_if_parent_fails))
        if job.ref is not None:
            if job.ref in refs:
                errors.append({"field": "ref", "message": f"{where}ref {job.ref!r} is used twice in this batch"})
            elif job.unique_key is not None:
                errors.append({"field": "ref", "message": f"{where}a job others depend on cannot have a unique_key "
                               "(it might not be inserted)"})
            refs[job.ref] = index
    if errors:
        raise InvalidPayload(errors)
    return GraphPlan(existing_parents=sorted(existing), edges=edges, waiting=[bool(job.depends_on) for job in jobs])


def check_parents(plan: GraphPlan, found: Sequence[tuple[int, str, str | None]], owner_id: str | None) -> None:
    """InvalidPayload unless every existing parent was found (and, with ``owner_id``, is that
    owner's: another owner's job is reported exactly like a missing one)."""
    seen = {job_id for job_id, _status, owner in found if owner_id is None or owner == owner_id}
    missing = [job_id for job_id in plan.existing_parents if job_id not in seen]
    if missing:
        listed = ", ".join(str(job_id) for job_id in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InvalidPayload([{"field": "depends_on",
                               "message": f"job{'s' if len(missing) > 1 else ''} {listed} "
                                          f"do{'' if len(missing) > 1 else 'es'} not exist"}])
