"""The load tester's pure parts: synthetic payloads, counting, the summary."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from darktower.loadtest import Reservoir, Stats, Summary, VideoPlan, make_payload, read_stamp
from darktower.loadtest._payload import KEY_EVERY, STAMP_SIZE, VIDEO_FPS
from darktower.loadtest._stats import PublishedStream


def _summary(stats: Stats) -> Summary:
    return Summary.from_stats(
        stats, target="t", meetings=1, participants=2, publishers=2, duration_s=1.0
    )


@pytest.mark.parametrize("kbps", [50, 400, 2500])
def test_video_plan_matches_the_bitrate(kbps: int) -> None:
    plan = VideoPlan.for_kbps(kbps)
    period_bytes = plan.key_bytes + (KEY_EVERY - 1) * plan.delta_bytes
    measured_kbps = period_bytes * 8 / (KEY_EVERY / VIDEO_FPS) / 1000
    assert measured_kbps == pytest.approx(kbps, rel=0.02)
    assert plan.key_bytes == 25 * plan.delta_bytes


def test_tiny_bitrate_still_carries_the_stamp() -> None:
    assert VideoPlan.for_kbps(1).delta_bytes == STAMP_SIZE


def test_payload_round_trip_and_size() -> None:
    payload = make_payload(1200, 7, 123_456_789)
    assert len(payload) == 1200
    assert read_stamp(payload) == (7, 123_456_789)
    assert read_stamp(memoryview(payload)) == (7, 123_456_789)
    assert len(make_payload(3, 1, 2)) == STAMP_SIZE  # never shorter than the stamp


@pytest.mark.parametrize("data", [b"", b"DTLT", b"XXXX" + bytes(16), bytes(40)])
def test_foreign_payloads_are_not_read_as_stamps(data: bytes) -> None:
    assert read_stamp(data) is None


def test_reservoir_is_bounded_and_keeps_the_count() -> None:
    reservoir = Reservoir(100, seed=1)
    for i in range(10_000):
        reservoir.add(float(i))
    assert len(reservoir.samples) == 100
    assert reservoir.count == 10_000
    # A uniform sample of 0..9999: not just the first hundred.
    assert max(reservoir.samples) > 5_000


async def test_expected_counts_from_the_acknowledgement() -> None:
    stats = Stats()
    stream = PublishedStream("audio")
    stats.sent(stream, 100)  # before anyone subscribed: expected of nobody
    first = stats.subscribe(stream)
    stats.sent(stream, 100)
    second = stats.subscribe(stream)
    stats.sent(stream, 100)
    assert stats.frames_sent == 3
    assert stats.expected == 1 + 2
    stats.received(first, 0, 146, 0.001)  # sent before the subscription counted
    assert stats.unexpected == 1 and stats.delivered == 0
    stats.received(first, 1, 146, 0.001)
    stats.received(first, 2, 146, 0.002)
    stats.received(second, 2, 146, 0.003)
    assert stats.delivered == 3 and stats.missing == 0 and stats.gaps == 0
    assert stats.latency_s.count == 4


async def test_gaps_and_reordering_by_sequence() -> None:
    stats = Stats()
    stream = PublishedStream("video")
    sub = stats.subscribe(stream)
    for _ in range(6):
        stats.sent(stream, 10)
    for seq in (0, 1, 4, 3, 5):  # 2 never arrives; 3 arrives after 4
        stats.received(sub, seq, 10, 0.0)
    assert stats.gaps == 2  # 2 and 3 were missing when 4 arrived
    assert stats.reordered == 1
    assert stats.delivered == 5 and stats.expected == 6 and stats.missing == 1
    summary = _summary(stats)
    assert summary.drops == 1 and summary.gaps == 2


async def test_unsubscribed_frames_are_not_expected() -> None:
    stats = Stats()
    stream = PublishedStream("audio")
    sub = stats.subscribe(stream)
    stats.sent(stream, 10)
    stats.unsubscribe(sub)
    stats.sent(stream, 10)
    assert stats.expected == 1


async def test_wait_caught_up_returns_when_the_last_frame_arrives() -> None:
    stats = Stats()
    stream = PublishedStream("audio")
    sub = stats.subscribe(stream)
    stats.sent(stream, 10)
    stats.sent(stream, 10)
    stats.media_stopped_at = trio.current_time()
    done = trio.Event()

    async def waiter() -> None:
        await stats.wait_caught_up()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        stats.received(sub, 0, 10, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        stats.received(sub, 1, 10, 0.0)
    assert done.is_set()


async def test_errors_by_kind_are_bounded() -> None:
    stats = Stats()
    for i in range(200):
        stats.error(f"join:KIND{i}", ValueError("x" * 1000))
    assert stats.error_count == 200
    assert len(stats.errors) <= 65
    assert all(len(text) <= 300 for text in stats.error_examples.values())


async def test_summary_verdict_and_json() -> None:
    stats = Stats()
    assert not _summary(stats).ok  # nothing delivered
    stream = PublishedStream("audio")
    sub = stats.subscribe(stream)
    stats.sent(stream, 10)
    stats.received(sub, 0, 10, 0.0125)
    summary = _summary(stats)
    assert summary.ok
    data = json.loads(summary.json_line())
    assert data["ok"] is True and data["error_count"] == 0
    assert data["frames_delivered"] == 1 and data["drops"] == 0
    assert data["latency"]["p50_ms"] == pytest.approx(12.5)
    assert set(data["join"]) == {"p50_ms", "p95_ms", "p99_ms", "max_ms"}
    assert "result          OK" in summary.text()
    stats.error("session:MEDIA_CLOSED", "gone")
    failed = _summary(stats)
    assert not failed.ok
    assert "session:MEDIA_CLOSED: gone" in failed.text()


async def test_worker_reports_merge_into_one_summary() -> None:
    workers = []
    for delivered in (3, 5):
        stats = Stats(seed=1)
        stats.participants_planned = stats.joins_ok = 2
        stream = PublishedStream("audio")
        sub = stats.subscribe(stream)
        for _ in range(delivered + 1):
            stats.sent(stream, 10)
        for seq in range(delivered):
            stats.received(sub, seq, 10, 0.001 * (seq + 1))
        stats.join_s.add(0.1 * delivered)
        stats.error("join:UNAUTHORIZED", "no")
        stats.media_started_at = trio.current_time() - 2.0
        stats.media_stopped_at = trio.current_time()
        stats.cpu_at_start, stats.cpu_at_stop = 1.0, 1.5
        workers.append(json.loads(json.dumps(stats.to_raw())))  # through JSON, as on the wire
    merged = Stats()
    for raw in workers:
        merged.merge_raw(raw)
    summary = _summary(merged)
    assert summary.participants == summary.joined == 4
    assert summary.frames_sent == 10 and summary.frames_expected == 10
    assert summary.frames_delivered == 8 and summary.drops == 2
    assert summary.errors == {"join:UNAUTHORIZED": 2}
    assert summary.latency_samples == 8
    assert summary.join["max_ms"] == pytest.approx(500)
    assert summary.media_s == pytest.approx(2.0, abs=0.01)
    assert summary.loadtester_cpu_share == pytest.approx(0.5, abs=0.01)  # 1 CPU s over 2 s


async def test_progress_reports_carry_counts_only() -> None:
    stats = Stats()
    stats.latency_s.add(0.5)
    raw = stats.to_raw(samples=False)
    assert raw["latency_s"] == {"count": 1, "samples": []}


async def test_reconnects_and_time_to_recover_are_in_the_summary() -> None:
    stats = Stats()
    data = json.loads(_summary(stats).json_line())
    assert (data["reconnects"], data["recover_p50_ms"], data["recover_p99_ms"]) == (0, None, None)
    workers = []
    for outages in ((0.2, 0.4), (1.0,)):
        part = Stats(seed=1)
        for outage in outages:
            part.reconnected(outage)
        workers.append(json.loads(json.dumps(part.to_raw())))
    merged = Stats()
    for raw in workers:
        merged.merge_raw(raw)
    summary = _summary(merged)
    data = json.loads(summary.json_line())
    assert data["reconnects"] == 3
    assert data["recover_p50_ms"] == pytest.approx(400)
    assert data["recover_p99_ms"] == pytest.approx(1000)
    assert "reconnects      3" in summary.text()
