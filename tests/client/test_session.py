"""MeetingSession against the real in-process stack over real QUIC: participants, publish →
subscribe without cross-talk, quality relay, kick, meeting end, leave and cancellation."""

from __future__ import annotations

import pathlib
import uuid

import pytest
import trio

from darktower.client import (
    MeetingSession,
    ParticipantJoined,
    ParticipantLeft,
    QualityUpdate,
    SessionEnded,
    SimulcastLayer,
    StreamPublished,
    StreamUnpublished,
    Subscription,
    _join,
    join_meeting_via_gc,
    media_url,
    open_media_client,
    open_signaling,
)
from darktower.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from darktower.frames import FrameType
from darktower.model import LeaveReason, Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import SessionRefused, StreamReset
from darktower.transport._config import MEDIA_ACK_THRESHOLD, QUIC_CORE

from ._stack import WAIT_S, meeting, next_event

FRAMES = 10


async def take(subscription: Subscription, n: int) -> list[bytes]:
    out: list[bytes] = []
    with trio.fail_after(WAIT_S):
        while len(out) < n:
            out.append(bytes((await subscription.receive()).raw))
    return out


async def drain(subscription: Subscription) -> list[bytes]:
    """Every frame until the subscription ends normally."""
    with trio.fail_after(WAIT_S):
        return [bytes(frame.raw) async for frame in subscription]


async def test_participants_appear_and_disappear(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        assert host.role is Role.HOST
        assert host.participants == {}
        ann = await m.join("ann")
        assert ann.role is Role.GUEST
        # ann learns of the host from the JoinResponse, the host of ann from an event.
        assert [p.name for p in ann.participants.values()] == ["host"]
        joined = await next_event(host, ParticipantJoined)
        assert joined.participant.participant_id == ann.participant_id
        assert joined.participant.name == "ann"
        assert set(host.participants) == {ann.participant_id}

        # Through the GC helper with a ticket in hand: the GC only names the MC.
        async with join_meeting_via_gc(
            m.gc,
            m.created.meeting_id,
            "bob",
            join_token=await m.guest_token("bob"),
            server_certificate_hashes=m.pins,
        ) as bob:
            assert bob.role is Role.GUEST
            joined = await next_event(host, ParticipantJoined)
            assert joined.participant.participant_id == bob.participant_id
            assert set(bob.participants) == {host.participant_id, ann.participant_id}
        # Leaving the block left the meeting voluntarily.
        assert bob.end_reason is LeaveReason.VOLUNTARY
        for session in (host, ann):
            left = await next_event(session, ParticipantLeft)
            assert left.participant.participant_id == bob.participant_id
            assert left.participant.name == "bob"
            assert left.reason is LeaveReason.VOLUNTARY
            assert bob.participant_id not in session.participants

        assert await ann.leave() is LeaveReason.VOLUNTARY
        left = await next_event(host, ParticipantLeft)
        assert (left.participant.participant_id, left.reason) == (
            ann.participant_id,
            LeaveReason.VOLUNTARY,
        )
        # After a voluntary leave iterators stop and calls raise SessionEnded(VOLUNTARY).
        assert [event async for event in ann.events] == []
        with pytest.raises(SessionEnded) as ended:
            await ann.publish(StreamType.AUDIO)
        assert ended.value.reason is LeaveReason.VOLUNTARY


async def test_publish_subscribe_two_streams_without_cross_talk(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        bob = await m.join("bob")
        camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8", width=320, height=240)
        mic = await host.publish(StreamType.AUDIO, codec="Opus")
        for session in (ann, bob):
            published = {
                (await next_event(session, StreamPublished)).stream.stream_id for _ in range(2)
            }
            assert published == {camera.stream_id, mic.stream_id}
            streams = session.participants[host.participant_id].streams
            assert {(s.stream_id, s.stream_type) for s in streams} == {
                (camera.stream_id, StreamType.VIDEO_CAMERA),
                (mic.stream_id, StreamType.AUDIO),
            }
        ann_video = await ann.subscribe(camera.stream_id)
        ann_audio = await ann.subscribe(mic.stream_id)
        bob_audio = await bob.subscribe(mic.stream_id)

        video_sent, audio_sent = [], []
        for i in range(FRAMES):  # interleaved: the two streams share one media connection
            kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
            video_sent.append(await camera.send_frame(kind, bytes([i]) * (200 + i)))
            audio_sent.append(await mic.send_frame(FrameType.AUDIO, bytes([100 + i]) * 40))
        assert await take(ann_video, FRAMES) == video_sent
        assert await take(ann_audio, FRAMES) == audio_sent
        assert await take(bob_audio, FRAMES) == audio_sent

        # Unpublishing ends the subscriptions of that stream only; bob never had video.
        await camera.aclose()
        gone = await next_event(ann, StreamUnpublished)
        assert gone.stream.stream_id == camera.stream_id
        assert await drain(ann_video) == []
        assert [s.stream_id for s in ann.participants[host.participant_id].streams] == [
            mic.stream_id
        ]
        assert ann_video.dropped == ann_audio.dropped == bob_audio.dropped == 0
        last = await mic.send_frame(FrameType.AUDIO, b"still here")
        assert await take(ann_audio, 1) == [last]
        assert await take(bob_audio, 1) == [last]
        # Unsubscribing stops the frames at once; the MC forgets the subscription.
        await ann_audio.aclose()
        assert await drain(ann_audio) == []
        with pytest.raises(NotFound):
            await ann.send_quality(camera.stream_id, available_bitrate=1)
        with pytest.raises(InvalidRequest):
            await host.subscribe(mic.stream_id)  # one's own stream


async def test_unpublish_stops_the_media_handler_routing_the_stream(
    tmp_path: pathlib.Path,
) -> None:
    """A publisher that unpublishes and keeps writing reaches nobody: the MH forgot the stream
    and reset the publisher's QUIC stream of it before the MC acknowledged."""
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        camera = await host.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        await next_event(ann, StreamPublished)
        video = await ann.subscribe(camera.stream_id)
        sent = await camera.send_frame(FrameType.VIDEO_KEY, b"before")
        assert await take(video, 1) == [sent]
        room = m.stack.mh.handler.rooms[m.created.meeting_id]
        assert camera.stream_id in room.publications

        # Unpublish on the signaling stream only: the publish stream stays open on our side.
        await host._request(
            sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id=camera.stream_id))
        )
        assert camera.stream_id not in room.publications
        assert camera.stream_id not in room.routes
        (publisher,) = camera.publishers.values()
        with trio.fail_after(WAIT_S), pytest.raises(StreamReset):
            for i in range(1000):  # the MH's reset arrives; writes then fail
                await publisher.send_frame(FrameType.VIDEO_DELTA, bytes([i % 256]) * 100)
                await trio.lowlevel.checkpoint()
        await next_event(ann, StreamUnpublished)
        assert await drain(video) == []


async def test_quality_update_reaches_the_subscriber(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        camera = await host.publish(StreamType.VIDEO_CAMERA)
        await next_event(ann, StreamPublished)
        async with await ann.subscribe(camera.stream_id) as frames:
            await camera.send_frame(FrameType.VIDEO_KEY, b"key")
            await take(frames, 1)
            await host.send_quality(
                camera.stream_id, available_bitrate=123_000, packet_loss=0.25, rtt_ms=42
            )
            update = await next_event(ann, QualityUpdate, lambda q: q.rtt_ms == 42)
            assert update == QualityUpdate(camera.stream_id, 123_000, 0.25, 42)
        # Simulcast: the layers are announced with the stream, each with its own id.
        layered = await host.publish(
            StreamType.VIDEO_SCREEN,
            codec="VP8",
            simulcast_layers=[SimulcastLayer(320, 180, 150_000), SimulcastLayer(1280, 720)],
        )
        assert len(layered.layer_ids) == 2
        published = await next_event(ann, StreamPublished)
        assert published.stream.stream_id == layered.stream_id
        assert published.stream.layer_ids == layered.layer_ids
        await layered.send_frame(FrameType.VIDEO_KEY, b"small", layer_id=layered.layer_ids[0])
        with pytest.raises(ValueError, match="no layer"):
            await layered.send_frame(FrameType.VIDEO_KEY, b"which layer?")


async def test_kick_raises_kicked_in_the_session_and_others_see_the_leave(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        camera = await host.publish(StreamType.VIDEO_CAMERA)
        seen: list[str] = []
        async with m.session(await m.guest_token("bob"), "bob") as bob:
            await next_event(host, ParticipantJoined)
            with pytest.raises(Forbidden):
                await bob.kick(host.participant_id)  # a guest may not
            frames = await bob.subscribe(camera.stream_id)
            await camera.send_frame(FrameType.VIDEO_KEY, b"key")
            await take(frames, 1)
            await host.kick(bob.participant_id)
            # The kicked session's iterators raise the reason ...
            with pytest.raises(SessionEnded) as ended:
                await drain(frames)
            assert ended.value.reason is LeaveReason.KICKED
            assert ended.value.session is bob
            # ... and so does its event stream; not caught here: the block swallows its own.
            with trio.fail_after(WAIT_S):
                async for event in bob.events:
                    seen.append(type(event).__name__)
            raise AssertionError("the event stream of a kicked session must raise")
        assert bob.end_reason is LeaveReason.KICKED
        assert bob.ended.is_set()
        assert bob._signaling.session.is_closed and bob._media.session.is_closed
        left = await next_event(host, ParticipantLeft)
        assert (left.participant.participant_id, left.reason) == (
            bob.participant_id,
            LeaveReason.KICKED,
        )
        assert host.participants == {}
        # The publisher is unaffected.
        await camera.send_frame(FrameType.VIDEO_DELTA, b"delta")


async def test_a_kick_with_ban_through_the_gc_sticks(tmp_path: pathlib.Path) -> None:
    """The real MC reports the kicked session's join token to the GC, which then refuses its
    holder a new token; the old token is refused by the MC."""
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        token = await m.guest_token("ann")
        async with m.session(token, "ann") as ann:
            await m.gc.kick(m.created.meeting_id, ann.participant_id, ban=True)
            with trio.fail_after(WAIT_S):
                await ann.ended.wait()
        assert ann.end_reason is LeaveReason.KICKED
        await next_event(host, ParticipantLeft)
        with pytest.raises(Forbidden):
            await m.guest_token("ann")  # the same address, anonymously: banned
        with pytest.raises(Forbidden):
            async with m.session(token, "ann"):
                pass  # the kicked token itself is refused by the MC


async def test_a_kick_with_ban_revokes_the_tokens_fetched_in_advance(
    tmp_path: pathlib.Path,
) -> None:
    """A guest holding a second join token fetched before the kick cannot rejoin with it:
    the GC sends the banned identity's other tokens to the MC, which refuses them."""
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        token = await m.guest_token("ann")
        spare = await m.guest_token("ann")
        async with m.session(token, "ann") as ann:
            await m.gc.kick(m.created.meeting_id, ann.participant_id, ban=True)
            with trio.fail_after(WAIT_S):
                await ann.ended.wait()
        assert ann.end_reason is LeaveReason.KICKED
        await next_event(host, ParticipantLeft)
        with pytest.raises(Forbidden):
            async with m.session(spare, "ann"):
                pass  # fetched in advance, revoked with the kick
        with pytest.raises(Forbidden):
            await m.guest_token("ann")  # and no new one from the GC


async def test_meeting_end_ends_every_session(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        camera = await ann.publish(StreamType.VIDEO_CAMERA)
        await next_event(host, StreamPublished)
        await host.end_meeting()
        assert host.end_reason is LeaveReason.MEETING_ENDED
        with trio.fail_after(WAIT_S):
            await ann.ended.wait()
        assert ann.end_reason is LeaveReason.MEETING_ENDED
        for session in (host, ann):
            with pytest.raises(SessionEnded) as ended:
                await session.events.receive()
            assert ended.value.reason is LeaveReason.MEETING_ENDED
        with pytest.raises(SessionEnded):
            await camera.send_frame(FrameType.VIDEO_KEY, b"too late")
        with pytest.raises(SessionEnded):
            await ann.subscribe(str(uuid.uuid4()))


async def test_meeting_end_through_the_gc(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        ann = await m.join("ann")
        await m.gc.end_meeting(m.created.meeting_id)
        with pytest.raises(SessionEnded) as ended:
            await next_event(ann, ParticipantJoined)
        assert ended.value.reason is LeaveReason.MEETING_ENDED


async def test_cancelling_the_block_leaves(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        joined = trio.Event()
        box: list[MeetingSession] = []

        async def guest() -> None:
            async with m.session(await m.guest_token("ann"), "ann") as ann:
                box.append(ann)
                joined.set()
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guest)
            with trio.fail_after(WAIT_S):
                await joined.wait()
            await next_event(host, ParticipantJoined)
            nursery.cancel_scope.cancel()
        assert box[0].end_reason is LeaveReason.VOLUNTARY
        assert box[0]._signaling.session.is_closed and box[0]._media.session.is_closed
        left = await next_event(host, ParticipantLeft)
        assert (left.participant.participant_id, left.reason) == (
            box[0].participant_id,
            LeaveReason.VOLUNTARY,
        )


async def test_a_refused_join_raises_its_error_unwrapped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        with pytest.raises(Unauthorized):
            async with m.session(m.created.join_token[:-4] + "AAAA", "mallory"):
                raise AssertionError("joined with a forged token")
        # Joined, but the MH refuses the media connection: the error, and a clean leave.
        monkeypatch.setattr(_join, "media_url", lambda join: media_url(join) + "x")
        with pytest.raises(SessionRefused) as refused:
            async with m.session(await m.guest_token("eve"), "eve"):
                raise AssertionError("joined without media")
        assert refused.value.status == 401
        await next_event(host, ParticipantJoined)
        left = await next_event(host, ParticipantLeft)
        assert left.reason is LeaveReason.VOLUNTARY
        monkeypatch.undo()
        # An error of the block's own propagates unchanged too.
        with pytest.raises(KeyError):
            async with m.session(await m.guest_token("ann"), "ann"):
                raise KeyError("mine")


async def test_a_lost_connection_ends_the_session_with_connection_lost(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        async with m.session(await m.guest_token("bob"), "bob") as bob:
            await next_event(host, ParticipantJoined)
            bob._signaling.session.close_nowait(0, "")  # as if the network went away
            with pytest.raises(SessionEnded) as ended:
                await next_event(bob, ParticipantJoined)
            assert ended.value.reason is LeaveReason.CONNECTION_LOST
        assert bob.end_reason is LeaveReason.CONNECTION_LOST
        # The MC reads a cleanly closed session as a leave: only that bob is gone is ours.
        left = await next_event(host, ParticipantLeft)
        assert left.participant.participant_id == bob.participant_id


async def test_a_session_runs_its_own_readers_until_it_ends(tmp_path: pathlib.Path) -> None:
    """MeetingSession.run owns the two readers: the session follows the meeting while it runs,
    and run returns by itself once the session ended (here by a kick). Its media connection
    acks as a media receiver."""
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        token = await m.guest_token("bob")
        async with open_signaling(
            m.stack.signal_url,
            meeting_id=m.created.meeting_id,
            join_token=token,
            participant_name="bob",
            server_certificate_hashes=m.pins,
            origin=m.gc.origin,
        ) as signaling:
            async with open_media_client(
                media_url(signaling.join_response),
                server_certificate_hashes=m.pins,
                origin=m.gc.origin,
            ) as media:
                if QUIC_CORE == "aioquic":  # a media receiver's ACK policy (qh3 has its own)
                    quic = media.session._conn.quic
                    assert quic._dt_ack_threshold == MEDIA_ACK_THRESHOLD
                bob = MeetingSession(signaling, media, meeting_id=m.created.meeting_id)
                with trio.fail_after(WAIT_S):
                    async with trio.open_nursery() as nursery:
                        assert await nursery.start(bob.run) is bob
                        await next_event(host, ParticipantJoined)
                        await host.publish(StreamType.AUDIO)
                        published = await next_event(bob, StreamPublished)
                        assert published.stream.participant_id == host.participant_id
                        await host.kick(bob.participant_id)
                assert bob.end_reason is LeaveReason.KICKED
                with pytest.raises(SessionEnded) as ended:
                    await bob.events.receive()
                assert ended.value.reason is LeaveReason.KICKED
