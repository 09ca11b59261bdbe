"""The Telemetry stream to the MCs and the MH's Prometheus metrics.

:class:`TelemetryHub` fans events out to every open ``Telemetry`` call. Each call has its own
bounded queue that drops its oldest event when full (and counts it): the router and the
reporter publish synchronously and never wait for an MC.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import trio

from darktower.errors import CapacityExceeded
from darktower.metrics import Registry
from darktower.model import MeetingId
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._limits import MAX_TELEMETRY_SUBSCRIBERS, TELEMETRY_QUEUE_SIZE
from ._queue import DropReason


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


class MediaMetrics:
    """The MH's counters and gauges in one Registry (rendered on /metrics)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.frames_received = registry.counter(
            "darktower_mh_frames_received_total", "frames received from publishers"
        )
        self.bytes_received = registry.counter(
            "darktower_mh_bytes_received_total", "bytes received from publishers (headers incl.)"
        )
        self.frames_forwarded = registry.counter(
            "darktower_mh_frames_forwarded_total", "frames written to subscribers"
        )
        self.bytes_forwarded = registry.counter(
            "darktower_mh_bytes_forwarded_total", "bytes written to subscribers (headers incl.)"
        )
        self.frames_dropped = registry.counter(
            "darktower_mh_frames_dropped_total", "frames not delivered, by reason", ("reason",)
        )
        for reason in DropReason:
            self.frames_dropped.inc(0, reason.value)
        self.stream_errors = registry.counter(
            "darktower_mh_stream_errors_total",
            "publisher streams reset with STREAM_ERROR, by cause",
            ("cause",),
        )
        self.sessions_refused = registry.counter(
            "darktower_mh_sessions_refused_total", "media CONNECTs refused, by status", ("status",)
        )
        self.key_frame_requests = registry.counter(
            "darktower_mh_key_frame_requests_total", "key frame requests sent to the MC"
        )
        self.telemetry_dropped = registry.counter(
            "darktower_mh_telemetry_dropped_total", "telemetry events dropped (MC too slow)"
        )
        self.rooms = registry.gauge("darktower_mh_rooms", "rooms on this MH")
        self.participants = registry.gauge("darktower_mh_participants", "registered participants")
        self.connected = registry.gauge(
            "darktower_mh_participants_connected", "participants with a media connection"
        )
        self.streams = registry.gauge("darktower_mh_streams", "registered streams (layers)")
        self.subscriptions = registry.gauge("darktower_mh_subscriptions", "live subscriptions")
