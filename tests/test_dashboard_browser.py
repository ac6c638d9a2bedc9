"""The dashboard's overview, jobs and job pages in headless Debian Chromium, driven over the
DevTools protocol (tests/test_browser.py's helpers): the overview's numbers against the
database, a bulk retry through the UI (selected rows, then "all matching" as a background job),
the URL round trip of a filtered view, a live progress bar reaching 100 %, and an XSS payload
rendered as text. Each test saves a screenshot of its page into app/dashboard/screenshots/."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.kinds.bulk import INLINE_MAX
from tests.helpers import wait_for
from tests.process_fixtures import query, scalar
from tests.test_browser import CHROMIUM, TIMEOUT, DevTools, create_task, devtools_page
from tests.test_dashboard_api import seed
from tests.test_dashboard_jobs_api import insert_jobs
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium")

SCREENSHOTS = Path(__file__).resolve().parent.parent / "app" / "dashboard" / "screenshots"


async def open_page(page: DevTools, server: LiveServer, user: ApiUser, path: str) -> None:
    """Sign in the way a user does (the token pasted into the form), then go to `path`."""
    await page.call("Page.navigate", url=server.url(path))
    await wait_for(lambda: page.evaluate("!!document.getElementById('token-input') && document.readyState === 'complete'"),
                   TIMEOUT, message="the sign-in form")
    await page.evaluate(f"""(() => {{
        document.getElementById('token-input').value = {json.dumps(user.token)};
        document.getElementById('login-form').requestSubmit();
    }})()""")
    await mounted(page)


async def mounted(page: DevTools) -> None:
    async def done() -> bool:
        state = await page.evaluate("document.body ? {mounted: document.body.dataset.mounted, "
                                    "error: document.body.dataset.error, old: !!window.__left} : {}")
        assert not state.get("error"), state["error"]
        if state.get("old"):
            return False
        return bool(state.get("mounted"))

    await wait_for(done, TIMEOUT, message="the page to mount")


async def navigate(page: DevTools, server: LiveServer, path: str) -> None:
    await page.call("Page.navigate", url=server.url(path))
    await wait_for(lambda: page.evaluate("document.readyState === 'complete'"), TIMEOUT, message="the page to load")
    await mounted(page)


async def screenshot(page: DevTools, name: str, *, width: int = 1280) -> None:
    """A full-page PNG at `width` CSS pixels, for the README."""
    height = await page.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=min(int(height), 4000),
                    deviceScaleFactor=1, mobile=width < 600)
    shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / name).write_bytes(base64.b64decode(shot["data"]))
    await page.call("Emulation.clearDeviceMetricsOverride")


async def click(page: DevTools, selector: str) -> None:
    found = await page.evaluate(f"""(() => {{
        const node = document.querySelector({json.dumps(selector)});
        if (!node || node.disabled) return false;
        node.click();
        return true;
    }})()""")
    assert found, f"no enabled {selector}"


async def test_overview_shows_what_the_database_holds(live_server: LiveServer, admin: ApiUser) -> None:
    url = live_server.database_url
    seed(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.queues (name, paused, concurrency_limit) VALUES ('mail', true, 3)")
    async with devtools_page() as page:
        await open_page(page, live_server, admin, "/dashboard")
        await wait_for(lambda: page.evaluate("document.querySelectorAll('#status-cards .stat').length > 0"), TIMEOUT,
                       message="the status cards")
        shown = await page.evaluate("""({
            cards: Object.fromEntries([...document.querySelectorAll('#status-cards .stat')]
                .map((a) => [a.dataset.status, Number(a.dataset.count)])),
            queues: Object.fromEntries([...document.querySelectorAll('#queues tbody tr[data-queue]')].map((tr) => [
                tr.dataset.queue, {queued: Number(tr.querySelector('[data-field=queued]').textContent.replace(/,/g, '')),
                                   failed: Number(tr.querySelector('[data-field=failed_waiting]').textContent.replace(/,/g, '')),
                                   state: tr.querySelector('[data-state]').dataset.state,
                                   limits: tr.lastElementChild.textContent}])),
            workers: Object.fromEntries([...document.querySelectorAll('#workers tbody tr[data-worker]')]
                .map((tr) => [tr.dataset.worker, tr.querySelector('[data-alive]').dataset.alive])),
            charts: document.querySelectorAll('svg.chart').length,
            depthNote: document.getElementById('depth-note').textContent,
        })""")
        await screenshot(page, "overview.png")
        await screenshot(page, "overview-420.png", width=420)
        # live: a cancellation's event on GET /events redraws the cards (no reload, well before the 30 s poll)
        queued_id, cancelled_queue = query(url, "SELECT id, queue FROM pgqueue.jobs WHERE status = 'queued' "
                                                "ORDER BY id LIMIT 1")[0]
        async with live_server.client(admin) as http:
            assert (await http.delete(f"/jobs/{queued_id}")).status_code == 200
        await wait_for(lambda: page.evaluate(
            "document.querySelector('#status-cards [data-status=cancelled]').dataset.count === '41'"), 15,
            message="the cards to follow the cancellation live")
        # pause and resume from the queues table
        await click(page, "button[data-action=resume][data-queue=mail]")
        await wait_for(lambda: page.evaluate("!!document.querySelector('button[data-action=pause][data-queue=mail]')"), TIMEOUT,
                       message="the queue to show as active")
    by_status = dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs GROUP BY status"))
    by_status["queued"] += 1  # the cards were read before the cancellation
    by_status["cancelled"] -= 1
    assert {status: n for status, n in shown["cards"].items() if n} == by_status
    for name in ("mail", "reports"):
        expected = dict(query(url, "SELECT status, count(*) FROM pgqueue.jobs WHERE queue = %s GROUP BY status", [name]))
        assert shown["queues"][name]["queued"] == expected["queued"] + (name == cancelled_queue)
        assert shown["queues"][name]["failed"] == expected["failed"]
    assert shown["queues"]["mail"]["state"] == "paused" and "3 at once" in shown["queues"]["mail"]["limits"]
    assert shown["queues"]["reports"]["state"] == "active"
    assert shown["workers"]["w-live"] == "true" and shown["workers"]["w-gone"] == "false"
    assert shown["charts"] == 3 and "Estimate" in shown["depthNote"]
    assert scalar(url, "SELECT paused FROM pgqueue.queues WHERE name = 'mail'") is False


async def test_bulk_retry_through_the_ui(live_server_with_worker: LiveServer, alice: ApiUser, bob: ApiUser) -> None:
    url = live_server_with_worker.database_url
    with psycopg.connect(url, autocommit=True) as conn:  # the retried jobs stay queued for the counts below
        conn.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('default', true)")
    few = insert_jobs(url, alice, 3, "dead")
    theirs = insert_jobs(url, bob, 2, "dead")
    async with devtools_page() as page:
        await open_page(page, live_server_with_worker, alice, "/dashboard/jobs?status=dead")
        await wait_for(lambda: page.evaluate("document.querySelectorAll('#jobs tbody tr[data-id]').length === 3"), TIMEOUT,
                       message="alice's three dead jobs")
        await screenshot(page, "jobs.png")
        await click(page, "#select-page")
        await click(page, "button[data-bulk=retry]")
        question = await page.evaluate("document.querySelector('#confirm[open] h2').textContent")
        assert question == "Retry 3 jobs?"
        await click(page, "#confirm-ok")
        result = await wait_for(lambda: page.evaluate("document.getElementById('bulk-result') && {...document.getElementById('bulk-result').dataset}"),
                                TIMEOUT, message="the bulk result")
        assert result["succeeded"] == "3" and result["failed"] == "0"
        statuses = dict(query(url, "SELECT id, status FROM pgqueue.jobs"))
        assert [statuses[i] for i in few] == ["queued"] * 3 and [statuses[i] for i in theirs] == ["dead"] * 2

        # more than fit on a page and more than the inline limit: "all N matching" runs as a job
        many = insert_jobs(url, alice, INLINE_MAX + 30, "dead")
        await navigate(page, live_server_with_worker, "/dashboard/jobs?status=dead&limit=20")
        await wait_for(lambda: page.evaluate("document.getElementById('summary').dataset.total"), TIMEOUT,
                       message="the list")
        await click(page, "#select-page")
        await click(page, "#select-all-matching")
        count = await page.evaluate("document.getElementById('selection').dataset.count")
        assert count == str(len(many))
        await click(page, "button[data-bulk=retry]")
        assert await page.evaluate("document.querySelector('#confirm[open] h2').textContent") == f"Retry {len(many)} jobs?"
        await click(page, "#confirm-ok")

        async def done() -> Any:
            return await page.evaluate("""(() => { const bar = document.getElementById('bulk-progress');
                return bar && bar.dataset.status ? {status: bar.dataset.status, percent: bar.dataset.percent} : null; })()""")

        try:
            final = await wait_for(done, TIMEOUT, message="the background retry to finish")
        except AssertionError:
            print(await page.evaluate("document.getElementById('bulk-outcome').outerHTML"))
            print(query(url, "SELECT id, kind, status, last_error FROM pgqueue.jobs WHERE kind = 'bulk_action'"))
            raise
    assert final == {"status": "succeeded", "percent": "100"}
    statuses = dict(query(url, "SELECT id, status FROM pgqueue.jobs"))
    assert all(statuses[i] == "queued" for i in many) and [statuses[i] for i in theirs] == ["dead"] * 2


async def test_a_filtered_view_survives_reload_and_back(live_server: LiveServer, alice: ApiUser) -> None:
    url = live_server.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.queues (name, paused) VALUES ('default', true)")
    insert_jobs(url, alice, 30, "dead")
    insert_jobs(url, alice, 5, "queued")

    async with devtools_page() as page:
        await open_page(page, live_server, alice, "/dashboard/jobs?limit=20")
        await wait_for(lambda: page.evaluate("document.getElementById('summary').dataset.total === '35'"), TIMEOUT,
                       message="every job listed")
        await page.evaluate("""(() => { document.getElementById('f-status').value = 'dead';
            document.getElementById('f-q').value = 'Boom'; document.getElementById('f-has_error').value = 'true';
            document.getElementById('filters').requestSubmit(); })()""")
        await wait_for(lambda: page.evaluate("document.getElementById('summary').dataset.total === '30'"), TIMEOUT,
                       message="the filtered list")
        await click(page, "button[data-sort=priority]")
        await wait_for(lambda: page.evaluate("location.search.includes('sort=-priority')"), TIMEOUT, message="sorted")
        await click(page, "#next")
        paged = await wait_for(lambda: view_when(page, "offset="), TIMEOUT, message="page 2 drawn")
        assert "status=dead" in paged["search"] and "q=Boom" in paged["search"] and "has_error=true" in paged["search"]

        await page.evaluate("window.__left = true")  # gone once the reloaded page is there
        await page.call("Page.reload")
        await mounted(page)
        reloaded = await wait_for(lambda: view_when(page, "offset="), TIMEOUT, message="the reloaded view")
        assert reloaded == paged, "a reload shows the same view"

        await page.evaluate("history.back()")
        back = await wait_for(lambda: view_when(page, "sort=-priority", without="offset="), TIMEOUT, message="back to page 1")
        assert back["status"] == "dead" and back["q"] == "Boom" and len(back["rows"]) == 20
        await page.evaluate("history.back()")
        first = await wait_for(lambda: view_when(page, "q=Boom", without="sort="), TIMEOUT, message="back to the unsorted view")
        assert first["hasError"] == "true"


async def view_when(page: DevTools, contains: str, without: str | None = None) -> dict[str, Any] | None:
    """The jobs view once the URL holds `contains` (and not `without`) and the list for it is drawn."""
    state = await page.evaluate("""({search: location.search, status: document.getElementById('f-status').value,
        q: document.getElementById('f-q').value, hasError: document.getElementById('f-has_error').value,
        rows: [...document.querySelectorAll('#jobs tbody tr[data-id]')].map((tr) => tr.dataset.id),
        loaded: document.getElementById('page').dataset.loaded})""")
    search = state["search"].lstrip("?")
    if contains not in search or (without and without in search) or state["loaded"] != search:
        return None
    return state


async def test_live_progress_bar_reaches_100(live_server_with_worker: LiveServer, alice: ApiUser) -> None:
    task_id = await create_task(live_server_with_worker, alice, duration_seconds=2, steps=4)
    async with devtools_page() as page:
        await open_page(page, live_server_with_worker, alice, f"/dashboard/jobs/{task_id}")

        async def finished() -> Any:
            return await page.evaluate("""(() => { const s = document.getElementById('detail-status');
                return s && s.dataset.status === 'succeeded' && document.getElementById('progress-bar').dataset.percent === '100'
                    ? {log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
                       timeline: [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.type)} : null; })()""")

        state = await wait_for(finished, TIMEOUT, message="the progress bar at 100 %")
        await screenshot(page, "job.png")
    assert state["timeline"][0] == "created" and "started" in state["timeline"] and state["timeline"][-1] == "succeeded"
    assert any("step 4/4 done" in line for line in state["log"])


async def test_an_xss_payload_renders_as_text(live_server: LiveServer, alice: ApiUser) -> None:
    evil = '<script>window.__pwned = 1</script>"><img src=x onerror="window.__pwned = 2">'
    big = 12345678901234567890123
    async with live_server.client(alice) as http:
        created = await http.post("/jobs", content=json.dumps({"kind": "external", "payload": {"data": {
            "message": evil, evil: "as a key too", "id": 0}}}).replace('"id": 0', f'"id": {big}'),
            headers={"Content-Type": "application/json"})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
    async with devtools_page() as page:
        await open_page(page, live_server, alice, f"/dashboard/jobs/{job_id}")
        await wait_for(lambda: page.evaluate("!!document.querySelector('#payload .json')"), TIMEOUT, message="the payload")
        shown = await page.evaluate("""({pwned: String(window.__pwned),
            images: document.querySelectorAll('#page img').length, scripts: document.querySelectorAll('#page script').length,
            text: document.getElementById('payload').textContent})""")
        await navigate(page, live_server, "/dashboard/jobs?q=onerror")
        await wait_for(lambda: page.evaluate("document.querySelectorAll('#jobs tbody tr[data-id]').length === 1"), TIMEOUT,
                       message="the job in the list")
        listed = await page.evaluate("({pwned: String(window.__pwned), images: document.querySelectorAll('#page img').length})")
        cookies = await page.evaluate("document.cookie")
    assert cookies == "", "the token lives in sessionStorage and goes out as a header, never a cookie"
    assert shown["pwned"] == "undefined" and shown["images"] == 0 and shown["scripts"] == 0
    assert evil.replace('"', '\\"') in shown["text"], "the payload is shown as its characters"
    assert str(big) in shown["text"], "a big integer keeps every digit"
    assert listed == {"pwned": "undefined", "images": 0}
