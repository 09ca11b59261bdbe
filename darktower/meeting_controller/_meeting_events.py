"""The events of a meeting's life the MC reports for the GC's webhooks (docs/protocol.md §18.5),
on the controller's :class:`~._events.EventOutbox` (the stream events are ``_streams``'s).

- ``meeting_started``: the first participant joined the meeting here;
- ``meeting_ended``: a meeting that started here ended, by the host or the owner (``ended``)
  or empty (``empty``, docs/protocol.md §6); not when it moved to another MC or the MC
  drained (it goes on elsewhere);
- ``participant_joined`` / ``participant_left`` (with its leave reason): a join, not a resume;
  a reconnecting participant whose window passes leaves ``CONNECTION_LOST``. The streams a
  participant still publishes when it leaves are reported ``stream_unpublished`` before it.
"""

from __future__ import annotations

from darktower.model import LeaveReason, Role
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg

from ._events import new_event
from ._room import RoomMember, RoomState


def participant_joined(room: RoomState, member: RoomMember) -> None:
    """``member`` joined ``room`` (the meeting started with its first participant)."""
    if not room.started:
        room.started = True
        room.events.emit(new_event(room.id, meeting_started=reg.MeetingStartedEvent()))
    room.events.emit(new_event(room.id, participant_joined=_participant(member)))


def left_meeting(room: RoomState, member: RoomMember, reason: LeaveReason) -> None:
    """``member`` left ``room`` with ``reason``: its streams ended with it
    (``stream_unpublished`` each), then ``participant_left``."""
    for stream in member.streams.values():
        room.events.emit(
            new_event(
                room.id,
                stream_unpublished=reg.StreamEvent(participant_id=member.id, stream=stream),
            )
        )
    event = _participant(member)
    event.reason = leave_reason_to_pb(reason)
    room.events.emit(new_event(room.id, participant_left=event))


def meeting_ended(room: RoomState) -> None:
    """``room``'s scope closed: reported if the meeting started here and was ended (not moved
    nor drained)."""
    if room.started and room.end_kind:
        room.events.emit(
            new_event(room.id, meeting_ended=reg.MeetingEndedEvent(reason=room.end_kind))
        )


def _participant(member: RoomMember) -> reg.ParticipantEvent:
    return reg.ParticipantEvent(
        participant_id=member.id, name=member.name, host=member.role is Role.HOST
    )


__all__ = ["left_meeting", "meeting_ended", "participant_joined"]
