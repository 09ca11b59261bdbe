"""A signaling session before it is admitted: its first message read, or its refusal written.

A session's first message must be a ``JoinRequest``; anything else, or a join that is refused,
gets an ``ErrorMessage`` and the session is closed with the error's code (docs/protocol.md).
"""

from __future__ import annotations

import trio

from darktower.errors import DarkTowerError
from darktower.protocol import MessageDecoder
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


async def refuse(port: SignalPort, request_id: int, exc: DarkTowerError) -> None:
    """Reply ``exc`` to the request ``request_id``, finish the stream and close the session
    with the error's code: shielded, and at most ``SESSION_END_GRACE_S`` before the close."""
    with trio.move_on_after(SESSION_END_GRACE_S, shield=True):
        try:
            await port.stream.send_all(_wire.encode(_wire.error_reply(request_id, exc)))
            await port.stream.send_eof()
            await port.wait_closed()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    port.close(int(exc.code), exc.code.name)
