"""Transcodes the MC asks for (docs/protocol.md §2.2), against the stand-in MH: for a subscriber
whose capabilities lack the publisher's codec, for one whose max_bitrate is below the lowest
simulcast layer, and max_video_streams enforced."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from darktower.errors import CapacityExceeded, InvalidRequest
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import Stack, open_stack

LAYERS = [("low", 150_000), ("mid", 500_000), ("high", 1_500_000)]


def caps(*codecs: str, max_video_streams: int = 0) -> sig.ParticipantCapabilities:
    return sig.ParticipantCapabilities(video_codecs=codecs, max_video_streams=max_video_streams)


async def publish(
    client: Any,
    stream_id: str,
    codec: str = "VP8",
    *,
    kind: int = common_pb2.VIDEO_CAMERA,
    max_bitrate: int = 0,
    layers: list[tuple[str, int]] | None = None,
) -> None:
    metadata = common_pb2.StreamMetadata(codec=codec, max_bitrate=max_bitrate)
    for layer_id, bitrate in layers or []:
        metadata.video.simulcast_layers.add(layer_id=layer_id, max_bitrate=bitrate)
    await client.request(
        sig.ClientMessage(
            publish=sig.PublishStream(stream_id=stream_id, stream_type=kind, metadata=metadata)
        )
    )


async def subscribe(client: Any, stream_id: str, max_bitrate: int = 0) -> sig.Ack:
    reply = await client.request(
        sig.ClientMessage(
            subscribe=sig.SubscribeStream(
                stream_id=stream_id, options=sig.SubscriptionOptions(max_bitrate=max_bitrate)
            )
        )
    )
    ack: sig.Ack = reply.ack
    assert ack.stream_id == stream_id
    return ack


def last_route(stack: Stack) -> mh_pb.RouteMediaCommand:
    return stack.mh.routes[-1]


async def test_a_subscriber_without_the_publishers_codec_gets_a_transcode(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m", capabilities=caps("H264", "VP9")) as h264,
            stack.join("m", capabilities=caps("Theora", "vp9")) as vp9,
            stack.join("m", capabilities=caps("vp8", "AV1")) as vp8,
            stack.join("m", capabilities=caps("Theora")) as theora,
            stack.join("m") as anything,
        ):
            await publish(host, "cam", "VP8", max_bitrate=800_000)

            ack = await subscribe(h264, "cam")
            route = last_route(stack)
            assert route.source_stream_id == "cam"
            assert list(route.destination_participant_ids) == [h264.participant_id]
            assert route.options.transcode and not route.options.mix_audio
            assert route.options.target_codec == "H264"  # the first of its codecs
            assert route.options.target_bitrate == 800_000  # the publisher's
            assert ack.derived.stream_id == stack.mh.transcodes[("cam", "H264", 800_000)]
            assert (ack.derived.codec, ack.derived.bitrate, ack.derived.mix) == (
                "H264",
                800_000,
                False,
            )

            # codec names are read case-insensitively; an unknown one is skipped
            ack = await subscribe(vp9, "cam", max_bitrate=300_000)
            assert last_route(stack).options.target_codec == "VP9"
            assert last_route(stack).options.target_bitrate == 300_000  # its own, lower
            assert ack.derived.codec == "VP9" and ack.derived.bitrate == 300_000

            # a subscriber that decodes the source, or says nothing, gets it as it is
            for client in (vp8, anything):
                ack = await subscribe(client, "cam")
                assert not ack.HasField("derived")
                assert not last_route(stack).options.transcode

            # none of its codecs can be made: refused, nothing routed
            routes = len(stack.mh.routes)
            with pytest.raises(InvalidRequest, match="Theora"):
                await subscribe(theora, "cam")
            assert len(stack.mh.routes) == routes

            # unsubscribing stops that transcode for it
            await h264.request(
                sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id="cam"))
            )
            route = last_route(stack)
            assert route.unroute and route.options.transcode
            assert (route.options.target_codec, route.options.target_bitrate) == ("H264", 800_000)
            assert list(route.destination_participant_ids) == [h264.participant_id]

            # a publisher that declares no bitrate: the default target
            await publish(host, "screen", "VP8", kind=common_pb2.VIDEO_SCREEN)
            await subscribe(h264, "screen")
            assert last_route(stack).options.target_bitrate == 1_000_000


async def test_a_required_transcode_the_media_handler_refuses_refuses_the_subscribe(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        stack.mh.refuse_processing = CapacityExceeded("no media processor")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m", capabilities=caps("H264")) as h264,
        ):
            await publish(host, "cam", "VP8")
            with pytest.raises(CapacityExceeded, match="no media processor"):
                await subscribe(h264, "cam")
            stack.mh.refuse_processing = None
            ack = await subscribe(h264, "cam")  # asked again: it works now
            assert ack.derived.codec == "H264"


async def test_a_subscriber_below_the_lowest_layer_gets_a_transcode_to_its_bitrate(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as bob:
            await publish(host, "cam", "VP9", max_bitrate=2_000_000, layers=LAYERS)

            ack = await subscribe(bob, "cam", max_bitrate=100_000)
            route = last_route(stack)
            assert route.options.transcode
            assert (route.options.target_codec, route.options.target_bitrate) == ("VP9", 100_000)
            assert ack.derived.stream_id == stack.mh.transcodes[("cam", "VP9", 100_000)]

            # at or above the lowest layer: the MH's layer choice, no transcode; the
            # transcode that carried the subscription before is stopped for it
            routes = len(stack.mh.routes)
            ack = await subscribe(bob, "cam", max_bitrate=150_000)
            assert not ack.HasField("derived")
            plain, withdrawn = stack.mh.routes[routes:]
            assert not plain.options.transcode and not plain.unroute
            assert plain.options.target_bitrate == 150_000
            assert withdrawn.unroute and withdrawn.options.transcode
            assert withdrawn.options.target_bitrate == 100_000

            # a quality report on a transcoded subscription changes nothing at the MH; the
            # plain route that carried it before is stopped for it
            routes = len(stack.mh.routes)
            await subscribe(bob, "cam", max_bitrate=100_000)
            transcode, withdrawn = stack.mh.routes[routes:]
            assert transcode.options.transcode and not transcode.unroute
            assert withdrawn.unroute and not withdrawn.options.transcode
            routes = len(stack.mh.routes)
            await bob.request(
                sig.ClientMessage(
                    quality=sig.StreamQualityUpdate(stream_id="cam", available_bitrate=90_000)
                )
            )
            assert len(stack.mh.routes) == routes

            # refused by the MH, a transcode for the bitrate only is the plain route instead
            stack.mh.refuse_processing = CapacityExceeded("no media processor")
            routes = len(stack.mh.routes)
            ack = await subscribe(bob, "cam", max_bitrate=50_000)
            assert not ack.HasField("derived")
            plain = stack.mh.routes[-2]
            assert not plain.options.transcode and plain.options.target_bitrate == 50_000
            withdrawn = stack.mh.routes[-1]  # the transcode at 100 kbit/s
            assert withdrawn.unroute and withdrawn.options.target_bitrate == 100_000


async def test_video_subscriptions_past_max_video_streams_are_refused(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m", capabilities=caps(max_video_streams=2)) as bob,
        ):
            for stream_id in ("cam1", "cam2", "cam3"):
                await publish(host, stream_id)
            await publish(host, "mic", "Opus", kind=common_pb2.AUDIO)
            await subscribe(bob, "cam1")
            await subscribe(bob, "cam2")
            routes = len(stack.mh.routes)
            with pytest.raises(CapacityExceeded, match="at most 2 video streams") as refused:
                await subscribe(bob, "cam3")
            assert refused.value.details["limit"] == "2"
            assert len(stack.mh.routes) == routes  # nothing routed
            await subscribe(bob, "mic")  # audio does not count
            await subscribe(bob, "cam1", max_bitrate=300_000)  # nor a subscription's update
            await bob.request(
                sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id="cam1"))
            )
            await subscribe(bob, "cam3")  # a place is free again
            # a stream that goes frees its place too
            await host.request(sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id="cam2")))
            await subscribe(bob, "cam1")


async def test_end_to_end_encryption_refuses_a_required_transcode(tmp_path: pathlib.Path) -> None:
    """The server cannot read the media: a subscriber that cannot decode the source is
    refused; one below the lowest layer gets the plain route (the MH's lowest layer)."""
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        async with (
            stack.join("m", Role.HOST, e2ee_public_key=b"h" * 32) as host,
            stack.join("m", capabilities=caps("H264"), e2ee_public_key=b"b" * 32) as h264,
            stack.join("m", e2ee_public_key=b"c" * 32) as carol,
        ):
            await publish(host, "cam", "VP8", layers=LAYERS)
            with pytest.raises(InvalidRequest, match="end-to-end encrypted"):
                await subscribe(h264, "cam")
            ack = await subscribe(carol, "cam", max_bitrate=100_000)
            assert not ack.HasField("derived")
            assert not last_route(stack).options.transcode
        assert not any(r.options.transcode for r in stack.mh.routes)
