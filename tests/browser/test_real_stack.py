"""Two pages in one headless Chromium against the REAL stack (``python -m darktower``'s
``serve``, in-process, every port 0), the page served by the real GC: the host creates a
meeting from the lobby, the guest opens the meeting's link and joins from the lobby.

* Each decodes at least 30 video frames (and some audio) of the other, and what it draws has the
  colours of the other's camera; a screenshot of the grid goes to ``test-results/``; the host
  removes the guest with the tile's Remove button and the guest is shown why within 1 s.
* The host clicks End meeting: both are shown that the meeting has ended.

The 1 s is measured in the browser, on the one clock both pages share (``Date.now()``, the
system's wall clock): from the host's click on Remove (a capture-phase listener, so before the
page's own handler sends the kick) to the moment the guest's end view is shown (a
MutationObserver on ``#ended``'s ``hidden`` attribute). It covers the whole path: host page ->
MC -> guest's SessionEnded (or the MH's close code) -> guest page's DOM.

The browser's absence skips these tests, or fails them when ``CI`` is set (tests/_browser.py).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests._stack import dev_stack

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page

pytestmark = pytest.mark.browser

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Next to the test results (git-ignored); CI keeps the folder as an artifact.
RESULTS_DIR = REPO_ROOT / "test-results"
SCREENSHOT = RESULTS_DIR / "browser-grid.png"
# A 1280x720 grid of two 640x480 tiles is tens of kB; a blank or broken capture is far smaller.
MIN_SCREENSHOT_BYTES = 5_000
WANT_VIDEO_FRAMES = 30
# Issue #8: the removed person sees why within 1 s.
REASON_SHOWN_WITHIN_MS = 1000
# Every Playwright wait in the scenario.
PAGE_WAIT_S = 20.0
KICKED_TEXT = "You were removed from the meeting"
ENDED_TEXT = "The meeting has ended"
# The end view replaces the meeting.
ENDED_SHOWN = {"ended_visible": True, "meeting_visible": False}

TILES_JS = """() => [...document.querySelectorAll("#grid .tile")].map(t => ({
  id: t.dataset.participantId, name: t.querySelector(".name").textContent,
  kick: !!t.querySelector(".kick")}))"""

# A point of the fake camera's picture that is always background (the pacman is in the middle,
# the clock at the top), as fractions of the width and height.
BACKGROUND_POINT = (100 / 640, 300 / 480)
# How far a decoded colour channel may be from the sender's camera: VP8 keeps a flat background
# within a few levels; decoding with the wrong colour space was 57 levels off (135 -> 78).
COLOUR_TOLERANCE = 16

# One page: its own camera's and ``pid``'s decoded picture at BACKGROUND_POINT, as [r, g, b].
COLOURS_JS = """([pid, [fx, fy]]) => {
  const at = (source, w, h) => {
    const g = new OffscreenCanvas(w, h).getContext("2d");
    g.drawImage(source, 0, 0, w, h);
    return Array.from(g.getImageData(Math.round(fx * w), Math.round(fy * h), 1, 1).data).slice(0, 3);
  };
  const own = document.querySelector("#grid .tile.self video");
  const remote = document.querySelector(`#grid .tile[data-participant-id="${pid}"] canvas`);
  return {own: at(own, own.videoWidth, own.videoHeight), remote: at(remote, remote.width, remote.height)};
}"""

# Guest page: note when the end view appears and what it says (before the kick happens).
WATCH_ENDED_JS = """() => {
  const ended = document.getElementById("ended");
  window.__endedShown = null;
  new MutationObserver(() => {
    if (!ended.hidden && window.__endedShown === null) {
      window.__endedShown = {at: Date.now(),
                             text: document.getElementById("end-reason").textContent};
    }
  }).observe(ended, {attributes: true, attributeFilter: ["hidden"]});
}"""

# Host page: note the click on a Remove button before the page's own handler runs.
WATCH_CLICK_JS = """() => {
  window.__kickClickedAt = null;
  document.addEventListener("click", (e) => {
    if (e.target.closest(".kick")) window.__kickClickedAt = Date.now();
  }, {capture: true});
}"""


def _wait_joined(page: Page) -> dict[str, Any]:
    page.wait_for_function(
        "() => ['joined', 'ended'].includes(window.darktower.state)", polling=POLL_MS
    )
    state: dict[str, Any] = snapshot(page)
    notices = page.locator("#notices li").all_text_contents()
    assert state["state"] == "joined", (state, notices)
    return state


def _page_state(page: Page) -> Any:
    try:
        return {
            "snapshot": snapshot(page),
            "notices": page.locator("#notices li").all_text_contents(),
            "status": page.text_content("#status", timeout=1000),
        }
    except Exception as exc:  # a page that is gone or stuck: its state is not to be had
        return repr(exc)


def _watch_problems(page: Page, problems: list[str]) -> None:
    """Uncaught errors and console errors of ``page`` go to ``problems``."""

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console.error: {message.text} at {message.location.get('url')}")

    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.on("console", console)


def _diagnosed(
    steps: Callable[[BrowserContext], None], results: dict[str, Any]
) -> Callable[[BrowserContext], None]:
    """``steps`` as a run_in_browser scenario that collects page errors in
    ``results["page_problems"]`` and, when a step fails, notes what each page held."""

    def scenario(context: BrowserContext) -> None:
        problems: list[str] = results.setdefault("page_problems", [])
        context.on("page", lambda page: _watch_problems(page, problems))
        try:
            steps(context)
        except Exception as exc:
            for page in context.pages:
                exc.add_note(f"{page.url}: {_page_state(page)}")
            exc.add_note(f"page problems: {problems}")
            raise

    return scenario


def _host_and_guest(
    context: BrowserContext, page_url: str, results: dict[str, Any]
) -> tuple[Page, Page, dict[str, Any], dict[str, Any]]:
    """Hank creates a meeting from the lobby; Gina opens its link and joins from the lobby.
    The pages and their snapshots once both are in (each has the other's tile)."""
    host = context.new_page()
    host.goto(page_url + "/")
    wait_for_hooks(host)
    host.fill("#name", "Hank")
    host.click("#create")
    results["host"] = h = _wait_joined(host)
    results["share_link"] = link = host.get_attribute("#share-link", "href")

    guest = context.new_page()
    assert link is not None
    guest.goto(link)
    wait_for_hooks(guest)
    results["guest_prefilled"] = guest.input_value("#meeting-id")
    guest.fill("#name", "Gina")
    guest.click("#join")
    results["guest"] = g = _wait_joined(guest)
    host.wait_for_selector(f'#grid .tile[data-participant-id="{g["participantId"]}"]')
    return host, guest, h, g


def _kick_scenario(
    page_url: str, results: dict[str, Any], mc_members: Callable[[str], set[str]]
) -> Callable[[BrowserContext], None]:
    """Both decode each other, the grid's screenshot, the kick; fills ``results`` as it goes so
    that a failure still shows how far it got. ``mc_members(meeting id)`` runs in trio."""

    def steps(context: BrowserContext) -> None:
        host, guest, h, g = _host_and_guest(context, page_url, results)
        results["guest_frames"] = wait_for_frames(guest, h["participantId"], WANT_VIDEO_FRAMES)
        results["host_frames"] = wait_for_frames(host, g["participantId"], WANT_VIDEO_FRAMES)
        results["host_tiles"] = host.evaluate(TILES_JS)
        results["guest_tiles"] = guest.evaluate(TILES_JS)
        results["host_colours"] = host.evaluate(COLOURS_JS, [g["participantId"], BACKGROUND_POINT])
        results["guest_colours"] = guest.evaluate(
            COLOURS_JS, [h["participantId"], BACKGROUND_POINT]
        )
        results["host_before_kick"] = snapshot(host)
        results["guest_before_kick"] = snapshot(guest)
        # A clip of the page: an element screenshot first waits for the element to be
        # "stable", which canvases redrawn 30 times a second delay by seconds under load.
        grid = host.locator("#grid").bounding_box()
        assert grid is not None
        host.screenshot(path=SCREENSHOT, clip=grid)

        guest.evaluate(WATCH_ENDED_JS)
        host.evaluate(WATCH_CLICK_JS)
        host.click(f'#grid .tile[data-participant-id="{g["participantId"]}"] .kick')
        guest.wait_for_function("() => window.__endedShown !== null", polling=POLL_MS)
        results["clicked_at"] = host.evaluate("() => window.__kickClickedAt")
        results["ended_shown"] = guest.evaluate("() => window.__endedShown")
        results["guest_after"] = snapshot(guest)
        results["guest_view"] = _ended_view(guest)
        # The host stays, without the guest's tile.
        host.wait_for_function(
            "(pid) => !document.querySelector(`#grid .tile[data-participant-id='${pid}']`)",
            arg=g["participantId"],
            polling=POLL_MS,
        )
        results["host_after"] = snapshot(host)
        results["host_tiles_after"] = host.evaluate(TILES_JS)
        # While both pages are still open (closing the browser ends the host's session too).
        # The host saw ParticipantLeft, which the MC sends after dropping the member.
        results["mc_members_after"] = trio.from_thread.run_sync(mc_members, h["meetingId"])
        results["notices"] = _notices(host, guest)

    return _diagnosed(steps, results)


def _end_scenario(page_url: str, results: dict[str, Any]) -> Callable[[BrowserContext], None]:
    """Both in, the host clicks End meeting: both are told."""

    def steps(context: BrowserContext) -> None:
        host, guest, _, _ = _host_and_guest(context, page_url, results)
        results["end_button_shown"] = {
            "host": host.is_visible("#end-meeting"),
            "guest": guest.is_visible("#end-meeting"),
        }
        host.click("#end-meeting")
        for name, page in (("host", host), ("guest", guest)):
            page.wait_for_function("() => window.darktower.endReason !== null", polling=POLL_MS)
            results[f"{name}_after"] = snapshot(page)
            results[f"{name}_view"] = _ended_view(page)
        results["notices"] = _notices(host, guest)

    return _diagnosed(steps, results)


def _ended_view(page: Page) -> dict[str, Any]:
    return {
        "text": page.text_content("#end-reason"),
        "ended_visible": page.is_visible("#ended"),
        "meeting_visible": page.is_visible("#meeting"),
    }


def _notices(host: Page, guest: Page) -> dict[str, list[str]]:
    return {
        "host": host.locator("#notices li").all_text_contents(),
        "guest": guest.locator("#notices li").all_text_contents(),
    }


async def test_two_pages_see_each_other_and_the_removed_guest_is_told(
    tmp_path: pathlib.Path,
) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    results: dict[str, Any] = {}
    async with dev_stack(tmp_path / "data", drain_grace_s=1) as running:
        page_url = running.page_url.rstrip("/")
        controller = running.mc.controller

        def mc_members(meeting_id: str) -> set[str]:
            return set(controller.rooms[meeting_id].members)

        scenario = _kick_scenario(page_url, results, mc_members)
        await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    host, guest = results["host"], results["guest"]
    assert host["role"] == "host"
    assert guest["role"] == "guest"
    assert host["meetingId"] == guest["meetingId"]
    assert results["share_link"] == f"{page_url}/m/{host['meetingId']}"
    assert results["guest_prefilled"] == host["meetingId"]

    # Each decoded the other's video, and sees the other's tile by name.
    assert results["guest_frames"] >= WANT_VIDEO_FRAMES
    assert results["host_frames"] >= WANT_VIDEO_FRAMES
    hid, gid = host["participantId"], guest["participantId"]
    assert results["host_tiles"] == [
        {"id": hid, "name": "Hank (you)", "kick": False},
        {"id": gid, "name": "Gina", "kick": True},
    ]
    assert results["guest_tiles"] == [
        {"id": gid, "name": "Gina (you)", "kick": False},
        {"id": hid, "name": "Hank", "kick": False},
    ]

    # Every frame that arrived before the kick belonged to a stream the page subscribed to.
    assert results["host_before_kick"]["stats"]["unknownFrames"] == 0
    assert results["guest_before_kick"]["stats"]["unknownFrames"] == 0
    assert results["host_before_kick"]["stats"]["decodedAudio"].get(gid, 0) > 0
    assert results["guest_before_kick"]["stats"]["decodedAudio"].get(hid, 0) > 0

    # What each shows of the other looks like the other's camera (the same fake pattern on
    # every page): the frames arrived intact and were decoded and drawn right.
    for page in ("host", "guest"):
        colours = results[f"{page}_colours"]
        assert colours["own"][1] > 64, colours  # the fake camera's green background
        differences = [abs(a - b) for a, b in zip(colours["own"], colours["remote"], strict=True)]
        assert max(differences) <= COLOUR_TOLERANCE, (page, colours)

    # The screenshot of the grid, taken while both were decoding.
    data = SCREENSHOT.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > MIN_SCREENSHOT_BYTES

    # The guest was told it was removed, within 1 s of the host's click.
    assert results["guest_after"]["endReason"]["name"] == "KICKED"
    assert results["ended_shown"]["text"] == KICKED_TEXT
    assert results["guest_view"] == {"text": KICKED_TEXT, **ENDED_SHOWN}
    assert results["clicked_at"] is not None
    elapsed_ms = results["ended_shown"]["at"] - results["clicked_at"]
    assert 0 <= elapsed_ms < REASON_SHOWN_WITHIN_MS, f"shown {elapsed_ms} ms after the click"

    # The host is still in the meeting, alone.
    assert results["host_after"]["state"] == "joined"
    assert results["host_after"]["participants"] == []
    assert results["host_tiles_after"] == [{"id": hid, "name": "Hank (you)", "kick": False}]
    assert results["mc_members_after"] == {hid}

    # Neither page reported anything to the person or threw.
    assert results["notices"] == {"host": [], "guest": []}
    assert results["page_problems"] == []


async def test_the_host_ends_the_meeting_for_everyone(tmp_path: pathlib.Path) -> None:
    results: dict[str, Any] = {}
    async with dev_stack(tmp_path / "data", drain_grace_s=1) as running:
        scenario = _end_scenario(running.page_url.rstrip("/"), results)
        await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    assert (results["host"]["role"], results["guest"]["role"]) == ("host", "guest")
    assert results["end_button_shown"] == {"host": True, "guest": False}
    for page in ("host", "guest"):
        assert results[f"{page}_after"]["endReason"]["name"] == "MEETING_ENDED", page
        assert results[f"{page}_view"] == {"text": ENDED_TEXT, **ENDED_SHOWN}, page
    assert results["notices"] == {"host": [], "guest": []}
    assert results["page_problems"] == []
