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
