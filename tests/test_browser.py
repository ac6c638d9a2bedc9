"""A real browser on the live server: headless Debian Chromium's own EventSource watches a job
to completion, and the dashboard follows a running task live. Skipped without /usr/bin/chromium
(Debian package `chromium`)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.settings import AppSettings
from tests.helpers import wait_for
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs headless Chromium at /usr/bin/chromium (apt-get install chromium)")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
TIMEOUT = 60.0

# Opens an EventSource on a job with a stream token (from the query string) and writes every
# event into the DOM; closes it after the terminal event, so the browser becomes idle and
# --dump-dom returns. Served by the app under test, so it is same-origin with the stream.
WATCH_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>watch</title></head>
<body>
<p>status: <span id="status">connecting</span></p>
<ol id="events"></ol>
<script>
const params = new URLSearchParams(location.search);
const url = `/jobs/${params.get("job")}/events?stream_token=${encodeURIComponent(params.get("token"))}`;
const source = new EventSource(url);
for (const type of ["started", "progress", "log", "failed", "succeeded", "dead", "cancelled"]) {
  source.addEventListener(type, (message) => {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    item.dataset.id = message.lastEventId;
    item.dataset.type = event.type;
    item.textContent = JSON.stringify(event.data);
    document.getElementById("events").append(item);
    document.getElementById("status").textContent = event.type;
    if (["succeeded", "dead", "cancelled"].includes(event.type)) source.close();
  });
}
source.onerror = () => { if (source.readyState === EventSource.CLOSED) document.getElementById("status").textContent += " (closed)"; };
</script>
</body></html>
"""


async def watch_page(request: Request) -> Response:
    return HTMLResponse(WATCH_PAGE)


@pytest.fixture
def browser_server(db_url: str) -> Iterator[LiveServer]:
    """The app with its worker, plus the watch page (a test-only route added before it starts)."""
    server = LiveServer(AppSettings(database_url=db_url, pool_size=4, secret="test-secret", run_worker=True,
                                    worker_concurrency=4))
    server.app.router.routes.append(Route("/test/watch", watch_page))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="pgqueue-chromium-") as profile:
        return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)


async def create_task(server: LiveServer, user: ApiUser, **fields: Any) -> int:
    async with server.client(user) as http:
        response = await http.post("/tasks", json={"title": "watched in a browser", "fail_probability": 0, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_chromium_eventsource_watches_a_job_to_completion(browser_server: LiveServer, alice: ApiUser) -> None:
    task_id = await create_task(browser_server, alice, duration_seconds=1.5, steps=5)
    async with browser_server.client(alice) as http:
        token = (await http.post("/auth/stream-token")).json()["token"]
        url = browser_server.url(f"/test/watch?job={task_id}&token={token}")
        # Virtual time stands still while the stream is open, so the budget is only spent once the
        # page closed its EventSource: the DOM is dumped after the job ended, however slow the machine.
        result = await asyncio.to_thread(chromium, "--virtual-time-budget=30000", "--dump-dom", url)
        assert result.returncode == 0, result.stderr[-2000:]
        detail = (await http.get(f"/jobs/{task_id}")).json()

    dom = result.stdout
    assert '<span id="status">succeeded</span>' in dom, dom[-2000:]
    items = re.findall(r'<li data-id="(\d+)" data-type="(\w+)">([^<]*)</li>', dom)
    assert [int(event_id) for event_id, _, _ in items] == [event["id"] for event in detail["events"]]
    assert [event_type for _, event_type, _ in items] == [event["type"] for event in detail["events"]]
    percents = [json.loads(html.unescape(data))["percent"] for _, event_type, data in items if event_type == "progress"]
    assert percents[-1] == 100


# -- the dashboard, driven over the DevTools protocol ----------------------------------------------

class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.connection.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.connection.recv(), TIMEOUT))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def devtools_page() -> AsyncIterator[DevTools]:
    with tempfile.TemporaryDirectory(prefix="pgqueue-chromium-", ignore_cleanup_errors=True) as profile:
        # its own process group, so the browser's helper processes end with it
        process = await asyncio.create_subprocess_exec(
            str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--window-size=1280,900", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"

            async def port_written() -> str:
                return port_file.exists() and port_file.read_text().split("\n")[0]

            port = await wait_for(port_written, TIMEOUT, message="Chromium's DevTools port")
            async with httpx.AsyncClient() as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next(target for target in targets if target["type"] == "page")
            async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as connection:
                yield DevTools(connection)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def test_dashboard_follows_a_running_task_live(browser_server: LiveServer, alice: ApiUser) -> None:
    task_id = await create_task(browser_server, alice, duration_seconds=3, steps=6)
    async with devtools_page() as page:
        # the job's own page; the token is pasted into the sign-in form (kept in sessionStorage)
        await page.call("Page.navigate", url=browser_server.url(f"/dashboard/jobs/{task_id}"))
        await wait_for(lambda: page.evaluate("document.readyState === 'complete' && !!document.getElementById('token-input')"),
                       TIMEOUT, message="the sign-in form")
        await page.evaluate(f"""(() => {{ document.getElementById('token-input').value = {json.dumps(alice.token)};
            document.getElementById('login-form').requestSubmit(); }})()""")

        async def status_in(*expected: str) -> bool:
            return await page.evaluate(
                "document.getElementById('detail-status') && document.getElementById('detail-status').dataset.status"
            ) in expected

        await wait_for(lambda: status_in("running", "succeeded"), TIMEOUT, message="the dashboard to show the task")
        await wait_for(lambda: status_in("succeeded"), TIMEOUT, message="the dashboard to show the task succeeded")
        await wait_for(lambda: page.evaluate("document.getElementById('progress-bar').dataset.percent === '100'"), TIMEOUT,
                       message="the progress bar at 100 %")
        state = await page.evaluate("""({
            percent: document.getElementById('progress-bar').dataset.percent,
            log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
            url: location.href,
            token: sessionStorage.getItem('pgqueue.token'),
        })""")
    async with browser_server.client(alice) as http:
        events = (await http.get(f"/jobs/{task_id}")).json()["events"]
    lines = [event["data"]["line"] for event in events if event["type"] == "log"]
    assert state["percent"] == "100"
    assert [entry.rsplit(" info ", 1)[-1] for entry in state["log"]] == lines, "each log line shown once, in order"
    assert alice.token not in state["url"]
    assert state["token"] == alice.token
