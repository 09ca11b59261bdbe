"""Publication state (docs/protocol.md §18.1): what each participant publishes and may publish,
as every member sees it.

The MC keeps one :class:`Publication` per member: the participant's own switches
(``audio_muted``, ``video_off``, set with ``SetPublicationState``), ``sharing`` (kept by the MC
while the participant publishes a ``VIDEO_SCREEN`` stream) and the host's blocks
(``*_blocked``: from the join token's ``pub`` claim, then from moderation, ``_moderation``).
A blocked kind is refused at publish and at unmute with ``FORBIDDEN``
(``details.reason = "blocked_by_host"``). Every change goes to every member, the participant
itself included, as ``ParticipantUpdated`` with the participant's whole state (connection and
publication).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from darktower.errors import Forbidden
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

if TYPE_CHECKING:
    from ._room import RoomMember, RoomState

# details.reason of a publish or an unmute the host forbids.
BLOCKED_BY_HOST = "blocked_by_host"
# The join token's ``pub`` kinds (darktower.protocol.tokens.PUBLISH_KINDS) by stream type.
KIND_OF_TYPE: dict[int, str] = {
    common_pb2.AUDIO: "audio",
    common_pb2.VIDEO_CAMERA: "video",
    common_pb2.VIDEO_SCREEN: "screen",
}


@attrs.define(slots=True)
class Publication:
    """One member's publication state (plain booleans: a stored protobuf message costs more)."""

    audio_muted: bool = False
    video_off: bool = False
    sharing: bool = False
    audio_blocked: bool = False
    video_blocked: bool = False
    screen_blocked: bool = False

    @classmethod
    def allowing(cls, kinds: frozenset[str] | None) -> Publication:
        """The state a participant starts with whose join token allows ``kinds`` (None: all).
        A kind it may not publish starts blocked, and muted (or off) as a host's block
        leaves it."""
        if kinds is None:
            return cls()
        audio, video = "audio" not in kinds, "video" not in kinds
        return cls(
            audio_muted=audio,
            video_off=video,
            audio_blocked=audio,
            video_blocked=video,
            screen_blocked="screen" not in kinds,
        )

    def blocked(self, stream_type: int) -> bool:
        kind = KIND_OF_TYPE.get(stream_type)
        return (
            (kind == "audio" and self.audio_blocked)
            or (kind == "video" and self.video_blocked)
            or (kind == "screen" and self.screen_blocked)
        )

    def to_pb(self) -> common_pb2.PublicationState:
        return common_pb2.PublicationState(
            audio_muted=self.audio_muted,
            video_off=self.video_off,
            sharing=self.sharing,
            audio_blocked=self.audio_blocked,
            video_blocked=self.video_blocked,
            screen_blocked=self.screen_blocked,
        )


def blocked_error(what: str) -> Forbidden:
    return Forbidden(f"the host does not allow you to {what}", details={"reason": BLOCKED_BY_HOST})


def check_publish(member: RoomMember, stream_type: int) -> None:
    """FORBIDDEN (blocked_by_host) if ``member`` may not publish a stream of ``stream_type``."""
    if member.publication.blocked(stream_type):
        kind = KIND_OF_TYPE.get(stream_type, "media")
        raise blocked_error(f"publish {kind}")


def updated(member: RoomMember) -> sig.ServerMessage:
    """``ParticipantUpdated`` with ``member``'s whole current state."""
    return sig.ServerMessage(
        participant_updated=sig.ParticipantUpdated(
            participant_id=member.id,
            connection=sig.RECONNECTING if member.reconnecting else sig.CONNECTED,
            publication=member.publication.to_pb(),
        )
    )


def announce(room: RoomState, member: RoomMember) -> None:
    """Tell every member, ``member`` included, its state now."""
    room.broadcast(updated(member))


def set_own(member: RoomMember, request: sig.SetPublicationState) -> bool:
    """Apply the participant's own switches; True if anything changed. FORBIDDEN (nothing
    changed) to unmute a blocked kind."""
    state = member.publication
    if state.audio_blocked and state.audio_muted and not request.audio_muted:
        raise blocked_error("unmute your microphone")
    if state.video_blocked and state.video_off and not request.video_off:
        raise blocked_error("turn your camera on")
    if (state.audio_muted, state.video_off) == (request.audio_muted, request.video_off):
        return False
    state.audio_muted, state.video_off = request.audio_muted, request.video_off
    return True


def streams_changed(room: RoomState, member: RoomMember) -> None:
    """``member`` published or unpublished a stream: ``sharing`` follows its screen streams
    (announced when it changes)."""
    sharing = any(s.stream_type == common_pb2.VIDEO_SCREEN for s in member.streams.values())
    if sharing != member.publication.sharing:
        member.publication.sharing = sharing
        announce(room, member)


__all__ = [
    "BLOCKED_BY_HOST",
    "Publication",
    "announce",
    "check_publish",
    "set_own",
    "streams_changed",
    "updated",
]
