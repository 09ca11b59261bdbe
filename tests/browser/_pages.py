"""Several pages in one headless Chromium, for tests that drive the client step by step (two
participants, screenshots). ``tests/_browser.py``'s ``run_page_script`` runs one script in one
page; this runs a whole scenario with Playwright's sync API in a worker thread::

    def scenario(context: BrowserContext) -> dict[str, Any]:
        host, guest = context.new_page(), context.new_page()
        host.goto(gc + "/")
        wait_for_hooks(host)
        h = host.evaluate("darktower.create({name: 'Host'})")        # dev credential, host role
        guest.goto(f"{gc}/m/{h['meetingId']}")
        wait_for_hooks(guest)
        g = guest.evaluate("(id) => darktower.join({meetingId: id, name: 'Guest'})",
                           h["meetingId"])
        wait_for_frames(host, g["participantId"], 30)
        wait_for_frames(guest, h["participantId"], 30)
        host.locator("#grid").screenshot(path=results / "grid.png")
        host.evaluate("(pid) => darktower.kick(pid)", g["participantId"])
        guest.wait_for_function("darktower.endReason?.name === 'KICKED'", timeout=1000,
                                polling=POLL_MS)
        return {"shown": guest.text_content("#end-reason")}  # "You were removed ..."

    result = await trio.to_thread.run_sync(run_in_browser, scenario)

(tests/browser/test_session.py's host test runs this way against stand-in servers.)

Same flags, executable and skip/fail policy as ``tests/_browser.py``. The context accepts a
self-signed HTTPS certificate (the dev stack's GC serves the page over HTTPS with it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_S, browser_unavailable

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

T = TypeVar("T")
# Page-side polling interval of the waits below (Playwright's default follows animation frames).
POLL_MS = 20


def run_in_browser(scenario: Callable[[BrowserContext], T], timeout_s: float = PAGE_TIMEOUT_S) -> T:
    """Launch Chromium, run ``scenario(context)`` and return its result; blocking (call it
    through ``trio.to_thread.run_sync``). Every page of the context times out its waits after
    ``timeout_s``. Errors in a page propagate as Playwright errors."""
    if not os.path.exists(CHROMIUM):
        browser_unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        browser_unavailable(f"playwright not installed: {exc}")
    # See tests/_browser.py: Playwright's loop in this thread needs the plain asyncio policy.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
            )
        except Exception as exc:
            browser_unavailable(f"cannot launch {CHROMIUM}: {exc}")
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 720}
            )
            context.set_default_timeout(timeout_s * 1000)
            return scenario(context)
        finally:
            browser.close()


def wait_for_hooks(page: Page) -> None:
    """Wait until the client's modules have loaded (``window.darktower`` exists)."""
    page.wait_for_function("() => window.darktower !== undefined", polling=POLL_MS)


def wait_for_frames(page: Page, participant_id: str, count: int) -> int:
    """Wait until ``page`` decoded ``count`` video frames from ``participant_id``; the count."""
    page.wait_for_function(
        "([pid, n]) => (window.darktower.stats.decodedFrames[pid] ?? 0) >= n",
        arg=[participant_id, count],
        polling=POLL_MS,
    )
    return int(page.evaluate("(pid) => window.darktower.stats.decodedFrames[pid]", participant_id))


def snapshot(page: Page) -> Any:
    return page.evaluate("() => window.darktower.snapshot()")
