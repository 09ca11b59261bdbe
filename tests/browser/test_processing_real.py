"""The page and media processing (docs/protocol.md §2.1, §2.2), in Chromium, against the real MC
and MH with a real media processor (``python -m darktower.processor`` in-process); the page and
the GC's REST API are served by a stand-in (tests/browser/_static.py) that hands out join
tokens for the real MC.

A meeting with ``recording_enabled``: Ann publishes her camera (the fake device, VP8) and
microphone; Ben joins saying he decodes H.264 only and takes the audio mix. The MC asks the MH
for a transcode of Ann's camera to H.264 for Ben: Ben's page decodes it into Ann's tile from
the derived stream (no frame of the source reaches it), and plays the mix of Ann's audio
(mix-minus: his own is not in it) instead of her audio stream. The MC mixes by itself above one
audio publisher (``--mix-above-audio-publishers 1``): Ann's subscription to Ben's audio, made
once both publish, is answered with her mix, which her page plays. Both pages show the REC
badge: each is recorded from its first publish. Cal joins without a camera or microphone (not
recorded): his REC badge shows until Ann and Ben have left, and is hidden once the MC says the
recording stopped (RecordingStatus).
"""

from __future__ import annotations

import pathlib
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower import media_processor
from darktower.model import MeetingId, Role
from darktower.transport import generate_dev_certificate
from tests._stack import Services, open_services, running_service
from tests.media_processor._room import mp_settings

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

MEETING = "recorded"
WANT_VIDEO_FRAMES = 30
WANT_MIX_CHUNKS = 25  # half a second of the mix (20 ms frames)
PAGE_WAIT_S = 30.0  # every Playwright wait of the scenario (a busy shared machine)
JOIN = re.compile(r"/api/v1/meetings/([^/?]+)/join")
REC_LABEL = "This meeting is being recorded"

# A point of the fake camera's picture that is always background, as fractions of the width and
# height (as in test_real_stack.py), and how far a channel may be from the sender's camera after
# VP8 -> H.264 (two lossy encodes).
BACKGROUND_POINT = (100 / 640, 300 / 480)
COLOUR_TOLERANCE = 20
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
# Cal's page: getUserMedia fails, so the page joins receive-only (publishes nothing).
NO_DEVICES_JS = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("no devices in this test", "NotFoundError"));"""
REC_JS = """() => {
  const rec = document.getElementById("rec");
  return {visible: !rec.hidden && rec.offsetWidth > 0, text: rec.textContent,
          label: rec.getAttribute("aria-label")};
}"""


def _api(services: Services) -> Any:
    """The GC's REST API as the page uses it: the stack's certificate, and join tokens for the
    real MC."""
    issuer = services.issuer
    assert issuer is not None

    def api(method: str, path: str, headers: Any, body: Any) -> tuple[int, Any] | None:
        path = path.partition("?")[0]
        if method == "GET" and path == "/api/v1/dev/certificate":
            return 200, {"sha256": services.pins[0].hex()}
        if method == "POST" and (m := JOIN.fullmatch(path)):
            name = (body or {}).get("participant_name", "") or None
            token = issuer.issue(MeetingId(m[1]), Role.GUEST, time.time(), participant_name=name)
            return 200, {
                "meeting_id": m[1],
                "join_token": token,
                "role": "guest",
                "meeting_controller_url": services.signal_url,
            }
        return None

    return api


def _subscription(state: dict[str, Any], participant_id: str, kind: str) -> dict[str, Any]:
    [found] = [
        s
        for s in state["subscriptions"]
        if s["participantId"] == participant_id and s["kind"] == kind
    ]
    return found


def _scenario(page_url: str, results: dict[str, Any]) -> Any:
    def steps(context: BrowserContext) -> None:
        problems: list[str] = results.setdefault("page_problems", [])
        context.on("page", lambda page: page.on("pageerror", lambda e: problems.append(str(e))))
        pages: dict[str, Page] = {}
        try:
            for name, options in (
                ("ann", {}),
                ("ben", {"videoCodecs": ["H264"], "mixAudio": True}),
            ):
                page = pages[name] = context.new_page()
                page.goto(page_url + "/")
                wait_for_hooks(page)
                results[f"{name}_joined"] = page.evaluate(
                    "(o) => darktower.join(o)", {"meetingId": MEETING, "name": name, **options}
                )
            ann, ben = pages["ann"], pages["ben"]
            aid = results["ann_joined"]["participantId"]
            bid = results["ben_joined"]["participantId"]
            results["ben_frames"] = wait_for_frames(ben, aid, WANT_VIDEO_FRAMES)
            results["ann_frames"] = wait_for_frames(ann, bid, WANT_VIDEO_FRAMES)
            for page in (ann, ben):
                page.wait_for_function(
                    "(n) => darktower.stats.decodedMix >= n", arg=WANT_MIX_CHUNKS, polling=POLL_MS
                )
                page.wait_for_function("() => darktower.recording", polling=POLL_MS)
            for name, page in pages.items():
                results[f"{name}"] = snapshot(page)
                results[f"{name}_rec"] = page.evaluate(REC_JS)
                results[f"{name}_notices"] = page.locator("#notices li").all_text_contents()
            results["ben_colours"] = ben.evaluate(COLOURS_JS, [aid, BACKGROUND_POINT])

            cal = pages["cal"] = context.new_page()
            cal.add_init_script(NO_DEVICES_JS)
            cal.goto(page_url + "/")
            wait_for_hooks(cal)
            cal.evaluate("(id) => darktower.join({meetingId: id, name: 'cal'})", MEETING)
            results["cal_rec"] = cal.evaluate(REC_JS)  # recorded at its join
            for page in (ann, ben):
                page.evaluate("() => darktower.leave()")
            cal.wait_for_function("() => !darktower.recording", polling=POLL_MS)
            results["cal_rec_after"] = cal.evaluate(REC_JS)
            results["cal"] = snapshot(cal)
        except Exception as exc:
            for name, page in pages.items():
                exc.add_note(f"{name}: {_page_state(page)}")
            exc.add_note(f"page problems: {problems}")
            raise

    return steps


def _page_state(page: Page) -> Any:
    try:
        return {
            "snapshot": snapshot(page),
            "notices": page.locator("#notices li").all_text_contents(),
        }
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)


async def test_a_page_decodes_a_transcode_plays_the_mix_and_shows_the_recording(
    tmp_path: pathlib.Path,
) -> None:
    certfile, keyfile = generate_dev_certificate().write(tmp_path)
    files = {"certfile": str(certfile), "keyfile": str(keyfile)}
    results: dict[str, Any] = {}
    async with (
        running_service(media_processor.serve, mp_settings(tmp_path / "recordings")) as (mp, _),
        open_services(
            tmp_path / "stack",
            mc={**files, "mix_above_audio_publishers": 1},
            mh={**files, "processors": "{}:{}".format(*mp.grpc_address)},
        ) as services,
    ):
        await services.assign(MEETING, recording_enabled=True)
        with serve_web(api=_api(services)) as page_url:
            scenario = _scenario(page_url, results)
            await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    ann, ben = results["ann"], results["ben"]
    aid, bid = ann["participantId"], ben["participantId"]
    # What each page said it decodes: Ben's restricted to H.264.
    assert ben["capabilities"]["videoCodecs"] == ["H264"]
    assert ann["capabilities"]["videoCodecs"][:1] == ["VP8"]

    # Ben decodes Ann's camera from the H.264 transcode the MC named, into her tile.
    video = _subscription(ben, aid, "video")
    assert video["derived"] is not None and video["derived"]["codec"] == "H264", video
    assert not video["derived"]["mix"]
    assert video["frames"]["source"] == 0 and video["frames"]["derived"] >= WANT_VIDEO_FRAMES
    assert video["decoded"] >= WANT_VIDEO_FRAMES
    assert ben["stats"]["decodedFrames"][aid] >= WANT_VIDEO_FRAMES
    colours = results["ben_colours"]  # the picture is Ann's camera's
    assert colours["own"][1] > 64, colours  # the fake camera's green background
    differences = [abs(a - b) for a, b in zip(colours["own"], colours["remote"], strict=True)]
    assert max(differences) <= COLOUR_TOLERANCE, colours

    # Ben plays the mix he asked for, and no participant's audio stream.
    [mix] = [s for s in ben["subscriptions"] if s["kind"] == "mix"]
    assert mix["derived"] is not None and mix["derived"]["mix"], mix
    assert not [s for s in ben["subscriptions"] if s["kind"] == "audio"]
    assert ben["stats"]["decodedMix"] >= WANT_MIX_CHUNKS
    assert ben["stats"]["decodedAudio"].get(aid, 0) == 0

    # Ann decodes Ben's VP8 camera as sent; her subscription to his audio was answered with
    # her mix (two audio publishers, above the MC's threshold of one), which she plays.
    assert _subscription(ann, bid, "video")["derived"] is None
    audio = _subscription(ann, bid, "audio")
    assert audio["derived"] is not None and audio["derived"]["mix"], audio
    assert audio["frames"]["source"] == 0
    assert ann["stats"]["decodedMix"] >= WANT_MIX_CHUNKS

    # Both are recorded, and both pages say so; so does Cal's while they are in, not after.
    for name in ("ann", "ben"):
        assert results[name]["recording"] is True
        assert results[f"{name}_rec"] == {"visible": True, "text": "REC", "label": REC_LABEL}
        assert results[name]["stats"]["unknownFrames"] == 0, name
        assert results[f"{name}_notices"] == [], name
    assert results["cal_rec"] == {"visible": True, "text": "REC", "label": REC_LABEL}
    assert results["cal_rec_after"]["visible"] is False
    assert results["cal"]["state"] == "joined" and results["cal"]["recording"] is False
    assert results["page_problems"] == []
