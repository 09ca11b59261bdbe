"""Audio mixes (docs/protocol.md §2.2), against the stand-in MH: a subscription to the mix asked
for with mix_audio, the mix given by the MC itself above mix_above_audio_publishers, and
neither in an end-to-end encrypted meeting."""

from __future__ import annotations

import pathlib
from contextlib import AsyncExitStack
from typing import Any

import pytest

from darktower.errors import CapacityExceeded, InvalidRequest, NotFound
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import Stack, open_stack

AUDIO, VIDEO = common_pb2.AUDIO, common_pb2.VIDEO_CAMERA


async def publish(client: Any, stream_id: str, kind: int = AUDIO) -> None:
    codec = "Opus" if kind == AUDIO else "VP8"
    await client.request(
        sig.ClientMessage(
            publish=sig.PublishStream(
                stream_id=stream_id,
                stream_type=kind,
                metadata=common_pb2.StreamMetadata(codec=codec),
            )
        )
    )


async def subscribe(client: Any, stream_id: str = "", *, mix: bool = False) -> sig.Ack:
    reply = await client.request(
        sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=stream_id, mix_audio=mix))
    )
    ack: sig.Ack = reply.ack
    return ack


async def unsubscribe(client: Any, stream_id: str) -> None:
    await client.request(sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id=stream_id)))


def mix_routes(stack: Stack) -> list[Any]:
    return [r for r in stack.mh.routes if r.options.mix_audio]


async def test_a_participant_subscribes_to_its_mix(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as bob:
            await publish(host, "mic")
            ack = await subscribe(bob, mix=True)
            [route] = mix_routes(stack)
            assert route.source_stream_id == "" and route.meeting_id == "m"
            assert list(route.destination_participant_ids) == [bob.participant_id]
            assert not route.unroute and not route.options.transcode
            mix_id = stack.mh.mixes[bob.participant_id]
            assert ack.stream_id == "" and ack.derived.stream_id == mix_id
            assert (ack.derived.codec, ack.derived.mix) == ("Opus", True)

            # asked again: the same mix, nothing routed again
            assert (await subscribe(bob, mix=True)).derived.stream_id == mix_id
            assert len(mix_routes(stack)) == 1

            with pytest.raises(InvalidRequest, match="no stream_id"):
                await subscribe(bob, "mic", mix=True)

            # withdrawn by the mix's stream id
            await unsubscribe(bob, mix_id)
            route = mix_routes(stack)[-1]
            assert route.unroute and list(route.destination_participant_ids) == [bob.participant_id]
            with pytest.raises(NotFound):
                await unsubscribe(bob, mix_id)

            # refused by the MH (no processor): the request gets the refusal
            stack.mh.refuse_processing = CapacityExceeded("no media processor")
            with pytest.raises(CapacityExceeded):
                await subscribe(bob, mix=True)


async def test_above_the_threshold_an_audio_subscription_is_answered_with_the_mix(
    tmp_path: pathlib.Path,
) -> None:
    """mix_above_audio_publishers=2: with three audio publishers, a subscriber of audio gets
    its mix, routed once for all its audio subscriptions and withdrawn with the last."""
    async with open_stack(tmp_path, mix_above_audio_publishers=2) as stack, AsyncExitStack() as ex:
        await stack.assign("m")
        a, b, c, d, e = [await ex.enter_async_context(stack.join("m")) for _ in range(5)]
        await publish(a, "a-mic")
        await publish(b, "b-mic")
        await publish(a, "a-cam", VIDEO)
        # two audio publishers: not above the threshold, one route per stream
        assert not (await subscribe(e, "a-mic")).HasField("derived")
        assert mix_routes(stack) == []

        await publish(c, "c-mic")
        # a route of its own made before stays one when the subscription is made again
        assert not (await subscribe(e, "a-mic")).HasField("derived")
        assert mix_routes(stack) == [] and not stack.mh.routes[-1].unroute
        first = await subscribe(d, "a-mic")
        [route] = mix_routes(stack)
        assert list(route.destination_participant_ids) == [d.participant_id]
        mix_id = stack.mh.mixes[d.participant_id]
        assert first.stream_id == "a-mic" and first.derived.stream_id == mix_id
        assert first.derived.mix
        routes = len(stack.mh.routes)
        second = await subscribe(d, "b-mic")
        assert second.derived == first.derived
        assert len(stack.mh.routes) == routes  # the mix carries it already
        # video is never mixed
        assert not (await subscribe(d, "a-cam")).HasField("derived")
        assert stack.mh.routes[-1].source_stream_id == "a-cam"

        # the mix stays while a subscription it answers stays
        routes = len(stack.mh.routes)
        await unsubscribe(d, "a-mic")
        assert len(stack.mh.routes) == routes
        await unsubscribe(d, "b-mic")
        route = stack.mh.routes[-1]
        assert route.unroute and route.options.mix_audio
        assert list(route.destination_participant_ids) == [d.participant_id]


async def test_an_automatic_mix_the_media_handler_refuses_is_one_route_per_stream(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path, mix_above_audio_publishers=1) as stack, AsyncExitStack() as ex:
        await stack.assign("m")
        a, b, c = [await ex.enter_async_context(stack.join("m")) for _ in range(3)]
        await publish(a, "a-mic")
        await publish(b, "b-mic")
        stack.mh.refuse_processing = CapacityExceeded("no media processor")
        ack = await subscribe(c, "a-mic")
        assert not ack.HasField("derived")
        assert stack.mh.routes[-1].source_stream_id == "a-mic"
        # not asked again for this participant
        ack = await subscribe(c, "b-mic")
        assert not ack.HasField("derived")
        assert len(mix_routes(stack)) == 1
        assert stack.mh.routes[-1].source_stream_id == "b-mic"


async def test_end_to_end_encryption_refuses_the_mix_and_never_mixes_by_itself(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        open_stack(tmp_path, mix_above_audio_publishers=1) as stack,
        AsyncExitStack() as ex,
    ):
        await stack.assign("m", enable_e2e_encryption=True)
        a, b, c = [
            await ex.enter_async_context(stack.join("m", e2ee_public_key=bytes([n]) * 32))
            for n in range(3)
        ]
        await publish(a, "a-mic")
        await publish(b, "b-mic")
        with pytest.raises(InvalidRequest, match="end-to-end encrypted"):
            await subscribe(c, mix=True)
        assert not (await subscribe(c, "a-mic")).HasField("derived")
        assert mix_routes(stack) == []
