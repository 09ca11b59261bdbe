"""The per-participant byte-rate budget: a token bucket that drops low priority first.

Its bounds: docs/architecture.md §5.4.

Sans-IO: time is a parameter. One :class:`ByteBudget` per participant and direction (in: what it
publishes, out: what it is sent). Over budget, frames go in this order: discardable, video deltas
of the highest simulcast layer, other video deltas, key frames, audio last. Each class may only
spend tokens while the bucket stays above its reserve, a fraction of the burst, so the classes
above it keep headroom.

A refused video frame breaks the delta chain behind it: the caller reports it to the
stream's :class:`~darktower.media_handler._queue.SubscriptionQueue` (``drop``) or
:class:`~darktower.media_handler._queue.KeyFrameGate` (``lost``).
"""

from __future__ import annotations

import enum
from typing import Final

from darktower.frames import FrameFlags, FrameType

# Default burst, in seconds of the configured rate, when none is given. Policy when exceeded:
# frames are dropped by priority (see module doc). One second lets a key frame through at any
# sane bitrate; the burst must exceed the largest key frame by the key frame reserve.
DEFAULT_BURST_S: Final = 1.0


class Priority(enum.IntEnum):
    """Priority class of a frame under the budget: higher survives longer."""

    DISCARDABLE = 0
    TOP_LAYER_DELTA = 1
    VIDEO_DELTA = 2
    VIDEO_KEY = 3
    AUDIO = 4


# Share of the burst each class must leave in the bucket after spending. Audio may drain it.
RESERVE: Final[dict[Priority, float]] = {
    Priority.DISCARDABLE: 0.75,
    Priority.TOP_LAYER_DELTA: 0.5,
    Priority.VIDEO_DELTA: 0.25,
    Priority.VIDEO_KEY: 0.125,
    Priority.AUDIO: 0.0,
}


# As a plain int: an int & an IntFlag member goes through IntFlag's Python-level __and__
# (1.7 µs, once per frame routed).
_DISCARDABLE: Final = int(FrameFlags.DISCARDABLE)


def priority_of(frame_type: FrameType, flags: int, *, top_layer: bool = False) -> Priority:
    """The budget class of a frame; ``top_layer`` says it belongs to the highest simulcast layer
    of its stream (False for a stream without simulcast)."""
    if flags & _DISCARDABLE:
        return Priority.DISCARDABLE
    if frame_type == FrameType.AUDIO:
        return Priority.AUDIO
    if frame_type == FrameType.VIDEO_KEY:
        return Priority.VIDEO_KEY
    return Priority.TOP_LAYER_DELTA if top_layer else Priority.VIDEO_DELTA


class ByteBudget:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` bytes, full at start.

    ``admit(priority, size, now)`` spends ``size`` tokens and returns True if the bucket keeps at
    least the class's reserve afterwards; otherwise it spends nothing and returns False. ``now``
    is any monotonic time in seconds; it must not go backwards.
    """

    __slots__ = ("_floors", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("a byte budget needs a positive rate")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate * DEFAULT_BURST_S
        if self.burst <= 0:
            raise ValueError("a byte budget needs a positive burst")
        self._floors = {p: share * self.burst for p, share in RESERVE.items()}
        self._tokens = self.burst
        self._last = now

    def tokens(self, now: float) -> float:
        """Bytes that could be spent at ``now``."""
        self._refill(now)
        return self._tokens

    def admit(self, priority: Priority, size: int, now: float) -> bool:
        """Spend ``size`` bytes for a frame of ``priority`` if the budget allows it."""
        self._refill(now)
        left = self._tokens - size
        if left < self._floors[priority]:
            return False
        self._tokens = left
        return True

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
