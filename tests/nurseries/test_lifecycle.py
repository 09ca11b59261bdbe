"""Scopes, reasons and cleanup of the normal lifecycle: join, streams, kick, leave, end."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from darktower.errors import CapacityExceeded, Conflict
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import (
    EventKind,
    Level,
    Participant,
    ScopeClosed,
    ScopeState,
    TaskTree,
    current_meeting,
    current_participant,
)
from darktower.nurseries.testing import Journal, assert_registry_matches_tasks

from .conftest import Seen

M = MeetingId("m1")


def pid(i: int) -> ParticipantId:
    return ParticipantId(f"p{i}")


async def _meeting_with(tree: TaskTree, seen: Seen, n: int, streams: int = 2) -> list[Participant]:
    meeting = await tree.start_meeting(M)
    out = []
    for i in range(n):
        p = await meeting.start_participant(pid(i), cleanup=seen.cleanup(f"p{i}"))
        for s in range(streams):
            key = f"p{i}/s{s}"
            await p.start_stream(f"s{s}", seen.forever, key, cleanup=seen.cleanup(key))
        out.append(p)
    return out


async def test_start_returns_running_handles(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    [p] = await _meeting_with(tree, seen, 1)
    assert p.state is ScopeState.RUNNING
    assert p.stream("s0") is not None and p.stream("s0").state is ScopeState.RUNNING  # type: ignore[union-attr]
    assert p.path == "meeting:m1/participant:p0"
    await trio.testing.wait_all_tasks_blocked()
    assert_registry_matches_tasks(tree)
    assert tree.live_counts() == {Level.MEETING: 1, Level.PARTICIPANT: 1, Level.STREAM: 2}


async def test_kick_cancels_exactly_that_participant(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    p0, p1, p2 = await _meeting_with(tree, seen, 3)
    assert p1.leave(LeaveReason.KICKED) is True
    await p1.wait_closed()
    assert p1.closed and p1.reason is LeaveReason.KICKED
    assert seen.cancelled == {"p1/s0": "KICKED", "p1/s1": "KICKED"}
    assert seen.reason == {"p1/s0": LeaveReason.KICKED, "p1/s1": LeaveReason.KICKED}
    # Streams clean up before their participant, each once, with the reason.
    assert sorted(seen.cleanups[:2]) == [
        ("p1/s0", LeaveReason.KICKED),
        ("p1/s1", LeaveReason.KICKED),
    ]
    assert seen.cleanups[2:] == [("p1", LeaveReason.KICKED)]
    await trio.testing.wait_all_tasks_blocked()
    for other in (p0, p2):
        assert other.state is ScopeState.RUNNING and other.reason is None
        assert len(other.streams) == 2
    assert tree.meeting(M) is not None and set(tree.meeting(M).participants) == {pid(0), pid(2)}  # type: ignore[union-attr]
    assert_registry_matches_tasks(tree)


async def test_meeting_end_cancels_everything_under_it(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    participants = await _meeting_with(tree, seen, 3)
    other = await tree.start_meeting(MeetingId("other"))
    bystander = await other.start_participant(pid(9))
    meeting = tree.meeting(M)
    assert meeting is not None
    assert meeting.end() is True
    assert meeting.end() is False
    await meeting.wait_closed()
    assert all(p.reason is LeaveReason.MEETING_ENDED and p.closed for p in participants)
    assert set(seen.cancelled.values()) == {"MEETING_ENDED"}
    assert len(seen.cancelled) == 6
    assert len(seen.cleanups) == 9  # 6 streams + 3 participants, once each
    assert {r for _, r in seen.cleanups} == {LeaveReason.MEETING_ENDED}
    assert tree.meeting(M) is None
    assert bystander.state is ScopeState.RUNNING and tree.meeting(MeetingId("other")) is other


async def test_participant_body_return_is_voluntary(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    meeting = await tree.start_meeting(M)
    release = trio.Event()

    async def session(p: Participant) -> None:
        assert current_participant() is p
        assert current_meeting() is meeting
        await p.start_stream("reader", seen.forever, "reader")
        await release.wait()

    p = await meeting.start_participant(pid(1), session)
    release.set()
    await p.wait_closed()
    assert p.reason is LeaveReason.VOLUNTARY
    assert seen.cancelled == {"reader": "VOLUNTARY"}


async def test_first_reason_wins_and_leave_is_idempotent(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    [p] = await _meeting_with(tree, seen, 1)
    assert p.leave(LeaveReason.CONNECTION_LOST)
    assert not p.leave(LeaveReason.KICKED)
    await p.wait_closed()
    assert p.reason is LeaveReason.CONNECTION_LOST
    assert [c for c in seen.cleanups if c[0] == "p0"] == [("p0", LeaveReason.CONNECTION_LOST)]
    await p.wait_closed()  # already closed: returns at once


async def test_stream_cancel_ends_only_that_stream(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    [p] = await _meeting_with(tree, seen, 1)
    stream = p.stream("s0")
    assert stream is not None
    stream.cancel()
    await stream.wait_closed()
    assert seen.cancelled == {"p0/s0": "stream s0 cancelled"}
    assert seen.cleanups == [("p0/s0", None)]  # no leave reason: the participant stays
    assert p.state is ScopeState.RUNNING and set(p.streams) == {"s1"}
    # The name is free again once the old stream closed.
    await p.start_stream("s0", seen.forever, "again")
    assert set(p.streams) == {"s0", "s1"}


async def test_nothing_starts_outside_a_live_owner(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    [p] = await _meeting_with(tree, seen, 1)
    meeting = p.meeting
    with pytest.raises(Conflict):
        await meeting.start_participant(pid(0))
    with pytest.raises(Conflict):
        await p.start_stream("s0", seen.forever, "dup")
    with pytest.raises(Conflict):
        await tree.start_meeting(M)
    p.leave(LeaveReason.KICKED)
    with pytest.raises(ScopeClosed, match="participant:p0"):
        await p.start_stream("late", seen.forever, "late")
    await p.wait_closed()
    with pytest.raises(ScopeClosed):
        await p.start_stream("late", seen.forever, "late")
    meeting.end()
    with pytest.raises(ScopeClosed, match="meeting:m1"):
        await meeting.start_participant(pid(5))
    await meeting.wait_closed()
    with pytest.raises(ScopeClosed):
        await meeting.start_participant(pid(5))
    assert "late" not in seen.cancelled


async def test_capacity_is_bounded(autojump_clock: MockClock, tree: TaskTree) -> None:
    meeting = await tree.start_meeting(M, max_participants=2)
    await meeting.start_participant(pid(1))
    await meeting.start_participant(pid(2))
    with pytest.raises(CapacityExceeded):
        await meeting.start_participant(pid(3))


async def test_cancelled_start_leaves_nothing_behind(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal
) -> None:
    meeting = await tree.start_meeting(M)
    with trio.CancelScope() as cs:
        cs.cancel()
        await meeting.start_participant(pid(1))
    assert cs.cancelled_caught
    await trio.testing.wait_all_tasks_blocked()
    assert meeting.participant(pid(1)) is None
    [left] = journal.of(EventKind.LEAVING)
    assert left.reason is LeaveReason.CONNECTION_LOST
    p = await meeting.start_participant(pid(1))  # the ID is free again
    assert p.state is ScopeState.RUNNING
    with trio.CancelScope() as cs:
        cs.cancel()
        await tree.start_meeting(MeetingId("aborted"))
    await trio.testing.wait_all_tasks_blocked()
    assert tree.meeting(MeetingId("aborted")) is None
    assert_registry_matches_tasks(tree)


async def test_cancelled_stream_start_leaves_nothing_behind(
    autojump_clock: MockClock, tree: TaskTree
) -> None:
    meeting = await tree.start_meeting(M)
    p = await meeting.start_participant(pid(1))
    with trio.CancelScope() as cs:
        cs.cancel()
        await p.start_stream("reader", trio.sleep_forever)
    assert cs.cancelled_caught
    await trio.testing.wait_all_tasks_blocked()
    assert p.stream("reader") is None
    assert p.state is ScopeState.RUNNING  # only the stream's start was cancelled
    assert tree.live_counts()[Level.STREAM] == 0
    stream = await p.start_stream("reader", trio.sleep_forever)  # the name is free again
    assert stream.state is ScopeState.RUNNING
    assert_registry_matches_tasks(tree)


async def test_end_during_participant_start(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    meeting = await tree.start_meeting(M)

    async def slow_join(p: Participant) -> None:
        await trio.sleep_forever()

    async def end_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        meeting.end()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end_soon)
        p = await meeting.start_participant(pid(1), slow_join)
    await p.wait_closed()
    assert p.reason is LeaveReason.MEETING_ENDED


def test_current_scope_lookups_fail_outside_a_scope() -> None:
    with pytest.raises(RuntimeError, match="participant"):
        current_participant()
    with pytest.raises(RuntimeError, match="meeting"):
        current_meeting()
    assert issubclass(ScopeClosed, trio.ClosedResourceError)  # "closed": our side closed it


async def test_a_kick_leaves_no_garbage_for_the_collector(tree: TaskTree, seen: Seen) -> None:
    """A closed participant (its nursery, tasks, scopes, reason) is freed by reference
    counting: no cycle is left for the collector, whose pauses would otherwise land in later
    kicks (benchmarks/cancellation.py measures both)."""
    kicked = await _meeting_with(tree, seen, 4)
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    gc.disable()
    try:
        for p in kicked:
            p.leave(LeaveReason.KICKED)
            await p.wait_closed()
        await trio.testing.wait_all_tasks_blocked()
        del p, kicked
        assert _garbage_of_this_run() == []
    finally:
        gc.enable()


def _garbage_of_this_run() -> list[object]:
    """What the collector frees now, less an earlier trio run's objects: a worker thread of an
    earlier test may drop the last reference to its run (a ``Runner`` and all its cycles) at
    any moment, this test's included. Nothing of this run can be reached from another's."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    ids = {id(o) for o in garbage}
    stack = [o for o in garbage if type(o) is trio._core._run.Runner]  # this run's is alive
    foreign: set[int] = set()
    while stack:
        o = stack.pop()
        if id(o) not in foreign:
            foreign.add(id(o))
            stack.extend(r for r in gc.get_referents(o) if id(r) in ids)
    return [o for o in garbage if id(o) not in foreign]
