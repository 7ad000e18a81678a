"""The Event Debugger in a real headless browser (Debian's chromium driven by Playwright).

Feeds deliveries into a ``RecentDeliveries``, serves it with ``serve_debugger`` and checks what
an operator sees: the login form, rows, masking, filters, live updates, no token on the page or
in a URL, no HTML injection through payload values. Takes the README's screenshot; with
``UPDATE_SCREENSHOT=1`` it replaces docs/event-debugger.png (otherwise the tree stays clean).
Fails, never skips, without chromium (``apt-get install chromium``) or the ``playwright``
package (dev extras); Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from playwright.async_api import BrowserContext, Page, Response, async_playwright, expect

from consumer.core.deadletter import Failure
from consumer.core.events import Record
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.recent_deliveries import RecentDeliveries
from consumer.observe.web import SESSION_COOKIE, WebServer, serve_debugger
from tests.harness.guide import GUIDE_UPSERT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "event-debugger.png"
TOKEN = "debugger-secret-5b1e"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EU = {"locationId": "Qm7e2Xa9LpT4sVb1NcRz", "email": "jane.doe@example.org",
      "phone": "+447700900123", "firstName": "Jane", "lastName": "Doe"}


def deliver(
    debugger: RecentDeliveries,
    integration: str,
    payload: dict[str, object],
    status: int | None,
    *,
    events: tuple[str, ...] = ("identify",),
    contact: str = "lead-987",
    message: str = "",
    trace_id: str | None = None,
    error: str | None = None,
    latency_s: float = 0.084,
    attempts: int = 1,
) -> None:
    debugger.record(
        integration=integration,
        location_id=str(payload["locationId"]),
        endpoint="upsert",
        events=events,
        contact_key=contact,
        payload=payload,
        answer=Answer(
            verdict=classify(status),
            status=status,
            latency_s=latency_s,
            trace_id=trace_id,
            message=message,
            error=error,
        ),
        attempts=attempts,
        now=time.time(),
    )


def feed(debugger: RecentDeliveries) -> None:
    deliver(debugger, "eu-shop", EU, 201, events=("Signed Up",), contact="user-311",
            trace_id="3f1c9a2e-7d4b-4c1e-9a55-0c8e2b7d1f40", latency_s=0.112)
    deliver(debugger, "default", {**GUIDE_UPSERT, "tags": ["<img src=x id=injected>"]}, 422,
            contact="lead-555",
            message="property favouriteColour should not exist",
            trace_id="a8b2c7d1-0e3f-4a6b-9c8d-7e6f5a4b3c2d", latency_s=0.061)
    deliver(debugger, "default", GUIDE_UPSERT, 429, events=("identify", "Lead Generated"),
            trace_id="c4d5e6f7-1a2b-4c3d-8e9f-0a1b2c3d4e5f", latency_s=0.019)
    deliver(debugger, "eu-shop", EU, 401, contact="user-311",
            message="Invalid JWT", trace_id="0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a",
            latency_s=0.044, attempts=2)
    deliver(debugger, "default", GUIDE_UPSERT, None, contact="lead-987", error="timeout",
            latency_s=10.0, attempts=1)
    deliver(debugger, "default", GUIDE_UPSERT, 201, events=("identify", "Lead Generated"),
            trace_id="5e0f4c3b-2a19-4d8e-b7c6-a5f4e3d2c1b0", latency_s=0.097, attempts=2)


def other_outcomes(debugger: RecentDeliveries) -> None:
    """A drop, a duplicate, a reject and its dead letter of Jane's records."""
    def jane(offset: int, message_id: str, event: str) -> Record:
        value = {"type": "track", "event": event, "userId": "user-311",
                 "messageId": message_id, "traits": {"email": EU["email"]}}
        return Record("events", 2, offset, b"user-311", orjson.dumps(value), (), 1_765_000_000_000)

    now = time.time()
    debugger.dropped(jane(40, "m-page-1", "Page Viewed"), "not_mapped", "eu-shop", now)
    debugger.dropped(jane(41, "m-page-1", "Page Viewed"), "duplicate", None, now + 0.1)
    debugger.rejected(jane(42, "m-bad-1", "Signed Up"), "no_identifier",
                      "no email or phone: traits.email omitted (invalid)", "eu-shop", now + 0.2)
    failure = Failure(reason="no_identifier", error="no email or phone", integration_id="eu-shop")
    debugger.dead_lettered(jane(42, "m-bad-1", "Signed Up"), failure, now + 0.3)


@pytest.fixture
def debugger() -> RecentDeliveries:
    return RecentDeliveries(integrations=["default", "eu-shop"])


@pytest.fixture
async def server(debugger: RecentDeliveries) -> AsyncIterator[WebServer]:
    async with serve_debugger(port=0, debugger=debugger, access_token=TOKEN) as running:
        yield running


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: apt-get install chromium (tools/system-deps.sh)"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh --user-data-dir per test
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 760},
        )
        try:
            yield context
        finally:
            await context.close()


async def open_page(context: BrowserContext, url: str, errors: list[str]) -> Page:
    page = await context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


async def test_event_debugger_in_a_browser(
    server: WebServer, debugger: RecentDeliveries, browser: BrowserContext, tmp_path: Path
) -> None:
    feed(debugger)
    other_outcomes(debugger)
    errors: list[str] = []
    page = await open_page(browser, server.url, errors)
    await log_in(page, server.url, TOKEN)
    # the login form's own 401 is the only failed load so far
    assert errors == ["Failed to load resource: the server responded with a status of 401 "
                      "(Unauthorized)"]
    errors.clear()
    assert page.url == f"{server.url}/debug"  # never a token in the address bar
    [session] = await browser.cookies()
    assert session["name"] == SESSION_COOKIE
    assert (session["httpOnly"], session["sameSite"]) == (True, "Strict")
    assert TOKEN not in session["value"]
    rows = page.locator("#rows tr.delivery")
    await expect(rows).to_have_count(6)
    await expect(page.locator("#live")).to_have_text("live")

    # newest first, masked, HighLevel's answer shown
    first = rows.nth(0)
    await expect(first.locator(".payload")).to_contain_text('email: "s***@example.com"')
    await expect(first.locator(".payload")).to_contain_text('phone: "+1******0142"')
    await expect(first.locator(".status")).to_have_text("201")
    await expect(first.locator(".trace")).to_have_text("5e0f4c3b-2a19-4d8e-b7c6-a5f4e3d2c1b0")
    await expect(first.locator(".payload")).to_contain_text('firstName: "hidden:')
    await expect(first.locator(".contact")).to_have_text(re.compile(r"^hidden:[0-9a-f]{8}$"))
    rejected = page.locator("#rows tr.delivery.rejected")
    await expect(rejected.locator(".message")).to_have_text(
        "property favouriteColour should not exist"
    )
    await expect(page.locator("#rows tr.delivery.retry .status")).to_have_text("no answer")
    # a payload value is text, never markup
    await expect(rejected.locator(".payload")).to_contain_text("<img src=x id=injected>")
    assert await page.locator("#injected").count() == 0
    body = await page.inner_text("body")
    html = await page.content()
    personal = ("sam@example.com", "jane.doe@example.org", "4155550142", "7700900123",
                "Rivera", "Jane", "lead-987", "user-311")
    for secret in (*personal, TOKEN):
        assert secret not in body
        assert secret not in html

    # filters
    await page.select_option("#integration", "eu-shop")
    await expect(rows).to_have_count(2)
    for integration in await rows.evaluate_all("rs => rs.map(r => r.dataset.integration)"):
        assert integration == "eu-shop"
    await page.select_option("#outcome", "unauthorized")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0).locator(".message")).to_have_text("Invalid JWT")
    await page.select_option("#integration", "")
    await page.select_option("#outcome", "rejected")
    await expect(rows).to_have_count(1)
    await page.select_option("#outcome", "")
    await expect(page.locator("#count")).to_have_text("6 of 6 deliveries")

    # live: a delivery recorded now appears without a reload
    deliver(debugger, "eu-shop", EU, 200, events=("Lead Generated",), contact="user-311",
            trace_id="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", latency_s=0.073, attempts=3)
    await expect(rows).to_have_count(7)
    await expect(rows.nth(0)).to_have_attribute("data-seq", "7")
    await expect(rows.nth(0).locator(".payload")).to_contain_text("j***@example.org")
    await expect(rows.nth(0).locator(".payload")).to_contain_text("+4*******0123")

    # other outcomes: newest first, with their record, reason and messageId; masked
    outcomes = page.locator("#outcome-rows tr.outcome-entry")
    await expect(outcomes).to_have_count(4)
    kinds = await outcomes.evaluate_all("rs => rs.map(r => r.dataset.kind)")
    assert kinds == ["dead_lettered", "rejected", "duplicate", "dropped"]
    await expect(outcomes.nth(1).locator(".coordinates")).to_have_text("events/2/42")
    await expect(outcomes.nth(1).locator(".error")).to_contain_text("traits.email omitted")
    await expect(outcomes.nth(3).locator(".message-id")).to_have_text("m-page-1")
    await expect(outcomes.nth(3).locator(".contact")).to_have_text(
        re.compile(r"^hidden:[0-9a-f]{8}$")
    )
    await page.select_option("#kind", "duplicate")
    await expect(outcomes).to_have_count(1)
    await page.select_option("#kind", "")
    await expect(outcomes).to_have_count(4)

    # search: one person's records, this member's memory only
    await expect(page.locator(".bar .note").first).to_contain_text("ghl-consumer trace")
    await page.fill("#q", "user-311")
    await page.press("#q", "Enter")
    await expect(page.locator("#found-deliveries tr.delivery")).to_have_count(3)
    await expect(page.locator("#found-outcomes tr.outcome-entry")).to_have_count(4)
    await page.fill("#q", "m-bad-1")
    await page.click("#find")
    await expect(page.locator("#found-outcomes tr.outcome-entry")).to_have_count(2)
    await expect(page.locator("#found-deliveries tr.delivery")).to_have_count(0)
    body = await page.inner_text("body")
    for secret in ("jane.doe@example.org", TOKEN):
        assert secret not in body

    assert errors == []  # no CSP violation, no script error
    shot = tmp_path / "event-debugger.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, SCREENSHOT)


async def test_without_the_token_the_browser_gets_nothing(
    server: WebServer, debugger: RecentDeliveries, browser: BrowserContext
) -> None:
    feed(debugger)
    errors: list[str] = []
    page = await open_page(browser, server.url, errors)
    response = await page.goto(f"{server.url}/debug")
    assert response is not None
    assert response.status == 401
    assert await page.locator("tr.delivery").count() == 0
    response = await log_in(page, server.url, "not-the-token")
    assert response.status == 401
    await expect(page.locator(".failed")).to_have_text("Wrong access token.")
    assert await page.locator("tr.delivery").count() == 0
    assert await browser.cookies() == []
    # a token in the URL is refused outright, even the right one
    response = await page.goto(f"{server.url}/debug?token={TOKEN}")
    assert response is not None
    assert response.status == 400


async def log_in(page: Page, url: str, token: str) -> Response:
    """Open /debug, get the login form, submit ``token``; the response to the POST's outcome."""
    response = await page.goto(f"{url}/debug")
    assert response is not None
    assert response.status == 401
    await page.fill("#token", token)
    async with page.expect_navigation() as navigation:
        await page.click("button[type=submit]")
    landed = await navigation.value
    assert landed is not None
    return landed
