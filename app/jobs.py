"""The app's job kinds: typed payloads (validated by POST /jobs) and their handlers.

- ``email``, ``report``, ``notification``: the job-dashboard scenario. The handlers stand in
  for real integrations: they validate, log, report progress and pause briefly.
- ``task``: the per-user task scenario. It runs for ``duration_seconds`` emitting log lines,
  then succeeds or fails at random with ``fail_probability``; failed tasks retry with backoff
  and end dead after their attempts. Both knobs are in the payload so tests can pin them.
- ``external``: no Python handler; workers in other languages claim it over HTTP (/worker/...).
- ``webhook``: a signed POST of a JSON body to a URL (app/kinds/webhooks.py).
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any, Literal

import msgspec

from app.ingest import ingest_jobs
from app.kinds.api_ingest import api_ingest_jobs
from app.kinds.bulk import bulk_jobs
from app.kinds.webhooks import webhook_jobs
from app.validation import describe_pattern
from pgqueue import JobContext, JobRegistry

jobs = JobRegistry()

Email = Annotated[str, msgspec.Meta(pattern=describe_pattern(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "not an email address"),
                                    max_length=254, description="an e-mail address",
                                    extra_json_schema={"format": "email"})]


class EmailPayload(msgspec.Struct, forbid_unknown_fields=True):
    to: Email
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    body: Annotated[str, msgspec.Meta(max_length=100_000)] = ""
    cc: list[Email] = []


class ReportPayload(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    format: Literal["csv", "pdf", "json"] = "csv"
    # how many rows to "render"; the handler reports progress as it goes
    rows: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1000


class NotificationPayload(msgspec.Struct, forbid_unknown_fields=True):
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    channel: Literal["push", "sms", "slack"] = "push"


class TaskPayload(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(max_length=5000)] = ""
    # chance (0..1) that an attempt fails at the end
    fail_probability: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    # how long an attempt runs, spread over `steps` log lines
    duration_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 3.0
    steps: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5


class ExternalPayload(msgspec.Struct):
    """Anything a worker in another language understands; only its JSON-ness is checked."""

    data: Any = None


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


@jobs.kind("email", queue="mail", max_attempts=5)
async def send_email(ctx: JobContext, email: EmailPayload) -> dict[str, Any]:
    recipients = [email.to, *email.cc]
    ctx.log(f"connecting to the mail relay for {len(recipients)} recipient(s)")
    await _pause(0.05)
    ctx.log(f"sent {email.subject!r} to {', '.join(recipients)}")
    return {"delivered_to": recipients}


@jobs.kind("report", queue="reports", max_attempts=3)
async def build_report(ctx: JobContext, report: ReportPayload) -> dict[str, Any]:
    chunk = max(report.rows // 10, 1)
    done = 0
    while done < report.rows:
        ctx.raise_if_cancelled()
        done = min(done + chunk, report.rows)
        ctx.progress(100 * done / report.rows, f"{done}/{report.rows} rows")
        await _pause(0.02)
    ctx.log(f"report {report.name!r} rendered as {report.format}")
    return {"name": report.name, "format": report.format, "rows": report.rows}


@jobs.kind("notification", queue="default", max_attempts=3)
async def send_notification(ctx: JobContext, note: NotificationPayload) -> dict[str, Any]:
    ctx.log(f"{note.channel} notification to {note.user}: {note.message[:80]}")
    await _pause(0.02)
    return {"channel": note.channel, "user": note.user}


class SimulatedTaskError(Exception):
    """The simulated failure of a task attempt (it is retried like any handler error)."""


@jobs.kind("task", queue="tasks", max_attempts=3, backoff_base=1.0, backoff_max=30.0)
async def run_task(ctx: JobContext, task: TaskPayload) -> dict[str, Any]:
    ctx.log(f"task {task.title!r} started (attempt {ctx.attempt}/{ctx.job.max_attempts})")
    for step in range(1, task.steps + 1):
        ctx.raise_if_cancelled()
        await _pause(task.duration_seconds / task.steps)
        ctx.progress(100 * step / task.steps, f"step {step}/{task.steps}")
        ctx.log(f"step {step}/{task.steps} done")
    if random.random() < task.fail_probability:
        ctx.log("task failed (simulated)", level="error")
        raise SimulatedTaskError(f"task {task.title!r} failed on attempt {ctx.attempt}")
    ctx.log("task finished")
    return {"title": task.title, "steps": task.steps}


jobs.declare("external", payload=ExternalPayload, handler=None, queue="external", max_attempts=5)

# Log-file ingestion (app/ingest.py): `ingest_file` on the `ingest` queue.
jobs.include(ingest_jobs)

# API ingest (app/kinds/api_ingest.py): `api_ingest` on the `api_ingest` queue.
jobs.include(api_ingest_jobs)

# Webhook delivery (app/kinds/webhooks.py): `webhook` on the `webhooks` queue.
jobs.include(webhook_jobs)

# Filter-wide bulk actions (app/kinds/bulk.py): `bulk_action` on the `maintenance` queue.
jobs.include(bulk_jobs)
