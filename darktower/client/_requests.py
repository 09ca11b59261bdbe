"""A meeting session's requests to its MC: each waits for its reply on the current signaling
connection, across a reconnection (docs/protocol.md §13), and learns that the session ended
while it waits.
"""

from __future__ import annotations

from typing import Protocol

import trio

from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import SETTLE_S, RequestInterrupted, SessionEnded
from ._link import Link
from ._streams import first_of

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)


class RequestOwner(Protocol):
    """What the requests read of their session (a :class:`MeetingSession`)."""

    @property
    def end_reason(self) -> LeaveReason | None: ...

    @property
    def ended(self) -> trio.Event: ...

    def ended_error(self) -> SessionEnded: ...

    def finish(self, reason: LeaveReason, message: str = "") -> None: ...


class Requests:
    """The requests of one session on its ``link``; :meth:`cancel_all` once it ended."""

    def __init__(self, owner: RequestOwner, link: Link) -> None:
        self._owner = owner
        self._link = link
        self._calls: set[trio.CancelScope] = set()  # requests waiting for their reply

    def cancel_all(self) -> None:
        """The session ended: every waiting request raises its SessionEnded."""
        for call in self._calls:
            call.cancel()

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        """A request that raises SessionEnded once the session is over, also while waiting.
        While the session reconnects it waits to be sent on the resumed connection; one whose
        connection was lost under it raises RequestInterrupted. Raises the MC's
        ``DarkTowerError`` of an ErrorMessage reply."""
        owner = self._owner
        if owner.end_reason is not None:
            raise owner.ended_error()
        call = trio.CancelScope()
        self._calls.add(call)
        try:
            with call:
                await self._link.signaling_up.wait()
                signaling = self._link.signaling
                try:
                    return await signaling.request(message)
                except Broken as exc:  # SignalingEnded included
                    if self._link.signaling is signaling:  # the link may not know yet
                        with trio.move_on_after(SETTLE_S):
                            await first_of(owner.ended, self._link.signaling_down)
                    if owner.end_reason is None and (
                        self._link.signaling is not signaling or self._link.reconnecting
                    ):
                        raise RequestInterrupted("connection lost; reconnecting") from exc
                    owner.finish(LeaveReason.CONNECTION_LOST, "signaling connection lost")
                    raise owner.ended_error() from exc
        finally:
            self._calls.discard(call)
        raise owner.ended_error()  # finish() cancelled the call

    async def quietly(self, message: sig.ClientMessage) -> None:
        """A request whose failure changes nothing for the caller (cleanup)."""
        if self._owner.end_reason is not None:
            return
        try:
            await self._link.signaling.request(message)
        except Exception:
            pass


__all__ = ["RequestOwner", "Requests"]
