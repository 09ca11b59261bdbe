"""Dynacast end to end with the MH's own feedback (docs/protocol.md §17.3): a simulcast layer
nobody receives is paused at the publisher, and resumed with a key frame when a subscriber
needs it; the publisher's client sends nothing of a paused layer (counted) while its
application keeps encoding."""

from __future__ import annotations

import pathlib

import trio

from darktower.client import KeyFrameRequest, QualityUpdate, StreamPublished
from darktower.frames import FrameType

from ._stack import WAIT_S, meeting, next_event
from .test_adaptive import publish_simulcast


async def test_unreceived_layers_pause_and_a_subscriber_resumes_its_own(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        viewer = await m.join("viewer")
        video = await publish_simulcast(host)
        low, mid, high = video.layer_ids
        everything = frozenset(video.layer_ids)
        # Nobody subscribes: the MH says so, and every layer pauses.
        update = await next_event(
            host, QualityUpdate, lambda q: q.stream_id == video.stream_id and bool(q.layers)
        )
        assert [f.active for f in update.layers] == [False, False, False]
        assert update.available_bitrate == 0
        assert video.paused_layers == everything
        for layer in video.layer_ids:  # an application that keeps encoding: nothing goes out
            assert await video.send_frame(FrameType.VIDEO_KEY, b"k" * 1000, layer_id=layer) == b""
        assert video.paused_dropped == 3

        # A subscriber of the low layer: that layer comes back, from a key frame.
        await next_event(viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id)
        frames = await viewer.subscribe(video.stream_id, preferred_layer=low)
        asked = await next_event(host, KeyFrameRequest, lambda k: k.stream_id == low)
        assert asked == KeyFrameRequest(low)
        assert video.layer_active(low) and video.paused_layers == {mid, high}
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"early", layer_id=low) == b""
        assert await video.send_frame(FrameType.VIDEO_KEY, b"key", layer_id=low)
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"delta", layer_id=low)
        assert await video.send_frame(FrameType.VIDEO_KEY, b"high", layer_id=high) == b""
        with trio.fail_after(WAIT_S):
            got = [bytes((await frames.receive()).payload) for _ in range(2)]
        assert got == [b"key", b"delta"]
