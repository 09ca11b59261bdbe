"""The Telemetry stream to the MCs (the Prometheus metrics are ``_metrics.py``).

:class:`TelemetryHub` fans events out to every open ``Telemetry`` call. Each call has its own
bounded queue that drops its oldest event when full (and counts it): the router and the
reporter publish synchronously and never wait for an MC.

:class:`TelemetryReporter` builds one ``MediaTelemetry`` per stream per report; its
``packet_loss`` is the QUIC loss of the publisher's connection since the previous report, in
both directions (:class:`ConnectionLoss`, from ``WebTransportSession.transport_stats()``),
and the same packet counts go to /metrics (:class:`MediaMetrics`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import trio

from darktower.errors import CapacityExceeded
from darktower.logs import fields
from darktower.model import MeetingId
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._limits import MAX_TELEMETRY_SUBSCRIBERS, TELEMETRY_QUEUE_SIZE
from ._metrics import MediaMetrics
from ._stats import TelemetrySnapshot

if TYPE_CHECKING:
    from darktower.transport import TransportStats, WebTransportSession

    from ._room import MediaRoom

logger = logging.getLogger("darktower.media_handler")


class _Listener:
    __slots__ = ("events", "meeting_id", "wake")

    def __init__(self, meeting_id: str) -> None:
        self.meeting_id = meeting_id
        # Bounded: TELEMETRY_QUEUE_SIZE, oldest dropped (see module doc).
        self.events: collections.deque[mc_pb.TelemetryEvent] = collections.deque()
        self.wake = trio.lowlevel.ParkingLot()


class TelemetryHub:
    """Fan-out of :class:`TelemetryEvent` to the open Telemetry calls."""

    def __init__(self, metrics: MediaMetrics, queue_size: int = TELEMETRY_QUEUE_SIZE) -> None:
        self._listeners: set[_Listener] = set()
        self._metrics = metrics
        self.queue_size = queue_size
        self._joined = trio.lowlevel.ParkingLot()

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def wait_listeners(self, count: int) -> None:
        """Wait until at least ``count`` Telemetry calls are listening (tests, readiness)."""
        while len(self._listeners) < count:
            await self._joined.park()

    def publish(self, event: mc_pb.TelemetryEvent) -> None:
        """Queue ``event`` for every listener of its meeting (or of all meetings). Never
        blocks; a full queue loses its oldest event."""
        for listener in self._listeners:
            if listener.meeting_id and listener.meeting_id != event.meeting_id:
                continue
            if len(listener.events) >= self.queue_size:
                listener.events.popleft()
                self._metrics.telemetry_dropped.inc()
            listener.events.append(event)
            listener.wake.unpark_all()

    async def subscribe(
        self, meeting_id: MeetingId | str = "", *, ready: trio.Event | None = None
    ) -> AsyncIterator[mc_pb.TelemetryEvent]:
        """Yield the events published from now on, until cancelled. Owns its queue (removed
        when the generator closes). Raises CapacityExceeded past MAX_TELEMETRY_SUBSCRIBERS."""
        if len(self._listeners) >= MAX_TELEMETRY_SUBSCRIBERS:
            raise CapacityExceeded(f"{len(self._listeners)} telemetry streams are open")
        listener = _Listener(str(meeting_id))
        self._listeners.add(listener)
        self._joined.unpark_all()
        if ready is not None:
            ready.set()
        try:
            while True:
                while not listener.events:
                    await listener.wake.park()
                yield listener.events.popleft()
        finally:
            self._listeners.discard(listener)


class ConnectionLoss:
    """QUIC loss of each media connection between one :meth:`measure` and the next."""

    def __init__(self, metrics: MediaMetrics) -> None:
        self._metrics = metrics
        # Bounded by the live sessions: each measure keeps only the sessions it was given.
        self._last: dict[WebTransportSession, TransportStats] = {}

    def measure(self, sessions: Iterable[WebTransportSession]) -> dict[WebTransportSession, float]:
        """The loss (0..1) of each session's connection since the previous call; 0.0 for a
        session seen for the first time (its sample becomes the baseline, which leaves the
        handshake out). Counts the packets of the interval in /metrics."""
        last, self._last = self._last, {}
        losses: dict[WebTransportSession, float] = {}
        counted = [0, 0, 0, 0]  # sent, lost, expected, missing
        for session in sessions:
            if session in self._last:
                continue  # two streams of one publisher: one sample per report
            sample = session.transport_stats()
            self._last[session] = sample
            before = last.get(session)
            if before is None:
                losses[session] = 0.0
                continue
            losses[session] = sample.loss_since(before)
            expected = max(0, sample.peer_packets_expected - before.peer_packets_expected)
            received = sample.datagrams_received - before.datagrams_received
            counted[0] += max(0, sample.packets_sent - before.packets_sent)
            counted[1] += max(0, sample.packets_lost - before.packets_lost)
            counted[2] += expected
            counted[3] += max(0, expected - received)
        sent, lost, expected, missing = counted
        m = self._metrics
        m.quic_packets.inc(sent, "out")
        m.quic_packets_lost.inc(lost, "out")
        m.quic_packets.inc(expected, "in")
        m.quic_packets_lost.inc(missing, "in")
        m.quic_loss.set((lost + missing) / (sent + expected) if sent + expected else 0.0)
        return losses


class TelemetryReporter:
    """One ``MediaTelemetry`` per registered stream per :meth:`report`, to the hub."""

    def __init__(self, hub: TelemetryHub, metrics: MediaMetrics) -> None:
        self.hub = hub
        self.loss = ConnectionLoss(metrics)

    def report(self, rooms: Iterable[MediaRoom], now: float, stamp: int) -> None:
        """Publish every stream's figures at ``now`` (trio clock); ``stamp`` is the wall clock
        in µs since the epoch. The loss is measured even with no listener (/metrics)."""
        rooms = list(rooms)
        losses = self.loss.measure(
            member.session
            for room in rooms
            for member in room.members.values()
            if member.session is not None
        )
        if not self.hub.listeners:
            return
        for room in rooms:
            for publication in list(room.publications.values()):
                session = publication.publisher.session
                loss = 0.0 if session is None else losses.get(session, 0.0)
                snap = publication.stats.snapshot(now, timestamp=stamp, packet_loss=loss)
                try:
                    event = telemetry_event(room.id, snap)
                except ValueError:  # a figure out of its field's range: this report only
                    logger.warning("telemetry figure out of range", extra=fields(snap=str(snap)))
                    continue
                self.hub.publish(event)


UINT32_MAX = 0xFFFF_FFFF


def telemetry_event(meeting_id: str, snap: TelemetrySnapshot) -> mc_pb.TelemetryEvent:
    """The wire form of one stream's figures."""
    return mc_pb.TelemetryEvent(
        meeting_id=meeting_id,
        telemetry=mc_pb.MediaTelemetry(
            stream_id=snap.stream_id,
            bytes_sent=snap.bytes_sent,
            bytes_received=snap.bytes_received,
            packet_loss=snap.packet_loss,
            bitrate=min(snap.bitrate, UINT32_MAX),
            # A publisher's timestamps are its own (hostile) numbers: a jump of hours makes a
            # jitter no uint32 holds, which is then reported as the most it can say.
            jitter_ms=min(snap.jitter_ms, UINT32_MAX),
            timestamp=snap.timestamp,
            frames_dropped=sum(snap.frames_dropped.values()),
        ),
    )
