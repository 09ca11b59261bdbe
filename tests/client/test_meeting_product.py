"""Publication state at the client, on fakes (docs/protocol.md §18.1): every participant's
state from the join catch-up and ParticipantUpdated, this session's own, set_publication and
what a muted microphone or a camera turned off does to the frames sent."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.client import (
    ConnectionState,
    KeyFrameRequest,
    ParticipantUpdated,
    PublicationChanged,
    PublicationState,
    Rejoined,
)
from darktower.errors import Forbidden, NotFound
from darktower.frames import FrameType
from darktower.model import StreamType
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._product_fakes import pending, product_session, server
from ._reconnect_fakes import PID, FakeNetwork, participant, running
from ._rejoin_fakes import FakeRejoiner, rejoining


def updated(pid: str, connection: int = sig.CONNECTED, **state: bool) -> sig.ServerMessage:
    return server(
        participant_updated=sig.ParticipantUpdated(
            participant_id=pid,
            connection=connection,  # type: ignore[arg-type]
            publication=common.PublicationState(**state),
        )
    )


async def test_the_join_catch_up_carries_host_connection_and_publication(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann = participant("ann")
    ann.host = True
    ann.connection = sig.RECONNECTING
    ann.publication.CopyFrom(common.PublicationState(audio_muted=True, sharing=True))
    async with product_session(ann, participant("bob")) as (session, _, _):
        info = session.participants["ann"]
        assert info.host and info.connection is ConnectionState.RECONNECTING
        assert info.publication == PublicationState(audio_muted=True, sharing=True)
        bob = session.participants["bob"]
        assert not bob.host and bob.connection is ConnectionState.CONNECTED
        assert bob.publication == PublicationState()
        assert session.publication == PublicationState()


async def test_another_participants_update_is_an_event_for_what_changed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session(participant("ann")) as (session, signaling, _):
        signaling.push(updated("ann", video_off=True))
        await trio.testing.wait_all_tasks_blocked()
        [changed] = pending(session)
        assert changed == PublicationChanged(
            "ann", PublicationState(video_off=True), PublicationState()
        )
        assert session.participants["ann"].publication.video_off
        # The same state again: nothing. Both changed: both events, connection first.
        signaling.push(updated("ann", video_off=True))
        signaling.push(updated("ann", sig.RECONNECTING, video_off=True, sharing=True))
        await trio.testing.wait_all_tasks_blocked()
        connection, publication = pending(session)
        assert isinstance(connection, ParticipantUpdated)
        assert connection.participant.connection is ConnectionState.RECONNECTING
        assert isinstance(publication, PublicationChanged) and publication.publication.sharing
        # An update without a publication (an MC before §18) leaves it as it was.
        signaling.push(server(participant_updated=sig.ParticipantUpdated(participant_id="ann")))
        await trio.testing.wait_all_tasks_blocked()
        [back] = pending(session)
        assert isinstance(back, ParticipantUpdated)
        assert session.participants["ann"].publication.sharing


async def test_own_update_changes_the_sessions_publication(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, _):
        signaling.push(updated(PID, sharing=True))
        await trio.testing.wait_all_tasks_blocked()
        [changed] = pending(session)
        assert isinstance(changed, PublicationChanged) and changed.own
        assert changed.participant_id == PID
        assert session.publication == PublicationState(sharing=True)
        assert PID not in session.participants


async def test_the_join_tokens_grant_blocks_the_other_kinds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session(may_publish={"audio"}) as (session, _, _):
        assert session.publication == PublicationState(
            video_off=True, video_blocked=True, screen_blocked=True
        )


async def test_a_muted_microphone_stays_published_and_sends_no_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, media):
        mic = await session.publish(StreamType.AUDIO)
        camera = await session.publish(StreamType.VIDEO_CAMERA)
        assert await mic.send_frame(FrameType.AUDIO, b"a0")
        state = await session.set_publication(audio_muted=True)
        assert state == session.publication == PublicationState(audio_muted=True)
        [request] = signaling.sent("set_publication")
        assert request.set_publication == sig.SetPublicationState(audio_muted=True)
        [changed] = [e for e in pending(session) if isinstance(e, PublicationChanged)]
        assert changed.own and changed.publication.audio_muted
        assert mic.silenced and not camera.silenced
        assert await mic.send_frame(FrameType.AUDIO, b"a1") == b""
        assert mic.muted_dropped == 1
        assert await camera.send_frame(FrameType.VIDEO_KEY, b"v0")
        # Still published: no UnpublishStream; unmuted, frames flow again at once.
        assert signaling.sent("unpublish") == [] and mic.stream_id in session.publications
        await session.set_publication(audio_muted=False)
        assert await mic.send_frame(FrameType.AUDIO, b"a2")
        sent = [bytes(f.payload) for f in media.streams[mic.stream_id].frames()]
        assert sent == [b"a0", b"a2"]
        # A publication made while muted is silent from its first frame.
        await session.set_publication(audio_muted=True)
        second = await session.publish(StreamType.AUDIO)
        assert second.silenced and await second.send_frame(FrameType.AUDIO, b"x") == b""


async def test_a_camera_turned_on_again_starts_at_a_key_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, _, media):
        camera = await session.publish(StreamType.VIDEO_CAMERA)
        await session.set_publication(video_off=True)
        assert await camera.send_frame(FrameType.VIDEO_DELTA, b"off") == b""
        pending(session)
        await session.set_publication(video_off=False)
        assert KeyFrameRequest(camera.stream_id) in pending(session)
        assert await camera.send_frame(FrameType.VIDEO_DELTA, b"d") == b""
        assert await camera.send_frame(FrameType.VIDEO_KEY, b"k")
        assert await camera.send_frame(FrameType.VIDEO_DELTA, b"d2")
        sent = [bytes(f.payload) for f in media.streams[camera.stream_id].frames()]
        assert sent == [b"k", b"d2"]


async def test_a_mute_silences_at_once_and_an_unmute_waits_for_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, _):
        mic = await session.publish(StreamType.AUDIO)
        gate = signaling.held["set_publication"] = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: session.set_publication(audio_muted=True))
            await trio.testing.wait_all_tasks_blocked()
            assert mic.silenced and not session.publication.audio_muted
            gate.set()
        assert session.publication.audio_muted
        gate = signaling.held["set_publication"] = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: session.set_publication(audio_muted=False))
            await trio.testing.wait_all_tasks_blocked()
            assert mic.silenced
            gate.set()
        assert not mic.silenced


async def test_an_unmute_the_host_blocked_is_refused_and_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, _):
        mic = await session.publish(StreamType.AUDIO)
        camera = await session.publish(StreamType.VIDEO_CAMERA)
        # Blocked: a host ended the kind's streams (here without a Moderated, as after a
        # resume): the audio publication is ended, the camera goes on.
        signaling.push(updated(PID, audio_muted=True, audio_blocked=True))
        await trio.testing.wait_all_tasks_blocked()
        assert mic.ended_by_host and mic.stream_id not in session.publications
        assert not camera.closed
        signaling.refuse["set_publication"] = Forbidden(
            "blocked by the host", details={"reason": "blocked_by_host"}
        )
        with pytest.raises(Forbidden) as refused:
            await session.set_publication(audio_muted=False)
        assert refused.value.details["reason"] == "blocked_by_host"
        assert session.publication == PublicationState(audio_muted=True, audio_blocked=True)
        # A mute the MC did not take (refused, or the connection broke) is undone.
        signaling.refuse.clear()
        signaling.push(updated(PID))
        await trio.testing.wait_all_tasks_blocked()
        mic = await session.publish(StreamType.AUDIO)
        assert not mic.silenced
        signaling.refuse["set_publication"] = Forbidden("no")
        with pytest.raises(Forbidden):
            await session.set_publication(audio_muted=True)
        assert not mic.silenced and not session.publication.audio_muted


async def test_a_resume_takes_the_state_the_room_lists(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net, participant("ann")) as (session, signaling, _):
        ann = participant("ann")
        ann.publication.CopyFrom(common.PublicationState(audio_muted=True))
        net.existing = [ann]
        signaling.lose()
        with trio.fail_after(30):
            async for event in session.events:
                if isinstance(event, PublicationChanged):
                    break
        assert event == PublicationChanged(
            "ann", PublicationState(audio_muted=True), PublicationState()
        )


async def test_a_rejoin_tells_the_new_mc_the_switches_that_are_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net)
    async with rejoining(net, gc) as (session, _, _):
        mic = await session.publish(StreamType.AUDIO)
        await session.set_publication(audio_muted=True)
        net.refusal = NotFound("unknown resume token")  # the MC restarted
        session._link.signaling.lose()  # type: ignore[attr-defined]
        with trio.fail_after(60):
            async for event in session.events:
                if isinstance(event, Rejoined):
                    break
        new = gc.signalings[0]
        kinds = [r.WhichOneof("message") for r in new.requests]
        assert kinds == ["publish", "set_publication"]
        assert new.requests[1].set_publication == sig.SetPublicationState(audio_muted=True)
        assert session.publication.audio_muted and mic.silenced
        assert await mic.send_frame(FrameType.AUDIO, b"a") == b""
