"""The active speaker on the real stack (tests/_stack.py), in Chromium (docs/protocol.md §17.1,
§17.4): Ann's page speaks (a generated steady tone, about -13 dBov), Ben's is silent (a
generated track of zeros). Each audio frame carries its level; the MH
picks Ann as the dominant speaker and the MC tells every member: on both pages Ann's tile is
the one outlined and ``darktower.activeSpeakers`` starts with her.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests._stack import open_services

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser

REAL_WAIT_S = 30.0
# Ben's microphone: 10 ms of zeros every 10 ms, from a generated track (his camera stays).
# A page's microphone: 10 ms of a 440 Hz tone of `amplitude` (0: silence) every 10 ms, from a
# generated track (its camera stays).
GENERATED_MICROPHONE = """(amplitude) => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const camera = await open({video: constraints.video});
    const track = new MediaStreamTrackGenerator({kind: "audio"});
    const writer = track.writable.getWriter();
    let n = 0;
    const timer = setInterval(() => {
      if (track.readyState === "ended") { clearInterval(timer); return; }
      const data = new Float32Array(480);
      for (let i = 0; i < 480; i++) data[i] = amplitude * Math.sin(2 * Math.PI * 440 * (n + i) / 48000);
      writer.write(new AudioData({format: "f32-planar", sampleRate: 48000, numberOfFrames: 480,
        numberOfChannels: 1, timestamp: n * 1000000 / 48000, data})).catch(() => {});
      n += 480;
    }, 10);
    return new MediaStream([...camera.getVideoTracks(), track]);
  };
}"""
# A steady voice at about -13 dBov (a sine of amplitude 0.3). Chromium's own fake microphone
# beeps for about 150 ms every 500 ms: to the MH, a cough (docs/protocol.md §17.4).
LOUD = 0.3


def _state(page: Any) -> Any:
    try:
        snap = snapshot(page)
        return {"speakers": snap.get("activeSpeakers"), "sent": snap["stats"]["sent"]}
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)


SPEAKING = """() => [...document.querySelectorAll("#grid .tile.speaking")].map(
  t => t.dataset.participantId)"""


async def test_the_loud_page_is_the_active_speaker_on_both_pages(tmp_path: pathlib.Path) -> None:
    results: dict[str, Any] = {}
    async with open_services(tmp_path / "data", gc={"dev_http_port": 0}, mc={}, mh={}) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("speakers")

        def steps(context: BrowserContext) -> None:
            try:
                _scenario(context)
            except Exception as exc:  # what each page saw
                for page in context.pages:
                    exc.add_note(f"{page.url}: {_state(page)}")
                raise

        def _scenario(context: BrowserContext) -> None:
            ann, ben = context.new_page(), context.new_page()
            for page in (ann, ben):
                page.goto(page_url)
                wait_for_hooks(page)
            ann.evaluate(GENERATED_MICROPHONE, LOUD)
            ben.evaluate(GENERATED_MICROPHONE, 0)
            join = "([id, name]) => darktower.join({meetingId: id, name})"
            # Ben first: the MC sends ActiveSpeakers on a change only.
            results["ben"] = ben.evaluate(join, [meeting.meeting_id, "Ben"])
            results["ann"] = a = ann.evaluate(join, [meeting.meeting_id, "Ann"])
            for page in (ann, ben):
                page.wait_for_function(
                    "(pid) => darktower.activeSpeakers[0] === pid",
                    arg=a["participantId"],
                    polling=POLL_MS,
                )
            results["tiles"] = {"ann": ann.evaluate(SPEAKING), "ben": ben.evaluate(SPEAKING)}
            results["speakers"] = snapshot(ben)["activeSpeakers"]

        await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))

    aid = results["ann"]["participantId"]
    assert results["tiles"] == {"ann": [aid], "ben": [aid]}
    assert results["speakers"][0] == aid


def _video_of(page: Any, pid: str) -> str:
    (video,) = [
        s["streamId"]
        for s in snapshot(page)["subscriptions"]
        if s["participantId"] == pid and s["kind"] == "video"
    ]
    return str(video)


PAUSED = "(id) => darktower.stats.layers[id]?.server?.paused === true"
RUNNING = "(id) => darktower.stats.layers[id]?.server?.paused === false"


async def test_last_n_pauses_a_silent_video_until_it_is_pinned(tmp_path: pathlib.Path) -> None:
    """LastN of 1 in a room of more than 2: once Ann speaks, Cat receives her video and Ben's is
    held back (the tile's overlay says "paused") until Cat pins it."""
    results: dict[str, Any] = {}
    mh = {"last_n": 1, "last_n_room_size": 2}
    async with open_services(tmp_path / "data", gc={"dev_http_port": 0}, mc={}, mh=mh) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("last-n")

        def steps(context: BrowserContext) -> None:
            pages = [context.new_page() for _ in range(3)]
            for page, amplitude in zip(pages, (LOUD, 0, 0), strict=True):
                page.goto(page_url)
                wait_for_hooks(page)
                page.evaluate(GENERATED_MICROPHONE, amplitude)
            ann, ben, cat = pages
            join = "([id, name]) => darktower.join({meetingId: id, name})"
            # Ann last: the others are there when she starts speaking (the MC sends
            # ActiveSpeakers on a change only, not to a member who joins later).
            cat.evaluate(join, [meeting.meeting_id, "Cat"])
            bid = ben.evaluate(join, [meeting.meeting_id, "Ben"])["participantId"]
            aid = ann.evaluate(join, [meeting.meeting_id, "Ann"])["participantId"]
            cat.wait_for_function(
                "(pid) => darktower.activeSpeakers[0] === pid", arg=aid, polling=POLL_MS
            )
            wait_for_frames(cat, aid, 10)
            ben_video = _video_of(cat, bid)
            cat.wait_for_function(PAUSED, arg=ben_video, polling=POLL_MS)
            results["overlay"] = cat.text_content(
                f'#grid .tile[data-participant-id="{bid}"] .stats'
            )
            # Ann's video is not held: her frames flow as soon as she is the speaker, and the MH
            # says so in its next update for that stream, at most one a second
            # (docs/protocol.md §17.2): it may come after the one that said Ben's is paused. A
            # video left held times this wait out.
            cat.wait_for_function(RUNNING, arg=_video_of(cat, aid), polling=POLL_MS)
            cat.evaluate("(pid) => darktower.pin(pid)", bid)
            cat.wait_for_function(RUNNING, arg=ben_video, polling=POLL_MS)
            frames = int(cat.evaluate("(pid) => darktower.stats.decodedFrames[pid]", bid))
            results["frames"] = (frames, wait_for_frames(cat, bid, frames + 10))

        await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))

    assert "paused" in results["overlay"]
    before, after = results["frames"]
    assert after >= before + 10
