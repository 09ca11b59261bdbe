"""Media reconnection at the MH (docs/protocol.md §13), over real QUIC on 127.0.0.1: a
participant whose media connection is lost keeps its routes for the media grace; a fresh
token from RegisterParticipant re-attaches it (publish streams accepted again, subscriptions
resume at a key frame) without any new RouteMedia; a second connection replaces the first;
after the grace it is forgotten."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from aioquic.quic.packet import QuicErrorCode

from darktower.client import MediaClient, MediaPublisher, open_media_client
from darktower.errors import ErrorCode
from darktower.frames import Frame, FrameType
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import SessionRefused, open_quic_connection
from darktower.transport.rpc import call

from ._harness import WAIT_S, Harness, new_id, open_harness, video

GRACE_S = 5.0  # long enough for a loaded machine; the expiry test uses a short one


@asynccontextmanager
async def droppable_client(h: Harness, url: str) -> AsyncIterator[tuple[MediaClient, trio.Event]]:
    """A media client on a QUIC connection of its own; set the event to drop that connection
    abruptly (CONNECTION_CLOSE with INTERNAL_ERROR, no WebTransport close)."""
    split = urllib.parse.urlsplit(url)
    drop = trio.Event()
    async with open_quic_connection(
        split.hostname or "127.0.0.1",
        split.port or 443,
        server_certificate_hashes=[h.running.certificate_sha256],
    ) as conn:
        async with open_media_client(url, connection=conn) as media, trio.open_nursery() as n:

            async def dropper() -> None:
                await drop.wait()
                conn.close(QuicErrorCode.INTERNAL_ERROR, "gone")

            n.start_soon(dropper)
            yield media, drop
            n.cancel_scope.cancel()


async def register_reply(
    h: Harness, meeting: str, participant: str
) -> mc_pb.RegisterParticipantResponse:
    """RegisterParticipant (no streams): the MH's whole answer, ``created`` included."""
    return await call(
        h.stub.RegisterParticipant,
        mc_pb.RegisterParticipant(participant_id=participant, meeting_id=meeting),
    )


@attrs.define
class Telemetry:
    """The MC's view of the MH's telemetry for one meeting: key frame requests and
    disconnects, as events the test waits on."""

    key_requests: list[str] = attrs.Factory(list)
    disconnected: list[str] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    async def run(self, h: Harness, meeting: str, task_status: trio.TaskStatus[None]) -> None:
        ready = trio.Event()
        async with trio.open_nursery() as nursery:

            async def started() -> None:
                await ready.wait()
                task_status.started()

            nursery.start_soon(started)
            async for event in h.handler.telemetry_hub.subscribe(meeting, ready=ready):
                kind = event.WhichOneof("event")
                if kind == "key_frame_request":
                    self.key_requests.append(event.key_frame_request.stream_id)
                elif kind == "participant_disconnected":
                    self.disconnected.append(event.participant_disconnected.participant_id)
                self.changed.set()
                self.changed = trio.Event()

    async def wait_disconnected(self, participant: str) -> None:
        with trio.fail_after(WAIT_S):
            while participant not in self.disconnected:
                await self.changed.wait()


async def publish_until_stopped(
    pub: MediaPublisher, telemetry: Telemetry, cam: str, stop: trio.Event
) -> None:
    """A camera: deltas at 50 fps, a key frame whenever one is requested (as the MC would ask
    the publisher) and every 50 frames."""
    seen = len(telemetry.key_requests)
    i = 0
    while not stop.is_set():
        asked = telemetry.key_requests[seen:].count(cam)
        seen = len(telemetry.key_requests)
        key = i % 50 == 0 or asked > 0
        await pub.send_frame(FrameType.VIDEO_KEY if key else FrameType.VIDEO_DELTA, b"x" * 200)
        i += 1
        await trio.sleep(0.02)  # pacing, not waiting for anything


async def first_frames(media: MediaClient, n: int) -> list[Frame]:
    got = []
    with trio.fail_after(WAIT_S):
        while len(got) < n:
            got.append(await media.receive_frame())
    return got


def assert_starts_at_a_key_frame_in_order(frames: list[Frame]) -> None:
    assert frames[0].frame_type == FrameType.VIDEO_KEY
    seqs = [f.sequence for f in frames]
    assert seqs == sorted(seqs)


async def test_a_lost_subscriber_reattaches_with_a_fresh_token_at_a_key_frame() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness(media_grace_s=GRACE_S) as h, trio.open_nursery() as nursery:
        telemetry = Telemetry()
        await nursery.start(telemetry.run, h, meeting)
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        stop = trio.Event()
        async with h.client(url_p) as p:
            await h.connected(meeting, "p")
            async with droppable_client(h, url_s) as (s, drop):
                await h.connected(meeting, "s")
                await h.route(meeting, cam, ["s"])
                nursery.start_soon(
                    publish_until_stopped, await p.publish(cam), telemetry, cam, stop
                )
                assert_starts_at_a_key_frame_in_order(await first_frames(s, 3))
                drop.set()
                await telemetry.wait_disconnected("s")
            room = h.handler.rooms[meeting]  # type: ignore[index]
            member = room.members["s"]  # type: ignore[index]
            # Kept, not connected, with its routes.
            assert member.scope is None and member.lost_at is not None
            assert "s" in room.routes[cam]  # type: ignore[index]
            # The old token opened a connection already; a fresh one re-attaches, and the MH
            # says it kept the registration and its routes.
            reply = await register_reply(h, meeting, "s")
            assert not reply.created
            fresh = f"{reply.media_handler_url}?token={reply.connection_token}"
            assert fresh != url_s
            with pytest.raises(SessionRefused) as info:
                async with h.client(url_s):
                    pass
            assert info.value.status == 409
            async with h.client(fresh) as s2:
                assert_starts_at_a_key_frame_in_order(await first_frames(s2, 3))
                assert member.scope is not None and member.lost_at is None
                assert room.members["s"] is member  # type: ignore[index]
            stop.set()
        nursery.cancel_scope.cancel()


async def test_a_lost_publisher_reattaches_and_its_subscribers_resume_at_a_key_frame() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness(media_grace_s=GRACE_S) as h, trio.open_nursery() as nursery:
        telemetry = Telemetry()
        await nursery.start(telemetry.run, h, meeting)
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_s) as s:
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            async with droppable_client(h, url_p) as (p, drop):
                await h.connected(meeting, "p")
                pub = await p.publish(cam)
                await pub.send_frame(FrameType.VIDEO_KEY, b"k")
                await pub.send_frame(FrameType.VIDEO_DELTA, b"d")
                assert [f.frame_type for f in await first_frames(s, 2)] == [
                    FrameType.VIDEO_KEY,
                    FrameType.VIDEO_DELTA,
                ]
                drop.set()
                await telemetry.wait_disconnected("p")
            requests_before = telemetry.key_requests.count(cam)
            fresh = await h.register(meeting, "p")
            async with h.client(fresh) as p2:
                pub2 = await p2.publish(cam)  # the same stream id: accepted again
                # Frames after the loss are deltas: they have no reference at the subscriber,
                # so none is delivered and a key frame is asked for (the throttle may hold the
                # request back until a later delta).
                with trio.fail_after(WAIT_S):
                    seq = 0
                    while telemetry.key_requests.count(cam) == requests_before:
                        await pub2.send_frame(FrameType.VIDEO_DELTA, b"no ref", sequence=seq)
                        seq += 1
                        with trio.move_on_after(0.05):  # a camera's pace
                            await telemetry.changed.wait()
                await pub2.send_frame(FrameType.VIDEO_KEY, b"k2", sequence=101)
                await pub2.send_frame(FrameType.VIDEO_DELTA, b"d2", sequence=102)
                got = await first_frames(s, 2)
                assert [(f.sequence, f.frame_type) for f in got] == [
                    (101, FrameType.VIDEO_KEY),
                    (102, FrameType.VIDEO_DELTA),
                ]
        nursery.cancel_scope.cancel()


async def test_a_second_connection_with_a_fresh_token_replaces_the_first() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness(media_grace_s=GRACE_S) as h, trio.open_nursery() as nursery:
        telemetry = Telemetry()
        await nursery.start(telemetry.run, h, meeting)
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        stop = trio.Event()
        async with h.client(url_p) as p, h.client(url_s) as s:
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            nursery.start_soon(publish_until_stopped, await p.publish(cam), telemetry, cam, stop)
            await first_frames(s, 2)
            fresh = await h.register(meeting, "s")
            async with h.client(fresh) as s2:
                # The old session is closed with CONFLICT, and the MC is not told of a loss.
                with trio.fail_after(WAIT_S):
                    await s.session.wait_closed()
                assert s.session.peer_close_code == int(ErrorCode.CONFLICT)
                assert s.session.peer_close_reason == "replaced by a newer media connection"
                assert_starts_at_a_key_frame_in_order(await first_frames(s2, 3))
                assert "s" not in telemetry.disconnected
            stop.set()
        nursery.cancel_scope.cancel()


async def test_after_the_grace_a_lost_participant_is_forgotten() -> None:
    meeting = new_id()
    async with open_harness(media_grace_s=0.5) as h, trio.open_nursery() as nursery:
        telemetry = Telemetry()
        await nursery.start(telemetry.run, h, meeting)
        first = await register_reply(h, meeting, "s")
        assert first.created  # a first registration
        assert not (await register_reply(h, meeting, "s")).created  # kept: only a new token
        url = f"{first.media_handler_url}?token={first.connection_token}"
        room = h.handler.rooms[meeting]  # type: ignore[index]
        async with droppable_client(h, url) as (_, drop):
            await h.connected(meeting, "s")
            drop.set()
            await telemetry.wait_disconnected("s")
        assert "s" in room.members  # within the grace
        with trio.fail_after(WAIT_S):
            await room.scope.wait_closed()  # forgotten: its room, now empty, ended
        assert h.handler.rooms == {}
        assert h.handler.load() == (0, 0, 0)
        assert h.handler.tree.snapshot()["counts"] == {
            "meetings": 0,
            "participants": 0,
            "streams": 0,
        }
        # A fresh registration starts anew, and says so (the MC registers its streams and
        # routes it again).
        assert (await register_reply(h, meeting, "s")).created
        assert h.handler.rooms[meeting].members["s"].lost_at is None  # type: ignore[index]
        nursery.cancel_scope.cancel()
