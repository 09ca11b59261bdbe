"""The cancel-at-every-checkpoint harness, over a participant lifecycle."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import EventKind, Level, Participant, ScopeClosed, TaskTree
from darktower.nurseries.testing import Journal, cancel_at_every_checkpoint


class Session:
    """A participant lifecycle like the MC's: join, reader + writer streams, leave."""

    def __init__(self) -> None:
        self.left_sent: list[LeaveReason] = []
        self.reader_exits = 0

    async def reader(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.reader_exits += 1

    async def writer(self, ready: trio.Event) -> None:
        ready.set()
        await trio.sleep_forever()

    async def send_left(self, reason: LeaveReason) -> None:
        await trio.sleep(0.01)
        self.left_sent.append(reason)

    async def lifecycle(self, tree: TaskTree) -> None:
        meeting = await tree.start_meeting(MeetingId("m"))
        others = await meeting.start_participant(ParticipantId("other"))

        async def body(p: Participant) -> None:
            ready = trio.Event()
            await p.start_stream("reader", self.reader)
            await p.start_stream("writer", self.writer, ready)
            await ready.wait()
            await trio.sleep(1)

        me = await meeting.start_participant(ParticipantId("me"), body, cleanup=self.send_left)
        await me.wait_closed()
        others.leave(LeaveReason.KICKED)
        await others.wait_closed()
        meeting.end()
        await meeting.wait_closed()


async def test_participant_lifecycle_cancelled_at_every_checkpoint(
    autojump_clock: MockClock,
) -> None:
    runs: list[Session] = []
    by_tree: dict[int, Session] = {}

    def check(tree: TaskTree, journal: Journal) -> None:
        session = by_tree.pop(id(tree), Session())  # none if cancelled before the lifecycle
        me = [e for e in journal.of(EventKind.STARTED) if e.path.endswith("participant:me")]
        # If "me" ever ran, its cleanup sent ParticipantLeft exactly once, with its reason.
        assert len(session.left_sent) == len(me)
        left = [e for e in journal.of(EventKind.LEAVING) if e.path.endswith("participant:me")]
        assert [e.reason for e in left] == session.left_sent

    async def lifecycle(tree: TaskTree) -> None:
        runs.append(Session())
        by_tree[id(tree)] = runs[-1]
        await runs[-1].lifecycle(tree)

    report = await cancel_at_every_checkpoint(lifecycle, check=check)
    assert report.runs > 10 and report.runs == report.checkpoints + 1
    assert runs[-1].left_sent == [LeaveReason.VOLUNTARY]  # the undisturbed run
    reasons = {tuple(r.left_sent) for r in runs}
    assert (LeaveReason.MEETING_ENDED,) in reasons  # cut mid-session by the service's end


async def test_harness_with_a_kick_as_the_disruption(autojump_clock: MockClock) -> None:
    seen: list[LeaveReason | None] = []

    async def lifecycle(tree: TaskTree) -> None:
        meeting = await tree.start_meeting(MeetingId("m"))
        try:
            p = await meeting.start_participant(ParticipantId("p"))
            await p.start_stream("s", trio.sleep, 1)
            await p.start_stream("t", trio.sleep, 1)
            await trio.sleep(2)
            p.leave(LeaveReason.VOLUNTARY)
            await p.wait_closed()
            seen.append(p.reason)
        except ScopeClosed:
            seen.append(None)  # kicked before we could publish: refused, not lost

    def kick(tree: TaskTree, scope: trio.CancelScope) -> None:
        meeting = tree.meeting(MeetingId("m"))
        p = None if meeting is None else meeting.participant(ParticipantId("p"))
        if p is not None:
            p.leave(LeaveReason.KICKED)

    report = await cancel_at_every_checkpoint(lifecycle, disrupt=kick)
    assert report.runs == len(seen)
    assert seen[-1] is LeaveReason.VOLUNTARY
    assert LeaveReason.KICKED in seen


async def test_harness_reports_a_broken_invariant(autojump_clock: MockClock) -> None:
    async def lifecycle(tree: TaskTree) -> None:
        meeting = await tree.start_meeting(MeetingId("m"))
        await meeting.start_participant(ParticipantId("p"))

    def check(tree: TaskTree, journal: Journal) -> None:
        # A caller invariant that is false whenever the participant got to run.
        assert not journal.of(EventKind.STARTED, Level.PARTICIPANT), "participant ran"

    with pytest.raises(AssertionError, match="participant ran"):
        await cancel_at_every_checkpoint(lifecycle, check=check)
