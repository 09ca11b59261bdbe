"""Participants of the fault-injection tests: client-library sessions joined through the GC
(``join_meeting_via_gc``) that behave as a small application does, so that a test can say what
a user saw (docs/architecture.md §9).

Each :class:`Peer` publishes one audio stream whose frames carry their send time (trio's clock
of the test process), sent every FRAME_INTERVAL_S for as long as the session lives (through
outages: the publication's reconnection policy drops what cannot be sent), subscribes to every
stream the others publish (again when a stream comes back after its subscription ended), reads
every subscription and records when each frame arrived, and records every session event with
its time. Nothing here sleeps to wait for something: a wait is on the peer's own pulse (each
event and each frame), bounded by the caller.
"""

from __future__ import annotations

import bisect
import functools
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import trio

from darktower.client import (
    ConnectionState,
    GlobalControllerClient,
    MeetingSession,
    Publication,
    QualityUpdate,
    Rejoined,
    SessionEnded,
    SessionEvent,
    Subscription,
    join_meeting_via_gc,
)
from darktower.errors import DarkTowerError, sole_error
from darktower.frames import FrameType
from darktower.model import StreamType
from darktower.transport import TransportLimits

# The clients' liveness: a dead MC or MH is noticed about this long after it died (the
# library's default is the services' 14 s; a test does not wait that long for every kill).
IDLE_S = 2.0
LIMITS = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 4)
FRAME_INTERVAL_S = 0.04  # 25 audio frames a second per publisher (a pace, not a wait)
STAMP = struct.Struct("!d")
# Limit: arrivals kept per subscribed stream (about 80 s of frames); the older half is dropped
# when full.
MAX_ARRIVALS = 2048

E = TypeVar("E")


@attrs.define(eq=False)
class Peer:
    """One participant (see the module docstring). ``events``: (time, event) in arrival order
    (QualityUpdate aside);
    ``ended_at``: when its session ended, if it did; ``subscribed``: subscribe() calls the
    application made (a rejoin restores subscriptions without one)."""

    name: str
    session: MeetingSession
    publication: Publication | None = None
    events: list[tuple[float, SessionEvent]] = attrs.Factory(list)
    subscriptions: dict[str, Subscription] = attrs.Factory(dict)
    arrivals: dict[str, list[tuple[float, float]]] = attrs.Factory(dict)  # (sent, received)
    subscribed: int = 0
    ended_at: float | None = None
    _pulse: trio.Event = attrs.Factory(trio.Event)
    _resync: trio.Event = attrs.Factory(trio.Event)

    @property
    def stream_id(self) -> str:
        assert self.publication is not None
        return self.publication.stream_id

    @property
    def live(self) -> bool:
        return self.session.end_reason is None

    def others(self) -> list[str]:
        """The display names of the other participants, as this session knows them."""
        return sorted(p.name for p in self.session.participants.values())

    def events_since(self, since: float, *kinds: type) -> list[SessionEvent]:
        """The events recorded at or after ``since`` (of ``kinds`` only, when given)."""
        return [e for t, e in self.events if t >= since and (not kinds or isinstance(e, kinds))]

    def of(self, kind: type[E], since: float) -> list[E]:
        """The events of ``kind`` recorded at or after ``since``."""
        return [e for t, e in self.events if t >= since and isinstance(e, kind)]

    def received_after(self, stream_id: str, since: float) -> float | None:
        """When the first frame of ``stream_id`` sent after ``since`` arrived (None: none yet)."""
        arrivals = self.arrivals.get(stream_id, [])
        i = bisect.bisect_right(arrivals, since, key=lambda a: a[0])
        return arrivals[i][1] if i < len(arrivals) else None

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, looking again at each event and frame (the caller
        bounds the wait)."""
        while not predicate():
            await self._pulse.wait()

    async def event(self, kind: type[E], since: float) -> E:
        """The first event of ``kind`` recorded at or after ``since`` (waiting for it)."""
        found: list[E] = []

        def seen() -> bool:
            found[:] = self.of(kind, since)[:1]
            return bool(found) or self.ended_at is not None

        await self.until(seen)
        if not found:
            raise AssertionError(f"{self.name} ended before a {kind.__name__}: {self.state()}")
        return found[0]

    def state(self) -> str:
        end = self.session.end_reason
        how = f"ended {end.name}: {self.session.end_message!r}" if end else "in"
        dropped = self.publication.dropped if self.publication is not None else 0
        streams = sum(len(p.streams) for p in self.session.participants.values())
        return (
            f"{self.name} ({self.session.participant_id}) {how}, sees {self.others()} "
            f"publishing {streams} streams, subscribed to {len(self.subscriptions)}, "
            f"{self.session.rejoins} rejoins / {self.session.reconnects} reconnects, "
            f"{dropped} frames not sent"
        )

    def _wake(self) -> None:
        self._pulse.set()
        self._pulse = trio.Event()

    async def _read_events(self) -> None:
        try:
            async for event in self.session.events:
                if isinstance(event, QualityUpdate):
                    continue  # a steady stream of them, saying nothing about faults
                self.events.append((trio.current_time(), event))
                self._resync.set()
                self._wake()
        except SessionEnded:
            pass
        self.ended_at = trio.current_time()
        self._wake()

    async def _send(self) -> None:
        assert self.publication is not None
        while True:
            try:
                await self.publication.send_frame(FrameType.AUDIO, STAMP.pack(trio.current_time()))
            except SessionEnded:
                return
            except trio.BrokenResourceError:
                pass  # the MH refused the stream while the session reconnects: the next one
            await trio.sleep(FRAME_INTERVAL_S)

    async def _keep_subscribed(self, nursery: trio.Nursery) -> None:
        """Subscribe to every stream of the others this peer has no subscription to, each time
        something changed (an event, a subscription that ended)."""
        while self.live:
            await self._resync.wait()
            self._resync = trio.Event()
            for other in list(self.session.participants.values()):
                for stream in other.streams:
                    if stream.stream_id in self.subscriptions:
                        continue
                    try:
                        subscription = await self.session.subscribe(stream.stream_id)
                    except SessionEnded:
                        return
                    except (DarkTowerError, trio.BrokenResourceError):
                        continue  # gone again, or reconnecting: the next event says more
                    self.subscribed += 1
                    self.subscriptions[stream.stream_id] = subscription
                    nursery.start_soon(self._receive, subscription)

    async def _receive(self, subscription: Subscription) -> None:
        arrivals = self.arrivals.setdefault(subscription.stream_id, [])
        try:
            async for frame in subscription:
                (sent,) = STAMP.unpack_from(bytes(frame.payload))
                arrivals.append((sent, trio.current_time()))
                if len(arrivals) > MAX_ARRIVALS:
                    del arrivals[: MAX_ARRIVALS // 2]
                self._wake()
        except SessionEnded:
            pass
        finally:
            if self.subscriptions.get(subscription.stream_id) is subscription:
                del self.subscriptions[subscription.stream_id]
            self._resync.set()
            self._wake()


@asynccontextmanager
async def joined(
    gc: GlobalControllerClient, meeting_id: str, name: str, pins: Sequence[bytes]
) -> AsyncIterator[Peer]:
    """``name`` in the meeting through ``gc`` (the GC client's access token decides the role),
    publishing and subscribing as the module docstring says. Leaving the block leaves the
    meeting (the session's own LeaveRequest) and stops the peer's tasks."""
    async with join_meeting_via_gc(
        gc, meeting_id, name, server_certificate_hashes=pins, transport_limits=LIMITS
    ) as session:
        peer = Peer(name, session)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer._read_events)
                peer.publication = await session.publish(
                    StreamType.AUDIO, stream_id=str(uuid.uuid4())
                )
                nursery.start_soon(peer._send)
                peer._resync.set()
                nursery.start_soon(peer._keep_subscribed, nursery)
                try:
                    yield peer
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the test's own error, not a group of one
            raise sole_error(group) from None


async def media_back(peers: Sequence[Peer], since: float, within_s: float) -> list[float]:
    """Wait until every live peer has received, from every other live peer, a frame sent after
    ``since``; return each pair's delay (arrival - ``since``). AssertionError naming the pairs
    still silent after ``within_s``."""
    live = [p for p in peers if p.live]
    delays: dict[tuple[str, str], float] = {}

    async def pair(receiver: Peer, sender: Peer) -> None:
        def back() -> bool:
            return receiver.received_after(sender.stream_id, since) is not None

        await receiver.until(back)
        arrived = receiver.received_after(sender.stream_id, since)
        assert arrived is not None
        delays[receiver.name, sender.name] = arrived - since

    with trio.move_on_after(within_s):
        async with trio.open_nursery() as nursery:
            for receiver in live:
                for sender in live:
                    if sender is not receiver:
                        nursery.start_soon(pair, receiver, sender)
    silent = [
        f"{r.name} <- {s.name}"
        for r in live
        for s in live
        if s is not r and (r.name, s.name) not in delays
    ]
    if silent:
        states = "; ".join(p.state() for p in peers)
        raise AssertionError(f"no media within {within_s} s: {', '.join(silent)} ({states})")
    return sorted(delays.values())


async def all_rejoined(peers: Sequence[Peer], since: float, within_s: float) -> list[Rejoined]:
    """Each peer's first Rejoined at or after ``since``; AssertionError after ``within_s``."""
    found: dict[str, Rejoined] = {}

    async def one(peer: Peer) -> None:
        found[peer.name] = await peer.event(Rejoined, since)

    with trio.move_on_after(within_s):
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
    missing = [p.state() for p in peers if p.name not in found]
    assert not missing, f"not rejoined within {within_s} s: {missing}"
    return [found[p.name] for p in peers]


async def everyone_sees_everyone(peers: Sequence[Peer], within_s: float) -> None:
    """Wait until each live peer is connected and lists every other live peer by name, and
    nobody else (a peer may end meanwhile: the others then wait for its departure)."""

    def complete(peer: Peer) -> bool:
        if not peer.live:
            return True
        names = sorted(p.name for p in peers if p.live and p is not peer)
        return peer.session.connection is ConnectionState.CONNECTED and peer.others() == names

    with trio.move_on_after(within_s):
        while not all(complete(p) for p in peers):
            for peer in peers:
                await peer.until(functools.partial(complete, peer))
        return
    raise AssertionError(f"rosters: {'; '.join(p.state() for p in peers)}")
