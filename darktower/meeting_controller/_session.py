"""The running part of a signaling session: its writer, its reader and dispatch, and the
shielded cleanup that tells the others, the Media Handler and the leaving client.

A mixin of :class:`~darktower.meeting_controller.MeetingController` (split out for size).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

import trio

from darktower.errors import DarkTowerError, InternalError, InvalidRequest, RateLimited
from darktower.logs import fields
from darktower.model import LeaveReason
from darktower.protocol import (
    MessageDecoder,
    check_bounds,
    encode_message,
    error_message,
    leave_reason_to_pb,
)
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.ratelimit import MessageRateLimiter, Verdict

from . import _signaling
from ._limits import MH_CALL_DEADLINE_S, READ_SIZE, SESSION_END_GRACE_S
from ._metrics import ControllerMetrics
from ._port import SignalPort
from ._room import Member, Outgoing, Room

if TYPE_CHECKING:
    from ._controller import MeetingController

logger = logging.getLogger("darktower.meeting_controller")


def error_reply(request_id: int, exc: DarkTowerError) -> sig.ServerMessage:
    return sig.ServerMessage(request_id=request_id, error=error_message(exc))


class SessionMixin:
    metrics: ControllerMetrics

    async def _writer(
        self,
        member: Member,
        port: SignalPort,
        recv: trio.MemoryReceiveChannel[Outgoing],
    ) -> None:
        try:
            while True:
                try:
                    item = await recv.receive()
                except trio.EndOfChannel:
                    return
                data = self._encode(member, item)
                # Neither stays referenced while the writer waits for the next message (an
                # idle session would keep its last message, e.g. a whole JoinResponse).
                del item
                if data:
                    await port.stream.send_all(data)
                del data
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            member.leave(port.leave_reason(exc))

    def _encode(self, member: Member, item: Outgoing) -> bytes:
        """The item's messages framed; one that cannot be encoded (over the 64 KiB limit) is
        dropped for this recipient, logged and counted, and the session carries on."""
        messages = item if isinstance(item, tuple) else (item,)
        out = bytearray()
        for message in messages:
            try:
                out += encode_message(message)
            except InternalError as exc:
                kind = message.WhichOneof("message") or "empty"
                self.metrics.dropped.inc(1, kind)
                logger.warning(
                    "server message dropped for one recipient: it cannot be encoded",
                    extra=fields(participant_id=member.id, type=kind, error=str(exc)),
                )
        return bytes(out)

    async def _reader(
        self,
        room: Room,
        member: Member,
        port: SignalPort,
        decoder: MessageDecoder[sig.ClientMessage],
    ) -> None:
        limiter = MessageRateLimiter()
        try:
            while True:
                for message in decoder:
                    verdict = limiter.check(trio.current_time())
                    if verdict is Verdict.DISCONNECT:
                        self._fail(member, message.request_id, RateLimited("too many messages"))
                        return
                    if verdict is Verdict.REJECT:
                        exc = RateLimited(
                            "too many messages",
                            retry_after_s=limiter.retry_after(trio.current_time()),
                        )
                        self.metrics.errors.inc(1, exc.code.name)
                        await self._reply(member, error_reply(message.request_id, exc))
                        continue
                    await self._dispatch(room, member, message)
                data = await port.stream.receive_some(READ_SIZE)
                if not data:
                    decoder.end_of_stream()
                    return  # the client finished its stream: a voluntary leave
                decoder.receive_data(data)
                del data  # not held while the reader waits for the next chunk
        except InvalidRequest as exc:
            self._fail(member, 0, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            member.leave(port.leave_reason(exc))

    def _fail(self, member: Member, request_id: int, exc: DarkTowerError) -> None:
        """End the session for abuse or bad input: the error goes out first, then SessionEnded."""
        self.metrics.errors.inc(1, exc.code.name)
        member.final_error = error_reply(request_id, exc)
        member.close_code = int(exc.code)
        member.end_message = str(exc)
        member.leave(LeaveReason.CONNECTION_LOST)

    async def _dispatch(self, room: Room, member: Member, message: sig.ClientMessage) -> None:
        kind = message.WhichOneof("message")
        self.metrics.messages.inc(1, kind or "empty")
        handler = _signaling.HANDLERS.get(kind or "")
        try:
            if handler is None:
                raise InvalidRequest(
                    "empty envelope" if kind is None else f"{kind} is not allowed after joining"
                )
            check_bounds(message)
            reply = await handler(cast("MeetingController", self), room, member, message)
        except DarkTowerError as exc:
            self.metrics.errors.inc(1, exc.code.name)
            reply = error_reply(message.request_id, exc)
        if reply is not None:
            reply.request_id = message.request_id
            await self._reply(member, reply)

    async def _reply(self, member: Member, reply: sig.ServerMessage) -> None:
        """Queue a reply to the member's own request, waiting while its queue is full.

        Waiting here only slows the requester's own reader (backpressure on a client that
        sends faster than it reads); events for others never wait (``Room.deliver``).
        """
        try:
            await member.outbox.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the member is leaving

    async def _session_ended(
        self, room: Room, member: Member, port: SignalPort, reason: LeaveReason
    ) -> None:
        """Shielded cleanup: tell the others, the MH and the leaving client; close."""
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
            nursery.start_soon(self._release_media, room, member, reason)
            await self._say_goodbye(member, port, reason, message)

    async def _say_goodbye(
        self, member: Member, port: SignalPort, reason: LeaveReason, message: str
    ) -> None:
        ended = sig.ServerMessage(
            request_id=member.end_request_id,
            session_ended=sig.SessionEnded(reason=leave_reason_to_pb(reason), message=message),
        )
        data = self._encode(member, ended)
        if member.final_error is not None:
            data = self._encode(member, member.final_error) + data
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

    async def _release_media(self, room: Room, member: Member, reason: LeaveReason) -> None:
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
