"""The state of one meeting on the MC: its members, their streams and subscriptions.

Only the meeting's own tasks touch it, and never across a checkpoint between a read and the
write that depends on it, so it needs no lock (trio is cooperative).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import attrs
import trio

from darktower.errors import Conflict, Forbidden, InternalError
from darktower.model import LeaveReason, MeetingId, ParticipantId, Role
from darktower.nurseries import Meeting, Participant
from darktower.protocol.pb.v1 import common_pb2, meeting_control_pb2, signaling_pb2
from darktower.protocol.ratelimit import TokenBucket

from ._chat import ChatHistory
from ._events import EventOutbox
from ._limits import CHAT_BURST, CHAT_PER_S, MAX_MH_CALLS, ROOM_CHAT_BURST, ROOM_CHAT_PER_S
from ._publication import Publication

if TYPE_CHECKING:
    from ._mh import MediaLink
    from ._session import SignalingSession

# One outbox entry: a message, or messages written back to back with nothing in between (a
# JoinResponse and its ParticipantsBatch messages), which take one slot of the queue.
Outgoing: TypeAlias = signaling_pb2.ServerMessage | tuple[signaling_pb2.ServerMessage, ...]
T = TypeVar("T")


@attrs.define(eq=False)
class Removal:
    """A stream of a member being removed at the Media Handler (``_streams.end_stream``): out
    of its ``streams`` meanwhile, back in them if the removal fails; ``done`` is set either
    way."""

    stream: common_pb2.MediaStream
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class RoomMember:
    """One participant of a meeting: what the others are told about it, and its outbox."""

    id: ParticipantId
    name: str
    role: Role
    joined_at_us: int
    public_key: bytes
    key_id: str
    # Bounded (settings.outbound_queue_size); full = slow reader, the member is dropped.
    outbox: trio.MemorySendChannel[Outgoing]
    # Where its media goes, told in the JoinResponse only (kept as plain strings: a stored
    # protobuf message costs about 0.5 KB per member).
    media_handler_url: str
    connection_token: str
    # The Media Handler its last connection token was for (the room's, unless it moved since).
    mh: MediaLink | None = None
    # The join token's ``jti`` and until when (wall clock, leeway included) it is valid.
    token_id: str = ""
    token_valid_until: float = 0.0
    streams: dict[str, common_pb2.MediaStream] = attrs.field(factory=dict)
    # Its streams being removed at the MH now, by stream id (a moderation or an unpublish of
    # one waits for it: docs/protocol.md §18.2).
    removing: dict[str, Removal] = attrs.field(factory=dict)
    subscriptions: dict[str, signaling_pb2.SubscriptionOptions] = attrs.field(factory=dict)
    # What its JoinRequest's capabilities said (docs/protocol.md §2.2): the video codecs it
    # decodes (empty: any) and how many video streams it receives at once (0: no limit).
    video_codecs: tuple[str, ...] = ()
    max_video_streams: int = 0
    # Its video subscriptions (counted against max_video_streams).
    video_subscriptions: set[str] = attrs.field(factory=set)
    # Subscriptions answered with a stream the server makes (a transcode, its mix): the
    # subscription's stream id (or "" for the mix asked for with mix_audio) -> that stream.
    derived: dict[str, signaling_pb2.DerivedStream] = attrs.field(factory=dict)
    # Its audio mix while one is routed to it (the same object as its entries in ``derived``).
    mix: signaling_pb2.DerivedStream | None = None
    mix_refused: bool = False  # the MH refused an automatic mix: not asked again for it
    # Its recording at the MH (docs/protocol.md §2.1): the id of the one running ("" none),
    # how many it started (names the next) and whether a StartRecording is under way.
    recording_id: str = ""
    recordings: int = 0
    recording_pending: bool = False
    handle: Participant | None = None
    session: SignalingSession | None = None
    # Its signaling connection is lost and it may resume (docs/protocol.md §13): events for it
    # are dropped (a resume gets the room as it is then), its streams pause.
    reconnecting: bool = False
    # What the session's end writes before SessionEnded: a final error (abuse, bad input).
    final_error: signaling_pb2.ServerMessage | None = None
    end_request_id: int = 0  # the LeaveRequest / EndMeeting that ended the session, if any
    end_message: str = ""
    close_code: int = 0
    overflowed: bool = False
    media_released: bool = False
    # What it publishes and may publish (docs/protocol.md §18.1).
    publication: Publication = attrs.field(factory=Publication)
    # The moderations of it while it was reconnecting, merged into one Moderated (each action
    # once, the last host and message), sent to it after its resumed JoinResponse: its
    # streams a host ended meanwhile must end at the client too (docs/protocol.md §18.2).
    missed_moderation: signaling_pb2.Moderated | None = None
    # Its chat budget (docs/protocol.md §18.3; a resume does not refill it).
    chat_bucket: TokenBucket = attrs.field(factory=lambda: TokenBucket(CHAT_PER_S, CHAT_BURST))

    def to_pb(self, *, e2ee: bool) -> signaling_pb2.Participant:
        info = signaling_pb2.Participant(
            participant_id=self.id,
            name=self.name,
            streams=list(self.streams.values()),
            joined_at=self.joined_at_us,
            publication=self.publication.to_pb(),
            host=self.role is Role.HOST,
            connection=(
                signaling_pb2.RECONNECTING if self.reconnecting else signaling_pb2.CONNECTED
            ),
        )
        if e2ee:
            info.public_key = self.public_key
            info.key_id = self.key_id
        return info

    def leave(self, reason: LeaveReason) -> None:
        if self.handle is not None:
            self.handle.leave(reason)

    def drop_subscription(self, stream_id: str) -> signaling_pb2.DerivedStream | None:
        """Forget the subscription to ``stream_id`` (if any); return the stream that carried
        it when it was not the source itself."""
        self.subscriptions.pop(stream_id, None)
        self.video_subscriptions.discard(stream_id)
        return self.derived.pop(stream_id, None)


@attrs.define(eq=False)
class RoomState:
    """A meeting assigned to this MC (its scope is the tree's meeting)."""

    id: MeetingId
    config: meeting_control_pb2.MeetingConfig
    scope: Meeting
    mh: MediaLink | None = None
    members: dict[ParticipantId, RoomMember] = attrs.field(factory=dict)
    next_key_id: int = 1
    end_message: str = ""
    overflows: int = 0
    # Join-token ids (jti) of live sessions: one session per token (docs/protocol.md).
    live_tokens: set[str] = attrs.field(factory=set)
    # jti of kicked participants -> until when it is refused (the token's own validity):
    # bounded by the tokens that can still be presented, swept at every ban.
    banned_tokens: dict[str, float] = attrs.field(factory=dict)
    # Set and replaced whenever a member joins or leaves (the empty-meeting timer waits on it).
    membership_changed: trio.Event = attrs.field(factory=trio.Event)
    # This incarnation of the meeting's room (creation time, ns): sent in every
    # RegisterParticipant, so an MH still holding a room of an older one (this MC restarted,
    # or another MC held the meeting) starts afresh (docs/architecture.md §4.6).
    epoch: int = attrs.field(factory=time.time_ns)
    # A subscriber of an audio stream gets its mix instead when the meeting has more audio
    # publishers than this (0: never; docs/protocol.md §2.2).
    mix_above: int = 0
    # Members whose recording runs (docs/protocol.md §2.1): the meeting is being recorded.
    recorded: set[ParticipantId] = attrs.field(factory=set)
    # The MH's last speaker list (docs/protocol.md §17.4), for a member that joins after it.
    speakers: list[str] = attrs.field(factory=list)
    # Where its events for the GC's webhooks go (the controller's; docs/protocol.md §18.5).
    events: EventOutbox = attrs.field(factory=EventOutbox)
    # A participant has joined it here (meeting_started was reported), and how it ends:
    # "ended" (the host or the owner), "empty" (docs/protocol.md §6), "" (moved, drained).
    started: bool = False
    end_kind: str = ""
    # Its chat so far, bounded (docs/protocol.md §18.3), the meeting's chat budget (all its
    # senders together), and the chat messages not queued for a member with a full outbox.
    chat: ChatHistory = attrs.field(factory=ChatHistory)
    chat_bucket: TokenBucket = attrs.field(
        factory=lambda: TokenBucket(ROOM_CHAT_PER_S, ROOM_CHAT_BURST)
    )
    chat_skipped: int = 0

    @property
    def records(self) -> bool:
        """Whether its participants are recorded: the meeting's setting, never with end-to-end
        encryption (the server cannot read its media)."""
        return self.config.recording_enabled and not self.e2ee

    def audio_publishers_above(self, count: int) -> bool:
        """Whether more than ``count`` members publish audio (stops counting there)."""
        seen = 0
        for member in self.members.values():
            if any(s.stream_type == common_pb2.AUDIO for s in member.streams.values()):
                seen += 1
                if seen > count:
                    return True
        return False

    @property
    def e2ee(self) -> bool:
        return self.config.enable_e2e_encryption

    def claim_token(self, token_id: str, now: float) -> None:
        """Reserve ``token_id`` for a session; Forbidden if kicked, Conflict if in use."""
        until = self.banned_tokens.get(token_id)
        if until is not None and until > now:
            raise Forbidden("this join token was removed from the meeting")
        if token_id in self.live_tokens:
            raise Conflict("this join token is already in use by a live session")
        self.live_tokens.add(token_id)

    def release_token(self, token_id: str) -> None:
        self.live_tokens.discard(token_id)

    def ban_token(self, token_id: str, until: float, now: float) -> None:
        """Refuse ``token_id`` until ``until`` (the token expires then anyway)."""
        for expired in [t for t, end in self.banned_tokens.items() if end <= now]:
            del self.banned_tokens[expired]
        if until > now:
            self.banned_tokens[token_id] = until

    def membership_change(self) -> None:
        self.membership_changed.set()
        self.membership_changed = trio.Event()

    def deliver(self, member: RoomMember, message: Outgoing) -> None:
        """Queue ``message`` for ``member`` without waiting; a full queue drops the member.
        Nothing is queued for a reconnecting member."""
        if member.reconnecting:
            return
        try:
            member.outbox.send_nowait(message)
        except trio.WouldBlock:
            member.overflowed = True
            self.overflows += 1
            member.leave(LeaveReason.CONNECTION_LOST)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the member is leaving: its writer is gone

    def broadcast(
        self, message: signaling_pb2.ServerMessage, *, skip: ParticipantId | None = None
    ) -> None:
        for member in list(self.members.values()):
            if member.id != skip:
                self.deliver(member, message)

    def publisher_of(self, stream_id: str) -> RoomMember | None:
        for member in self.members.values():
            if stream_id in member.streams:
                return member
        return None

    def id_in_use(self, ids: set[str]) -> str | None:
        """One of ``ids`` a published stream of the room uses already, as its stream id or a
        simulcast layer's, else None: stream and layer ids are one id space per room, so no
        participant can publish under an id another's media is known by (clients map wire ids
        to publishers by them, docs/protocol.md §16)."""
        for member in self.members.values():
            for stream in member.streams.values():
                taken = ids & stream_ids(stream)
                if taken:
                    return next(iter(taken))
        return None

    def subscribers_of(self, stream_id: str) -> Iterator[RoomMember]:
        return (m for m in self.members.values() if stream_id in m.subscriptions)


async def at_room_mh(room: RoomState, call: Callable[[MediaLink], Awaitable[T]]) -> T:
    """``call`` the room's Media Handler and return its answer; if the room moved to another
    MH meanwhile, call that one too (the moved members' state may have been replayed there
    before this change: docs/architecture.md §4.6) and return the last answer, at most
    MAX_MH_CALLS times. InternalError without an MH."""
    mh = _assigned(room)
    answer = await call(mh)
    for _ in range(MAX_MH_CALLS - 1):
        moved = _assigned(room)
        if moved is mh:
            break
        answer = await call(moved)
        mh = moved
    return answer


def _assigned(room: RoomState) -> MediaLink:
    if room.mh is None:
        raise InternalError("no media handler is assigned to this meeting")
    return room.mh


def stream_ids(stream: common_pb2.MediaStream) -> set[str]:
    """A stream's id and its simulcast layers' ids."""
    return {stream.stream_id, *(la.layer_id for la in stream.metadata.video.simulcast_layers)}
