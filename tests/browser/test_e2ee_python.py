"""The Python client and the page in one end-to-end encrypted meeting (docs/protocol.md §16), on
the real GC, MC and MH over real QUIC: each encrypts with its own implementation (darktower.e2ee
with ``cryptography``; e2ee.js with WebCrypto) and decrypts the other's.

The meeting is created through the GC's REST API with ``enable_e2e_encryption``. The Python
client joins first and publishes real VP8 video and Opus audio; the page joins (the client
ratchets and shares its key with it, the page shares its own) and publishes its fake camera and
microphone. The page decodes the client's video and audio; the client's subscriptions get the
page's frames decrypted, and they decode (PyAV) to the page's camera picture and to sound. Both
name the same safety number for each of them, and neither dropped a frame it should have
decrypted.
"""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.client import MeetingSession, Publication, StreamPublished, join_meeting_via_gc
from darktower.frames import FrameType
from darktower.model import StreamType
from tests._stack import open_services
from tests.processing._media import (
    Encoded,
    decode_opus,
    decode_video,
    opus_frames,
    pattern,
    video_frames,
)

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from .test_real_stack import BACKGROUND_POINT, COLOUR_TOLERANCE, COLOURS_JS, _diagnosed

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 30
WANT_AUDIO_FRAMES = 25
# The client keeps this many of the page's frames of each kind (video from its first key frame).
KEEP_VIDEO = 45
KEEP_AUDIO = 50
PAGE_WAIT_S = 25.0
WIDTH, HEIGHT = 320, 240  # the client's video
WAIT_S = 30.0  # real-time bound on the client's side: real QUIC and a browser on a shared machine
NO_DROPS = {
    "auth_failed": 0,
    "no_key": 0,
    "stale_key": 0,
    "malformed": 0,
    "bad_share": 0,
    "replayed": 0,
}
# The failures a receiver must never count for frames sent to it.
FAILURES = ("auth_failed", "malformed", "bad_share", "unknown_sender")


async def _send(publication: Publication, frames: list[Encoded], fps: int) -> None:
    """Send ``frames`` over and over at ``fps``, stamped with the time of sending (a camera or
    microphone's pace) until cancelled."""
    interval = 1 / fps
    for i in range(10**9):
        encoded = frames[i % len(frames)]
        if publication.stream_type is StreamType.AUDIO:
            frame_type = FrameType.AUDIO
        else:
            frame_type = FrameType.VIDEO_KEY if encoded.key else FrameType.VIDEO_DELTA
        await publication.send_frame(
            frame_type, encoded.payload, timestamp_us=int(time.time() * 1_000_000)
        )
        await trio.sleep(interval)


async def _receive_page(
    session: MeetingSession, received: dict[str, list[Any]], enough: trio.Event
) -> None:
    """Subscribe to the page's camera and microphone as they are published; keep KEEP_VIDEO
    video frames from the first key frame on and KEEP_AUDIO audio frames; ``enough`` then."""
    wanted = {"video": KEEP_VIDEO, "audio": KEEP_AUDIO}

    async def collect(kind: str, stream_id: str) -> None:
        subscription = await session.subscribe(stream_id)
        frames = received[kind]
        while len(frames) < wanted[kind]:
            frame = await subscription.receive()
            if kind == "audio" or frames or frame.header.frame_type is FrameType.VIDEO_KEY:
                frames.append(frame)
        if all(len(received[k]) >= n for k, n in wanted.items()):
            enough.set()

    async with trio.open_nursery() as nursery:
        async for event in session.events:
            if not isinstance(event, StreamPublished):
                continue
            kind = "audio" if event.stream.stream_type is StreamType.AUDIO else "video"
            nursery.start_soon(collect, kind, event.stream.stream_id)


def _client_view(session: MeetingSession, page_id: str) -> dict[str, Any]:
    return {
        "encrypted": session.e2ee.enabled,
        "fingerprint": session.e2ee.fingerprint,
        "page_fingerprint": session.participants[page_id].fingerprint,
        "drops": dict(session.e2ee.drops),
        "generation": session.e2ee.generation,
    }


def _scenario(
    page_url: str,
    session: MeetingSession,
    meeting_id: str,
    enough: trio.Event,
    results: dict[str, Any],
) -> Any:
    client_id = session.participant_id

    async def wait_enough() -> None:
        with trio.fail_after(WAIT_S):
            await enough.wait()

    def steps(context: BrowserContext) -> None:
        page = context.new_page()
        page.goto(f"{page_url}/m/{meeting_id}")
        wait_for_hooks(page)
        results["page"] = page.evaluate(
            "([meetingId, name]) => darktower.join({meetingId, name})", [meeting_id, "Paige"]
        )
        results["page_video"] = wait_for_frames(page, client_id, WANT_VIDEO_FRAMES)
        page.wait_for_function(
            "([pid, n]) => (darktower.stats.decodedAudio[pid] ?? 0) >= n",
            arg=[client_id, WANT_AUDIO_FRAMES],
            polling=POLL_MS,
        )
        page.wait_for_function(
            "() => document.querySelectorAll('#grid .tile .safety:not([hidden])').length === 2",
            polling=POLL_MS,
        )
        results["lock"] = page.is_visible("#e2ee")
        results["page_colours"] = page.evaluate(COLOURS_JS, [client_id, BACKGROUND_POINT])
        # The page stays until the client has the frames it wants of it.
        trio.from_thread.run(wait_enough)
        results["page_after"] = snapshot(page)
        results["client"] = trio.from_thread.run_sync(
            _client_view, session, results["page"]["participantId"]
        )

    return _diagnosed(steps, results)


async def test_the_python_client_and_the_page_decrypt_each_other(tmp_path: pathlib.Path) -> None:
    video = video_frames(2.0, width=WIDTH, height=HEIGHT, key_every=15)
    audio = opus_frames(1.0)
    results: dict[str, Any] = {}
    received: dict[str, list[Any]] = {"video": [], "audio": []}
    async with open_services(tmp_path / "data", gc={"dev_http_port": 0}, mc={}, mh={}) as services:
        assert services.gc is not None
        page_url = services.gc.page_url.rstrip("/")
        meeting = await services.create_meeting("python and page", enable_e2e_encryption=True)
        async with (
            services.gc_client() as gc,
            join_meeting_via_gc(
                gc, meeting.meeting_id, "Pyla", server_certificate_hashes=services.pins
            ) as session,
        ):
            camera = await session.publish(StreamType.VIDEO_CAMERA, codec="VP8")
            mic = await session.publish(StreamType.AUDIO, codec="Opus")
            enough = trio.Event()
            scenario = _scenario(page_url, session, meeting.meeting_id, enough, results)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send, camera, video, 30)
                nursery.start_soon(_send, mic, audio, 50)
                nursery.start_soon(_receive_page, session, received, enough)
                await trio.to_thread.run_sync(
                    lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S)
                )
                nursery.cancel_scope.cancel()
            client_id = session.participant_id

    client, page = results["client"], results["page_after"]
    page_id = page["participantId"]
    assert client["encrypted"] and page["encrypted"] and results["lock"]
    # The same safety number for each of them, on both sides.
    assert page["safetyNumbers"] == {
        client_id: client["fingerprint"],
        page_id: client["page_fingerprint"],
    }
    # The client ratcheted once, for the page's join.
    assert client["generation"] == 1

    # The page decoded the client's video and audio.
    assert results["page_video"] >= WANT_VIDEO_FRAMES
    assert page["stats"]["decodedAudio"][client_id] >= WANT_AUDIO_FRAMES
    assert page["stats"]["e2ee"]["drops"] == NO_DROPS, page["stats"]["e2ee"]
    assert page["stats"]["e2ee"]["decrypted"] > WANT_VIDEO_FRAMES + WANT_AUDIO_FRAMES

    # What the page drew of the client is its picture: the test pattern's gradient there (or
    # the white bar that sweeps over it).
    fx, fy = BACKGROUND_POINT
    gradient = pattern(0, WIDTH, HEIGHT).to_ndarray(format="rgb24")
    expected = [int(c) for c in gradient[round(fy * HEIGHT), round(fx * WIDTH)]]
    drawn = results["page_colours"]["remote"]
    assert any(
        max(abs(a - b) for a, b in zip(colour, drawn, strict=True)) <= COLOUR_TOLERANCE
        for colour in (expected, [255, 255, 255])
    ), (expected, drawn)

    # The client got the page's frames decrypted: its camera's picture and sound.
    pictures = decode_video("vp8", [bytes(f.payload) for f in received["video"]])
    assert len(pictures) >= KEEP_VIDEO - 1
    pixels = pictures[-1].to_ndarray(format="rgb24")
    height, width = pixels.shape[:2]
    picture = [int(c) for c in pixels[round(fy * height), round(fx * width)]]
    own = results["page_colours"]["own"]  # the page's camera as it shows it
    assert max(abs(a - b) for a, b in zip(own, picture, strict=True)) <= COLOUR_TOLERANCE, (
        own,
        picture,
    )
    sound = decode_opus([bytes(f.payload) for f in received["audio"]])
    assert len(sound) >= 0.9 * KEEP_AUDIO * 960
    assert abs(sound.astype(float)).max() > 0
    assert {k: client["drops"].get(k, 0) for k in FAILURES} == dict.fromkeys(FAILURES, 0), client
    assert results["page_problems"] == []
