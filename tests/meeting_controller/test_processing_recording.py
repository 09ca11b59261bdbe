"""Recording in a meeting with recording_enabled (docs/protocol.md §2.1), against the stand-in
MH: StartRecording at a participant's first publish, StopRecording with its leave reason,
JoinResponse.recording and RecordingStatus for the participants."""

from __future__ import annotations

import pathlib

import trio

from darktower.errors import CapacityExceeded
from darktower.meeting_controller._recording import RECORDING
from darktower.model import MeetingId, ParticipantId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import WAIT_S, Stack, next_event, open_stack, wait_ended


async def publish(client: object, stream_id: str, kind: int = common_pb2.VIDEO_CAMERA) -> None:
    await client.request(  # type: ignore[attr-defined]
        sig.ClientMessage(
            publish=sig.PublishStream(
                stream_id=stream_id,
                stream_type=kind,  # type: ignore[arg-type]
                metadata=common_pb2.StreamMetadata(codec="VP8"),
            )
        )
    )


def member(stack: Stack, meeting_id: str, participant_id: str):  # type: ignore[no-untyped-def]
    room = stack.running.controller.rooms[MeetingId(meeting_id)]
    return room.members[ParticipantId(participant_id)]


async def test_each_participant_is_recorded_from_its_first_publish_until_it_leaves(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        mh = stack.mh
        await stack.assign("m", recording_enabled=True)
        async with stack.join("m", Role.HOST, name="Ada") as host, stack.join("m") as bob:
            assert not host.join_response.recording and not bob.join_response.recording
            await next_event(host, "participant_joined")

            await publish(host, "cam")
            await mh.wait_for(lambda: len(mh.recordings_started) == 1)
            started = mh.recordings_started[0]
            assert (started.meeting_id, started.participant_id) == ("m", host.participant_id)
            assert started.participant_name == "Ada"
            assert started.recording_id == f"{host.participant_id}-1"
            # everyone hears that the meeting is being recorded, the publisher too
            for client in (host, bob):
                assert (await next_event(client, "recording_status")).recording_status.recording
            # a later joiner learns it from its JoinResponse
            async with stack.join("m") as carol:
                assert carol.join_response.recording

            # a second stream is recorded by the same recording
            await publish(host, "mic", common_pb2.AUDIO)
            # bob's first stream starts his own recording; the meeting was recorded already
            await publish(bob, "bob-cam")
            await mh.wait_for(lambda: len(mh.recordings_started) == 2)
            assert mh.recordings_started[1].participant_id == bob.participant_id
            assert mh.recordings_started[1].recording_id == f"{bob.participant_id}-1"

            # a kick stops bob's recording with KICKED, before he is removed at the MH
            await host.request(
                sig.ClientMessage(kick=sig.KickParticipant(participant_id=bob.participant_id))
            )
            assert (await wait_ended(bob)).reason == common_pb2.KICKED
            await mh.wait_for(
                lambda: any(r.participant_id == bob.participant_id for r in mh.removed)
            )
            [stopped] = mh.recordings_stopped
            assert (stopped.participant_id, stopped.reason) == (
                bob.participant_id,
                common_pb2.KICKED,
            )
            assert mh.recordings_started[2:] == []  # one recording per participant

            # the host's recording runs on; ending the meeting stops it with MEETING_ENDED
            await host.request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
            await wait_ended(host)
            await mh.wait_for(lambda: len(mh.recordings_stopped) == 2)
            assert mh.recordings_stopped[1].participant_id == host.participant_id
            assert mh.recordings_stopped[1].reason == common_pb2.MEETING_ENDED


async def test_the_meeting_stops_being_recorded_when_its_last_recorded_participant_leaves(
    tmp_path: pathlib.Path,
) -> None:
    async with open_stack(tmp_path) as stack:
        mh = stack.mh
        await stack.assign("m", recording_enabled=True)
        async with stack.join("m", Role.HOST) as host:
            async with stack.join("m") as bob:
                await publish(bob, "cam")
                assert (await next_event(host, "recording_status")).recording_status.recording
                await bob.leave()
            assert not (await next_event(host, "recording_status")).recording_status.recording
            await mh.wait_for(lambda: len(mh.recordings_stopped) == 1)
            stopped = mh.recordings_stopped[0]
            assert (stopped.participant_id, stopped.reason) == (
                bob.participant_id,
                common_pb2.VOLUNTARY,
            )
            async with stack.join("m") as carol:
                assert not carol.join_response.recording


async def test_a_recording_the_media_handler_refuses_does_not_refuse_the_publish(
    tmp_path: pathlib.Path,
) -> None:
    """No processor free: the publish is acknowledged, nobody is told of a recording, and the
    next publish asks again."""
    async with open_stack(tmp_path) as stack:
        mh = stack.mh
        mh.refuse_recording = CapacityExceeded("no media processor")
        await stack.assign("m", recording_enabled=True)
        async with stack.join("m", Role.HOST) as host:
            await publish(host, "cam")
            await mh.wait_for(lambda: len(mh.recordings_started) == 1)
            state = member(stack, "m", host.participant_id)
            task = state.handle.stream(RECORDING)  # the stream task that asked: ends after
            if task is not None:
                with trio.fail_after(WAIT_S):
                    await task.wait_closed()
            assert not state.recording_pending and state.recording_id == ""
            async with stack.join("m") as bob:
                assert not bob.join_response.recording
            mh.refuse_recording = None
            await publish(host, "mic", common_pb2.AUDIO)
            await mh.wait_for(lambda: len(mh.recordings_started) == 2)
            assert mh.recordings_started[1].recording_id == f"{host.participant_id}-2"
            assert (await next_event(host, "recording_status")).recording_status.recording
        await mh.wait_for(lambda: len(mh.recordings_stopped) == 1)


async def test_no_recording_without_the_setting_nor_with_end_to_end_encryption(
    tmp_path: pathlib.Path,
) -> None:
    """The server cannot read end-to-end encrypted media: such a meeting is never recorded
    (the GC refuses to create one with recording_enabled; an MC told so records nothing)."""
    async with open_stack(tmp_path) as stack:
        await stack.assign("plain")
        await stack.assign("e2ee", recording_enabled=True, enable_e2e_encryption=True)
        async with (
            stack.join("plain") as plain,
            stack.join("e2ee", e2ee_public_key=b"k" * 32) as encrypted,
        ):
            assert not encrypted.join_response.recording
            for client, meeting_id in ((plain, "plain"), (encrypted, "e2ee")):
                await publish(client, "cam")
                # decided at the publish: nothing is under way
                state = member(stack, meeting_id, client.participant_id)
                assert not state.recording_pending and state.recording_id == ""
        assert stack.mh.recordings_started == []
        assert stack.mh.recordings_stopped == []
