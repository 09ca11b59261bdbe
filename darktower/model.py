"""Typed identifiers, enums and defaults shared by every layer (no I/O, no trio)."""

from __future__ import annotations

import enum
from typing import Final, NewType

MeetingId = NewType("MeetingId", str)
ParticipantId = NewType("ParticipantId", str)
StreamId = NewType("StreamId", str)  # UUID string form; also a simulcast layer_id
ControllerId = NewType("ControllerId", str)
ClientId = NewType("ClientId", str)

# A meeting's participant cap when its creator names none (docs/protocol.md, REST: the GC's
# default for "max_participants"; the MC applies it to a meeting whose config says 0).
DEFAULT_MAX_PARTICIPANTS: Final = 100


class LeaveReason(enum.IntEnum):
    """Why a participant left (contract ``LeaveReason``; values equal the protobuf enum)."""

    VOLUNTARY = 0
    KICKED = 1
    CONNECTION_LOST = 2
    MEETING_ENDED = 3
    # Our addition: the participant's Meeting Controller is shutting down (a drain); the meeting
    # goes on and the client rejoins it through the Global Controller (docs/protocol.md §13).
    SERVER_SHUTDOWN = 4


# What a SessionEnded says when nothing more particular is known (a kick's or the end's own
# message wins): every end of a session carries a message (docs/protocol.md §9).
LEAVE_MESSAGES: Final[dict[LeaveReason, str]] = {
    LeaveReason.VOLUNTARY: "you left the meeting",
    LeaveReason.KICKED: "removed from the meeting",
    LeaveReason.CONNECTION_LOST: "the connection was lost",
    LeaveReason.MEETING_ENDED: "the meeting has ended",
    LeaveReason.SERVER_SHUTDOWN: (
        "the meeting controller is shutting down: the meeting goes on, rejoin it through the "
        "Global Controller"
    ),
}


class StreamType(enum.IntEnum):
    """Contract ``StreamType``."""

    AUDIO = 0
    VIDEO_CAMERA = 1
    VIDEO_SCREEN = 2


class Role(enum.StrEnum):
    """Participant role carried in a join token."""

    HOST = "host"
    GUEST = "guest"
