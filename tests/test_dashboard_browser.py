"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a
real ``trioflow serve`` process. Every test fails on any console error, any uncaught
page error, and any request to a host other than 127.0.0.1 (the dashboard must work
offline: no CDN).

Playwright's sync API runs in the test's own thread, away from any Trio loop: the
server is another process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright
from web_server import serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Long enough for the page to show the step running before it succeeds.
QUICK_SECONDS = 1.5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def api(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("dashboard") / "runs.db"
    with serving(db, quick_seconds=QUICK_SECONDS) as url:
        yield url


class Guard:
    """What the page did wrong: console errors, page errors, foreign requests."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def watch(self, page: Page) -> None:
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"console {message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

        def only_loopback(route: Route) -> None:
            url = urlparse(route.request.url)
            if url.scheme == "data" or url.hostname == "127.0.0.1":
                route.continue_()
            else:
                self.problems.append(f"request to another host: {route.request.url}")
                route.abort()

        page.route("**/*", only_loopback)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    guard = Guard()
    guard.watch(page)
    yield page
    context.close()
    assert guard.problems == []


def _no_reload_marker(page: Page) -> None:
    page.evaluate("window.__sameDocument = true")


def _still_same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def test_start_a_run_and_watch_its_step_turn_from_running_to_success(
    page: Page, server: str
) -> None:
    page.goto(server + "/")
    page.locator("#start-workflow").select_option("quick")
    page.get_by_label("name").fill("Ada")
    page.get_by_role("button", name="Start").click()
    step = page.locator('#timeline tr[data-step="greet"] .status')
    expect(step).to_have_text("running")
    expect(page.locator('#graph [data-node="greet"]')).to_have_class("box status-running")
    _no_reload_marker(page)
    expect(step).to_have_text("success", timeout=10_000)
    expect(page.locator("#run-status")).to_have_text("success")
    expect(page.locator("#run-result")).to_contain_text("hello Ada")
    assert _still_same_document(page)


def test_cancel_a_long_run_shows_canceled_without_a_reload(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/long/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator('#timeline tr[data-step="wait-for-cancel"] .status')).to_have_text(
        "running"
    )
    _no_reload_marker(page)
    page.get_by_label("Reason").fill("changed my mind")
    page.get_by_label("Grace period (seconds)").fill("2")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-status")).to_have_text("canceled", timeout=5_000)
    expect(page.locator("#cancel-reason")).to_have_text("changed my mind")
    expect(page.locator('#timeline tr[data-step="wait-for-cancel"] .status')).to_have_text(
        "canceled"
    )
    assert _still_same_document(page)
    assert api(server, "GET", f"/api/runs/{run['run_id']}")["status"] == "canceled"


def test_a_run_canceled_elsewhere_turns_canceled_on_its_page(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/long/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator("#run-status")).to_have_text("running")
    _no_reload_marker(page)
    api(server, "POST", f"/api/runs/{run['run_id']}/cancel", {"reason": "from a script"})
    expect(page.locator("#run-status")).to_have_text("canceled", timeout=5_000)
    assert _still_same_document(page)


def test_resume_a_suspended_run_through_its_generated_form(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/approval/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator("#run-status")).to_have_text("suspended")
    form = page.locator('form.resume[data-step="approve"]')
    expect(form).to_contain_text("ship it?")  # the suspend payload
    form.get_by_label("approved").check()
    form.get_by_label("note").fill("looks good")
    form.get_by_label("level").fill("3")
    form.get_by_role("button", name="Resume").click()
    expect(page.locator("#run-status")).to_have_text("success", timeout=10_000)
    detail = api(server, "GET", f"/api/runs/{run['run_id']}")
    assert detail["steps"][0]["resume_payload"] == {
        "approved": True,
        "note": "looks good",
        "level": 3,
    }
    assert detail["result"] == {"approved": True, "note": "looks good"}


def test_send_an_event_through_its_generated_form(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/signal/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator("#run-status")).to_have_text("waiting")
    form = page.locator("#event-form")
    form.get_by_label("approved").check()
    form.get_by_label("note").fill("go ahead")
    form.get_by_role("button", name="Send").click()
    expect(page.locator("#run-status")).to_have_text("success", timeout=10_000)


def test_what_a_step_writes_appears_as_it_is_written(page: Page, server: str) -> None:
    # Every text the output area shows, in order: proof of partial states that does
    # not race the page.
    page.add_init_script(
        """window.__seen = [];
        new MutationObserver(() => {
          const pre = document.querySelector('[data-output="tokens"]');
          if (pre && window.__seen.at(-1) !== pre.textContent) window.__seen.push(pre.textContent);
        }).observe(document, { subtree: true, childList: true, characterData: true });"""
    )
    run = api(server, "POST", "/api/workflows/writer/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    output = page.locator('#outputs pre[data-output="tokens"]')
    expect(output).to_have_text('Hello, world{"done":true}\n', timeout=10_000)
    expect(page.locator("#run-status")).to_have_text("success")
    seen = page.evaluate("window.__seen")
    assert seen[0] == "Hel" and seen[-1] == 'Hello, world{"done":true}\n', seen


def test_the_runs_table_is_live_and_filters(page: Page, server: str) -> None:
    page.goto(server + "/")
    run = api(server, "POST", "/api/workflows/long/runs", {})
    row = page.locator(f'#runs tr[data-run="{run["run_id"]}"]')
    expect(row.locator(".status")).to_have_text("running")
    _no_reload_marker(page)
    api(server, "POST", f"/api/runs/{run['run_id']}/cancel", {})
    expect(row.locator(".status")).to_have_text("canceled")
    page.locator("#filter-status").select_option("canceled")
    expect(page.locator("#runs tbody .status").first).to_have_text("canceled")
    statuses = page.locator("#runs tbody .status").all_text_contents()
    assert statuses and set(statuses) == {"canceled"}
    page.locator("#filter-workflow").select_option("quick")
    expect(page.locator("#runs tbody td.empty")).to_have_text("No runs yet.")
    assert _still_same_document(page)


def test_with_a_token_the_dashboard_asks_for_it_and_keeps_it_out_of_the_page(
    browser: Browser, tmp_path: Path
) -> None:
    with serving(tmp_path / "runs.db", token="tok-123") as url:
        context = browser.new_context()
        context.set_default_timeout(15_000)
        page = context.new_page()
        guard = Guard()
        guard.watch(page)
        page.goto(url + "/")
        page.get_by_label("Token").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("The server refused that token.")
        page.get_by_label("Token").fill("tok-123")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#runs")).to_be_visible()
        assert "tok-123" not in page.content()
        assert page.evaluate("sessionStorage.getItem('trioflow-token')") == "tok-123"
        # The run page's live stream carries the token too (fetch, not EventSource).
        run = api(url, "POST", "/api/workflows/long/runs", {}, token="tok-123")
        page.goto(f"{url}/#/runs/{run['run_id']}")
        expect(page.locator("#run-status")).to_have_text("running")
        api(url, "POST", f"/api/runs/{run['run_id']}/cancel", {}, token="tok-123")
        expect(page.locator("#run-status")).to_have_text("canceled")
        context.close()
        # The 401s before signing in are the browser's own network log lines.
        assert [p for p in guard.problems if "401" not in p] == []


def test_the_guard_catches_console_errors_and_requests_to_other_hosts(
    browser: Browser, server: str
) -> None:
    """The checks every test above ends with do see what they are meant to see."""
    context = browser.new_context()
    page = context.new_page()
    guard = Guard()
    guard.watch(page)
    page.goto(server + "/")
    page.evaluate("console.error('boom')")
    page.evaluate("setTimeout(() => { throw new Error('unhandled') }, 0)")
    page.wait_for_timeout(300)
    # The dashboard's own policy (CSP) stops other hosts before the network does: a
    # page without it shows that the guard sees such a request too.
    bare = context.new_page()
    guard.watch(bare)
    bare.set_content('<img src="http://192.0.2.1/font.woff">')
    bare.wait_for_timeout(300)
    context.close()
    assert "console error: boom" in guard.problems
    assert "request to another host: http://192.0.2.1/font.woff" in guard.problems
    assert any("unhandled" in p for p in guard.problems)


def test_fork_a_finished_run_from_a_step(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/quick/runs", {"input_data": {"name": "Ada"}})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator("#run-status")).to_have_text("success", timeout=10_000)
    page.locator("#fork-step").select_option("greet")
    page.get_by_role("button", name="Fork").click()
    expect(page.locator("#run-id")).not_to_have_text(run["run_id"], timeout=10_000)
    expect(page.locator("#run-status")).to_have_text("success", timeout=10_000)
    forked_id = page.locator("#run-id").text_content()
    listed = api(server, "GET", "/api/runs?workflow=quick")["runs"]
    assert {r["run_id"]: r["forked_from"] for r in listed}[forked_id] == run["run_id"]


def test_a_failed_run_page_shows_the_traceback_and_the_logs(page: Page, server: str) -> None:
    run = api(server, "POST", "/api/workflows/broken/runs", {})
    page.goto(f"{server}/#/runs/{run['run_id']}")
    expect(page.locator("#run-status")).to_have_text("failed", timeout=10_000)
    step = page.locator('tr[data-step="explode"]')
    step.locator("details.traceback summary").click()
    expect(step.locator("details.traceback pre")).to_contain_text(
        "RuntimeError: the step broke on purpose"
    )
    expect(page.locator("#logs pre.logs")).to_contain_text("explode#1  a part is missing")
