"""Stream and simulcast layer ids are one id space per meeting (docs/protocol.md §16): a
participant cannot publish a stream, or a layer, under an id another's media already uses, so
no client can be made to take one publisher's frames for another's."""

from __future__ import annotations

import pathlib

import pytest

from darktower.errors import Conflict
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import open_stack


def _publish(stream_id: str, *layer_ids: str) -> sig.ClientMessage:
    layers = [common_pb2.SimulcastLayer(layer_id=i, width=320, height=180) for i in layer_ids]
    metadata = common_pb2.StreamMetadata(
        codec="VP8", video=common_pb2.VideoMetadata(width=640, simulcast_layers=layers)
    )
    return sig.ClientMessage(
        publish=sig.PublishStream(
            stream_id=stream_id, stream_type=common_pb2.VIDEO_CAMERA, metadata=metadata
        )
    )


async def test_no_stream_or_layer_id_is_published_twice(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m1", display_name="ids", max_participants=10)
        async with stack.join("m1", Role.HOST, name="Ada") as ada, stack.join("m1") as eve:
            reply = await ada.request(_publish("cam", "cam-low", "cam-high"))
            assert reply.ack.stream_id == "cam"
            for taken in (
                _publish("cam-low"),  # another's layer id as a stream id
                _publish("eve-cam", "cam"),  # another's stream id as a layer id
                _publish("eve-cam", "eve-low", "cam-high"),  # another's layer id as a layer id
                _publish("cam"),  # the same stream id
            ):
                with pytest.raises(Conflict):
                    await eve.request(taken)
            assert (await eve.request(_publish("eve-cam", "eve-low"))).ack.stream_id == "eve-cam"
