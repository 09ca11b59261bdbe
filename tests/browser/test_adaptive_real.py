"""Simulcast on the real stack (tests/_stack.py: GC with its page listener, MC, MH), in Chromium
(issue 18): Ann's page publishes three layers; Ben's page dials the MH through a netfault UDP
proxy (darktower.loadtest.netfault, ``darktower.connectVia``) that is then capped at 300 kbit/s.
The MH's estimate of Ben's connection moves him to a lower layer of Ann's video, which his page
keeps decoding; the MH's quality update tells his page which layer it is, and Ann's page, told
that nobody receives her top layer any more, stops encoding it (dynacast). When the cap lifts,
Ben climbs back to the top layer and Ann's page encodes it again.

Ben publishes his microphone only, so that his own uplink through the same proxy is not what
is congested.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.loadtest.netfault import open_udp_proxy
from tests._stack import open_services

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

CAP_BPS = 300_000
WANT_FRAMES = 20
# The MH moves a capped subscriber down within 2 s (issue 18); the page sees it once the new
# layer's key frame arrives. Generous for a machine that runs two pages' codecs.
DOWNSWITCH_S = 10.0
# The MH climbs back within 5 s once the cap lifts (issue 18); the same margin.
UPSWITCH_S = 20.0
REAL_WAIT_S = 30.0
MICROPHONE_ONLY = """() => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) => open({audio: true});
}"""


async def test_a_page_capped_at_300_kbit_s_receives_a_lower_layer(
    tmp_path: pathlib.Path,
) -> None:
    results: dict[str, Any] = {}
    async with open_services(tmp_path / "data", gc={"dev_http_port": 0}, mc={}, mh={}) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("simulcast")
        media = services.media_url.split("/")[2]
        host, port = media.rsplit(":", 1)
        async with open_udp_proxy((host, int(port))) as to_mh:
            via = {media: "{}:{}".format(*to_mh.address)}

            def cap() -> None:
                to_mh.rate_bps = CAP_BPS

            def lift() -> None:
                to_mh.rate_bps = None

            def steps(context: BrowserContext) -> None:
                try:
                    _scenario(context, page_url, meeting.meeting_id, via, (cap, lift), results)
                except Exception as exc:
                    for page in context.pages:
                        exc.add_note(f"{page.url}: {_state(page)}")
                    raise

            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))
            results["through_proxy"] = to_mh.stats.to_client.forwarded

    assert results["through_proxy"] > 0
    layers = results["layers"]
    assert [(la["width"], la["height"]) for la in layers] == [(640, 480), (320, 240), (160, 120)]
    top = layers[0]["layerId"]
    before, after = results["before"], results["after"]
    assert before["layerId"] in {la["layerId"] for la in layers}
    # Capped: a lower layer than the top one, and Ben's page decodes it.
    assert after["layerId"] != top and after["height"] < 480, after
    assert results["frames_after"] >= results["frames_at_switch"] + WANT_FRAMES
    # The MH's StreamQualityUpdate names that layer and carries its estimate.
    assert after["server"]["layerId"] == after["layerId"], after
    assert after["server"]["availableBitrate"] > 0
    # Nobody receives Ann's top layer while Ben is capped: her page stops encoding it; once the
    # cap is lifted Ben gets it again, and her page encodes it again.
    assert results["top_paused"] is True
    assert results["climbed"]["layerId"] == top
    published = results["ann_published"][top]
    assert published["paused"] is False and published["resumes"] >= 1


def _state(page: Page) -> Any:
    try:
        return snapshot(page)["stats"]
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)


def _scenario(
    context: BrowserContext,
    page_url: str,
    meeting_id: str,
    via: dict[str, str],
    faults: tuple[Any, Any],
    results: dict[str, Any],
) -> None:
    cap, lift = faults
    ann, ben = context.new_page(), context.new_page()
    for page in (ann, ben):
        page.goto(page_url)
        wait_for_hooks(page)
    ben.evaluate("(via) => darktower.connectVia(via)", via)
    ben.evaluate(MICROPHONE_ONLY)
    join = "([id, name]) => darktower.join({meetingId: id, name})"
    a = ann.evaluate(join, [meeting_id, "Ann"])
    ben.evaluate(join, [meeting_id, "Ben"])
    aid = a["participantId"]
    wait_for_frames(ben, aid, WANT_FRAMES)
    (video,) = [
        s
        for s in snapshot(ben)["subscriptions"]
        if s["participantId"] == aid and s["kind"] == "video"
    ]
    stream_id = video["streamId"]
    published = snapshot(ann)["stats"]["publishedLayers"]
    results["layers"] = sorted(
        ({"layerId": k, **v} for k, v in published.items()), key=lambda la: -la["height"]
    )
    layer_of = "(id) => darktower.stats.layers[id]"
    results["before"] = ben.evaluate(layer_of, stream_id)
    trio.from_thread.run_sync(cap)
    ben.wait_for_function(
        "(id) => (darktower.stats.layers[id]?.height ?? 480) < 480",
        arg=stream_id,
        polling=POLL_MS,
        timeout=DOWNSWITCH_S * 1000,
    )
    results["frames_at_switch"] = int(
        ben.evaluate("(pid) => darktower.stats.decodedFrames[pid]", aid)
    )
    results["frames_after"] = wait_for_frames(ben, aid, results["frames_at_switch"] + WANT_FRAMES)
    results["after"] = ben.evaluate(layer_of, stream_id)
    top = results["layers"][0]["layerId"]
    ann.wait_for_function(
        "(id) => darktower.stats.publishedLayers[id].paused", arg=top, polling=POLL_MS
    )
    results["top_paused"] = True
    trio.from_thread.run_sync(lift)
    ben.wait_for_function(
        "([id, top]) => darktower.stats.layers[id]?.layerId === top",
        arg=[stream_id, top],
        polling=POLL_MS,
        timeout=UPSWITCH_S * 1000,
    )
    results["climbed"] = ben.evaluate(layer_of, stream_id)
    ann.wait_for_function(
        "(id) => !darktower.stats.publishedLayers[id].paused", arg=top, polling=POLL_MS
    )
    results["ann_published"] = snapshot(ann)["stats"]["publishedLayers"]
