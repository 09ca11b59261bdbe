"""A signaling session before it is admitted: its first message read, or its refusal written.

A session's first message must be a ``JoinRequest``; anything else, or a join that is refused,
gets an ``ErrorMessage`` and the session is closed with the error's code (docs/protocol.md).
"""

from __future__ import annotations

import trio

from darktower.errors import DarkTowerError
from darktower.model import LeaveReason
from darktower.protocol import MessageDecoder, leave_reason_to_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from . import _wire
from ._limits import READ_SIZE, SESSION_END_GRACE_S
from ._port import SignalPort


async def read_first(
    port: SignalPort, decoder: MessageDecoder[sig.ClientMessage]
) -> sig.ClientMessage | None:
    """The session's first message (what follows it stays in ``decoder``), or None if the
    client finished its stream first. Raises InvalidRequest for a message that cannot be
    decoded; the caller bounds the wait."""
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        data = await port.stream.receive_some(READ_SIZE)
        if not data:
            return None
        decoder.receive_data(data)


async def refuse(
    port: SignalPort,
    request_id: int,
    exc: DarkTowerError,
    *,
    ended: LeaveReason | None = None,
) -> None:
    """Reply ``exc`` to the request ``request_id`` (then ``SessionEnded{ended}`` if given: a
    resume of a participant kicked or ended with its meeting), finish the stream and close
    the session with the error's code: shielded, and at most ``SESSION_END_GRACE_S``."""
    data = _wire.encode(_wire.error_reply(request_id, exc))
    if ended is not None:
        data += _wire.encode(
            sig.ServerMessage(session_ended=sig.SessionEnded(reason=leave_reason_to_pb(ended)))
        )
    with trio.move_on_after(SESSION_END_GRACE_S, shield=True):
        try:
            await port.stream.send_all(data)
            await port.stream.send_eof()
            await port.wait_closed()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    port.close(int(exc.code), exc.code.name)
