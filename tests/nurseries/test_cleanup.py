"""Cleanup hooks: shielded, bounded by their grace, contained when they fail, never holding on."""

from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import MockClock

from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import EventKind, Level, TaskTree
from darktower.nurseries.testing import Journal

from .conftest import Seen

M = MeetingId("m1")


async def test_overrunning_cleanup_is_cut_off_at_its_grace(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal
) -> None:
    meeting = await tree.start_meeting(M)
    reached_end = []

    async def stuck(reason: LeaveReason) -> None:
        await trio.sleep_forever()  # a peer that never acknowledges
        reached_end.append(reason)

    p = await meeting.start_participant(ParticipantId("p"), cleanup=stuck, grace=2.5)
    t0 = trio.current_time()
    p.leave(LeaveReason.KICKED)
    await p.wait_closed()
    assert trio.current_time() - t0 == 2.5
    assert reached_end == []
    assert tree.metrics.cleanup_overruns.value("participant") == 1
    [cleanup] = journal.of(EventKind.CLEANUP, Level.PARTICIPANT)
    assert cleanup.overrun and cleanup.reason is LeaveReason.KICKED
    assert tree.metrics.cancel_latency.sum("participant") == 2.5


async def test_cleanup_is_shielded_from_the_cancellation(
    autojump_clock: MockClock, tree: TaskTree
) -> None:
    meeting = await tree.start_meeting(M)
    sent = []

    async def send_left(reason: LeaveReason) -> None:
        await trio.sleep(1.0)  # would raise Cancelled at once if not shielded
        sent.append(reason)

    p = await meeting.start_participant(ParticipantId("p"), cleanup=send_left, grace=2.0)
    meeting.end()
    await meeting.wait_closed()
    assert sent == [LeaveReason.MEETING_ENDED]
    assert p.closed and tree.metrics.cleanup_overruns.value("participant") == 0


async def test_overrun_never_holds_the_meeting_open(
    autojump_clock: MockClock, tree: TaskTree
) -> None:
    async def stuck(reason: LeaveReason | None) -> None:
        await trio.sleep_forever()

    meeting = await tree.start_meeting(M, cleanup=stuck, grace=3.0)
    for i in range(3):
        p = await meeting.start_participant(ParticipantId(f"p{i}"), cleanup=stuck, grace=1.0)
        await p.start_stream("s", trio.sleep_forever, cleanup=stuck, grace=0.5)
    t0 = trio.current_time()
    meeting.end()
    await meeting.wait_closed()
    # streams 0.5 then participants 1.0 (all in parallel), then the meeting's own 3.0
    assert trio.current_time() - t0 == 4.5
    assert tree.metrics.cleanup_overruns.value("stream") == 3
    assert tree.metrics.cleanup_overruns.value("participant") == 3
    assert tree.metrics.cleanup_overruns.value("meeting") == 1


async def test_failing_cleanup_is_reported_and_others_still_clean_up(
    autojump_clock: MockClock,
    tree: TaskTree,
    journal: Journal,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meeting = await tree.start_meeting(M)

    async def broken(reason: LeaveReason) -> None:
        await trio.sleep(0.1)
        raise ValueError("registry gone")

    bad = await meeting.start_participant(ParticipantId("bad"), cleanup=broken)
    good = [
        await meeting.start_participant(ParticipantId(f"p{i}"), cleanup=seen.cleanup(f"p{i}"))
        for i in range(2)
    ]
    await bad.start_stream("s", seen.forever, "bad/s", cleanup=seen.cleanup("bad/s"))
    with caplog.at_level(logging.ERROR, logger="darktower.nurseries"):
        meeting.end()
        await meeting.wait_closed()
    assert sorted(seen.cleanups) == [
        ("bad/s", LeaveReason.MEETING_ENDED),
        ("p0", LeaveReason.MEETING_ENDED),
        ("p1", LeaveReason.MEETING_ENDED),
    ]
    assert all(p.closed for p in good)
    assert tree.metrics.failures.value("participant", "cleanup") == 1
    [failure] = journal.of(EventKind.FAILURE)
    assert failure.path == "meeting:m1/participant:bad" and failure.phase == "cleanup"
    assert isinstance(failure.error, ValueError)
    [record] = caplog.records
    assert "meeting:m1/participant:bad" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


async def test_cleanup_order_streams_participant_meeting(
    autojump_clock: MockClock, tree: TaskTree
) -> None:
    order: list[str] = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        async def cleanup(reason: LeaveReason | None) -> None:
            await trio.sleep(0.01)
            order.append(name)

        return cleanup

    meeting = await tree.start_meeting(M, cleanup=hook("meeting"))
    p = await meeting.start_participant(ParticipantId("p"), cleanup=hook("participant"))
    await p.start_stream("s", trio.sleep_forever, cleanup=hook("stream"))
    meeting.end()
    await meeting.wait_closed()
    assert order == ["stream", "participant", "meeting"]
