"""What a non-admin may read of a failure: the exception's message, never the traceback.

The engine stores a failed attempt's Python traceback (``last_error``, ``job_errors.error``, the
``error`` of failed/dead/rescued events). Its frames name server file paths and code lines, so
only admins get it whole; everyone else gets its last line, ``ExcType: message``.
"""

from __future__ import annotations

import re

import msgspec

from pgqueue.models import Event

_FRAME = re.compile(r'^\s+File "[^"]*", line \d+')
# "app.jobs.SimulatedTaskError: ..." -> "SimulatedTaskError: ..." (a module path says where our code lives)
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)+(?P<name>[A-Za-z_][A-Za-z0-9_]*(?::|$))")


def exception_message(error: str | None) -> str | None:
    """The final exception of a traceback as ``Type: message``; any other text as it is."""
    if error is None:
        return None
    lines = error.splitlines()
    frames = [index for index, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return error
    # after the last frame come its indented source line and carets, then the exception itself
    tail = lines[frames[-1] + 1:]
    while tail and (tail[0].startswith(" ") or not tail[0].strip()):
        tail = tail[1:]
    message = "\n".join(tail).strip()
    if not message:
        return "the handler raised an exception (details are shown to admins)"
    return _QUALIFIED.sub(r"\g<name>", message, count=1)


def event_for(event: Event, *, admin: bool) -> Event:
    """The event as this viewer may see it: an error in its data shortened to the message."""
    if admin or not isinstance(event.data, dict) or not isinstance(event.data.get("error"), str):
        return event
    return msgspec.structs.replace(event, data={**event.data, "error": exception_message(event.data["error"])})
