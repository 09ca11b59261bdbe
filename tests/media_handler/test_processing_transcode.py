"""A transcode through the MH (docs/protocol.md §15), over real QUIC: a publisher's VP8 goes to
the MH, the MH routes it to a processor's job (its hidden participant), the job's VP9 or H.264
comes back as a stream of its own, and the MH routes that to the subscriber, which decodes it
with PyAV. Its bitrate over 10 s of media is within ±20 % of target_bitrate.

The publisher stays a few frames ahead of what the subscriber received, so that no queue on
the way drops for want of CPU on a busy machine; the encoders pace by the frames' timestamps,
not by the wall clock."""

from __future__ import annotations

import pathlib
import uuid

import pytest
import trio

from darktower.client import MediaClient
from darktower.frames import FrameType
from tests._stack import WAIT_S
from tests.media_processor._room import MEETING, open_processed_room, video_stream
from tests.processing._media import Encoded, decode_video, textured_video_frames

DECODERS = {"VP9": "vp9", "H264": "h264"}
FPS = 30
AHEAD = 6  # frames the publisher sends before the subscriber has the older ones back
BITRATE = 600_000
# The whole test: 300 frames through two QUIC hops each way and two codecs on a busy machine.
TEST_S = 120.0


@pytest.fixture(scope="module")
def ten_seconds() -> list[Encoded]:
    """10 s of a busy 640x480 pattern at 30 fps in VP8 (2 Mbit/s), a key frame every 2 s."""
    return textured_video_frames(10, width=640, height=480)


class Received:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bool, bytes]] = []  # (timestamp, key, payload)
        self._changed = trio.Event()

    async def take(self, media: MediaClient, stream_id: str, count: int) -> None:
        async for frame in media:
            if str(frame.stream_id) != stream_id:
                continue
            key = frame.frame_type == FrameType.VIDEO_KEY
            self.frames.append((frame.timestamp_us, key, bytes(frame.payload)))
            self._changed.set()
            self._changed = trio.Event()
            if len(self.frames) == count:
                return

    async def at_least(self, count: int) -> None:
        while len(self.frames) < count:
            await self._changed.wait()


@pytest.mark.parametrize("target", ["VP9", "H264"])
async def test_a_transcode_reaches_its_subscriber_and_holds_the_bitrate(
    tmp_path: pathlib.Path, ten_seconds: list[Encoded], target: str
) -> None:
    cam = str(uuid.uuid4())
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", video_stream(cam, "vp8"))
        bob = await room.register("bob")
        async with room.client(bob) as b:
            reply = await room.route(
                cam, "bob", transcode=True, target_codec=target, target_bitrate=BITRATE
            )
            output = reply.derived_stream_id
            [job_id] = room.job_ids("transcode")
            await room.wait_ready(job_id, cam)
            received = Received()
            async with room.client(ann) as a, trio.open_nursery() as nursery:
                nursery.start_soon(received.take, b, output, len(ten_seconds))
                camera = await a.publish(cam)
                with trio.fail_after(TEST_S):
                    for index, frame in enumerate(ten_seconds):
                        with trio.fail_after(WAIT_S):
                            await received.at_least(index - AHEAD)
                        kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                        await camera.send_frame(
                            kind, frame.payload, timestamp_us=frame.timestamp_us
                        )
                    with trio.fail_after(WAIT_S):
                        await received.at_least(len(ten_seconds))
        frames = received.frames
        assert [t for t, _, _ in frames] == [f.timestamp_us for f in ten_seconds]
        assert frames[0][1], "the first frame is a key frame"
        pictures = decode_video(DECODERS[target], [p for _, _, p in frames])
        assert len(pictures) == len(frames) == 300
        assert {(p.width, p.height) for p in pictures} == {(640, 480)}
        span_s = (frames[-1][0] - frames[0][0]) / 1e6 + 1 / FPS
        measured = sum(len(p) for _, _, p in frames) * 8 / span_s
        assert 0.8 * BITRATE <= measured <= 1.2 * BITRATE, measured
        # The output is registered with the target codec; the MC never heard of the job.
        assert room.mh.handler.processing.output_job(MEETING, output) is not None  # type: ignore[arg-type]
        publication = room.mh.handler.rooms[MEETING].publications[output]  # type: ignore[index]
        assert publication.codec == target and publication.publisher.id == job_id
