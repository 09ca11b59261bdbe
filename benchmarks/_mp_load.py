"""The media processing benchmark's load (benchmarks/media_processing.py): the media the
publishers send, made once by the driver, and the publisher processes.

The media: MEDIA_S seconds of the busy 640x480 test pattern at 30 fps in VP8 at
SOURCE_BITRATE (benchmarks/_processing_codecs.py makes it) and of a 440 Hz tone in 20 ms Opus
packets, pickled to a file of the run. A publisher plays it in a loop, paced in real time
(video every 1/30 s, audio every 20 ms), with frame-header timestamps that keep counting
across the loop, as a camera and a microphone would.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

MEDIA_S = 4.0  # a loop of the media: two key frames (one every 2 s)
VIDEO_FPS, AUDIO_FRAME_S = 30, 0.020
START_US = 1_780_000_000_000_000  # an epoch time in µs, as a frame header carries


def make_media(path: str) -> dict[str, float]:
    """Encode the media to ``path``; returns its bitrates (bits per second)."""
    from benchmarks._processing_codecs import vp8_source
    from tests.processing._media import opus_frames

    video = [(f.key, f.payload) for f in vp8_source(MEDIA_S)]
    audio = [f.payload for f in opus_frames(MEDIA_S, 440.0)]
    with open(path, "wb") as f:
        pickle.dump({"video": video, "audio": audio}, f)
    return {
        "video_bits_per_s": 8 * sum(len(p) for _, p in video) / MEDIA_S,
        "audio_bits_per_s": 8 * sum(len(p) for p in audio) / MEDIA_S,
    }


def publishers(specs_json: str, media_path: str, cert_hash: str) -> None:
    """Run the publishers of ``specs_json`` ([{url, video, audio}]: a stream id or "" each)
    in this process: connect every one, print READY, start at a line on stdin and publish
    until killed. Payloads are those of ``media_path``."""
    import trio

    from darktower.client import open_media_client
    from darktower.frames import FrameType

    specs = json.loads(specs_json)
    with open(media_path, "rb") as f:
        media: dict[str, Any] = pickle.load(f)
    pinned = [bytes.fromhex(cert_hash)]

    async def play_video(client: Any, stream: str, start: float) -> None:
        pub = await client.publish(stream)
        frames = media["video"]
        for i in range(10**12):
            await trio.sleep_until(start + i / VIDEO_FPS)
            key, payload = frames[i % len(frames)]
            kind = FrameType.VIDEO_KEY if key else FrameType.VIDEO_DELTA
            await pub.send_frame(kind, payload, timestamp_us=START_US + i * 1_000_000 // VIDEO_FPS)

    async def play_audio(client: Any, stream: str, start: float) -> None:
        pub = await client.publish(stream)
        packets = media["audio"]
        step_us = round(AUDIO_FRAME_S * 1_000_000)
        for i in range(10**12):
            await trio.sleep_until(start + i * AUDIO_FRAME_S)
            payload = packets[i % len(packets)]
            await pub.send_frame(FrameType.AUDIO, payload, timestamp_us=START_US + i * step_us)

    async def publisher(
        spec: dict[str, str], go: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with (
            open_media_client(spec["url"], server_certificate_hashes=pinned) as client,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            await go.wait()
            start = trio.current_time()
            if spec["video"]:
                nursery.start_soon(play_video, client, spec["video"], start)
            if spec["audio"]:
                nursery.start_soon(play_audio, client, spec["audio"], start)

    async def main() -> None:
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for spec in specs:
                await nursery.start(publisher, spec, go)
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()

    trio.run(main)
