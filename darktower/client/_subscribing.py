"""The session's subscriptions and the routing of received frames to them; after a rejoin,
their restoration by stream id (docs/protocol.md §13).

A :class:`Subscribing` makes and withdraws the subscriptions of one session and keeps the
16-byte wire ids their frames carry (a dictionary lookup per frame): the source's (and its
simulcast layers'), or the id of the stream the server makes for it instead (a transcode, the
audio mix: docs/protocol.md §2.2), which the MC names in the subscription's Ack and, when it
changes, in SubscriptionUpdated. One wire id goes to one subscription: several audio
subscriptions answered with the mix share its id, and the oldest live one (the session's
``subscribe_mix`` one first) gets its frames. After a rejoin every subscription is made again
at the new MC: at once when its stream is in the meeting (the mix: always), else when a stream
of that id is published again, for at most ``RESUBSCRIBE_WAIT_S`` (then it ends as an
unpublished stream's does).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Iterable

import trio

from darktower.errors import Conflict, DarkTowerError, InternalError
from darktower.frames import Frame
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import CLOSE_GRACE_S, RESUBSCRIBE_WAIT_S, DerivedStream, wire_keys
from ._streams import SessionState, Subscription

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage | None]]
MIX = ""  # the key of the subscribe_mix subscription (the MC's, docs/protocol.md §2.2)


class Subscribing:
    """``subscriptions``: stream id (``""``: the mix) → :class:`Subscription`; ``unrouted``:
    frames of no live subscription (late, after an unsubscribe), counted and dropped.
    Requests go through ``request`` (the session's), withdrawals through ``quietly`` (one whose
    failure changes nothing)."""

    def __init__(self, session: SessionState, request: Request, quietly: Request) -> None:
        self._session = session
        self._request = request
        self._quietly = quietly
        self.subscriptions: dict[str, Subscription] = {}
        self._routes: dict[bytes, Subscription] = {}  # 16-byte wire id → subscription
        self.unrouted = 0
        self._waiting: dict[str, float] = {}  # stream id → until when it waits (a rejoin's)
        self._changed = trio.Event()

    async def subscribe(
        self,
        stream_id: str,
        layer_ids: tuple[str, ...],
        options: sig.SubscriptionOptions,
        size: int,
    ) -> Subscription:
        """SubscribeStream; see :meth:`MeetingSession.subscribe`."""
        if stream_id in self.subscriptions:
            raise Conflict(f"already subscribed to {stream_id}")
        keys = wire_keys(stream_id, layer_ids)
        subscription = Subscription(
            self._session, stream_id, keys, size, close=self._unsubscribe, options=options
        )
        # Registered first: the MH may send frames before the MC's Ack reaches us.
        self.add(subscription)
        try:
            reply = await self._request(_subscribe_message(subscription))
        except BaseException:
            self.drop(subscription)
            raise
        if reply is not None:
            self.derive(subscription, reply.ack.derived)
        return subscription

    async def subscribe_mix(self, size: int) -> Subscription:
        """SubscribeStream{mix_audio}; see :meth:`MeetingSession.subscribe_mix`."""
        if MIX in self.subscriptions:
            raise Conflict("already subscribed to the audio mix")
        subscription = Subscription(self._session, MIX, [], size, close=self._unsubscribe, mix=True)
        reply = await self._request(_subscribe_message(subscription))
        if reply is None or not reply.ack.derived.stream_id:
            raise InternalError("the meeting controller named no mixed stream")
        self.add(subscription)
        self.derive(subscription, reply.ack.derived)
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> None:
        self.drop(subscription)
        stream_id = subscription.stream_id
        if subscription.mix:  # the mix is withdrawn by its own stream id
            stream_id = subscription.derived.stream_id if subscription.derived else ""
        with trio.move_on_after(CLOSE_GRACE_S, shield=True):
            await self._quietly(
                sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id=stream_id))
            )

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.stream_id] = subscription
        self._routes.update(dict.fromkeys(subscription.keys, subscription))

    def derive(self, subscription: Subscription, derived: sig.DerivedStream) -> None:
        """``subscription``'s frames come from ``derived`` now (unset: from its source)."""
        old = subscription.derived
        subscription.derived = DerivedStream.from_pb(derived)
        if old == subscription.derived:
            return
        if old is not None:
            self._release(subscription, _key(old.stream_id))
        if subscription.derived is None or subscription.closed:
            return
        key = _key(subscription.derived.stream_id)
        holder = self._routes.get(key) if key is not None else None
        if key is not None and (holder is None or holder.closed or subscription.mix):
            self._routes[key] = subscription

    def updated(self, update: sig.SubscriptionUpdated) -> None:
        """SubscriptionUpdated: the stream that carries a subscription changed."""
        subscription = self.subscriptions.get(update.stream_id)
        if subscription is not None and not subscription.closed:
            self.derive(subscription, update.derived)

    def _release(self, subscription: Subscription, key: bytes | None) -> None:
        """``subscription`` no longer receives ``key``: the oldest other live subscription
        carried by it does (the mix's), if any."""
        if key is None or self._routes.get(key) is not subscription:
            return
        del self._routes[key]
        for other in self.subscriptions.values():
            if (
                other is not subscription
                and not other.closed
                and other.derived is not None
                and _key(other.derived.stream_id) == key
            ):
                self._routes[key] = other
                return

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
        if subscription.derived is not None:
            self._release(subscription, _key(subscription.derived.stream_id))

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
            if subscription is not None and (subscription.mix or present(stream_id)):
                if await self._resubscribe(subscription, request):
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
                elif subscription.mix or present(stream_id):
                    if await self._resubscribe(subscription, request):
                        self.restored(stream_id)
                elif until <= now:
                    self.drop(subscription)  # its stream did not come back

    async def _resubscribe(self, subscription: Subscription, request: Request) -> bool:
        """SubscribeStream again as it was asked; False if not acknowledged: the stream is not
        there (yet), or the connection or the session went (looked at again after a resume).
        The new MC's Ack says what carries it now."""
        try:
            reply = await request(_subscribe_message(subscription))
        except (DarkTowerError, *Broken):  # NotFound, RequestInterrupted, SessionEnded ...
            return False
        if reply is not None and not subscription.closed:
            self.derive(subscription, reply.ack.derived)
        return True


def _subscribe_message(subscription: Subscription) -> sig.ClientMessage:
    if subscription.mix:
        return sig.ClientMessage(subscribe=sig.SubscribeStream(mix_audio=True))
    return sig.ClientMessage(
        subscribe=sig.SubscribeStream(
            stream_id=subscription.stream_id, options=subscription.options
        )
    )


def _key(stream_id: str) -> bytes | None:
    """The wire id of a derived stream; None if it is not a UUID (no frame can carry it)."""
    try:
        return uuid.UUID(stream_id).bytes
    except ValueError:
        return None


__all__ = ["Subscribing"]
