"""The session's subscriptions and the routing of received frames to them; after a rejoin,
their restoration by stream id (docs/protocol.md §13).

A :class:`Subscribing` keeps the live subscriptions of one session and the 16-byte wire ids
their frames carry (a dictionary lookup per frame). After a rejoin every subscription is made
again at the new MC: at once when its stream is in the meeting, else when a stream of that id
is published again, for at most ``RESUBSCRIBE_WAIT_S`` (then it ends as an unpublished
stream's does).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable

import trio

from darktower.errors import DarkTowerError
from darktower.frames import Frame
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import RESUBSCRIBE_WAIT_S
from ._streams import Subscription

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]


class Subscribing:
    """``subscriptions``: stream id → :class:`Subscription`; ``unrouted``: frames of no live
    subscription (late, after an unsubscribe), counted and dropped."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, Subscription] = {}
        self._routes: dict[bytes, Subscription] = {}  # 16-byte wire id → subscription
        self.unrouted = 0
        self._waiting: dict[str, float] = {}  # stream id → until when it waits (a rejoin's)
        self._changed = trio.Event()

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.stream_id] = subscription
        self._routes.update(dict.fromkeys(subscription.keys, subscription))

    def deliver(self, frame: Frame) -> None:
        subscription = self._routes.get(frame.stream_id_bytes)
        if subscription is None:
            self.unrouted += 1
        else:
            subscription._deliver(frame)

    def drop(self, subscription: Subscription) -> None:
        """End ``subscription`` here (its iteration stops); nothing is sent."""
        subscription._end()
        if self.subscriptions.get(subscription.stream_id) is subscription:
            del self.subscriptions[subscription.stream_id]
            self._waiting.pop(subscription.stream_id, None)
        for key in subscription.keys:
            if self._routes.get(key) is subscription:
                del self._routes[key]

    def drop_streams(self, stream_ids: Iterable[str]) -> None:
        for stream_id in stream_ids:
            if (subscription := self.subscriptions.get(stream_id)) is not None:
                self.drop(subscription)

    def end_all(self) -> None:
        for subscription in list(self.subscriptions.values()):
            subscription._end()
        self._routes.clear()
        self._waiting.clear()

    # -- after a rejoin ----------------------------------------------------------------------
    def rejoined(self) -> None:
        """A rejoin: every live subscription waits to be made again at the new MC (see the
        module docstring)."""
        until = trio.current_time() + RESUBSCRIBE_WAIT_S
        live = [s.stream_id for s in self.subscriptions.values() if not s.closed]
        self._waiting = dict.fromkeys(live, until)
        self.changed()

    def restored(self, stream_id: str) -> None:
        """``stream_id`` is subscribed again at the MC."""
        self._waiting.pop(stream_id, None)

    def changed(self) -> None:
        """The room changed (a stream published, a resume): waiting ones are looked at again."""
        if self._waiting:
            self._changed.set()

    async def restore(self, present: Callable[[str], bool], request: Request) -> None:
        """Make the waiting subscriptions whose stream is ``present`` again, at once, with
        ``request`` (the rejoin's signaling connection's)."""
        for stream_id in list(self._waiting):
            subscription = self.subscriptions.get(stream_id)
            if subscription is not None and present(stream_id):
                if await _resubscribe(subscription, request):
                    self.restored(stream_id)

    async def run_restores(self, present: Callable[[str], bool], request: Request) -> None:
        """Make the waiting subscriptions again whose stream is ``present``, with ``request``
        (the session's), and end those whose wait is over. Runs until cancelled (the
        session's run owns it)."""
        while True:
            with trio.move_on_at(min(self._waiting.values(), default=math.inf)):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            for stream_id, until in list(self._waiting.items()):
                subscription = self.subscriptions.get(stream_id)
                if subscription is None or subscription.closed:
                    self._waiting.pop(stream_id, None)
                elif present(stream_id):
                    if await _resubscribe(subscription, request):
                        self.restored(stream_id)
                elif until <= now:
                    self.drop(subscription)  # its stream did not come back


async def _resubscribe(subscription: Subscription, request: Request) -> bool:
    """SubscribeStream again as it was asked; False if not acknowledged: the stream is not
    there (yet), or the connection or the session went (looked at again after a resume)."""
    message = sig.SubscribeStream(stream_id=subscription.stream_id, options=subscription.options)
    try:
        await request(sig.ClientMessage(subscribe=message))
    except (DarkTowerError, *Broken):  # NotFound, RequestInterrupted, SessionEnded ...
        return False
    return True


__all__ = ["Subscribing"]
