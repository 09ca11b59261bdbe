"""Synthetic media: frame sizes for a bitrate, and the stamp every payload starts with.

A payload is ``MAGIC | sequence (u64) | send time (u64, time.monotonic_ns)`` followed by filler,
so a subscriber checks integrity, finds gaps and measures delivery latency from the payload
alone (the load tester's publishers and subscribers share one process and one clock).
No I/O here.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

MAGIC: Final = b"DTLT"
STAMP: Final = struct.Struct(">4sQQ")
STAMP_SIZE: Final = STAMP.size

# The benchmarks' synthetic camera (benchmarks/media_fanout.py): 30 fps, a key frame every
# 2 s 25 times the size of a delta frame; 400 kbit/s gives 29.8 KB key and 1.2 KB deltas.
VIDEO_FPS: Final = 30
KEY_EVERY: Final = 2 * VIDEO_FPS
KEY_TO_DELTA: Final = 25
# The synthetic microphone: 50 fps of 120 bytes (Opus at 48 kbit/s).
AUDIO_FPS: Final = 50
AUDIO_BYTES: Final = 120

_FILLER: Final = bytes(1 << 20)


@attrs.frozen
class VideoPlan:
    """Frame sizes of a synthetic video stream of ``kbps`` kbit/s."""

    kbps: int
    key_bytes: int
    delta_bytes: int

    @classmethod
    def for_kbps(cls, kbps: int) -> VideoPlan:
        # Bytes per key period = key + (KEY_EVERY - 1) deltas = (KEY_TO_DELTA + KEY_EVERY - 1)
        # deltas; every frame carries at least its stamp.
        period_bytes = kbps * 1000 / 8 * KEY_EVERY / VIDEO_FPS
        delta = max(STAMP_SIZE, round(period_bytes / (KEY_TO_DELTA + KEY_EVERY - 1)))
        return cls(kbps=kbps, key_bytes=delta * KEY_TO_DELTA, delta_bytes=delta)


def make_payload(size: int, sequence: int, sent_ns: int) -> bytes:
    """A payload of ``max(size, STAMP_SIZE)`` bytes stamped with ``sequence`` and ``sent_ns``."""
    stamp = STAMP.pack(MAGIC, sequence, sent_ns)
    return stamp + _FILLER[: max(0, size - STAMP_SIZE)]


def read_stamp(payload: bytes | memoryview) -> tuple[int, int] | None:
    """``(sequence, sent_ns)`` of a payload made by :func:`make_payload`, None if it is not."""
    if len(payload) < STAMP_SIZE:
        return None
    magic, sequence, sent_ns = STAMP.unpack_from(payload)
    if magic != MAGIC:
        return None
    return sequence, sent_ns
