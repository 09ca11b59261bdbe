"""The key shares a session sends (docs/protocol.md §16.2, §16.3), by a task of the session.

A rotation after a leave gives the new key to every other participant: one ``E2EEKeyShare``
request each. :class:`ShareSender` sends them ``SHARES_IN_FLIGHT`` at a time (a room of 100
gets its new key in a few round trips, inside the receivers' 2 s pending window), never two
to the same recipient at once (they arrive in generation order). A share waits in a queue
that keeps only what is still worth sending:

- one share per recipient: a newer one for the same recipient (a newer generation)
  supersedes the one queued, which is dropped;
- a recipient that left is dropped from the queue (``forget``), and a share is not sent (or
  sent again) once its recipient is no longer in the room;
- a rejoin (a new participant, a new key) drops everything queued (``clear``); a share of the
  old participant still in flight is not sent again.

A RATE_LIMITED answer is retried after its ``retry_after``; a request interrupted by a lost
connection is sent again once the session is reconnected (unless superseded meanwhile); any
other refusal (the recipient left meanwhile) is counted in ``failed``.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from darktower.errors import DarkTowerError, RateLimited
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import RequestInterrupted, SessionEnded

# Limit: key shares not yet sent (one per recipient at most). Policy when full: the oldest
# queued share is dropped and counted in ``dropped`` (its recipient holds the frames of that
# key until the next share to it, or drops them as ``no_key``).
SHARE_QUEUE: Final = 4096
# Limit: share requests in flight at once.
SHARES_IN_FLIGHT: Final = 16

Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]


class ShareSender:
    """The queue of a session's key shares and the task that sends them (see the module
    docstring). ``present(participant_id)`` says whether a recipient is still in the room.

    Counters: ``sent``, ``failed`` (refused by the MC), ``dropped`` (never sent: superseded
    by a newer share to the same recipient, its recipient gone, a rejoin, or the queue full).
    """

    def __init__(self, request: Request, present: Callable[[str], bool]) -> None:
        self._request = request
        self._present = present
        self._queued: collections.OrderedDict[str, sig.ClientMessage] = (
            collections.OrderedDict()
        )  # recipient → its newest share, oldest first
        self._in_flight: set[str] = set()
        self._epoch = 0  # a rejoin's shares are of another participant
        self._changed = trio.Event()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queued)

    def put(self, recipient: str, message: sig.ClientMessage) -> None:
        """Queue ``message``, a share for ``recipient``, superseding the one queued for it."""
        if self._queued.pop(recipient, None) is not None:
            self.dropped += 1
        elif len(self._queued) >= SHARE_QUEUE:
            self._queued.popitem(last=False)
            self.dropped += 1
        self._queued[recipient] = message
        self._changed.set()

    def forget(self, recipient: str) -> None:
        """``recipient`` left: its queued share is not sent."""
        if self._queued.pop(recipient, None) is not None:
            self.dropped += 1

    def clear(self) -> None:
        """A rejoin: nothing queued or in flight is sent (again)."""
        self.dropped += len(self._queued)
        self._queued.clear()
        self._epoch += 1

    async def run(self) -> None:
        """Send the queued shares until the session ended (then returns) or cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                recipient = None
                if len(self._in_flight) < SHARES_IN_FLIGHT:
                    recipient = next((r for r in self._queued if r not in self._in_flight), None)
                if recipient is None:
                    await self._changed.wait()
                    self._changed = trio.Event()
                    continue
                message = self._queued.pop(recipient)
                self._in_flight.add(recipient)
                nursery.start_soon(self._send, nursery, recipient, message, self._epoch)

    async def _send(
        self, nursery: trio.Nursery, recipient: str, message: sig.ClientMessage, epoch: int
    ) -> None:
        try:
            while True:
                if epoch != self._epoch or not self._present(recipient):
                    self.dropped += 1
                    return
                try:
                    await self._request(message)
                    self.sent += 1
                    return
                except SessionEnded:
                    nursery.cancel_scope.cancel()  # the session is over: run returns
                    return
                except RequestInterrupted:
                    pass  # maybe not delivered: again once the session is reconnected
                except RateLimited as exc:
                    await trio.sleep(exc.retry_after_s)
                except (DarkTowerError, trio.BrokenResourceError):
                    self.failed += 1  # the recipient left meanwhile
                    return
                if recipient in self._queued:  # superseded meanwhile: the newer one goes
                    self.dropped += 1
                    return
        finally:
            self._in_flight.discard(recipient)
            self._changed.set()


__all__ = ["SHARES_IN_FLIGHT", "SHARE_QUEUE", "ShareSender"]
