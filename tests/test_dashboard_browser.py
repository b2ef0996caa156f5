"""The dashboard in headless Chromium (Debian's, driven by Playwright), against the real app served by uvicorn on
a free port, with a FakeClock: signing in, the overview, the stuck list, a customer's page, acknowledging, live
updates from /v1/stream, a phone's width, and no console errors anywhere. Screenshots of the overview, the stuck
list and a customer's page go to docs/screenshots/.

Without Chromium (or Playwright) these skip, saying why; under CI they fail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from tests.conftest import blaaiz_event, free_port, signed_headers
from tests.dashboard_seed import Seeded, seed
from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.web.app import create_app
from tracker.web.requests import SESSION_COOKIE

CHROMIUM = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
WAIT = 10_000  # ms: the longest any expectation waits for the page
T = TypeVar("T")


def _browser_or_skip() -> Any:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium; scripts/test.sh does it as root)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "Playwright is not installed (pip install -e '.[test]')"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}, and CI requires the browser tests")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def off_the_page(function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in another thread: Playwright's sync API keeps an event loop running in this one, and
    the tracker's steps (the escalator's tick) start their own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


@pytest.fixture
def server(container: Container) -> Iterator[str]:
    """The app on a free port, in a thread with its own loop (the container's applier is already running)."""
    app = create_app(container)
    served = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off",
                                           log_level="warning", timeout_graceful_shutdown=2))

    async def run() -> None:
        try:
            await served.serve()
        finally:
            await container.changes.stop()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not served.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{served.config.port}"
    served.should_exit = True
    thread.join(15)


@dataclass
class Session:
    page: Any
    stream: int  # what GET /v1/stream answers this browser's session cookie
    errors: list[str] = field(default_factory=list)

    def sign_in(self, key: str) -> Any:
        self.page.goto("/")
        self.page.get_by_label("API key").fill(key)
        with self.page.expect_response(lambda r: r.url.endswith("/sign-in") and r.request.method == "POST") as info:
            self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()
        return info.value


def stream_status(server: str, container: Container) -> int:
    """What GET /v1/stream answers a browser signed in to the dashboard (its session cookie, no header)."""
    key = container.api_keys.create("stream-probe", "read")
    with httpx.Client(base_url=server, cookies={SESSION_COOKIE: key}, timeout=5) as http, \
            http.stream("GET", "/v1/stream") as response:
        status = response.status_code
    container.api_keys.revoke("stream-probe")
    return status


def open_session(browser: Any, server: str, container: Container, **options: Any) -> tuple[Any, Session]:
    context = browser.new_context(base_url=server, **{"viewport": {"width": 1280, "height": 900}, **options})
    context.set_default_timeout(WAIT)
    found = Session(context.new_page(), stream=stream_status(server, container))

    def console(message: Any) -> None:
        if message.type == "error":
            found.errors.append(message.text)

    found.page.on("console", console)
    found.page.on("pageerror", lambda error: found.errors.append(str(error)))
    return context, found


@pytest.fixture
def session(browser: Any, server: str, container: Container) -> Iterator[Session]:
    context, found = open_session(browser, server, container)
    yield found
    context.close()


@pytest.fixture
def seeded(container: Container, clock: FakeClock) -> Seeded:
    return off_the_page(seed, container, clock)


@pytest.fixture
def admin(container: Container) -> str:
    return container.api_keys.create("ops-admin", "admin")


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def test_sign_in_refuses_a_wrong_key_then_opens_the_overview(session, container, seeded, admin) -> None:
    page = session.page
    page.goto("/stuck")
    assert page.url.endswith("/sign-in?next=%2Fstuck")
    refused = session.sign_in(admin[:-3] + "xyz")
    assert refused.status == 401
    expect(page.get_by_text("That API key is not valid")).to_be_visible()
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    accepted = session.sign_in(admin)
    assert accepted.status == 303
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["expires"]) for c in cookies] == [
        ("tracker_session", True, "Strict", -1)]  # -1: ends with the browser session
    assert admin not in page.url
    assert admin not in page.content()
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    expect(page.locator(".oldest")).to_contain_text("critical pending 5 h 12 min at Blaaiz: cus_1001")
    expect(page.locator("svg[role=img] rect.bar")).to_have_count(4)  # 1-2 h; 3-5 h on time and overdue; 5-8 h
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    assert page.context.cookies() == []
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # The one error: Chrome reports the refused sign-in's status (401) as a resource that failed to load.
    assert session.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]


def test_the_stuck_list_filters_selects_and_acknowledges(session, container, seeded, admin) -> None:
    page = session.page
    session.sign_in(admin)
    page.get_by_role("link", name="Stuck").click()
    rows = page.locator("table.stuck tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_class("row-critical")
    expect(rows.first).to_contain_text("critical")
    expect(rows.first).to_contain_text("pending 5 h 12 min at Blaaiz")
    expect(rows.nth(1)).to_contain_text("overdue")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "stuck.png"), full_page=True)
    page.get_by_label("Provider", exact=True).select_option("cryptopocket")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    assert "provider=cryptopocket" in page.url  # a filtered view can be linked
    page.get_by_label("Provider", exact=True).select_option("")
    page.get_by_label("Tier").select_option("overdue")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    page.get_by_label("Select app_2001").check()
    page.get_by_label("Select usr_3001").check()
    expect(page.locator("#bulk-count")).to_have_text("2 selected, 2 open alerts (you confirm next)")
    page.get_by_role("button", name="Acknowledge the open alerts of the selected customers").click()
    expect(page.locator("#confirm-count")).to_have_text("2 open alerts")
    page.get_by_role("button", name="Acknowledge 2").click()
    expect(page.get_by_text("Acknowledged: 2.")).to_be_visible()
    assert "tier=overdue" in page.url
    page.goto("/alerts?state=acknowledged")
    expect(page.locator("tbody tr.alert-acknowledged")).to_have_count(2)
    expect(page.locator("tbody tr.alert-acknowledged").first).to_contain_text("by ops-admin")
    assert session.errors == []


def test_a_customer_page_shows_its_timeline_and_explanation_and_acknowledging_changes_it(
        session, container, clock, server, seeded, admin) -> None:
    page = session.page
    post_webhook(server, clock, blaaiz_event("cus_1001", "PENDING", updated_at=stamp(clock)))  # moves nothing
    container.applier.drain()
    session.sign_in(admin)
    page.goto(f"/customers/{seeded['cus_1001']}")
    expect(page.locator(".standing-line")).to_have_text(re.compile(r"critical\s+pending 5 h 12 min at Blaaiz"))
    explained = page.locator("ol.explain li")
    expect(explained.first).to_have_text(
        "Customer 1 (blaaiz cus_1001) is pending since 2026-01-05 09:00:00Z (5 h 12 min).")
    expect(explained.nth(2)).to_contain_text("webhook event 1 (provider status PROCESSING) changed nothing")
    expect(explained.nth(3)).to_contain_text("webhook event 3 (provider status PENDING) changed nothing")
    timeline = page.locator("table.timeline tbody tr")
    expect(timeline).to_have_count(3)
    expect(timeline.first).to_contain_text("event 3: customer.status_changed")
    expect(timeline.nth(2)).to_contain_text("awaiting_documents → pending")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "customer.png"), full_page=True)
    alerts = page.locator("tr[data-alert]")
    expect(alerts).to_have_count(2)
    page.get_by_role("button", name=re.compile(r"Acknowledge overdue alert")).click()
    expect(page.get_by_text("Acknowledged.")).to_be_visible()
    expect(page.locator("tr.alert-acknowledged")).to_contain_text("by ops-admin")
    expect(page.locator("tr.alert-open")).to_contain_text("critical")  # the critical one is still open
    page.get_by_label("Set the state to").select_option("verified")
    page.get_by_label("Reason (kept in the history)").fill("confirmed with Blaaiz by e-mail")
    page.get_by_role("button", name="Set state").click()
    expect(page.locator(".standing-line")).to_have_text("verified at Blaaiz")
    expect(page.locator("table.timeline tbody tr").first).to_contain_text("reason: confirmed with Blaaiz by e-mail")
    assert session.errors == []


def test_on_a_phone_the_stuck_list_fits_and_the_keyboard_reaches_everything(browser, server, container, seeded,
                                                                           admin) -> None:
    context, phone = open_session(browser, server, container, viewport={"width": 390, "height": 844},
                                  is_mobile=True)
    try:
        phone.sign_in(admin)
        phone.page.goto("/stuck")
        assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.page.keyboard.press("Tab")
        assert phone.page.evaluate("document.activeElement.textContent") == "Skip to the content"
        assert phone.page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
        assert phone.errors == []
    finally:
        context.close()


def stamp(clock: FakeClock) -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def post_webhook(server: str, clock: FakeClock, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()
    answer = httpx.post(f"{server}/webhooks/blaaiz", content=body,
                        headers=signed_headers(body, int(clock.now().timestamp())))
    assert answer.status_code == 200, answer.text


def test_a_stuck_customer_appears_live_after_a_webhook(session, container, clock, server, admin) -> None:
    assert session.stream == 200  # the page's EventSource is let in with the session cookie
    page = session.page
    session.sign_in(admin)
    page.goto("/stuck")
    expect(page.locator("table.stuck tbody tr")).to_have_text("No pending customer.")
    post_webhook(server, clock, blaaiz_event("cus_live", "PROCESSING", updated_at=stamp(clock)))
    notice = page.locator("#live-apply")
    expect(notice).to_have_text("1 new change — show")
    expect(page.locator("table.stuck tbody tr")).to_have_text("No pending customer.")  # nothing moved yet
    notice.click()
    expect(page.locator("table.stuck tbody tr")).to_contain_text("pending under 1 min at Blaaiz")
    expect(notice).to_be_hidden()
    page.get_by_role("link", name="cus_live").click()
    expect(page.locator(".standing-line")).to_contain_text("pending under 1 min at Blaaiz")
    page.get_by_label("Reason (kept in the history)").fill("half typed")
    post_webhook(server, clock, blaaiz_event("cus_live", "VERIFIED", updated_at=stamp(clock)))
    expect(page.locator(".standing-line")).to_have_text("verified at Blaaiz")  # its own page reloads its data
    expect(page.get_by_label("Reason (kept in the history)")).to_have_value("half typed")  # but not the forms
    assert session.errors == []
