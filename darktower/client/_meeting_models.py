"""The meeting as people use it (docs/protocol.md §18), as a session tells its application:
publication state, moderation and chat. Frozen attrs models built from the signaling
protobufs at the edge; nothing here does I/O.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Iterable
from typing import Final

import attrs

from darktower.model import StreamType
from darktower.protocol._bounds import MAX_CHAT_TEXT_CHARS, MAX_ID_CHARS, MAX_NAME_CHARS
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

# Limit: what one Moderated message from the MC is taken for (a host names each action at most
# once, docs/protocol.md §18.2); the rest is ignored.
MAX_ACTIONS: Final = 6


@attrs.frozen
class PublicationState:
    """What a participant publishes and may publish, as every member sees it (docs/protocol.md
    §18.1): ``audio_muted`` and ``video_off`` are its own switches (a host's moderation sets
    them too); ``sharing`` is set by the MC while it publishes a screen; a ``*_blocked`` kind is
    one a host forbids (publishing or unmuting it is refused, Forbidden) until allowed again."""

    audio_muted: bool = False
    video_off: bool = False
    sharing: bool = False
    audio_blocked: bool = False
    video_blocked: bool = False
    screen_blocked: bool = False

    @classmethod
    def from_pb(cls, state: common_pb2.PublicationState) -> PublicationState:
        return cls(
            audio_muted=state.audio_muted,
            video_off=state.video_off,
            sharing=state.sharing,
            audio_blocked=state.audio_blocked,
            video_blocked=state.video_blocked,
            screen_blocked=state.screen_blocked,
        )

    @classmethod
    def from_json(cls, body: object) -> PublicationState:
        """From the REST API's ``publication`` object (docs/protocol.md §18.2); a missing or
        non-boolean field is False."""
        fields = body if isinstance(body, dict) else {}
        return cls(**{f.name: fields.get(f.name) is True for f in attrs.fields(cls)})

    @classmethod
    def granted(cls, may_publish: Iterable[str] | None) -> PublicationState:
        """The state a participant starts with, given its join token's ``pub`` claim (None:
        every kind allowed): the kinds it does not name are blocked (and muted, off)."""
        if may_publish is None:
            return cls()
        kinds = set(may_publish)
        return cls(
            audio_muted="audio" not in kinds,
            video_off="video" not in kinds,
            audio_blocked="audio" not in kinds,
            video_blocked="video" not in kinds,
            screen_blocked="screen" not in kinds,
        )

    def silenced(self, stream_type: StreamType) -> bool:
        """Whether the participant's own switch keeps ``stream_type`` from sending frames: a
        muted microphone, a camera turned off (a screen has no switch)."""
        if stream_type is StreamType.AUDIO:
            return self.audio_muted
        return stream_type is StreamType.VIDEO_CAMERA and self.video_off


class ModerationAction(enum.Enum):
    """What a host does to a participant's publications (docs/protocol.md §18.2); the values
    are the REST API's names."""

    MUTE_AUDIO = "mute_audio"  # ends its audio streams, mutes and blocks audio
    STOP_VIDEO = "stop_video"  # ends its camera streams, turns video off and blocks it
    STOP_SCREEN = "stop_screen"  # ends its screen shares, blocks sharing
    ALLOW_AUDIO = "allow_audio"  # lifts the block (the participant unmutes itself)
    ALLOW_VIDEO = "allow_video"
    ALLOW_SCREEN = "allow_screen"

    def to_pb(self) -> common_pb2.ModerationAction.ValueType:
        return _ACTIONS_TO_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> ModerationAction | None:
        """None for MODERATION_ACTION_UNSPECIFIED or a newer MC's action."""
        return _ACTIONS_FROM_PB.get(value)

    @property
    def stops(self) -> StreamType | None:
        """The kind of stream this action ends (None for an ALLOW_* action)."""
        return _STOPS.get(self)


_ACTIONS_TO_PB: Final = {
    ModerationAction.MUTE_AUDIO: common_pb2.MODERATION_MUTE_AUDIO,
    ModerationAction.STOP_VIDEO: common_pb2.MODERATION_STOP_VIDEO,
    ModerationAction.STOP_SCREEN: common_pb2.MODERATION_STOP_SCREEN,
    ModerationAction.ALLOW_AUDIO: common_pb2.MODERATION_ALLOW_AUDIO,
    ModerationAction.ALLOW_VIDEO: common_pb2.MODERATION_ALLOW_VIDEO,
    ModerationAction.ALLOW_SCREEN: common_pb2.MODERATION_ALLOW_SCREEN,
}
_ACTIONS_FROM_PB: Final = {int(v): k for k, v in _ACTIONS_TO_PB.items()}
_STOPS: Final = {
    ModerationAction.MUTE_AUDIO: StreamType.AUDIO,
    ModerationAction.STOP_VIDEO: StreamType.VIDEO_CAMERA,
    ModerationAction.STOP_SCREEN: StreamType.VIDEO_SCREEN,
}


@attrs.frozen
class PublicationChanged:
    """A participant's :class:`PublicationState` changed (docs/protocol.md §18.1): another
    participant's (``ParticipantInfo.publication`` is the new one too) or this session's own
    (``own``; :attr:`MeetingSession.publication` is the new one)."""

    participant_id: str
    publication: PublicationState
    before: PublicationState
    own: bool = False


@attrs.frozen
class Moderated:
    """A host moderated this session (docs/protocol.md §18.2): ``by`` the host's participant id
    (empty: the meeting's owner, through the REST API), the ``actions``, the host's ``message``
    and this session's state now (:attr:`MeetingSession.publication`). The MH has ended the
    publications of the kinds stopped; the session closed them (``Publication.ended_by_host``):
    their ``send_frame`` raises trio.ClosedResourceError. Once the host allows the kind again
    (a :class:`PublicationChanged` clears the block), publish it anew."""

    by: str
    actions: tuple[ModerationAction, ...]
    message: str
    publication: PublicationState

    @classmethod
    def from_pb(cls, m: sig.Moderated) -> Moderated:
        actions = (ModerationAction.from_pb(a) for a in m.actions[:MAX_ACTIONS])
        return cls(
            by=m.by_participant_id[:MAX_ID_CHARS],
            actions=tuple(a for a in actions if a is not None),
            message=m.message,
            publication=PublicationState.from_pb(m.publication),
        )


@attrs.frozen
class ChatMessage:
    """A chat message as the MC relays and keeps it (docs/protocol.md §18.3): to everyone, or
    to one participant (``to_participant_id``; :attr:`private`). ``sent_at_us`` is the MC's
    clock, microseconds since the Unix epoch. Also the event of a message this session had not
    seen (a live one, or one of the history a join or a resume brings)."""

    message_id: str
    from_participant_id: str
    from_name: str
    text: str
    sent_at_us: int
    to_participant_id: str = ""

    @property
    def private(self) -> bool:
        return bool(self.to_participant_id)

    @classmethod
    def from_pb(cls, m: sig.ChatMessage) -> ChatMessage:
        """Fields cut to the signaling bounds (docs/protocol.md §3): a hostile MC's oversized
        message costs no more than a valid one."""
        return cls(
            message_id=m.message_id[:MAX_ID_CHARS],
            from_participant_id=m.from_participant_id[:MAX_ID_CHARS],
            from_name=m.from_name[:MAX_NAME_CHARS],
            text=m.text[:MAX_CHAT_TEXT_CHARS],
            sent_at_us=m.sent_at,
            to_participant_id=m.to_participant_id[:MAX_ID_CHARS],
        )


def may_publish_of(join_token: str) -> frozenset[str] | None:
    """The ``pub`` claim of a join token, unverified (what the MC starts the participant with,
    docs/protocol.md §18.2): None when absent (every kind) or unreadable."""
    try:
        payload = join_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        pub = claims.get("pub")
    except (IndexError, ValueError, AttributeError):
        return None
    if not isinstance(pub, list) or not all(isinstance(kind, str) for kind in pub):
        return None
    return frozenset(pub)


__all__ = [
    "ChatMessage",
    "Moderated",
    "ModerationAction",
    "PublicationChanged",
    "PublicationState",
    "may_publish_of",
]
