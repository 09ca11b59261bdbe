"""Races between reasons, and the server-level drain."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import (
    EventKind,
    Level,
    ScopeClosed,
    TaskTree,
    TreeState,
    open_task_tree,
)
from darktower.nurseries.testing import Journal

from .conftest import Seen

M = MeetingId("m1")


@pytest.mark.parametrize("kick_first", [True, False])
async def test_kicked_while_meeting_ends_gets_exactly_one_reason(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal, seen: Seen, kick_first: bool
) -> None:
    meeting = await tree.start_meeting(M)
    p = await meeting.start_participant(ParticipantId("p"), cleanup=seen.cleanup("p"))
    await p.start_stream("s", seen.forever, "s")
    if kick_first:
        p.leave(LeaveReason.KICKED)
        meeting.end()
    else:
        meeting.end()
        p.leave(LeaveReason.KICKED)
    await meeting.wait_closed()
    first = LeaveReason.KICKED if kick_first else LeaveReason.MEETING_ENDED
    assert p.reason is first
    assert [e.reason for e in journal.of(EventKind.LEAVING)] == [first]
    assert seen.cancelled == {"s": first.name}
    assert seen.reason == {"s": first}
    assert seen.cleanups == [("p", first)]
    [closed] = [e for e in journal.of(EventKind.CLOSED) if e.level is Level.PARTICIPANT]
    assert closed.reason is first


async def test_drain_ends_meetings_then_refuses_and_returns(
    autojump_clock: MockClock, seen: Seen
) -> None:
    journal = Journal()
    sent: list[tuple[str, LeaveReason]] = []

    def send_left(name: str):  # type: ignore[no-untyped-def]
        async def cleanup(reason: LeaveReason) -> None:
            await trio.sleep(0.5)  # a well-behaved peer, well inside the drain grace
            sent.append((name, reason))

        return cleanup

    tree = TaskTree(observer=journal.record)
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        meetings = [await tree.start_meeting(MeetingId(f"m{i}")) for i in range(3)]
        for m in meetings:
            for j in range(2):
                p = await m.start_participant(
                    ParticipantId(f"p{j}"), cleanup=send_left(f"{m.id}/p{j}")
                )
                await p.start_stream("s", seen.forever, f"{m.id}/p{j}/s")
        t0 = trio.current_time()
        tree.drain(10.0)
        assert tree.state is TreeState.DRAINING and not tree.accepting
        with pytest.raises(ScopeClosed):
            await tree.start_meeting(MeetingId("late"))
        with pytest.raises(ScopeClosed):
            await meetings[0].start_participant(ParticipantId("late"))
        await tree.wait_closed()
        assert trio.current_time() - t0 == 0.5  # returns as soon as everything closed
    assert tree.state is TreeState.CLOSED
    assert len(sent) == 6 and {r for _, r in sent} == {LeaveReason.MEETING_ENDED}
    assert set(seen.cancelled.values()) == {"MEETING_ENDED"}
    journal.check()


async def test_drain_deadline_cuts_cleanups_and_cancels_what_is_left(
    autojump_clock: MockClock,
) -> None:
    journal = Journal()

    async def stuck(reason: LeaveReason | None) -> None:
        await trio.sleep_forever()

    tree = TaskTree(observer=journal.record)
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        m = await tree.start_meeting(M, cleanup=stuck, grace=30.0)
        p = await m.start_participant(ParticipantId("p"), cleanup=stuck, grace=30.0)
        await p.start_stream("s", trio.sleep_forever, cleanup=stuck, grace=30.0)
        t0 = trio.current_time()
        tree.drain(2.0)
        await tree.wait_closed()
        assert trio.current_time() - t0 == 2.0
    assert tree.metrics.cleanup_overruns.value("stream") == 1
    assert tree.metrics.cleanup_overruns.value("participant") == 1
    assert tree.metrics.cleanup_overruns.value("meeting") == 1
    journal.check()


async def test_drain_caps_cleanups_already_running(autojump_clock: MockClock) -> None:
    async def stuck(reason: LeaveReason) -> None:
        await trio.sleep_forever()

    async with open_task_tree(drain_grace=1.0) as tree:
        m = await tree.start_meeting(M)
        p = await m.start_participant(ParticipantId("p"), cleanup=stuck, grace=60.0)
        p.leave(LeaveReason.KICKED)
        await trio.sleep(5)  # the cleanup has 55 s left
        t0 = trio.current_time()
        tree.drain(1.0)
        await p.wait_closed()
        assert trio.current_time() - t0 == 1.0


async def test_outside_cancellation_still_gives_every_task_a_reason(
    autojump_clock: MockClock, seen: Seen
) -> None:
    journal = Journal()
    tree = TaskTree(observer=journal.record)
    with trio.CancelScope() as service:
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            m = await tree.start_meeting(M, cleanup=seen.cleanup("meeting"))
            for i in range(3):
                p = await m.start_participant(ParticipantId(f"p{i}"), cleanup=seen.cleanup(f"p{i}"))
                await p.start_stream("s", seen.forever, f"p{i}/s")
            service.cancel()
    assert tree.state is TreeState.CLOSED
    assert seen.reason == {f"p{i}/s": LeaveReason.MEETING_ENDED for i in range(3)}
    assert len(seen.cleanups) == 4
    journal.check()


async def test_tree_runs_once(autojump_clock: MockClock) -> None:
    async with open_task_tree() as tree:
        with pytest.raises(RuntimeError):
            await tree.run()


async def test_a_drain_for_meetings_that_go_on_elsewhere_carries_its_own_reason(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal, seen: Seen
) -> None:
    # A server that hands its meetings over (an MH whose rooms move) must not say
    # MEETING_ENDED: the reason reaches every stream, cleanup and event.
    meeting = await tree.start_meeting(M, cleanup=seen.cleanup("m"))
    p = await meeting.start_participant(ParticipantId("p"), cleanup=seen.cleanup("p"))
    await p.start_stream("s", seen.forever, "s")
    tree.drain(5.0, LeaveReason.CONNECTION_LOST)
    await meeting.wait_closed()
    assert p.reason is LeaveReason.CONNECTION_LOST
    assert seen.reason == {"s": LeaveReason.CONNECTION_LOST}
    assert seen.cleanups == [("p", LeaveReason.CONNECTION_LOST), ("m", LeaveReason.CONNECTION_LOST)]
    [ending] = journal.of(EventKind.ENDING)
    assert ending.reason is LeaveReason.CONNECTION_LOST
