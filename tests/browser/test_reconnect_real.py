"""The page reconnects by itself (docs/protocol.md §13), in Chromium, against the real stack
(tests/_stack.py: GC with its page listener, MC, MH), two pages, one of them behind netfault
proxies (darktower.loadtest.netfault) to the MC and the MH: the page is told to dial the proxies
with the ``darktower.connectVia({"host:port": "host:port"})`` hook (the URLs the GC and MC hand
out are the services' own; the certificate pin does not name the port). Its connection is cut for
5 s: it shows the reconnecting state, the other page marks its tile, and then each decodes the
other's video again, with the same participant and tiles.
"""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.loadtest.netfault import open_udp_proxy
from tests._stack import open_services

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 10
BLACKOUT_S = 5.0
# The MC notices the cut page within this (QUIC idle timeout, docs/protocol.md §13); the page
# does too, 1 s sooner (Chromium idles out 1 s before the negotiated timeout). Below the
# blackout, and not so short that the other page idles out too: its MC PINGs it every second
# (keepalive_for), so it gives up only if the machine stalls us for about 2 s (two pages of
# Chromium on two cores stalled everything here for up to 1.4 s).
MC_IDLE_TIMEOUT_S = 4.0
# Every Playwright wait of the scenario: a reconnection takes a few attempts' backoff.
REAL_WAIT_S = 25.0
OWN_MARKER_SHOWN = """() => {
  const m = document.querySelector("#grid .tile.self .reconnecting");
  return !!m && !m.hidden && document.getElementById("status").textContent === "Reconnecting…";
}"""
MARKER_OF = """(pid) => {
  const m = document.querySelector(`#grid .tile[data-participant-id="${pid}"] .reconnecting`);
  return m ? !m.hidden : null;
}"""
# Marks the tile of `pid` so that the same element can be recognised later.
MARK_TILE = """(pid) => {
  window.__tile = document.querySelector(`#grid .tile[data-participant-id="${pid}"]`);
}"""
# What the page shows over time: [ms since the cut, body's data-state, status bar text].
WATCH_STATES = """() => {
  window.__shown = [];
  const t0 = Date.now();
  const look = () => {
    const now = [document.body.dataset.state, document.getElementById("status").textContent];
    const last = window.__shown.at(-1);
    if (!last || last[1] !== now[0] || last[2] !== now[1]) window.__shown.push([Date.now() - t0, ...now]);
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""
SAME_TILE = """(pid) =>
  window.__tile === document.querySelector(`#grid .tile[data-participant-id="${pid}"]`)"""


def _frames(page: Page, pid: str) -> int:
    return int(page.evaluate("(pid) => window.darktower.stats.decodedFrames[pid] ?? 0", pid))


def _notices(page: Page) -> list[str]:
    return page.locator("#notices li").all_text_contents()


async def test_a_page_cut_off_for_5_s_shows_it_and_decodes_the_other_again(
    tmp_path: pathlib.Path,
) -> None:
    results: dict[str, Any] = {}
    async with open_services(
        tmp_path / "data",
        gc={"dev_http_port": 0},
        mc={"idle_timeout_s": MC_IDLE_TIMEOUT_S},
        mh={},
    ) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("reconnect")
        signal = services.signal_url.split("/")[2]
        media = services.media_url.split("/")[2]
        async with (
            open_udp_proxy(_host_port(signal)) as to_mc,
            open_udp_proxy(_host_port(media)) as to_mh,
        ):
            via = {
                signal: "{}:{}".format(*to_mc.address),
                media: "{}:{}".format(*to_mh.address),
            }

            def cut() -> None:
                to_mc.pause()
                to_mh.pause()

            def restore() -> None:
                to_mc.resume()
                to_mh.resume()

            def steps(context: BrowserContext) -> None:
                try:
                    _cut_scenario(context, page_url, meeting.meeting_id, via, cut, restore, results)
                except Exception as exc:  # say what each page held
                    for page in context.pages:
                        exc.add_note(f"{page.url}: {_page_state(page)}")
                    raise

            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))
            results["through_proxy"] = (
                to_mc.stats.to_service.forwarded,
                to_mh.stats.to_service.forwarded,
            )

    ann, ben = results["ann"], results["ben"]
    # Ben's page went through the proxies (the other page dials the services directly).
    assert all(n > 0 for n in results["through_proxy"])
    # Ben showed the reconnecting state; Ann saw Ben's tile marked, and no leave or join.
    assert results["ben_reconnecting"]["state"] == "reconnecting"
    assert results["ann_saw_ben_reconnecting"] is True
    # Back: the same participant, each decoding the other's video again.
    after = results["ben_after"]
    assert after["participantId"] == ben["participantId"]
    assert after["state"] == "joined" and after["reconnecting"] is False, results["shown"]
    # Each resume brings one media reconnection and no more (a page that closed its old media
    # session first would be told by the MC to reconnect media again, and again).
    reconnects = after["stats"]["reconnects"]
    assert reconnects["signaling"] >= 1, results["shown"]
    assert reconnects["media"] == reconnects["signaling"], results["shown"]
    assert results["ben_frames_again"] >= results["ben_frames_before"] + WANT_VIDEO_FRAMES
    assert results["ann_frames_again"] >= results["ann_frames_before"] + WANT_VIDEO_FRAMES
    assert results["ann_same_tile"] is True and results["ben_same_tile"] is True
    assert results["ann_after"]["participants"] == [
        {"participantId": ben["participantId"], "name": "Ben"}
    ]
    assert after["participants"] == [{"participantId": ann["participantId"], "name": "Ann"}]
    assert results["ann_marker_after"] is False
    assert results["notices"] == {"ann": [], "ben": []}


def _page_state(page: Page) -> Any:
    try:
        return {
            "snapshot": snapshot(page),
            "notices": _notices(page),
            "status": page.text_content("#status", timeout=1000),
            "shown": page.evaluate("() => window.__shown ?? null"),
            "markers": page.evaluate(
                """() => [...document.querySelectorAll("#grid .tile")].map(t =>
                  [t.dataset.participantId, !t.querySelector(".reconnecting").hidden])"""
            ),
        }
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)


def _host_port(netloc: str) -> tuple[str, int]:
    host, port = netloc.rsplit(":", 1)
    return host, int(port)


def _cut_scenario(
    context: BrowserContext,
    page_url: str,
    meeting_id: str,
    via: dict[str, str],
    cut: Any,
    restore: Any,
    results: dict[str, Any],
) -> None:
    """Ann and Ben join; Ben dials through the proxies; Ben is cut off for BLACKOUT_S."""
    ann, ben = context.new_page(), context.new_page()
    for page in (ann, ben):
        page.goto(page_url)
        wait_for_hooks(page)
    ben.evaluate("(via) => darktower.connectVia(via)", via)
    join = "([id, name]) => darktower.join({meetingId: id, name})"
    results["ann"] = a = ann.evaluate(join, [meeting_id, "Ann"])
    results["ben"] = b = ben.evaluate(join, [meeting_id, "Ben"])
    aid, bid = a["participantId"], b["participantId"]
    wait_for_frames(ann, bid, WANT_VIDEO_FRAMES)
    wait_for_frames(ben, aid, WANT_VIDEO_FRAMES)
    ann.evaluate(MARK_TILE, bid)
    ben.evaluate(MARK_TILE, aid)

    ann.evaluate(WATCH_STATES)
    ben.evaluate(WATCH_STATES)
    trio.from_thread.run_sync(cut)
    cut_at = time.monotonic()
    ben.wait_for_function(OWN_MARKER_SHOWN, polling=POLL_MS)
    results["ben_reconnecting"] = snapshot(ben)
    ann.wait_for_function(f"(pid) => ({MARKER_OF})(pid) === true", arg=bid, polling=POLL_MS)
    results["ann_saw_ben_reconnecting"] = True
    # The blackout lasts BLACKOUT_S whatever the pages do meanwhile (a fault, not a wait).
    time.sleep(max(0.0, BLACKOUT_S - (time.monotonic() - cut_at)))
    results["ann_frames_before"] = _frames(ann, bid)
    results["ben_frames_before"] = _frames(ben, aid)
    trio.from_thread.run_sync(restore)

    ben.wait_for_function(
        "() => darktower.state === 'joined' && !darktower.reconnecting", polling=POLL_MS
    )
    results["ben_frames_again"] = wait_for_frames(
        ben, aid, results["ben_frames_before"] + WANT_VIDEO_FRAMES
    )
    results["ann_frames_again"] = wait_for_frames(
        ann, bid, results["ann_frames_before"] + WANT_VIDEO_FRAMES
    )
    ann.wait_for_function(f"(pid) => ({MARKER_OF})(pid) === false", arg=bid, polling=POLL_MS)
    results["ann_marker_after"] = ann.evaluate(MARKER_OF, bid)
    results["ben_after"] = snapshot(ben)
    results["ann_after"] = snapshot(ann)
    results["ann_same_tile"] = ann.evaluate(SAME_TILE, bid)
    results["ben_same_tile"] = ben.evaluate(SAME_TILE, aid)
    results["notices"] = {"ann": _notices(ann), "ben": _notices(ben)}
    results["shown"] = {
        "ann": ann.evaluate("window.__shown"),
        "ben": ben.evaluate("window.__shown"),
    }
