"""The JoinResponse split over several messages (docs/protocol.md, "Signaling limits").

A meeting's participant list outgrows one 64 KiB message long before ``max_participants``
(about 130 participants with 3-layer simulcast): the JoinResponse carries the first
participants and ``participant_batches``, the number of ``ParticipantsBatch`` messages that
follow it with the rest, the last one ``final``. Every participant is bounded (the signaling
bounds), so each fits a message on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from darktower.protocol import MAX_MESSAGE_SIZE
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._publication import Publication, updated
from ._room import RoomMember, RoomState

# Room left in each message for what the size estimate below does not count: the envelope's
# length varint growing with the body, participant_batches, final and protocol_version (stamped
# when the message is written).
ENVELOPE_SLACK: Final = 32
MESSAGE_BUDGET: Final = MAX_MESSAGE_SIZE - ENVELOPE_SLACK


def _entry_size(size: int) -> int:
    """Bytes of one repeated-field entry of ``size`` bytes: tag, length varint, body."""
    return 1 + (size.bit_length() + 6) // 7 + size if size else 2


def join_messages(
    request_id: int, response: sig.JoinResponse, participants: Sequence[sig.Participant]
) -> tuple[sig.ServerMessage, ...]:
    """The JoinResponse (``request_id``) with ``participants``, then the ParticipantsBatch
    messages that do not fit it; each message at most MESSAGE_BUDGET bytes."""
    batches: list[list[sig.Participant]] = [[]]
    used = sig.ServerMessage(request_id=request_id, join_response=response).ByteSize()
    for participant in participants:
        cost = _entry_size(participant.ByteSize())
        if used + cost > MESSAGE_BUDGET and batches[-1]:
            batches.append([])
            used = sig.ServerMessage(
                request_id=request_id, participants_batch=sig.ParticipantsBatch(final=True)
            ).ByteSize()
        batches[-1].append(participant)
        used += cost
    response.existing_participants.extend(batches[0])
    response.participant_batches = len(batches) - 1
    messages = [sig.ServerMessage(request_id=request_id, join_response=response)]
    for index, batch in enumerate(batches[1:], start=2):
        messages.append(
            sig.ServerMessage(
                request_id=request_id,
                participants_batch=sig.ParticipantsBatch(
                    participants=batch, final=index == len(batches)
                ),
            )
        )
    return tuple(messages)


def catch_up(room: RoomState, member: RoomMember) -> None:
    """Queue for ``member``, right after its JoinResponse and batches, what they do not say:
    the moderations of it it missed while reconnecting (one ``Moderated``, its state now:
    the client ends its publications of a kind stopped meanwhile, even if allowed again);
    its own publication state unless it is the initial one and nothing moderated it (a kind blocked at join, or a
    moderation while it was reconnecting: docs/protocol.md §18.1, §18.2; the server never
    unmutes, and a block lifted leaves its kind muted, so a state that is the initial one now
    was so when it left), each reconnecting member's ``ParticipantUpdated``
    (docs/protocol.md §13) and who speaks now (the list is sent on a change only,
    docs/protocol.md §17.4)."""
    missed = member.missed_moderation
    if missed is not None:
        member.missed_moderation = None
        missed.publication.CopyFrom(member.publication.to_pb())
        room.deliver(member, sig.ServerMessage(moderated=missed))
    if missed is not None or member.publication != Publication():
        room.deliver(member, updated(member))
    for other in list(room.members.values()):
        if other.reconnecting and other is not member:
            room.deliver(member, updated(other))
    speakers = [p for p in room.speakers if p in room.members]
    if speakers:
        room.deliver(
            member,
            sig.ServerMessage(active_speakers=sig.ActiveSpeakers(participant_ids=speakers)),
        )
