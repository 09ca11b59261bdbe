"""One participant's signaling on the MC, as an object that owns its work: the join announced,
a writer task, the reader and its dispatch to the handlers (``_signaling``), and the cleanup
that tells the others, the Media Handler and the leaving client (docs/architecture.md §3.2).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from darktower.errors import DarkTowerError, InternalError, InvalidRequest, RateLimited
from darktower.logs import fields
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Participant
from darktower.protocol import MessageDecoder, leave_reason_to_pb
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.ratelimit import MessageRateLimiter, Verdict

from . import _signaling, _wire
from ._batches import join_messages
from ._limits import MH_CALL_DEADLINE_S, READ_SIZE, SESSION_END_GRACE_S
from ._metrics import ControllerMetrics
from ._port import SignalPort
from ._room import Outgoing, RoomMember, RoomState

logger = logging.getLogger("darktower.meeting_controller")


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
    """The signaling of ``member``, admitted to ``room``, over ``port``.

    ``run`` is the body of the member's participant scope and ``ended`` its cleanup: the scope
    owns both (leave, kick, connection loss and end are its cancellations). ``outgoing`` is the
    reading end of ``member.outbox``, written by the session's writer task only.
    """

    __slots__ = (
        "_decoder",
        "_join_request_id",
        "_outgoing",
        "_started_at",
        "controls",
        "limiter",
        "member",
        "metrics",
        "port",
        "room",
    )

    def __init__(
        self,
        room: RoomState,
        member: RoomMember,
        port: SignalPort,
        limiter: MessageRateLimiter,
        metrics: ControllerMetrics,
        controls: SessionControls,
        *,
        decoder: MessageDecoder[sig.ClientMessage],
        outgoing: trio.MemoryReceiveChannel[Outgoing],
        join_request_id: int,
        started_at: float,
    ) -> None:
        self.room = room
        self.member = member
        self.port = port
        self.limiter = limiter
        self.metrics = metrics
        self.controls = controls
        self._decoder = decoder  # holds what the client sent after its JoinRequest
        self._outgoing = outgoing
        self._join_request_id = join_request_id
        self._started_at = started_at  # when the session began, for the join latency

    async def run(self, participant: Participant) -> None:
        """Join the room, then write (a stream task of ``participant``) and read until the
        client finishes its stream (a voluntary leave), the session breaks or is abusive (it
        then asks ``participant`` to leave), or the scope is cancelled."""
        room, member = self.room, self.member
        member.handle = participant
        # Reply and announce without a checkpoint in between, so no event falls in the gap.
        response = sig.JoinResponse(
            participant_id=member.id,
            media_server=sig.MediaServerInfo(
                media_handler_url=member.media_handler_url,
                connection_token=member.connection_token,
            ),
        )
        if room.e2ee:
            response.encryption_keys.public_key = member.public_key
            response.encryption_keys.key_id = member.key_id
        existing = [m.to_pb(e2ee=room.e2ee) for m in room.members.values()]
        room.members[member.id] = member
        room.membership_change()
        # One outbox slot: the JoinResponse and its batches go out back to back.
        room.deliver(member, join_messages(self._join_request_id, response, existing))
        # The outbox holds them until written; this frame lives as long as the session.
        del response, existing
        room.broadcast(
            sig.ServerMessage(
                participant_joined=sig.ParticipantJoined(participant=member.to_pb(e2ee=room.e2ee))
            ),
            skip=member.id,
        )
        self.metrics.join_latency.observe(trio.current_time() - self._started_at)
        await participant.start_stream("signaling-writer", self._write)
        await self._read()

    async def _write(self) -> None:
        try:
            while True:
                try:
                    item = await self._outgoing.receive()
                except trio.EndOfChannel:
                    return
                data = self._encode(item)
                # Neither stays referenced while the writer waits for the next message (an
                # idle session would keep its last message, e.g. a whole JoinResponse).
                del item
                if data:
                    await self.port.stream.send_all(data)
                del data
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.member.leave(self.port.leave_reason(exc))

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

    async def _read(self) -> None:
        decoder, limiter = self._decoder, self.limiter
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
                data = await self.port.stream.receive_some(READ_SIZE)
                if not data:
                    decoder.end_of_stream()
                    return  # the client finished its stream: a voluntary leave
                decoder.receive_data(data)
                del data  # not held while the reader waits for the next chunk
        except InvalidRequest as exc:
            self._fail(0, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.member.leave(self.port.leave_reason(exc))

    def _fail(self, request_id: int, exc: DarkTowerError) -> None:
        """End the session for abuse or bad input: the error goes out first, then SessionEnded."""
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
            pass  # the member is leaving

    async def ended(self, reason: LeaveReason) -> None:
        """The participant scope's cleanup, which the scope runs shielded and bounded: leave
        the room, tell the others (unless the meeting ends), and at once release the member at
        the Media Handler (at most ``MH_CALL_DEADLINE_S``) and write the error that ended the
        session, if any, and ``SessionEnded`` (at most ``SESSION_END_GRACE_S``); then close
        the port. Never raises for a broken session or an unreachable Media Handler."""
        room, member = self.room, self.member
        if room.members.get(member.id) is member:
            del room.members[member.id]
            room.membership_change()
        room.release_token(member.token_id)
        for stream_id in member.streams:
            for other in list(room.subscribers_of(stream_id)):
                del other.subscriptions[stream_id]
        member.outbox.close()
        if reason is not LeaveReason.MEETING_ENDED:
            room.broadcast(
                sig.ServerMessage(
                    participant_left=sig.ParticipantLeft(
                        participant_id=member.id, reason=leave_reason_to_pb(reason)
                    )
                )
            )
        if member.overflowed:
            self.metrics.errors.inc(1, "OUTBOUND_OVERFLOW")
        message = member.end_message or (
            room.end_message if reason is LeaveReason.MEETING_ENDED else ""
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.release_media, reason)
            await self._say_goodbye(reason, message)

    async def _say_goodbye(self, reason: LeaveReason, message: str) -> None:
        member, port = self.member, self.port
        ended = sig.ServerMessage(
            request_id=member.end_request_id,
            session_ended=sig.SessionEnded(reason=leave_reason_to_pb(reason), message=message),
        )
        data = self._encode(ended)
        if member.final_error is not None:
            data = self._encode(member.final_error) + data
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
        """Remove the member at the room's Media Handler (once; at most MH_CALL_DEADLINE_S).

        Also called for a session whose participant scope never started."""
        room, member = self.room, self.member
        # Once per member: a start cancelled half-way can reach here from both the session's
        # cleanup and the failed start.
        if room.mh is None or member.media_released:
            return
        member.media_released = True
        with trio.move_on_after(MH_CALL_DEADLINE_S):
            try:
                await room.mh.remove_participant(
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
