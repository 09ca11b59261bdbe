"""Random join / stream / leave / kick / end / drain sequences, checked after every step.

Hypothesis generates the operations; they are replayed inside one ``trio.run`` on a virtual
clock, and after every operation (once all tasks are blocked) the invariants must hold:
the registry lists exactly the live tasks, no scope closed before its children, each
participant got at most one reason (the first one asked for) and kept it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darktower.errors import CapacityExceeded, Conflict
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Participant, ScopeClosed, ScopeState, TaskTree
from darktower.nurseries.testing import Journal, assert_registry_matches_tasks

MEETINGS = st.integers(0, 1)
PEOPLE = st.integers(0, 2)
STREAMS = st.integers(0, 1)
BEHAVIOUR = st.sampled_from(["forever", "returns", "raises", "stuck-cleanup"])

JOIN = st.tuples(st.just("join"), MEETINGS, PEOPLE, BEHAVIOUR)
LEAVE = st.tuples(st.just("leave"), MEETINGS, PEOPLE, st.sampled_from(list(LeaveReason)))
OPS = st.one_of(
    st.tuples(st.just("meeting"), MEETINGS, st.sampled_from(["none", "returns", "raises"])),
    JOIN,
    JOIN,
    LEAVE,
    st.tuples(st.just("stream"), MEETINGS, PEOPLE, STREAMS, BEHAVIOUR),
    st.tuples(st.just("unpublish"), MEETINGS, PEOPLE, STREAMS),
    st.tuples(st.just("end"), MEETINGS),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 3.0])),
    st.tuples(st.just("drain"), st.sampled_from([0.5, 5.0])),
)


class Boom(Exception):
    pass


async def _behave(kind: str) -> None:
    if kind == "returns":
        await trio.sleep(2.0)
    elif kind == "raises":
        await trio.sleep(1.5)
        raise Boom(kind)
    else:
        await trio.sleep_forever()


async def _stuck(reason: Any) -> None:
    await trio.sleep_forever()


class Replay:
    def __init__(self, tree: TaskTree, journal: Journal) -> None:
        self.tree = tree
        self.journal = journal
        self.expected: dict[int, LeaveReason] = {}  # participant serial -> first reason asked
        self.handles: list[Participant] = []

    def _participant(self, m: int, p: int) -> Participant | None:
        meeting = self.tree.meeting(MeetingId(f"m{m}"))
        return None if meeting is None else meeting.participant(ParticipantId(f"p{p}"))

    def _expect(self, handle: Participant, reason: LeaveReason) -> None:
        if handle.serial not in self.expected and handle.reason is None:
            self.expected[handle.serial] = reason

    async def apply(self, op: tuple[Any, ...]) -> None:
        tree = self.tree
        kind = op[0]
        try:
            if kind == "meeting":
                _, m, body = op
                if body == "none":
                    await tree.start_meeting(MeetingId(f"m{m}"))
                else:

                    async def meeting_body(meeting: object, body: str = body) -> None:
                        await _behave(body)

                    await tree.start_meeting(MeetingId(f"m{m}"), meeting_body)
            elif kind == "join":
                _, m, p, behaviour = op
                meeting = tree.meeting(MeetingId(f"m{m}"))
                if meeting is None:
                    return

                async def session(participant: Participant, behaviour: str = behaviour) -> None:
                    await _behave("forever" if behaviour == "stuck-cleanup" else behaviour)

                cleanup = _stuck if behaviour == "stuck-cleanup" else None
                handle = await meeting.start_participant(
                    ParticipantId(f"p{p}"), session, cleanup=cleanup, grace=1.0
                )
                self.handles.append(handle)
            elif kind == "stream":
                _, m, p, s, behaviour = op
                handle = self._participant(m, p)
                if handle is None:
                    return
                cleanup = _stuck if behaviour == "stuck-cleanup" else None
                await handle.start_stream(
                    f"s{s}",
                    _behave,
                    "forever" if behaviour == "stuck-cleanup" else behaviour,
                    cleanup=cleanup,
                    grace=0.5,
                )
            elif kind == "leave":
                _, m, p, reason = op
                handle = self._participant(m, p)
                if handle is not None:
                    self._expect(handle, reason)
                    handle.leave(reason)
            elif kind == "unpublish":
                _, m, p, s = op
                handle = self._participant(m, p)
                stream = None if handle is None else handle.stream(f"s{s}")
                if stream is not None:
                    stream.cancel()
            elif kind == "end":
                meeting = tree.meeting(MeetingId(f"m{op[1]}"))
                if meeting is not None:
                    for handle in meeting.participants.values():
                        self._expect(handle, LeaveReason.MEETING_ENDED)
                    meeting.end()
            elif kind == "advance":
                await trio.sleep(op[1])
            elif kind == "drain":
                for meeting in tree.meetings.values():
                    for handle in meeting.participants.values():
                        self._expect(handle, LeaveReason.MEETING_ENDED)
                tree.drain(op[1])
        except (ScopeClosed, Conflict, CapacityExceeded):
            pass  # refusals are part of the contract; the invariants below still must hold

    def check(self) -> None:
        assert_registry_matches_tasks(self.tree)
        self.journal.check(closed=False)
        for meeting in self.tree.meetings.values():
            assert meeting.state is not ScopeState.CLOSED
            for handle in meeting.participants.values():
                if handle.reason is None:
                    assert handle.state is ScopeState.RUNNING and not meeting.ending
                for stream in handle.streams.values():
                    assert stream.participant is handle
        for handle in self.handles:
            if handle.serial in self.expected:
                assert handle.reason is self.expected[handle.serial], handle


def _replay(ops: list[tuple[Any, ...]]) -> None:
    async def main() -> None:
        journal = Journal()
        tree = TaskTree(observer=journal.record)
        replay = Replay(tree, journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            # Both meetings exist at first, so that most operations reach a participant.
            for op in [("meeting", 0, "none"), ("meeting", 1, "none"), *ops]:
                await replay.apply(op)
                await trio.testing.wait_all_tasks_blocked()
                replay.check()
            tree.drain(2.0)
        journal.check(closed=True)
        assert tree.snapshot()["counts"] == {"meetings": 0, "participants": 0, "streams": 0}
        for handle in replay.handles:
            assert handle.closed and handle.reason is not None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=40))
def test_random_lifecycles_keep_the_invariants(ops: list[tuple[Any, ...]]) -> None:
    _replay(ops)


def test_replay_detects_a_broken_tree() -> None:
    # The check is only worth something if it can fail: an unregistered task must be caught.
    async def main() -> None:
        tree = TaskTree()
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            meeting = await tree.start_meeting(MeetingId("m"))
            p = await meeting.start_participant(ParticipantId("p"))
            meeting._participants.clear()  # the registry loses a live task
            with pytest.raises(AssertionError, match="tasks only"):
                assert_registry_matches_tasks(tree)
            p.leave(LeaveReason.VOLUNTARY)
            tree.drain(1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
