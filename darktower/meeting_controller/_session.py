"""One participant's signaling on the MC, as an object that owns its work: the join announced,
a writer task, the reader and its dispatch to the handlers (``_signaling``), the reconnecting
window and the resume (docs/protocol.md §13), and the cleanup that tells the others, the Media
Handler and the leaving client (docs/architecture.md §3.2).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import trio

from darktower.errors import DarkTowerError, InternalError, InvalidRequest, NotFound, RateLimited
from darktower.logs import fields
from darktower.model import LEAVE_MESSAGES, LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Participant
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.ratelimit import MessageRateLimiter, Verdict

from . import _recording, _signaling, _wire
from ._batches import catch_up, join_messages
from ._connection import Connection
from ._limits import MH_CALL_DEADLINE_S, MIN_RESUME_INTERVAL_S, READ_SIZE, SESSION_END_GRACE_S
from ._media_reconnect import MediaReconnection
from ._meeting_events import left_meeting, participant_joined
from ._metrics import ControllerMetrics
from ._port import SignalPort
from ._processing import repeat_derived
from ._publication import updated
from ._resume import ResumeTokens, refusal_for
from ._room import Outgoing, RoomMember, RoomState

logger = logging.getLogger("darktower.meeting_controller")

# The stream task of a participant scope that is its reconnecting window (its deadline ends it).
RECONNECTING = "reconnecting"


class SessionControls(Protocol):
    """What a session's requests may do beyond its own meeting state: the host's kick and
    end of meeting (the :class:`MeetingController` is one)."""

    def kick(self, meeting_id: MeetingId, participant_id: ParticipantId, message: str = "") -> str:
        """Remove the participant (KICKED); return its join-token id. Raises NotFound."""
        ...

    def end(self, meeting_id: MeetingId, message: str = "") -> int:
        """End the meeting for everyone (MEETING_ENDED). Raises NotFound."""
        ...


class SignalingSession:
    """The signaling of ``member``, admitted to ``room``, over ``conn`` (its current
    connection; a resume hands it the next one, see :meth:`offer`).

    ``run`` is the body of the member's participant scope and ``ended`` its cleanup: the scope
    owns both (leave, kick, the window's end and the meeting's end are its cancellations).
    """

    __slots__ = (
        "_announced",
        "_last_resume_at",
        "_resumed",
        "_window_deadline",
        "conn",
        "controls",
        "limiter",
        "media",
        "member",
        "metrics",
        "resume_key",
        "room",
        "tokens",
    )

    def __init__(
        self,
        room: RoomState,
        member: RoomMember,
        conn: Connection,
        limiter: MessageRateLimiter,
        metrics: ControllerMetrics,
        controls: SessionControls,
        tokens: ResumeTokens[SignalingSession],
    ) -> None:
        self.room = room
        self.member = member
        self.conn = conn
        self.limiter = limiter  # one for all its connections: a resume does not refill it
        self.metrics = metrics
        self.controls = controls
        self.tokens = tokens
        self.resume_key = b""  # the digest of its live resume token (see ResumeTokens)
        self._window_deadline = -math.inf
        self._resumed: trio.Event | None = None  # set when a resume hands over a connection
        self._announced = False  # the others were told it is reconnecting
        self._last_resume_at = -math.inf
        self.media = MediaReconnection(room, member, metrics)

    @property
    def port(self) -> SignalPort:
        return self.conn.port

    async def run(self, participant: Participant) -> None:
        """Join the room, then serve the connection: write (a stream task of
        ``participant``) and read until the client finishes its stream (a voluntary leave),
        the session is abusive (it then asks ``participant`` to leave) or the scope is
        cancelled. A connection lost (CONNECTION_LOST) opens the reconnecting window, a stream
        task whose deadline ends it; a resume within it serves the new connection likewise;
        otherwise the participant leaves CONNECTION_LOST."""
        member = self.member
        member.handle, member.session = participant, self
        self._welcome(
            self.conn,
            sig.MediaServerInfo(
                media_handler_url=member.media_handler_url,
                connection_token=member.connection_token,
            ),
            resumed=False,
        )
        self.metrics.join_latency.observe(trio.current_time() - self.conn.started_at)
        conn = self.conn
        while True:
            await self._serve(participant, conn)
            while True:
                if not member.reconnecting:
                    return  # leaving: the reason is recorded, the scope cancelled
                self._detach(conn)
                if not await self._window(participant, conn):
                    participant.leave(LeaveReason.CONNECTION_LOST)
                    return
                conn = self.conn
                if await self._resume(conn):
                    break

    def _welcome(self, conn: Connection, media: sig.MediaServerInfo, *, resumed: bool) -> None:
        """Queue the JoinResponse (with a fresh resume token) and its batches; a new member
        enters the room and is announced. Without a checkpoint, so no event falls in a gap."""
        room, member = self.room, self.member
        response = sig.JoinResponse(
            participant_id=member.id,
            media_server=media,
            resume_token=self.tokens.issue(room.id, self),
            resumed=resumed,
            recording=bool(room.recorded),
        )
        if room.e2ee:
            response.encryption_keys.public_key = member.public_key
            response.encryption_keys.key_id = member.key_id
        existing = [m.to_pb(e2ee=room.e2ee) for m in room.members.values() if m is not member]
        if not resumed:
            room.members[member.id] = member
            room.membership_change()
            if member.mh is not room.mh:  # the room moved while it was being admitted
                self.media.moved()
        # One outbox slot: the JoinResponse and its batches go out back to back, with the
        # chat so far right after them (docs/protocol.md §18.3).
        chat = room.chat.catch_up(member.id)
        room.deliver(member, join_messages(conn.request_id, response, existing) + chat)
        # The outbox holds them until written; this frame lives as long as the session.
        del response, existing, chat
        catch_up(room, member)
        if not resumed:
            room.broadcast(
                sig.ServerMessage(
                    participant_joined=sig.ParticipantJoined(
                        participant=member.to_pb(e2ee=room.e2ee)
                    )
                ),
                skip=member.id,
            )
            participant_joined(room, member)

    async def _serve(self, participant: Participant, conn: Connection) -> None:
        """Write and read ``conn`` until it is lost or the participant leaves."""
        writer = await participant.start_stream("signaling-writer", self._write, conn)
        with conn.scope:
            await self._read(conn)
        writer.cancel()
        await writer.wait_closed()

    def lost(self, conn: Connection, reason: LeaveReason) -> None:
        """``conn`` went away with ``reason`` (the reader, the writer or its session task saw
        it). A lost connection (CONNECTION_LOST) of a participant that has not left opens the
        reconnecting window; any other reason is the participant's leave. Once per
        connection; a connection no longer in use is ignored."""
        if conn is not self.conn or conn.lost:
            return
        conn.lost = True
        conn.scope.cancel()
        member, participant = self.member, self.member.handle
        if member.reconnecting and conn.outgoing is None:
            # A resume lost before it was answered: its token was spent and no new one was
            # given, so nothing can resume the participant any more. It leaves now rather
            # than after a second window, as a lost connection whatever closed this one.
            member.leave(LeaveReason.CONNECTION_LOST)
            return
        if (
            reason is LeaveReason.CONNECTION_LOST
            and self.tokens.enabled
            and participant is not None
            and participant.reason is None
            and not member.overflowed
        ):
            member.reconnecting = True
            member.outbox.close()  # what was queued for the lost connection is dropped
            self._window_deadline = trio.current_time() + self.tokens.grace_s
            self._resumed = trio.Event()
        else:
            member.leave(reason)

    def offer(self, conn: Connection) -> None:
        """Hand the participant ``conn``, a resume that presented its token: at once if it is
        reconnecting within its window; a connected participant's connection is taken over
        (its client lost it before we noticed). Synchronous, so a resume either wins or is
        refused: NotFound once the participant is leaving or its window has passed."""
        participant = self.member.handle
        if participant is None or participant.reason is not None:
            raise NotFound("the participant has left the meeting")
        # A resume costs a media registration and the whole room's list: it is charged to the
        # participant's message budget, and one may follow another only after an interval
        # (refused RATE_LIMITED, its token still good), so a client cannot loop on resumes.
        now = trio.current_time()
        wait_s = self._last_resume_at + MIN_RESUME_INTERVAL_S - now
        if wait_s > 0 or self.limiter.check(now) is not Verdict.ALLOW:
            raise RateLimited(
                "too many resumes",
                retry_after_s=max(wait_s, self.limiter.retry_after(now), 0.0),
            )
        if not self.conn.lost:
            self.lost(self.conn, LeaveReason.CONNECTION_LOST)
        elif trio.current_time() >= self._window_deadline:
            raise NotFound("the resume window has passed")
        if not self.member.reconnecting:
            raise NotFound("the participant has left the meeting")
        self.conn = conn
        self._last_resume_at = now
        if self._resumed is not None:
            self._resumed.set()

    def _detach(self, conn: Connection) -> None:
        """``conn`` is lost: close its session (a connection taken over is still open), and
        let its session task return."""
        conn.port.close(0, LeaveReason.CONNECTION_LOST.name)
        conn.finished.set()

    async def _window(self, participant: Participant, old: Connection) -> bool:
        """Wait, reconnecting, until a resume replaces ``old`` (True) or the window passes."""
        if self.conn is old and participant.reason is None:
            if not self._announced:
                self._announced = True
                self.room.broadcast(updated(self.member), skip=self.member.id)
            assert self._resumed is not None
            window = await participant.start_stream(
                RECONNECTING, self._resumed.wait, deadline=self._window_deadline
            )
            await window.wait_closed()
        return self.conn is not old

    async def _resume(self, conn: Connection) -> bool:
        """Answer the resume on ``conn`` (a fresh media token first); False if ``conn`` was
        lost or replaced meanwhile."""
        media = await self.media.for_resume()
        if self.conn is not conn or conn.lost:
            return False
        member = self.member
        member.reconnecting = False
        size = member.outbox.statistics().max_buffer_size
        member.outbox, conn.outgoing = trio.open_memory_channel[Outgoing](size)
        self._welcome(conn, media, resumed=True)
        repeat_derived(self.room, member)
        if self._announced:
            self._announced = False
            self.room.broadcast(updated(member), skip=member.id)
        self.metrics.resumes.inc(1, "resumed")
        return True

    async def _write(self, conn: Connection) -> None:
        assert conn.outgoing is not None
        outgoing = conn.outgoing
        try:
            while True:
                try:
                    item = await outgoing.receive()
                except trio.EndOfChannel:
                    return
                data = self._encode(item)
                # Neither stays referenced while the writer waits for the next message (an
                # idle session would keep its last message, e.g. a whole JoinResponse).
                del item
                if data:
                    await conn.port.stream.send_all(data)
                del data
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.lost(conn, conn.port.leave_reason(exc))

    def _encode(self, item: Outgoing) -> bytes:
        """The item's messages framed; one that cannot be encoded (over the 64 KiB limit) is
        dropped for this recipient, logged and counted, and the session carries on."""
        messages = item if isinstance(item, tuple) else (item,)
        out = bytearray()
        for message in messages:
            try:
                out += _wire.encode(message)
            except InternalError as exc:
                kind = message.WhichOneof("message") or "empty"
                self.metrics.dropped.inc(1, kind)
                logger.warning(
                    "server message dropped for one recipient: it cannot be encoded",
                    extra=fields(participant_id=self.member.id, type=kind, error=str(exc)),
                )
        return bytes(out)

    async def _read(self, conn: Connection) -> None:
        decoder, limiter = conn.decoder, self.limiter
        try:
            while True:
                for message in decoder:
                    verdict = limiter.check(trio.current_time())
                    if verdict is Verdict.DISCONNECT:
                        self._fail(message.request_id, RateLimited("too many messages"))
                        return
                    if verdict is Verdict.REJECT:
                        exc = RateLimited(
                            "too many messages",
                            retry_after_s=limiter.retry_after(trio.current_time()),
                        )
                        self.metrics.errors.inc(1, exc.code.name)
                        await self._reply(_wire.error_reply(message.request_id, exc))
                        continue
                    await self._dispatch(message)
                data = await conn.port.stream.receive_some(READ_SIZE)
                if not data:
                    decoder.end_of_stream()
                    # the client finished its stream: a voluntary leave
                    self.lost(conn, LeaveReason.VOLUNTARY)
                    return
                decoder.receive_data(data)
                del data  # not held while the reader waits for the next chunk
        except InvalidRequest as exc:
            self._fail(0, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.lost(conn, conn.port.leave_reason(exc))

    def _fail(self, request_id: int, exc: DarkTowerError) -> None:
        """End the session for abuse or bad input: the error goes out first, then SessionEnded
        (no reconnecting window: the participant leaves)."""
        member = self.member
        self.metrics.errors.inc(1, exc.code.name)
        member.final_error = _wire.error_reply(request_id, exc)
        member.close_code = int(exc.code)
        member.end_message = str(exc)
        member.leave(LeaveReason.CONNECTION_LOST)

    async def _dispatch(self, message: sig.ClientMessage) -> None:
        kind = message.WhichOneof("message")
        self.metrics.messages.inc(1, kind or "empty")
        handler = _signaling.HANDLERS.get(kind or "")
        try:
            if handler is None:
                raise InvalidRequest(
                    "empty envelope" if kind is None else f"{kind} is not allowed after joining"
                )
            _wire.check(message)
            reply = await handler(self, message)
        except DarkTowerError as exc:
            self.metrics.errors.inc(1, exc.code.name)
            reply = _wire.error_reply(message.request_id, exc)
        if reply is not None:
            reply.request_id = message.request_id
            await self._reply(reply)

    async def _reply(self, reply: sig.ServerMessage) -> None:
        """Queue a reply to the member's own request, waiting while its queue is full.

        Waiting here only slows the requester's own reader (backpressure on a client that
        sends faster than it reads); events for others never wait (``RoomState.deliver``).
        """
        try:
            await self.member.outbox.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the member is leaving, or its connection was lost

    async def ended(self, reason: LeaveReason) -> None:
        """The participant scope's cleanup, which the scope runs shielded and bounded: leave
        the room, tell the others (unless the meeting ends), and at once release the member at
        the Media Handler (at most ``MH_CALL_DEADLINE_S``) and write the error that ended the
        session, if any, and ``SessionEnded`` (at most ``SESSION_END_GRACE_S``) to its
        connection, if it has one; then close the port. Its resume token stops working (a
        kick or the meeting's end is remembered for a late resume). Never raises for a broken
        session or an unreachable Media Handler."""
        room, member = self.room, self.member
        try:
            self.tokens.ended(self, reason, trio.current_time())
            if room.members.get(member.id) is member:
                del room.members[member.id]
                room.membership_change()
                left_meeting(room, member, reason)
            room.release_token(member.token_id)
            for stream_id in member.streams:
                for other in list(room.subscribers_of(stream_id)):
                    other.drop_subscription(stream_id)
            member.outbox.close()
            # The meeting's end and the MC's drain end everyone at once: nobody to tell.
            if reason not in (LeaveReason.MEETING_ENDED, LeaveReason.SERVER_SHUTDOWN):
                room.broadcast(
                    sig.ServerMessage(
                        participant_left=sig.ParticipantLeft(
                            participant_id=member.id, reason=leave_reason_to_pb(reason)
                        )
                    )
                )
            _recording.left(room, member, reason)
            if member.overflowed:
                self.metrics.errors.inc(1, "OUTBOUND_OVERFLOW")
            message = (
                member.end_message
                or (room.end_message if reason is LeaveReason.MEETING_ENDED else "")
                or LEAVE_MESSAGES[reason]
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.release_media, reason)
                await self._say_goodbye(reason, message)
        finally:
            self.conn.finished.set()

    async def _say_goodbye(self, reason: LeaveReason, message: str) -> None:
        member, conn = self.member, self.conn
        port = conn.port
        if conn.lost:  # reconnecting: nobody to tell
            port.close(member.close_code, reason.name)
            return
        ended = sig.ServerMessage(
            request_id=member.end_request_id,
            session_ended=sig.SessionEnded(reason=leave_reason_to_pb(reason), message=message),
        )
        data = self._encode(ended)
        final_error = member.final_error
        if final_error is None and conn.outgoing is None:
            # A resume not answered yet: its JoinRequest is refused with the reason.
            final_error = _wire.error_reply(conn.request_id, refusal_for(reason))
        if final_error is not None:
            data = self._encode(final_error) + data
        with trio.move_on_after(SESSION_END_GRACE_S):
            try:
                if not member.overflowed:  # a stuck reader would only hold us to the deadline
                    await port.stream.send_all(data)
                    await port.stream.send_eof()
                    # The client closes on SessionEnded; closing first could reset unread data.
                    await port.wait_closed()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        port.close(member.close_code, reason.name)

    async def release_media(self, reason: LeaveReason) -> None:
        """Stop the member's recording (if any, with ``reason``), then remove the member at
        the room's Media Handler (once; at most MH_CALL_DEADLINE_S).

        Also called for a session whose participant scope never started."""
        room, member = self.room, self.member
        # Once per member: a start cancelled half-way can reach here from both the session's
        # cleanup and the failed start.
        mh = room.mh
        if mh is None or member.media_released:
            return
        member.media_released = True
        await _recording.stop(room, member, mh, reason)
        with trio.move_on_after(MH_CALL_DEADLINE_S):
            try:
                await mh.remove_participant(
                    mh_pb.RemoveParticipantRequest(
                        meeting_id=room.id,
                        participant_id=member.id,
                        reason=leave_reason_to_pb(reason),
                    )
                )
            except DarkTowerError as exc:
                logger.warning(
                    "could not remove participant at the media handler",
                    extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
                )
