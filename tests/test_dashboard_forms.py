"""The dashboard's create, schedules, uploads and syncs pages in the real Debian Chromium, over the
DevTools protocol (helpers of tests/test_browser.py): the generated form refusing a bad email
next to its field, a schedule added and paused through the page, a .jsonl upload reaching ingest
100 %, an API sync followed to the end, and hostile names and payloads rendered as text. Each
test saves a screenshot of its page into app/dashboard/screenshots/ (the README shows them)."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.bench.api_simulator import SimConfig, SimulatedApi
from app.settings import AppSettings
from tests.helpers import wait_for
from tests.ingest_fixtures import make_log_lines
from tests.process_fixtures import query
from tests.test_browser import CHROMIUM, TIMEOUT, DevTools, devtools_page
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs headless Chromium at /usr/bin/chromium (apt-get install chromium)")

SCREENSHOTS = Path(__file__).resolve().parent.parent / "app" / "dashboard" / "screenshots"
HOSTILE = '<script>window.pwned = 1</script>"><img src=x onerror="window.pwned = 2">'


@pytest.fixture
def page_server(db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """The app with its worker, uploads stored under the test's tmp_path."""
    server = LiveServer(AppSettings(database_url=db_url, pool_size=4, secret="test-secret", run_worker=True,
                                    worker_concurrency=4, storage_url=(tmp_path / "uploads").as_uri()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def js(page: DevTools, expression: str) -> Any:
    """Evaluate in the page, awaiting a promise; a thrown error fails the test with its message."""
    result = await page.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")


async def open_page(page: DevTools, server: LiveServer, user: ApiUser, path: str, ready: str) -> None:
    """Sign in through the shell's form, then wait until ``ready`` (a CSS selector) is on the page."""
    await page.call("Page.navigate", url=server.url(path))
    await wait_for(lambda: js(page, "!!document.getElementById('login-form') && "
                                    "!document.getElementById('login').classList.contains('hidden')"),
                   TIMEOUT, message="the sign-in form")
    await js(page, f"""(() => {{
        document.getElementById('token-input').value = {json.dumps(user.token)};
        document.getElementById('login-form').requestSubmit();
    }})()""")
    await wait_for(lambda: js(page, f"!!document.querySelector({json.dumps(ready)})"), TIMEOUT,
                   message=f"{ready} on {path}")


async def fill(page: DevTools, values: dict[str, str]) -> None:
    """Set inputs by id as a user typing would (an input and a change event each)."""
    await js(page, f"""(() => {{
        for (const [id, value] of Object.entries({json.dumps(values)})) {{
            const input = document.getElementById(id);
            if (!input) throw new Error('no input #' + id);
            if (input.type === 'checkbox') input.checked = value === 'true'; else input.value = value;
            input.dispatchEvent(new Event('input', {{bubbles: true}}));
            input.dispatchEvent(new Event('change', {{bubbles: true}}));
        }}
    }})()""")


async def text_of(page: DevTools, selector: str) -> str:
    return await js(page, f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")


async def screenshot(page: DevTools, name: str) -> None:
    await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    height = await js(page, "Math.min(2400, document.documentElement.scrollHeight)")
    shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                           clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


async def assert_fits_narrow(page: DevTools, name: str, width: int = 420) -> None:
    """Readable on a 420 px screen: nothing wider than the viewport (wide tables scroll in their box)."""
    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=True)
    overflow = await js(page, "new Promise((ok) => requestAnimationFrame(() => ok(document.documentElement.scrollWidth)))")
    shot = await page.call("Page.captureScreenshot", format="png")
    Path(tempfile.gettempdir(), f"pgqueue-{name}-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    assert overflow <= width, f"{name} is {overflow} px wide at {width} px"


async def assert_inert(page: DevTools) -> None:
    """Nothing hostile ran or became an element."""
    state = await js(page, "({pwned: window.pwned, images: document.querySelectorAll('main img').length, "
                           "scripts: document.querySelectorAll('main script').length})")
    assert state == {"pwned": None, "images": 0, "scripts": 0} or state == {"images": 0, "scripts": 0}, state


# -- create ---------------------------------------------------------------------------------------

async def test_the_generated_form_refuses_a_bad_email_next_to_its_field(page_server: LiveServer, alice: ApiUser,
                                                                        admin: ApiUser) -> None:
    async with devtools_page() as page:
        await open_page(page, page_server, alice, "/dashboard/new?kind=email", "#create-form[data-kind=email]")
        kinds = await js(page, "[...document.querySelectorAll('#kind option')].map((o) => o.value)")
        assert kinds == ["email", "external", "notification", "report", "task"], "no ingest_file, api_ingest, webhook"
        form = await js(page, """({
            required: [...document.querySelectorAll('#create-form label')].filter((l) => l.querySelector('.req'))
                          .map((l) => l.htmlFor),
            priority: document.getElementById('job-priority').tagName + ':' + document.getElementById('job-priority').type,
        })""")
        assert {"job-payload-to", "job-payload-subject"} <= set(form["required"]), form
        await fill(page, {"job-payload-to": "not-an-email", "job-payload-subject": "hello", "job-payload-cc": "ok@example.com, nope",
                          "job-priority": "9"})
        await js(page, "document.getElementById('create-form').requestSubmit()")
        await wait_for(lambda: text_of(page, "#job-payload-to-error"), TIMEOUT, message="the email's error")
        errors = await js(page, """Object.fromEntries([...document.querySelectorAll('.field-error')]
            .filter((e) => e.textContent).map((e) => [e.id, e.textContent]))""")
        assert errors["job-payload-to-error"] == "not an email address", errors
        assert "not an email address" in errors["job-payload-cc-error"], errors
        assert "job-priority-error" in errors, errors  # every bad field, each at its own place
        assert await js(page, "document.getElementById('job-payload-to').getAttribute('aria-invalid')") == "true"
        assert await js(page, "document.activeElement.id") == "job-payload-to", "focus goes to the first bad field"
        await screenshot(page, "create")
        await assert_fits_narrow(page, "create")
        assert query(page_server.database_url, "SELECT count(*) FROM pgqueue.jobs") == [(0,)]

        await fill(page, {"job-payload-to": "ada@example.com", "job-payload-cc": "", "job-priority": "5"})
        await js(page, "document.getElementById('create-form').requestSubmit()")
        await wait_for(lambda: js(page, "!!document.getElementById('created-link')"), TIMEOUT, message="the new job")
        href = await js(page, "document.getElementById('created-link').getAttribute('href')")
        assert await text_of(page, "#job-payload-to-error") == ""
    rows = query(page_server.database_url, "SELECT id, kind, priority, owner_id, payload->>'to' FROM pgqueue.jobs")
    assert rows == [(int(href.rsplit("/", 1)[1]), "email", 5, str(alice.id), "ada@example.com")]
    assert href.startswith("/dashboard/jobs/")

    async with devtools_page() as page:
        await open_page(page, page_server, admin, "/dashboard/new", "#create-form")
        kinds = await js(page, "[...document.querySelectorAll('#kind option')].map((o) => o.value)")
        assert "webhook" in kinds and "api_ingest" not in kinds and "ingest_file" not in kinds


# -- schedules ------------------------------------------------------------------------------------

async def test_a_schedule_added_and_paused_through_the_page(page_server: LiveServer, admin: ApiUser,
                                                            alice: ApiUser) -> None:
    async with devtools_page() as page:
        await open_page(page, page_server, admin, "/dashboard/schedules", "#schedule-form")
        await fill(page, {"schedule-name": "nightly-digest", "schedule-expression": "0 3 * * MON-FRY"})
        # while typing: the parse error at the field, before anything is submitted
        await wait_for(lambda: text_of(page, "#schedule-expression-error"), TIMEOUT, message="the live cron error")
        error = await text_of(page, "#schedule-expression-error")
        assert "day-of-week" in error and "position 13" in error, error
        await fill(page, {"schedule-payload-user": "ada", "schedule-payload-message": HOSTILE})
        await js(page, "document.getElementById('schedule-expression-error').textContent = ''")
        await js(page, "document.getElementById('schedule-form').requestSubmit()")
        await wait_for(lambda: text_of(page, "#schedule-expression-error"), TIMEOUT, message="the server's cron error")
        assert await text_of(page, "#schedule-expression-error") == error
        assert query(page_server.database_url, "SELECT count(*) FROM pgqueue.schedules") == [(0,)]

        await fill(page, {"schedule-expression": "0 3 * * MON-FRI"})
        await wait_for(lambda: text_of(page, "#schedule-preview"), TIMEOUT, message="the live preview")
        preview = await text_of(page, "#schedule-preview")
        assert preview.startswith("at 03:00, on Monday through Friday (UTC); next: in "), preview
        assert await text_of(page, "#schedule-expression-error") == ""
        await js(page, "document.getElementById('schedule-form').requestSubmit()")
        await wait_for(lambda: js(page, "!!document.querySelector('tr[data-name=\"nightly-digest\"]')"), TIMEOUT,
                       message="the new schedule in the table")
        row = await js(page, """(() => { const tr = document.querySelector('tr[data-name="nightly-digest"]');
            return {state: tr.dataset.state, text: tr.textContent, next: tr.querySelectorAll('td:nth-child(5) li').length}; })()""")
        assert row["state"] == "active" and row["next"] == 3, row
        assert "every day" not in row["text"] and "at 03:00, on Monday through Friday" in row["text"], row
        assert json.dumps(HOSTILE) in row["text"], "the payload is shown as (JSON) text"
        await assert_inert(page)

        await js(page, "document.querySelector('tr[data-name=\"nightly-digest\"] button.toggle').click()")
        await wait_for(lambda: js(page, "(document.querySelector('tr[data-name=\"nightly-digest\"]') || {dataset: {}})"
                                        ".dataset.state === 'paused'"), TIMEOUT, message="the schedule paused")
        assert await text_of(page, "tr[data-name=\"nightly-digest\"] button.toggle") == "Resume"
        await screenshot(page, "schedules")
        await assert_fits_narrow(page, "schedules")
    assert query(page_server.database_url, "SELECT name, paused, payload->>'message' FROM pgqueue.schedules") == [
        ("nightly-digest", True, HOSTILE)]

    async with devtools_page() as page:  # a user is told, not shown an error
        await open_page(page, page_server, alice, "/dashboard/schedules", "#schedules-admin-only")


# -- uploads --------------------------------------------------------------------------------------

async def test_a_jsonl_upload_reaches_ingest_100_percent_and_its_name_is_text(page_server: LiveServer,
                                                                             alice: ApiUser, tmp_path: Path) -> None:
    name = '"><img src=x onerror="window.pwned=3">.jsonl'
    path = tmp_path / name
    path.write_bytes(b"".join(make_log_lines(3000, invalid_every=100)))
    async with devtools_page() as page:
        await open_page(page, page_server, alice, "/dashboard/uploads", "#upload-input")
        await page.call("DOM.enable")
        document = await page.call("DOM.getDocument")
        node = await page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#upload-input")
        await page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])
        await wait_for(lambda: js(page, "(document.getElementById('ingest-progress') || {dataset: {}}).dataset.final"),
                       TIMEOUT, message="the ingest to finish")
        state = await js(page, """({
            final: document.getElementById('ingest-progress').dataset.final,
            percent: document.getElementById('ingest-progress').value,
            upload: document.getElementById('upload-progress').value,
            valid: document.getElementById('lines-valid').textContent,
            invalid: document.getElementById('lines-invalid').textContent,
        })""")
        assert state == {"final": "completed", "percent": 100, "upload": 100, "valid": "2,970", "invalid": "30"}, state
        await wait_for(lambda: js(page, "!!document.querySelector('#uploads-table tr[data-id] .file-name')"), TIMEOUT,
                       message="the upload in the list")
        shown = await text_of(page, "#uploads-table tr[data-id] .file-name")
        assert "<img src=x onerror=" in shown, shown  # the name, as text
        await assert_inert(page)
        await screenshot(page, "uploads")
        await assert_fits_narrow(page, "uploads")
    assert query(page_server.database_url, "SELECT lines_valid, lines_invalid FROM app.files") == [(2970, 30)]


# -- syncs ----------------------------------------------------------------------------------------

async def test_an_api_sync_started_and_followed_through_the_page(page_server: LiveServer, admin: ApiUser) -> None:
    with SimulatedApi(SimConfig(events=3000, page_max=500)) as api:
        async with devtools_page() as page:
            await open_page(page, page_server, admin, "/dashboard/syncs", "#sync-form")
            await fill(page, {"sync-url": "not a url"})
            await js(page, "document.getElementById('sync-form').requestSubmit()")
            await wait_for(lambda: text_of(page, "#sync-url-error"), TIMEOUT, message="the URL's error")

            await fill(page, {"sync-url": api.url + "/events", "sync-source": "page-sim", "sync-page_size": "500"})
            await js(page, "document.getElementById('sync-form').requestSubmit()")
            await wait_for(lambda: js(page, "(document.getElementById('sync-summary') || {dataset: {}}).dataset.status "
                                            "=== 'succeeded'"), TIMEOUT, message="the sync to succeed on the page")
            await wait_for(lambda: js(page, "document.getElementById('sync-part-0').value === 100"), TIMEOUT,
                           message="the part's progress at 100 %")
            shown = await js(page, """({pages: document.getElementById('sync-pages').textContent,
                inserted: document.getElementById('sync-inserted').textContent,
                listed: [...document.querySelectorAll('#syncs-table tr[data-id]')].length})""")
            assert shown["pages"] == "6" and shown["inserted"] == "3,000", shown
            await wait_for(lambda: js(page, "document.querySelectorAll('#syncs-table tr[data-id]').length === 1"),
                           TIMEOUT, message="the sync in the list")
            await screenshot(page, "syncs")
            await assert_fits_narrow(page, "syncs")
    assert query(page_server.database_url, "SELECT source FROM app.api_syncs") == [("page-sim",)]


async def test_the_create_page_sends_the_engine_options(page_server: LiveServer, alice: ApiUser) -> None:
    async with page_server.client(alice) as http:
        parent = (await http.post("/jobs", json={"kind": "task", "payload": {"title": "parent", "duration_seconds": 30},
                                                 "scheduled_for": "2100-01-01T00:00:00Z"})).json()["id"]
    async with devtools_page() as page:
        await open_page(page, page_server, alice, "/dashboard/new?kind=notification", "#create-form[data-kind=notification]")
        assert await js(page, "[...document.querySelectorAll('#job-payload-channel option')].map((o) => o.value)") == [
            "push", "slack", "sms"], "an enum is a select"
        await fill(page, {"job-payload-user": "ada", "job-payload-message": "later", "job-payload-channel": "sms",
                          "job-when": "delay"})
        await fill(page, {"job-when-delay": "3600", "job-priority": "4", "job-max_attempts": "7",
                          "job-unique_key": "digest-1", "job-depends_on": str(parent), "job-concurrency_key": "tenant-a"})
        await js(page, "document.getElementById('create-form').requestSubmit()")
        await wait_for(lambda: js(page, "!!document.getElementById('created-link')"), TIMEOUT, message="the new job")
        created = int((await js(page, "document.getElementById('created-link').getAttribute('href')")).rsplit("/", 1)[1])
    rows = query(page_server.database_url,
                 "SELECT status, priority, max_attempts, unique_key, concurrency_key, payload->>'channel', "
                 "run_at > now() + interval '50 minutes' AND run_at < now() + interval '70 minutes' "
                 "FROM pgqueue.jobs WHERE id = %s", [created])
    assert rows == [("waiting", 4, 7, f"user:{alice.id}:digest-1", "tenant-a", "sms", True)], rows
    assert query(page_server.database_url, "SELECT depends_on FROM pgqueue.job_dependencies WHERE job_id = %s",
                 [created]) == [(parent,)]
