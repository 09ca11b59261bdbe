"""The page rejoins its meeting through the GC when its MC drains (docs/protocol.md §13), in
Chromium, against two real MCs with their MHs (tests/client/_rejoin_stack.py); the page and the
GC's REST API are served by a stand-in (tests/browser/_static.py) that hands out join tokens for
the MC the test places the meeting at. Two pages decode each other's video; the meeting is
placed at the other MC and the first one drains: each page shows "Reconnecting…", rejoins at the
other MC as a new participant with its name, without a reload, and decodes the other page's video
again.
"""

from __future__ import annotations

import pathlib
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.model import MeetingId, Role
from tests.client._rejoin_stack import MEETING, Stack, rejoin_stack

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 10
REAL_WAIT_S = 25.0  # every Playwright wait of the scenario
# Not so short that a loaded machine (Chromium decoding two pages) idles a page out.
MC_IDLE_TIMEOUT_S = 5.0
JOIN = re.compile(r"/api/v1/meetings/([^/?]+)/join")
INFO = re.compile(r"/api/v1/meetings/([^/?]+)")
# What the page shows over time: [ms since the call, body's data-state, status bar text].
WATCH_STATES = """() => {
  window.__shown = [];
  window.__no_reload = true;
  const t0 = Date.now();
  const look = () => {
    const now = [document.body.dataset.state, document.getElementById("status").textContent];
    const last = window.__shown.at(-1);
    if (!last || last[1] !== now[0] || last[2] !== now[1]) window.__shown.push([Date.now() - t0, ...now]);
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def _api(stack: Stack) -> Any:
    """The GC's REST API as the page uses it, answering from the test's placement."""

    def api(method: str, path: str, headers: Any, body: Any) -> tuple[int, Any] | None:
        if method == "GET" and path == "/api/v1/dev/certificate":
            return 200, {"sha256": stack.pins[0].hex()}
        if method == "POST" and (m := JOIN.fullmatch(path)):
            name = (body or {}).get("participant_name", "")
            stack.gc.joins.append((name, None))
            token = stack.gc.issuer.issue(
                MeetingId(m[1]), Role.GUEST, time.time(), participant_name=name or None
            )
            ticket = {"meeting_id": m[1], "join_token": token, "role": "guest"}
            return 200, {**ticket, "meeting_controller_url": stack.gc.at}
        if method == "GET" and (m := INFO.fullmatch(path)):
            return 200, {
                "meeting_id": m[1],
                "status": "active",
                "meeting_controller_url": stack.gc.at,
            }
        return None

    return api


async def test_pages_whose_mc_drains_rejoin_at_another_and_decode_each_other_again(
    tmp_path: pathlib.Path,
) -> None:
    results: dict[str, Any] = {}
    async with rejoin_stack(tmp_path, mc_idle_timeout_s=MC_IDLE_TIMEOUT_S) as stack:
        stack.gc.at = stack.mc1_url
        for url in (stack.mc1_via_proxy, stack.mc2_url):  # placed on both: a join goes anywhere
            await stack.gc.assign(url)

        def drain_mc1() -> None:
            stack.gc.at = stack.mc2_url  # the GC heard of the drain
            stack.stop_mc1.set()

        def at_mc2() -> list[str]:
            assert stack.services.mc is not None
            return sorted(
                m.name for m in stack.services.mc.controller.rooms[MEETING].members.values()
            )

        def steps(context: BrowserContext) -> None:
            try:
                _scenario(context, page_url, drain_mc1, results)
                results["at_mc2"] = trio.from_thread.run_sync(at_mc2)
            except Exception as exc:
                for page in context.pages:
                    exc.add_note(f"{page.url}: {_state(page)}")
                raise

        with serve_web(api=_api(stack)) as page_url:
            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))

    for name, other in (("ann", "ben"), ("ben", "ann")):
        before, after = results[f"{name}_before"], results[f"{name}_after"]
        assert after["state"] == "joined" and after["endReason"] is None, results
        assert after["participantId"] != before["participantId"]
        assert after["stats"]["rejoins"] == 1
        assert after["participants"] == [
            {"participantId": results[f"{other}_after"]["participantId"], "name": other.title()}
        ]
        shown = [status for _, _, status in results[f"{name}_shown"]]
        assert "Reconnecting…" in shown, shown
        assert results[f"{name}_frames_again"] >= WANT_VIDEO_FRAMES
        assert results[f"{name}_no_reload"] is True
    assert results["at_mc2"] == ["Ann", "Ben"]


def _scenario(
    context: BrowserContext, page_url: str, drain_mc1: Any, results: dict[str, Any]
) -> None:
    pages = {"ann": context.new_page(), "ben": context.new_page()}
    for name, page in pages.items():
        page.goto(page_url)
        wait_for_hooks(page)
        page.evaluate(
            "([id, name]) => darktower.join({meetingId: id, name})", [MEETING, name.title()]
        )
    ann, ben = pages["ann"], pages["ben"]
    wait_for_frames(ann, snapshot(ben)["participantId"], WANT_VIDEO_FRAMES)
    wait_for_frames(ben, snapshot(ann)["participantId"], WANT_VIDEO_FRAMES)
    for name, page in pages.items():
        results[f"{name}_before"] = snapshot(page)
        page.evaluate(WATCH_STATES)

    trio.from_thread.run_sync(drain_mc1)

    for page in pages.values():
        page.wait_for_function(
            "() => darktower.stats.rejoins === 1 && darktower.state === 'joined'", polling=POLL_MS
        )
    for name, other in (("ann", "ben"), ("ben", "ann")):
        other_pid = snapshot(pages[other])["participantId"]
        results[f"{name}_frames_again"] = wait_for_frames(pages[name], other_pid, WANT_VIDEO_FRAMES)
    for name, page in pages.items():
        page.wait_for_function("() => darktower.participants.length === 1", polling=POLL_MS)
        results[f"{name}_after"] = snapshot(page)
        results[f"{name}_shown"] = page.evaluate("window.__shown")
        results[f"{name}_no_reload"] = page.evaluate("window.__no_reload === true")


def _state(page: Page) -> Any:
    try:
        return {
            "snapshot": snapshot(page),
            "notices": page.locator("#notices li").all_text_contents(),
            "shown": page.evaluate("() => window.__shown ?? null"),
        }
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)
