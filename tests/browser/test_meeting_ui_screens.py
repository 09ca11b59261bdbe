"""The meeting page's full screens on the REAL stack (``python -m darktower``'s ``serve``
in-process) in headless Chromium: an unsupported browser (no WebTransport), a refused camera
and microphone (said on the pre-join screen; the page joins without them), a full meeting, the
meeting ended by its host, and a join after its end. A screenshot of each goes to
``test-results/screenshots/``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests._stack import dev_stack

from ._meeting_ui import PAGE_WAIT_S, SHOTS, diagnosed, shot, wait
from ._pages import run_in_browser, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NO_WEBTRANSPORT_JS = "delete window.WebTransport;"
DENY_DEVICES_JS = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("Permission denied", "NotAllowedError"));"""


def _screens_scenario(page_url: str, results: dict[str, Any]) -> Callable[[BrowserContext], None]:
    def steps(context: BrowserContext) -> None:
        # A browser without WebTransport.
        old = context.new_page()
        old.add_init_script(NO_WEBTRANSPORT_JS)
        old.goto(page_url + "/")
        wait_for_hooks(old)
        wait(old, "() => darktower.screen !== null")
        results["unsupported"] = [old.evaluate("() => darktower.screen"), old.is_visible("#lobby")]
        shot(old, "error-unsupported")
        old.close()

        # Camera and microphone refused: said on the pre-join screen; joins without them.
        dee = context.new_page()
        dee.add_init_script(DENY_DEVICES_JS)
        dee.goto(page_url + "/")
        wait_for_hooks(dee)
        wait(dee, "() => darktower.prejoin.denied")
        results["denied_shown"] = dee.is_visible("#denied")
        shot(dee, "error-devices-denied")
        dee.click("#skip-devices")
        results["denied_after_skip"] = dee.is_visible("#denied")
        d = dee.evaluate("() => darktower.create({name: 'Dee', settings: {maxParticipants: 1}})")
        results["dee"] = d

        # The meeting is full.
        eve = context.new_page()
        eve.goto(f"{page_url}/m/{d['meetingId']}")
        wait_for_hooks(eve)
        eve.fill("#name", "Eve")
        eve.click("#join")
        wait(eve, "() => darktower.screen !== null")
        results["full"] = [eve.evaluate("() => darktower.screen"), eve.text_content("#end-title")]
        shot(eve, "error-meeting-full")

        # The host ends it: its screen says so, and a later join is told.
        dee.click("#end-meeting")
        wait(dee, "() => darktower.screen !== null")
        results["ended"] = [dee.evaluate("() => darktower.screen"), dee.text_content("#end-title")]
        shot(dee, "error-meeting-ended")
        eve.click("#rejoin")
        wait_for_hooks(eve)
        eve.fill("#name", "Eve")
        eve.click("#join")
        wait(eve, "() => darktower.screen !== null")
        results["join_ended"] = eve.evaluate("() => darktower.screen")
        shot(eve, "error-join-ended")

    return diagnosed(steps, results)


async def test_the_error_screens(tmp_path: pathlib.Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    async with dev_stack(tmp_path / "data", drain_grace_s=1) as running:
        scenario = _screens_scenario(running.page_url.rstrip("/"), results)
        await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    assert results["unsupported"] == ["unsupported", False]
    assert results["denied_shown"] is True
    assert results["denied_after_skip"] is False
    assert results["dee"]["state"] == "joined"
    assert results["full"] == ["full", "This meeting is full"]
    assert results["ended"] == ["meeting-ended", "Meeting ended"]
    assert results["join_ended"] in ("meeting-ended", "no-meeting")
