"""RemoveStream (the MC's answer to an UnpublishStream): when it returns, the stream is routed
to nobody, its subscribers' streams and the publisher's QUIC streams of it have ended, and its
simulcast layers are forgotten; the participant's other streams carry on."""

from __future__ import annotations

import uuid

import pytest
import trio

from darktower.errors import InvalidRequest, NotFound
from darktower.frames import FrameType
from darktower.meeting_controller import GrpcMediaLink
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import StreamReset
from tests._cluster import stack_cluster

from ._harness import WAIT_S, audio, new_id, open_harness, receive_n, video

AFTER = 1_000_000  # sequence numbers of frames sent after RemoveStream returned


async def test_removed_stream_is_routed_to_nobody_and_its_layers_are_forgotten() -> None:
    meeting, cam, mic, low, high = new_id(), new_id(), new_id(), new_id(), new_id()
    layers = [(low, 320, 180, 150_000), (high, 1280, 720, 1_500_000)]
    async with open_harness() as h:
        url_p = await h.register(meeting, "p", [video(cam, layers), audio(mic)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_p) as p, h.client(url_s) as s:
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"], preferred_layer=high)
            await h.route(meeting, mic, ["s"])
            pub_low, pub_high, pub_mic = (
                await p.publish(low),
                await p.publish(high),
                await p.publish(mic),
            )
            await pub_low.send_frame(FrameType.VIDEO_KEY, b"low")
            await pub_high.send_frame(FrameType.VIDEO_KEY, b"high")
            await pub_mic.send_frame(FrameType.AUDIO, b"mic")
            got = await receive_n(s, 2)
            assert sorted(bytes(f.payload) for f in got) == [b"high", b"mic"]
            room = h.handler.rooms[meeting]  # type: ignore[index]
            s_scope = room.members["s"].scope
            assert s_scope is not None and s_scope.stream(f"sub:{cam}") is not None

            await h.remove_stream(meeting, "p", cam)

            # Returned: nothing of the stream is left in the room.
            assert cam not in room.publications and cam not in room.members["p"].publications
            assert cam not in room.routes
            assert uuid.UUID(low).bytes not in room.layers
            assert uuid.UUID(high).bytes not in room.layers
            assert s_scope.stream(f"sub:{cam}") is None  # the subscriber's stream of it ended
            assert h.handler.load()[2] == 1  # only the microphone is left
            # The publisher's QUIC streams of it were ended by the MH.
            for pub in (pub_low, pub_high):
                with trio.fail_after(WAIT_S), pytest.raises(StreamReset):
                    for i in range(1000):
                        await pub.send_frame(FrameType.VIDEO_DELTA, b"late", sequence=AFTER + i)
                        await trio.lowlevel.checkpoint()
            # The microphone carries on; nothing of the camera arrives after the removal.
            await pub_mic.send_frame(FrameType.AUDIO, b"marker", sequence=AFTER)
            with trio.fail_after(WAIT_S):
                while True:
                    frame = await s.receive_frame()
                    assert frame.stream_id != uuid.UUID(high) or frame.sequence < AFTER
                    if bytes(frame.payload) == b"marker":
                        break
            assert not p.session.is_closed and not s.session.is_closed


async def test_a_removed_stream_can_be_published_again() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_p) as p, h.client(url_s) as s:
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            first = await p.publish(cam)
            await first.send_frame(FrameType.VIDEO_KEY, b"1")
            await receive_n(s, 1)
            await first.aclose()
            await h.remove_stream(meeting, "p", cam)
            # Published again: registered, routed, on a new QUIC stream.
            await h.register(meeting, "p", [video(cam)])
            await h.route(meeting, cam, ["s"])
            again = await p.publish(cam)
            await again.send_frame(FrameType.VIDEO_KEY, b"2")
            assert [bytes(f.payload) for f in await receive_n(s, 1)] == [b"2"]


async def test_remove_stream_checks_its_fields_and_is_idempotent() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        await h.register(meeting, "p", [video(cam)])
        await h.register(meeting, "q")
        with pytest.raises(InvalidRequest):
            await h.remove_stream(meeting, "p", "not-a-uuid")
        with pytest.raises(NotFound) as info:
            await h.remove_stream(meeting, "q", cam)  # not q's stream
        assert info.value.details == {"field": "participant_id"}
        assert cam in h.handler.rooms[meeting].publications  # type: ignore[index]
        await h.remove_stream(meeting, "p", cam)
        await h.remove_stream(meeting, "p", cam)  # already gone: no error
        await h.remove_stream(new_id(), "p", cam)  # unknown room: no error
        assert cam not in h.handler.rooms[meeting].publications  # type: ignore[index]


async def test_the_meeting_controller_link_removes_a_stream() -> None:
    """The MC's side: GrpcMediaLink.remove_stream over real gRPC."""
    meeting, cam = new_id(), new_id()
    async with open_harness() as h, trio.open_nursery() as nursery:
        await h.register(meeting, "p", [video(cam)])
        mc = stack_cluster().tls("mc", "mc-1")
        link = GrpcMediaLink("mh", h.running.grpc_address, static=True, cluster=mc)
        await nursery.start(link.run, lambda event: None)
        await link.remove_stream(
            mc_pb.RemoveStreamRequest(meeting_id=meeting, participant_id="p", stream_id=cam)
        )
        assert cam not in h.handler.rooms[meeting].publications  # type: ignore[index]
        nursery.cancel_scope.cancel()
