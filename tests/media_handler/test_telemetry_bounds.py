"""A publisher's frame timestamps are its own numbers (docs/protocol.md §7): whatever they are,
the MH's telemetry for the stream encodes (the figures a uint32 cannot hold are reported as
its largest value), so no timestamp can stop the telemetry or the MH."""

from __future__ import annotations

from darktower.media_handler._stats import StreamStats
from darktower.media_handler._telemetry import UINT32_MAX, telemetry_event
from darktower.model import StreamId


def test_a_jitter_no_uint32_holds_is_reported_as_the_largest() -> None:
    stats = StreamStats(StreamId("s"))
    now = 1_000.0
    # Far apart in media time, close in arrival: a jitter of years.
    for i, timestamp_us in enumerate((0, 2**62, 0, 2**62)):
        stats.on_received(100, timestamp_us, now + i * 0.02)
    snap = stats.snapshot(now + 1, timestamp=1)
    assert snap.jitter_ms > UINT32_MAX
    event = telemetry_event("m", snap)
    event.SerializeToString()  # raised ValueError before the bound
    assert event.telemetry.jitter_ms == UINT32_MAX
