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
import urllib.parse
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


def _api(stack: Stack, hints: list[tuple[str, str]] | None = None) -> Any:
    """The GC's REST API as the page uses it, answering from the test's placement. Each
    ``unreachable_controller`` the page sends is recorded in ``hints`` (route, URL); naming mc1
    (through its proxy) places the meeting at mc2, as the GC does when its probe of mc1 gets
    no answer (docs/protocol.md §14)."""

    def heard(route: str, hint: str) -> None:
        if hints is not None and hint:
            hints.append((route, hint))
            if hint == stack.mc1_via_proxy:
                stack.gc.at = stack.mc2_url

    def api(method: str, path: str, headers: Any, body: Any) -> tuple[int, Any] | None:
        path, _, query = path.partition("?")
        heard("lookup", urllib.parse.parse_qs(query).get("unreachable_controller", [""])[0])
        if method == "POST" and isinstance(body, dict):
            heard("join", str(body.get("unreachable_controller", "")))
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


async def test_pages_whose_mc_stops_answering_name_it_to_the_gc_and_rejoin_at_another(
    tmp_path: pathlib.Path,
) -> None:
    """mc1 goes silent (its proxy drops everything: no goodbye, as after SIGKILL). The pages'
    resume gets no answer, so their next lookup names mc1 to the GC, which (the stand-in, as
    the real GC after its probe) places the meeting at mc2 only then: the pages rejoin there."""
    results: dict[str, Any] = {}
    hints: list[tuple[str, str]] = []
    async with rejoin_stack(tmp_path, mc_idle_timeout_s=MC_IDLE_TIMEOUT_S) as stack:
        stack.gc.at = stack.mc1_via_proxy
        for url in (stack.mc1_via_proxy, stack.mc2_url):
            await stack.gc.assign(url)

        def steps(context: BrowserContext) -> None:
            try:
                _scenario(context, page_url, stack.proxy.pause, results)
            except Exception as exc:
                for page in context.pages:
                    exc.add_note(f"{page.url}: {_state(page)}")
                exc.add_note(f"hints: {hints}")
                raise

        with serve_web(api=_api(stack, hints)) as page_url:
            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))

    assert hints and {url for _, url in hints} == {stack.mc1_via_proxy}, hints
    assert hints[0][0] == "lookup", hints  # named by the lookup after a failed resume
    for name in ("ann", "ben"):
        after = results[f"{name}_after"]
        assert after["state"] == "joined" and after["stats"]["rejoins"] == 1, after
        assert results[f"{name}_frames_again"] >= WANT_VIDEO_FRAMES


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
