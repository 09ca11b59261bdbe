"""Moderation at the client, on fakes (docs/protocol.md §18.2): a host's request, and a
moderated session's Moderated event, its ended publications and its state."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.client import (
    Moderated,
    ModerationAction,
    PublicationChanged,
    PublicationState,
)
from darktower.errors import Forbidden
from darktower.frames import FrameType
from darktower.model import StreamType
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._product_fakes import pending, product_session, server
from ._reconnect_fakes import PID, FakeNetwork

MUTED = common.PublicationState(audio_muted=True, audio_blocked=True)


def moderated(*actions: int, message: str = "") -> sig.ServerMessage:
    return server(
        moderated=sig.Moderated(
            by_participant_id="host",
            actions=list(actions),  # type: ignore[arg-type]
            message=message,
            publication=MUTED,
        )
    )


async def test_a_host_moderates_with_actions_and_a_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, _):
        await session.moderate(
            "ann", [ModerationAction.MUTE_AUDIO, "stop_screen"], message="too loud"
        )
        [request] = signaling.sent("moderate")
        assert request.moderate == sig.ModerateParticipant(
            participant_id="ann",
            actions=[common.MODERATION_MUTE_AUDIO, common.MODERATION_STOP_SCREEN],
            message="too loud",
        )
        with pytest.raises(ValueError):
            await session.moderate("ann", ["shout"])
        signaling.refuse["moderate"] = Forbidden("only a host moderates")
        with pytest.raises(Forbidden):
            await session.moderate("ann", [ModerationAction.ALLOW_AUDIO])


async def test_a_moderated_session_ends_the_stopped_publications(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, media):
        mic = await session.publish(StreamType.AUDIO)
        camera = await session.publish(StreamType.VIDEO_CAMERA)
        pending(session)
        signaling.push(moderated(common.MODERATION_MUTE_AUDIO, 0, 99, message="quiet please"))
        await trio.testing.wait_all_tasks_blocked()
        event, changed = pending(session)
        assert event == Moderated(
            by="host",
            actions=(ModerationAction.MUTE_AUDIO,),  # the unknown and unspecified ignored
            message="quiet please",
            publication=PublicationState(audio_muted=True, audio_blocked=True),
        )
        assert isinstance(changed, PublicationChanged) and changed.own
        assert session.publication == event.publication
        # The MH ended the audio stream: closed here, its media stream reset, no Unpublish.
        assert mic.closed and mic.ended_by_host
        assert mic.stream_id not in session.publications
        assert media.streams[mic.stream_id].reset_code == 0
        with pytest.raises(trio.ClosedResourceError, match="ended by the host"):
            await mic.send_frame(FrameType.AUDIO, b"a")
        await mic.aclose()  # idempotent, sends nothing
        assert signaling.sent("unpublish") == []
        # The camera goes on.
        assert not camera.closed and await camera.send_frame(FrameType.VIDEO_KEY, b"k")


async def test_a_frame_on_a_stream_the_mh_reset_waits_for_the_moderation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, media):
        mic = await session.publish(StreamType.AUDIO)
        media.streams[mic.stream_id].reset_by_mh = True  # before the MC's Moderated comes

        async def moderate_soon() -> None:
            await trio.sleep(0.1)
            signaling.push(moderated(common.MODERATION_MUTE_AUDIO))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(moderate_soon)
            start = trio.current_time()
            with pytest.raises(trio.ClosedResourceError, match="ended by the host"):
                await mic.send_frame(FrameType.AUDIO, b"a")
            assert trio.current_time() - start == pytest.approx(0.1)


async def test_a_resume_ends_what_a_host_stopped_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with product_session(net=net) as (session, signaling, _):
        mic = await session.publish(StreamType.AUDIO)
        camera = await session.publish(StreamType.VIDEO_CAMERA)
        # The room of the resume lists this session (the MC may as well send its state as a
        # ParticipantUpdated after the JoinResponse: test_meeting_product).
        own = sig.Participant(
            participant_id=PID,
            streams=[common.MediaStream(stream_id=camera.stream_id)],
            publication=MUTED,
        )
        net.existing = [own]
        signaling.lose()
        with trio.fail_after(30):
            async for event in session.events:
                if isinstance(event, PublicationChanged):
                    break
        assert event.own and session.publication.audio_blocked
        assert mic.ended_by_host and not camera.closed
        assert PID not in session.participants
