"""Simulcast through the whole stack: the MC registers the layers with the MH at publish, the
MH forwards one layer per subscriber, chosen from its preferred layer (docs/protocol.md §7)."""

from __future__ import annotations

import pathlib

import trio

from darktower.client import SimulcastLayer, StreamPublished
from darktower.frames import FrameType
from darktower.model import StreamType

from ._stack import WAIT_S, meeting, next_event

DELTAS = 5


async def test_each_subscriber_gets_its_preferred_layer_only(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        low_viewer = await m.join("low")
        high_viewer = await m.join("high")
        video = await host.publish(
            StreamType.VIDEO_CAMERA,
            codec="VP8",
            simulcast_layers=[SimulcastLayer(320, 180, 150_000), SimulcastLayer(1280, 720)],
        )
        low, high = video.layer_ids
        video.dynacast = False  # sends every layer whatever the MH's feedback says
        for viewer in (low_viewer, high_viewer):
            await next_event(
                viewer, StreamPublished, lambda e: e.stream.stream_id == video.stream_id
            )
        subs = {
            "lo": await low_viewer.subscribe(video.stream_id, preferred_layer=low),
            "hi": await high_viewer.subscribe(video.stream_id, preferred_layer=high),
        }
        for i in range(DELTAS + 1):
            kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
            await video.send_frame(kind, f"lo-{i}".encode(), layer_id=low)
            await video.send_frame(kind, f"hi-{i}".encode(), layer_id=high)
        for tag, sub in subs.items():
            got = []
            with trio.fail_after(WAIT_S):
                while len(got) < DELTAS + 1:
                    frame = await sub.receive()
                    got.append(bytes(frame.payload))
            assert got == [f"{tag}-{i}".encode() for i in range(DELTAS + 1)], tag
