"""The MeetingController: meetings as task-tree scopes, sessions as participant scopes.

Owns no tasks of its own: meetings and sessions live in the :class:`TaskTree` it is given,
Media Handler links in :class:`MediaHandlers`. Leave, kick, connection loss and end are
cancellations of those scopes with their ``LeaveReason`` (docs/architecture.md §3.2).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import trio

from darktower.errors import (
    CapacityExceeded,
    DarkTowerError,
    InternalError,
    InvalidRequest,
    NotFound,
)
from darktower.logs import fields
from darktower.metrics import Registry
from darktower.model import DEFAULT_MAX_PARTICIPANTS, LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import ScopeClosed, TaskTree
from darktower.protocol import MessageDecoder
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.ratelimit import MessageRateLimiter
from darktower.protocol.tokens import MC_AUDIENCE, JoinClaims, JoinTokenVerifier, UnknownKeyId
from darktower.transport.rpc import RpcUnavailable

from . import _wire
from ._connection import Connection
from ._events import EventOutbox
from ._handshake import read_first, refuse
from ._limits import (
    EMPTY_MEETING_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_MEETINGS,
    MAX_NAME_CHARS,
    MAX_REVOKED_TOKENS,
    MIX_ABOVE_AUDIO_PUBLISHERS,
    OUTBOUND_QUEUE_SIZE,
    RESUME_GRACE_S,
)
from ._media_rooms import MediaRooms
from ._meeting_events import meeting_ended
from ._metrics import ControllerMetrics
from ._mh import MediaHandlers
from ._moderation import check_request, moderate
from ._port import SignalPort
from ._publication import Publication
from ._resume import ResumeRefused, ResumeTokens
from ._room import Outgoing, RoomMember, RoomState
from ._session import SignalingSession

logger = logging.getLogger("darktower.meeting_controller")

# JoinRequest.e2ee_public_key in an end-to-end encrypted meeting: an X25519 public key.
E2EE_PUBLIC_KEY_BYTES = 32
# ended_meeting_ids reported with the next heartbeat; bounded: older ones are dropped (the GC
# also learns of ends through EndMeeting replies and the meeting's absence in heartbeats).
MAX_ENDED_REPORTED = 1000


class MeetingController:
    """Meetings, sessions and signaling of one MC (see the module docstring)."""

    def __init__(
        self,
        tree: TaskTree,
        mhs: MediaHandlers,
        *,
        verifier: JoinTokenVerifier | None = None,
        registry: Registry | None = None,
        max_meetings: int = MAX_MEETINGS,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        outbound_queue_size: int = OUTBOUND_QUEUE_SIZE,
        token_audience: str = MC_AUDIENCE,
        empty_meeting_timeout_s: float = EMPTY_MEETING_TIMEOUT_S,
        resume_grace_s: float = RESUME_GRACE_S,
        mix_above_audio_publishers: int = MIX_ABOVE_AUDIO_PUBLISHERS,
    ) -> None:
        self.tree = tree
        self.mhs = mhs
        self.verifier = verifier
        # Set by the service when a Registration keeps the verifier's keys: learns the GC's
        # keys at once (see Registration.refresh_keys).
        self.refresh_keys: Callable[[], Awaitable[None]] | None = None
        self.rooms: dict[MeetingId, RoomState] = {}
        self.ended: list[str] = []
        self.max_meetings = max_meetings
        self.handshake_timeout_s = handshake_timeout_s
        self.outbound_queue_size = outbound_queue_size
        self.token_audience = token_audience
        self.empty_meeting_timeout_s = empty_meeting_timeout_s
        self.mix_above_audio_publishers = mix_above_audio_publishers
        self.tokens: ResumeTokens[SignalingSession] = ResumeTokens(resume_grace_s)
        self.metrics = ControllerMetrics(
            registry if registry is not None else Registry(),
            meetings=lambda: len(self.rooms),
            participants=lambda: self.participant_count,
        )
        self.media = MediaRooms(self.rooms, mhs, self.metrics)
        # Events of the meetings, for the GC's webhooks (docs/protocol.md §18.5); the
        # registration sends them.
        self.events = EventOutbox()

    # -- GC side -----------------------------------------------------------------------------

    @property
    def participant_count(self) -> int:
        return sum(len(room.members) for room in self.rooms.values())

    async def assign(self, meeting_id: MeetingId, config: mtg_pb.MeetingConfig) -> None:
        """Create the meeting's scope (idempotent). Raises CapacityExceeded, ScopeClosed."""
        if not meeting_id:
            raise InvalidRequest("meeting_id is required")
        if meeting_id in self.rooms:
            return
        if len(self.rooms) >= self.max_meetings:
            raise CapacityExceeded(f"this meeting controller is full ({self.max_meetings})")
        limit = config.max_participants or DEFAULT_MAX_PARTICIPANTS
        created = trio.Event()
        try:
            scope = await self.tree.start_meeting(
                meeting_id,
                functools.partial(self._end_when_empty, meeting_id, created),
                cleanup=functools.partial(self._meeting_closed, meeting_id),
                max_participants=limit,
            )
        except ScopeClosed:
            raise CapacityExceeded("this meeting controller is draining") from None
        self.rooms[meeting_id] = RoomState(
            meeting_id,
            config,
            scope,
            mix_above=self.mix_above_audio_publishers,
            events=self.events,
        )
        created.set()
        logger.info("meeting assigned", extra=fields(meeting_id=meeting_id))

    async def _end_when_empty(self, meeting_id: MeetingId, created: trio.Event, _: object) -> None:
        """The meeting's body: return (which ends the meeting, MEETING_ENDED) once it has had
        nobody in it for ``empty_meeting_timeout_s`` (0 or less: never), from its assignment,
        its last leave or the last join it admitted. A join still being admitted when the time
        is up is refused (the meeting is ending)."""
        await created.wait()
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        if self.empty_meeting_timeout_s <= 0:
            await trio.sleep_forever()
        empty_since = trio.current_time()
        while True:
            changed = room.membership_changed
            if room.members:
                await changed.wait()
                empty_since = trio.current_time()
                continue
            with trio.move_on_at(empty_since + self.empty_meeting_timeout_s):
                await changed.wait()
                # A join admitted, or a join and its leave since we last looked: time anew.
                empty_since = trio.current_time()
                continue
            break
        room.end_message = "the meeting stayed empty"
        room.end_kind = room.end_kind or "empty"
        logger.info(
            "empty meeting ended",
            extra=fields(meeting_id=meeting_id, timeout_s=self.empty_meeting_timeout_s),
        )

    async def _meeting_closed(self, meeting_id: MeetingId, reason: LeaveReason) -> None:
        room = self.rooms.pop(meeting_id, None)
        if room is not None:
            meeting_ended(room)
        if room is not None and room.mh is not None:
            room.mh.rooms -= 1
            room.mh = None  # counted once: a join still registering must not count it again
        self.ended.append(meeting_id)
        del self.ended[:-MAX_ENDED_REPORTED]
        await trio.lowlevel.checkpoint()

    def room(self, meeting_id: MeetingId) -> RoomState:
        room = self.rooms.get(meeting_id)
        if room is None:
            raise NotFound(f"meeting {meeting_id} is not assigned to this controller")
        return room

    def end(self, meeting_id: MeetingId, message: str = "", reason: str = "ended") -> int:
        """End the meeting with MEETING_ENDED for everyone; return how many were in it.
        ``reason`` is what its ``meeting_ended`` event says (docs/protocol.md §18.5):
        "ended" (the host or the owner) or "empty" (the GC's empty-meeting timeout,
        docs/protocol.md §6); the first end asked for decides."""
        room = self.room(meeting_id)
        room.end_message = message or "the meeting has ended"
        room.end_kind = room.end_kind or ("empty" if reason == "empty" else "ended")
        count = len(room.members)
        room.scope.end()
        return count

    def kick(
        self,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        message: str = "",
        revoked: Sequence[tuple[str, float]] = (),
    ) -> str:
        """Cancel the participant's scope with KICKED; return its join-token id (for a ban at
        the GC). ``revoked`` are other join tokens (id, expiry in unix seconds) refused from now
        on, at most ``MAX_REVOKED_TOKENS`` of them, also when the participant has already left
        (the GC learns which tokens to revoke from this kick's reply and sends them in a second
        kick); a session using one ends as kicked. Raises NotFound."""
        room, now = self.room(meeting_id), time.time()
        leeway = self.verifier.leeway_s if self.verifier is not None else 0.0
        revoked_ids = set()
        for token_id, expires_at in revoked[:MAX_REVOKED_TOKENS]:
            room.ban_token(token_id, expires_at + leeway, now)
            revoked_ids.add(token_id)
        for other in [m for m in room.members.values() if m.token_id in revoked_ids]:
            other.end_message = message or "removed from the meeting"
            other.leave(LeaveReason.KICKED)
        member = room.members.get(participant_id)
        if member is None:
            raise NotFound(f"participant {participant_id} is not in meeting {meeting_id}")
        member.end_message = message or "removed from the meeting"
        # The kick sticks: the same join token is refused for as long as it is valid.
        room.ban_token(member.token_id, member.token_valid_until, now)
        member.leave(LeaveReason.KICKED)
        return member.token_id

    async def moderate(
        self,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        actions: Sequence[int],
        message: str,
    ) -> common_pb2.PublicationState:
        """The meeting owner's moderation (docs/protocol.md §18.2, ``_moderation``); return the
        participant's state after it. Raises InvalidRequest, NotFound."""
        check_request(actions, message)
        room = self.room(meeting_id)
        target = room.members.get(participant_id)
        if target is None:
            raise NotFound(f"participant {participant_id} is not in meeting {meeting_id}")
        return await moderate(room, target, actions, message)

    # -- MH telemetry ------------------------------------------------------------------------

    def on_telemetry(self, event: mh_pb.TelemetryEvent) -> None:
        self.media.on_telemetry(event)

    # -- sessions ----------------------------------------------------------------------------

    async def serve_session(self, port: SignalPort) -> None:
        """Run one signaling session: handshake, join (or resume), then hold the connection
        while its participant uses it.

        The participant scope is owned by the meeting, not by the caller; if the caller is
        cancelled (the session closed under it), the participant leaves VOLUNTARY when the
        peer closed cleanly; otherwise its connection is lost (CONNECTION_LOST): it stays,
        reconnecting, for the resume window (docs/protocol.md §13). Errors go to the client as
        ``ErrorMessage`` and close the session with their code; nothing is raised.
        """
        started = trio.current_time()
        decoder: MessageDecoder[sig.ClientMessage] = MessageDecoder(sig.ClientMessage)
        request_id = 0
        try:
            with trio.fail_after(self.handshake_timeout_s):
                first = await read_first(port, decoder)
            if first is None:
                return
            request_id = first.request_id
            if first.WhichOneof("message") != "join":
                raise InvalidRequest("the first message must be a JoinRequest")
            _wire.check(first)
            join = first.join
            # Only request_id is needed after admission: the request (join token, public key)
            # would otherwise stay referenced by this frame for the whole session.
            del first
            conn = Connection(port, decoder, request_id, started)
            if join.resume_token:
                session = self._resume(join, conn)
                del join
                await self._hold(session, conn)
                return
            room, member, conn.outgoing = await self._admit(join)
            del join
        except trio.TooSlowError:
            await self._refuse(
                port, 0, InvalidRequest("no JoinRequest within the handshake timeout")
            )
            return
        except DarkTowerError as exc:
            await self._refuse(port, request_id, exc)
            return
        session = SignalingSession(
            room, member, conn, MessageRateLimiter(), self.metrics, self, self.tokens
        )
        try:
            await room.scope.start_participant(member.id, session.run, cleanup=session.ended)
        except BaseException as exc:
            room.release_token(member.token_id)
            with trio.CancelScope(shield=True):
                await session.release_media(LeaveReason.CONNECTION_LOST)
            if isinstance(exc, ScopeClosed):
                exc = NotFound(f"meeting {room.id} is ending")
            if isinstance(exc, DarkTowerError):
                await self._refuse(port, request_id, exc)
                return
            raise
        await self._hold(session, conn)

    async def _hold(self, session: SignalingSession, conn: Connection) -> None:
        """Wait while ``session`` uses ``conn``; cancelled, tell it why the connection went."""
        try:
            await conn.finished.wait()
        except trio.Cancelled:
            session.lost(conn, conn.port.leave_reason(None))
            raise

    def _resume(self, join: sig.JoinRequest, conn: Connection) -> SignalingSession:
        """Hand ``conn`` to the participant whose resume token ``join`` presents (its token is
        used up). Raises NotFound (unknown, used or expired token), ResumeRefused (the
        participant was kicked or its meeting ended meanwhile). Synchronous: of two resumes
        with one token, one wins."""
        try:
            session = self.tokens.find(
                MeetingId(join.meeting_id), join.resume_token, trio.current_time()
            )
            session.offer(conn)
        except ResumeRefused as exc:
            self.metrics.resumes.inc(1, exc.reason.name.lower())
            raise
        except NotFound:
            self.metrics.resumes.inc(1, "not_found")
            raise
        self.tokens.revoke(session)
        return session

    async def _refuse(self, port: SignalPort, request_id: int, exc: DarkTowerError) -> None:
        self.metrics.errors.inc(1, exc.code.name)
        ended = exc.reason if isinstance(exc, ResumeRefused) else None
        await refuse(port, request_id, exc, ended=ended)

    async def _admit(
        self, join: sig.JoinRequest
    ) -> tuple[RoomState, RoomMember, trio.MemoryReceiveChannel[Outgoing]]:
        """Verify the token, then allocate: a participant id and its registration at the MH.

        The token's ``jti`` is claimed for the session (released when it ends, or here on a
        failure): a second session with the same token, or one kicked, is refused."""
        if self.verifier is None:
            raise InternalError("not ready: no join-token key yet")
        meeting_id = MeetingId(join.meeting_id)
        try:
            claims = self.verifier.verify(join.join_token, meeting_id=meeting_id, now=time.time())
        except UnknownKeyId:
            if self.refresh_keys is None:
                raise
            await self.refresh_keys()  # the GC may have rotated its key since our last beat
            claims = self.verifier.verify(join.join_token, meeting_id=meeting_id, now=time.time())
        room = await self._room_to_join(meeting_id)
        if room.e2ee and len(join.e2ee_public_key) != E2EE_PUBLIC_KEY_BYTES:
            # Nobody could give it a key: it would receive media it cannot decrypt
            # (docs/protocol.md §16).
            raise InvalidRequest(
                "the meeting is end-to-end encrypted: the JoinRequest needs e2ee_public_key, "
                f"a {E2EE_PUBLIC_KEY_BYTES}-byte X25519 public key "
                f"(got {len(join.e2ee_public_key)} bytes)"
            )
        if len(room.members) >= room.scope.max_participants:
            raise CapacityExceeded(f"meeting {meeting_id} is full")
        room.claim_token(claims.token_id, time.time())
        room.membership_change()  # a join under way: an empty meeting's time starts again
        try:
            return await self._allocate(room, join, claims)
        except BaseException:
            room.release_token(claims.token_id)
            raise

    async def _allocate(
        self, room: RoomState, join: sig.JoinRequest, claims: JoinClaims
    ) -> tuple[RoomState, RoomMember, trio.MemoryReceiveChannel[Outgoing]]:
        meeting_id = room.id
        participant_id = ParticipantId(str(uuid.uuid4()))
        register = mh_pb.RegisterParticipant(
            participant_id=participant_id, meeting_id=meeting_id, room_epoch=room.epoch
        )
        for attempt in range(2):  # once more where the room went if it moved meanwhile
            if room.mh is None or not room.mh.usable(trio.current_time()):
                self.media.move(room)  # never split: the members present follow
                if room.mh is None:
                    raise InternalError("no media handler is available")
            mh = room.mh
            try:
                reply = await mh.register_participant(register)
            except DarkTowerError as exc:
                if isinstance(exc, RpcUnavailable):
                    self.mhs.declare_lost(mh)  # its rooms move (this one too)
                if attempt == 0 and room.mh is not mh and self.rooms.get(room.id) is room:
                    continue
                if room.mh is mh and not room.members and self.rooms.get(room.id) is room:
                    # Nobody uses this placement yet: let the next join choose again.
                    mh.rooms -= 1
                    room.mh = None
                if isinstance(exc, CapacityExceeded):  # the joiner is told the meeting is full
                    raise CapacityExceeded(f"the media handler's room is full: {exc}") from exc
                raise InternalError(f"media handler unavailable: {exc}") from exc
            break
        outbox, recv = trio.open_memory_channel[Outgoing](self.outbound_queue_size)
        # The name others see is the signed one (a token without a name: its role), never
        # the JoinRequest's: a client cannot pose as somebody else (docs/protocol.md).
        name = (claims.participant_name or "")[:MAX_NAME_CHARS] or claims.role.value
        assert self.verifier is not None
        member = RoomMember(
            id=participant_id,
            name=name,
            role=claims.role,
            joined_at_us=int(time.time() * 1_000_000),
            public_key=join.e2ee_public_key,
            key_id=str(room.next_key_id),
            outbox=outbox,
            media_handler_url=reply.media_handler_url,
            connection_token=reply.connection_token,
            mh=mh,
            token_id=claims.token_id,
            token_valid_until=claims.expires_at + self.verifier.leeway_s,
            video_codecs=tuple(join.capabilities.video_codecs),
            max_video_streams=join.capabilities.max_video_streams,
            publication=Publication.allowing(claims.may_publish),
        )
        room.next_key_id += 1
        return room, member, recv

    # -- reconciliation with the GC (docs/protocol.md §14) -----------------------------------
    # Set by the Registration while it runs: the config of a meeting the GC has active here
    # that this MC does not hold (it restarted), else None.
    meeting_from_gc: Callable[[MeetingId], Awaitable[mtg_pb.MeetingConfig | None]] | None = None

    async def _room_to_join(self, meeting_id: MeetingId) -> RoomState:
        """The meeting's room, re-created first if the GC has it active here. NotFound."""
        if meeting_id not in self.rooms and self.meeting_from_gc is not None:
            config = await self.meeting_from_gc(meeting_id)
            if config is not None:
                await self.assign(meeting_id, config)
                logger.info("meeting re-created for a join", extra=fields(meeting_id=meeting_id))
        return self.room(meeting_id)
