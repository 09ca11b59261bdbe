"""Per-stream media accounting for telemetry (``MediaTelemetry``, media_control.proto) and /metrics.
Sans-IO.

One :class:`StreamStats` per routed stream counts what came in from the publisher, what went out
to subscribers and what was dropped, by reason; it measures the incoming bitrate over the last
second and the interarrival jitter (RFC 3550 §6.4.1). :meth:`StreamStats.snapshot` gives the
figures of one ``MediaTelemetry`` message as a plain attrs object; the protobuf is built at the
edge. Times are parameters: ``now`` in seconds of any monotonic clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from darktower.media_handler._queue import Dropped, DropReason
from darktower.model import StreamId

# Bitrate window: one second in slots of 100 ms, a fixed ring (bounded whatever the frame rate).
# The figure covers the last RATE_SLOTS complete slots, so it lags by under one slot.
RATE_SLOTS_PER_S: Final = 10
RATE_SLOTS: Final = 10
# RFC 3550's jitter gain: each new transit difference moves the estimate by 1/16.
JITTER_GAIN: Final = 1 / 16


class RateWindow:
    """Bytes counted per slot in a ring; :meth:`bits_per_s` over the last complete slots."""

    __slots__ = ("_counts", "_slots")

    def __init__(self) -> None:
        self._counts = [0] * RATE_SLOTS
        self._slots = [-1] * RATE_SLOTS  # which absolute slot each ring entry counts

    def add(self, nbytes: int, now: float) -> None:
        slot = int(now * RATE_SLOTS_PER_S)
        i = slot % RATE_SLOTS
        if self._slots[i] != slot:
            self._slots[i] = slot
            self._counts[i] = 0
        self._counts[i] += nbytes

    def bits_per_s(self, now: float) -> int:
        """Bits per second over the RATE_SLOTS slots that ended at or before ``now``."""
        current = int(now * RATE_SLOTS_PER_S)
        total = sum(
            count
            for slot, count in zip(self._slots, self._counts, strict=True)
            if current - RATE_SLOTS <= slot < current
        )
        return round(total * 8 * RATE_SLOTS_PER_S / RATE_SLOTS)


class Jitter:
    """RFC 3550 interarrival jitter, in microseconds, from media timestamps and arrival times."""

    __slots__ = ("_last_transit", "value_us")

    def __init__(self) -> None:
        self.value_us = 0.0
        self._last_transit: float | None = None

    def add(self, timestamp_us: int, arrival_us: float) -> None:
        transit = arrival_us - timestamp_us
        last, self._last_transit = self._last_transit, transit
        if last is not None:
            self.value_us += (abs(transit - last) - self.value_us) * JITTER_GAIN


@attrs.frozen(slots=True, kw_only=True)
class TelemetrySnapshot:
    """One ``MediaTelemetry`` message's figures, plus frame counts for /metrics.

    Byte and frame counts are cumulative since the stream was routed. ``bitrate`` is the
    incoming bitrate in bits/s over the last second; ``timestamp`` is the caller's wall clock in
    microseconds since the epoch, like frame timestamps.
    """

    stream_id: StreamId
    bytes_sent: int
    bytes_received: int
    packet_loss: float
    bitrate: int
    jitter_ms: int
    timestamp: int
    frames_received: int
    frames_sent: int
    bitrate_out: int
    frames_dropped: Mapping[DropReason, int]
    bytes_dropped: Mapping[DropReason, int]


class StreamStats:
    """Accounting of one routed stream: in from its publisher, out to all its subscribers."""

    __slots__ = (
        "_bytes_dropped",
        "_frames_dropped",
        "_in_rate",
        "_jitter",
        "_out_rate",
        "bytes_received",
        "bytes_sent",
        "frames_received",
        "frames_sent",
        "stream_id",
    )

    def __init__(self, stream_id: StreamId) -> None:
        self.stream_id = stream_id
        self.bytes_received = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        # Bounded by the DropReason members.
        self._frames_dropped: dict[DropReason, int] = {}
        self._bytes_dropped: dict[DropReason, int] = {}
        self._in_rate = RateWindow()
        self._out_rate = RateWindow()
        self._jitter = Jitter()

    def on_received(self, nbytes: int, timestamp_us: int, now: float) -> None:
        """A frame of ``nbytes`` (wire size) with media ``timestamp_us`` arrived at ``now``.

        Frames that share one timestamp (fragments of one picture) all count toward jitter, as
        packets do in RFC 3550; pass only the first fragment's timestamp if that matters.
        """
        self.bytes_received += nbytes
        self.frames_received += 1
        self._in_rate.add(nbytes, now)
        self._jitter.add(timestamp_us, now * 1_000_000)

    def on_sent(self, nbytes: int, now: float) -> None:
        """A frame of ``nbytes`` was written to a subscriber's stream at ``now``."""
        self.bytes_sent += nbytes
        self.frames_sent += 1
        self._out_rate.add(nbytes, now)

    def on_dropped(self, reason: DropReason, nbytes: int) -> None:
        """A frame of ``nbytes`` will not reach one subscriber (counted once per subscriber)."""
        self._frames_dropped[reason] = self._frames_dropped.get(reason, 0) + 1
        self._bytes_dropped[reason] = self._bytes_dropped.get(reason, 0) + nbytes

    def on_drops(self, drops: Iterable[Dropped[Any]]) -> None:
        """Count what a queue's ``push`` or ``drop`` returned."""
        for dropped in drops:
            self.on_dropped(dropped.reason, dropped.frame.size)

    def frames_dropped(self, reason: DropReason) -> int:
        return self._frames_dropped.get(reason, 0)

    @property
    def jitter_us(self) -> float:
        return self._jitter.value_us

    def bitrate(self, now: float) -> int:
        """Incoming bits per second over the last second."""
        return self._in_rate.bits_per_s(now)

    def snapshot(
        self, now: float, *, timestamp: int, packet_loss: float = 0.0
    ) -> TelemetrySnapshot:
        """The figures for the telemetry report at ``now``; ``packet_loss`` is QUIC's loss
        estimate (0..1) for the publisher's connection, ``timestamp`` the wall clock in µs."""
        return TelemetrySnapshot(
            stream_id=self.stream_id,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            packet_loss=packet_loss,
            bitrate=self._in_rate.bits_per_s(now),
            jitter_ms=round(self._jitter.value_us / 1000),
            timestamp=timestamp,
            frames_received=self.frames_received,
            frames_sent=self.frames_sent,
            bitrate_out=self._out_rate.bits_per_s(now),
            frames_dropped=MappingProxyType(dict(self._frames_dropped)),
            bytes_dropped=MappingProxyType(dict(self._bytes_dropped)),
        )
