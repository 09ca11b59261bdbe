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


class StreamType(enum.IntEnum):
    """Contract ``StreamType``."""

    AUDIO = 0
    VIDEO_CAMERA = 1
    VIDEO_SCREEN = 2


class Role(enum.StrEnum):
    """Participant role carried in a join token."""

    HOST = "host"
    GUEST = "guest"
