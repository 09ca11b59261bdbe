"""Recording a meeting's participants (docs/protocol.md §2.1).

In a meeting whose settings have ``recording_enabled`` (never with end-to-end encryption),
each participant is recorded by its Media Handler, through a media processor
(docs/architecture.md §10), from the first stream it publishes until it leaves: StartRecording
when it publishes while not recorded, StopRecording with its leave reason. The meeting is
"being recorded" while at least one of these recordings runs: the JoinResponse says so
(``recording``) and every participant gets ``RecordingStatus`` when that changes. A recording
the MH refuses (no processor free: CAPACITY_EXCEEDED) is logged and counted; the publish
goes on, nothing is said to the participants (no recording runs for it), and it is asked
again at the participant's next publish.
"""

from __future__ import annotations

import logging

import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.model import LeaveReason
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import new_event
from ._limits import RECORDING_STOP_DEADLINE_S
from ._metrics import ControllerMetrics
from ._mh import MediaLink
from ._room import RoomMember, RoomState, at_room_mh

logger = logging.getLogger("darktower.meeting_controller")

# The stream task of a participant scope that starts its recording.
RECORDING = "recording"


def wanted(room: RoomState, member: RoomMember) -> bool:
    """Whether ``member`` should be recorded and is not (nor being started)."""
    return (
        room.records
        and bool(member.streams)
        and not member.recording_id
        and not member.recording_pending
    )


def start_soon(room: RoomState, member: RoomMember, metrics: ControllerMetrics) -> None:
    """Start ``member``'s recording from a stream task of its participant scope (a publish is
    not held up by it; the scope's end cancels it), if it should be recorded."""
    participant = member.handle
    if (
        not wanted(room, member)
        or participant is None
        or participant.reason is not None
        or participant.stream(RECORDING) is not None
    ):
        return
    member.recording_pending = True
    participant.start_stream_soon(RECORDING, start, room, member, metrics, None)


async def start(
    room: RoomState, member: RoomMember, metrics: ControllerMetrics, mh: MediaLink | None
) -> None:
    """StartRecording for ``member`` at ``mh`` (default: the room's MH, followed if the room
    moves), recording id ``<participant_id>-<n>``; a refusal is logged and counted
    (``darktower_mc_errors_total{code="RECORDING_REFUSED"}``), never raised."""
    member.recording_pending = True
    member.recordings += 1
    recording_id = f"{member.id}-{member.recordings}"
    request = mh_pb.StartRecordingRequest(
        meeting_id=room.id,
        participant_id=member.id,
        participant_name=member.name,
        recording_id=recording_id,
    )
    try:
        if mh is None:
            await at_room_mh(room, lambda link: link.start_recording(request))
        else:
            await mh.start_recording(request)
    except DarkTowerError as exc:
        metrics.errors.inc(1, "RECORDING_REFUSED")
        logger.warning(
            "recording refused by the media handler",
            extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
        )
        return
    finally:
        member.recording_pending = False
    member.recording_id = recording_id
    logger.info(
        "recording started",
        extra=fields(meeting_id=room.id, participant_id=member.id, recording_id=recording_id),
    )
    if room.members.get(member.id) is member:
        _recorded(room, member, True)


async def stop(room: RoomState, member: RoomMember, mh: MediaLink, reason: LeaveReason) -> None:
    """StopRecording for a leaving ``member`` with ``reason`` if it is recorded (or being
    started), at most RECORDING_STOP_DEADLINE_S; never raises (the MH ends the recording of a
    participant it removes anyway, with the same reason). Then a recording that ran is
    reported ``recording_finished`` for the GC's webhooks (docs/protocol.md §18.5); one still
    being started has no id yet and is not."""
    if not member.recording_id and not member.recording_pending:
        return
    with trio.move_on_after(RECORDING_STOP_DEADLINE_S):
        try:
            await mh.stop_recording(
                mh_pb.StopRecordingRequest(
                    meeting_id=room.id,
                    participant_id=member.id,
                    reason=leave_reason_to_pb(reason),
                )
            )
        except DarkTowerError as exc:
            logger.warning(
                "could not stop a recording at the media handler",
                extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
            )
    if member.recording_id:
        room.events.emit(
            new_event(
                room.id,
                recording_finished=reg.RecordingFinishedEvent(
                    recording_id=member.recording_id,
                    participant_id=member.id,
                    reason=leave_reason_to_pb(reason),
                ),
            )
        )


def left(room: RoomState, member: RoomMember, reason: LeaveReason) -> None:
    """``member`` left the room: it no longer counts as recorded (the others hear of it
    unless everyone is leaving)."""
    quiet = reason in (LeaveReason.MEETING_ENDED, LeaveReason.SERVER_SHUTDOWN)
    _recorded(room, member, False, tell=not quiet)


def _recorded(room: RoomState, member: RoomMember, on: bool, *, tell: bool = True) -> None:
    was = bool(room.recorded)
    if on:
        room.recorded.add(member.id)
    else:
        room.recorded.discard(member.id)
    if tell and bool(room.recorded) != was:
        room.broadcast(
            sig.ServerMessage(recording_status=sig.RecordingStatus(recording=bool(room.recorded)))
        )


__all__ = ["RECORDING", "left", "start", "start_soon", "stop", "wanted"]
