"""Per-stream telemetry accounting: counts, drops, bitrate window, RFC 3550 jitter (sans-IO)."""

from __future__ import annotations

import pytest

from darktower.frames import FrameFlags, FrameType
from darktower.media_handler import (
    DropReason,
    MediaKind,
    QueuedFrame,
    StreamStats,
    SubscriptionQueue,
)
from darktower.media_handler._queue import Dropped
from darktower.media_handler._stats import Jitter, RateWindow
from darktower.model import StreamId

STREAM = StreamId("0b7e0c1e-2a6c-4c3e-9d0e-6f1d2b3c4d5e")
EPOCH_US = 1_764_000_000_000_000


def test_counts_and_snapshot() -> None:
    stats = StreamStats(STREAM)
    stats.on_received(1000, EPOCH_US, 10.0)
    stats.on_received(500, EPOCH_US + 20_000, 10.02)
    stats.on_sent(1000, 10.01)
    stats.on_dropped(DropReason.QUEUE_FULL_DELTA, 500)
    snap = stats.snapshot(10.5, timestamp=EPOCH_US + 500_000, packet_loss=0.03)
    assert snap.stream_id == STREAM
    assert (snap.bytes_received, snap.frames_received) == (1500, 2)
    assert (snap.bytes_sent, snap.frames_sent) == (1000, 1)
    assert snap.packet_loss == 0.03
    assert snap.timestamp == EPOCH_US + 500_000
    assert dict(snap.frames_dropped) == {DropReason.QUEUE_FULL_DELTA: 1}
    assert dict(snap.bytes_dropped) == {DropReason.QUEUE_FULL_DELTA: 500}
    # a snapshot is a frozen copy: later drops do not change it
    stats.on_dropped(DropReason.QUEUE_FULL_DELTA, 10)
    assert snap.frames_dropped[DropReason.QUEUE_FULL_DELTA] == 1
    assert stats.frames_dropped(DropReason.QUEUE_FULL_DELTA) == 2
    with pytest.raises(TypeError):
        snap.frames_dropped[DropReason.BUDGET] = 1  # type: ignore[index]


def test_bitrate_over_the_last_second() -> None:
    stats = StreamStats(STREAM)
    # 125 bytes every 10 ms for two seconds (mid-slot times): 12,500 B/s = 100 kbit/s
    for i in range(200):
        now = i / 100 + 0.005
        stats.on_received(125, EPOCH_US + i * 10_000, now)
        stats.on_sent(250, now)  # sent to two subscribers
    assert stats.bitrate(2.0) == 100_000
    snap = stats.snapshot(2.0, timestamp=0)
    assert (snap.bitrate, snap.bitrate_out) == (100_000, 200_000)
    assert stats.bitrate(2.5) == 50_000  # half of the last second was silent
    assert stats.bitrate(3.0) == 0

    fresh = StreamStats(STREAM)
    for i in range(50):
        fresh.on_received(125, EPOCH_US + i * 10_000, i / 100 + 0.005)
    assert fresh.bitrate(0.5) == 50_000  # half a second of data: the window is one second


def test_rate_window_forgets_a_reused_slot() -> None:
    window = RateWindow()
    window.add(1000, 0.05)  # slot 0
    window.add(10, 1.05)  # slot 10 lands on the same ring entry
    assert window.bits_per_s(1.15) == 80
    assert window.bits_per_s(1.05) == 0  # the slot in progress does not count yet


def test_jitter_against_a_hand_computed_value() -> None:
    # 20 ms media clock; the third frame arrives 5 ms late.
    # transit differences |D|: 0, 5000, 5000, 0 (µs); J += (|D| - J) / 16:
    # 0 -> 312.5 -> 605.46875 -> 567.626953125
    jitter = Jitter()
    for i, arrival_ms in enumerate([0, 20, 45, 60, 80]):
        jitter.add(EPOCH_US + i * 20_000, 100_000_000 + arrival_ms * 1000)
    assert jitter.value_us == 567.626953125


def test_jitter_from_stream_stats_in_seconds_and_ms() -> None:
    stats = StreamStats(STREAM)
    for i, arrival_ms in enumerate([0, 20, 45, 60, 80]):
        stats.on_received(100, EPOCH_US + i * 20_000, 100 + arrival_ms / 1000)
    assert stats.jitter_us == pytest.approx(567.626953125, abs=1e-3)
    assert stats.snapshot(101.0, timestamp=0).jitter_ms == 1
    # steady arrivals: the estimate decays by 15/16 per frame towards zero
    stats = StreamStats(STREAM)
    for i in range(200):
        arrival = 100 + i * 0.020 + (0.040 if i == 1 else 0.0)
        stats.on_received(100, EPOCH_US + i * 20_000, arrival)
    assert stats.jitter_us < 1.0
    assert stats.snapshot(105.0, timestamp=0).jitter_ms == 0


def test_constant_delay_is_no_jitter() -> None:
    stats = StreamStats(STREAM)
    for i in range(50):
        stats.on_received(100, EPOCH_US + i * 33_333, 7.0 + i * 0.033333)
    assert stats.jitter_us == pytest.approx(0.0, abs=1.0)


def test_every_drop_of_a_queue_is_counted() -> None:
    stats = StreamStats(STREAM)
    queue: SubscriptionQueue[int] = SubscriptionQueue(MediaKind.VIDEO, max_frames=4)
    pattern = [FrameType.VIDEO_DELTA, FrameType.VIDEO_KEY] + [FrameType.VIDEO_DELTA] * 8
    for i, frame_type in enumerate(pattern * 3):
        now = i / 30
        flags = FrameFlags.DISCARDABLE if i % 3 == 0 else FrameFlags.END_OF_FRAME
        frame = QueuedFrame(frame_type, int(flags), 100 + i, i)
        stats.on_received(frame.size, EPOCH_US + i * 33_333, now)
        stats.on_drops(queue.push(frame))
        if i % 4 == 0 and (sent := queue.pop()) is not None:
            stats.on_sent(sent.size, now)
    while (sent := queue.pop()) is not None:
        stats.on_sent(sent.size, 1.0)
    snap = stats.snapshot(1.0, timestamp=0)
    dropped_frames = sum(snap.frames_dropped.values())
    assert snap.frames_sent + dropped_frames == snap.frames_received == 30
    assert snap.bytes_sent + sum(snap.bytes_dropped.values()) == snap.bytes_received
    assert snap.frames_dropped[DropReason.WAITING_FOR_KEYFRAME] >= 1  # the first delta
    assert {DropReason.DISCARDABLE, DropReason.QUEUE_FULL_DELTA} <= set(snap.frames_dropped)


def test_on_drops_accepts_any_payload_type() -> None:
    stats = StreamStats(STREAM)
    frame = QueuedFrame(FrameType.AUDIO, 0, 77, memoryview(b"x"))
    stats.on_drops([Dropped(frame, DropReason.BUDGET)])
    assert stats.snapshot(0.0, timestamp=0).bytes_dropped == {DropReason.BUDGET: 77}
