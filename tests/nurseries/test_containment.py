"""Error boundaries (one-for-one): a failure ends its own scope only, reported with its path."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import EventKind, Meeting, Participant, ScopeState, TaskTree
from darktower.nurseries.testing import Journal, assert_registry_matches_tasks

from .conftest import Seen


class Boom(Exception):
    pass


async def _two_meetings(tree: TaskTree, seen: Seen, meeting_body=None):  # type: ignore[no-untyped-def]
    out = []
    for m in ("m1", "m2"):
        meeting = await tree.start_meeting(MeetingId(m), meeting_body if m == "m1" else None)
        for i in range(2):
            p = await meeting.start_participant(ParticipantId(f"p{i}"))
            await p.start_stream("s", seen.forever, f"{m}/p{i}/s")
        out.append(meeting)
    return out


async def test_stream_failure_ends_that_participant_only(
    autojump_clock: MockClock,
    tree: TaskTree,
    journal: Journal,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    m1, m2 = await _two_meetings(tree, seen)
    p0 = m1.participant(ParticipantId("p0"))
    assert p0 is not None

    async def crash() -> None:
        await trio.sleep(1)
        raise Boom("decoder bug")

    with caplog.at_level(logging.ERROR, logger="darktower.nurseries"):
        await p0.start_stream("video", crash)
        await p0.wait_closed()
    assert p0.reason is LeaveReason.CONNECTION_LOST
    assert seen.cancelled == {"m1/p0/s": "CONNECTION_LOST"}
    [failure] = journal.of(EventKind.FAILURE)
    assert failure.path == "meeting:m1/participant:p0/stream:video"
    assert failure.phase == "body" and isinstance(failure.error, Boom)
    assert tree.metrics.failures.value("stream", "body") == 1
    assert any("meeting:m1/participant:p0/stream:video" in r.getMessage() for r in caplog.records)
    await trio.testing.wait_all_tasks_blocked()
    assert m1.state is ScopeState.RUNNING and set(m1.participants) == {ParticipantId("p1")}
    assert len(m2.participants) == 2
    assert_registry_matches_tasks(tree)


async def test_participant_body_failure_is_connection_lost(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal, seen: Seen
) -> None:
    m1, m2 = await _two_meetings(tree, seen)

    async def session(p: Participant) -> None:
        await p.start_stream("audio", seen.forever, "audio")
        await trio.sleep(1)
        raise Boom("handler bug")

    p = await m1.start_participant(ParticipantId("px"), session)
    await p.wait_closed()
    assert p.reason is LeaveReason.CONNECTION_LOST
    assert seen.cancelled == {"audio": "CONNECTION_LOST"}
    [failure] = journal.of(EventKind.FAILURE)
    assert failure.path == "meeting:m1/participant:px" and isinstance(failure.error, Boom)
    assert tree.metrics.failures.value("participant", "body") == 1
    assert len(m1.participants) == 2 and len(m2.participants) == 2


async def test_meeting_body_failure_ends_that_meeting_not_the_server(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal, seen: Seen
) -> None:
    async def meeting_body(meeting: Meeting) -> None:
        await trio.sleep(5)
        raise Boom("meeting bug")

    m1, m2 = await _two_meetings(tree, seen, meeting_body)
    await m1.wait_closed()
    assert trio.current_time() == 5
    assert {k: v for k, v in seen.cancelled.items()} == {
        "m1/p0/s": "MEETING_ENDED",
        "m1/p1/s": "MEETING_ENDED",
    }
    [failure] = journal.of(EventKind.FAILURE)
    assert failure.path == "meeting:m1" and isinstance(failure.error, Boom)
    assert tree.metrics.failures.value("meeting", "body") == 1
    assert tree.meeting(MeetingId("m1")) is None
    assert m2.state is ScopeState.RUNNING and len(m2.participants) == 2
    # The server still accepts meetings.
    again = await tree.start_meeting(MeetingId("m1"))
    assert again.state is ScopeState.RUNNING


async def test_failure_in_a_child_nursery_of_a_stream_is_contained(
    autojump_clock: MockClock, tree: TaskTree, journal: Journal
) -> None:
    meeting = await tree.start_meeting(MeetingId("m"))
    p = await meeting.start_participant(ParticipantId("p"))

    async def fan_out() -> None:
        async def bad() -> None:
            raise Boom("inner")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(bad)

    await p.start_stream("fan", fan_out)
    await p.wait_closed()
    assert p.reason is LeaveReason.CONNECTION_LOST
    [failure] = journal.of(EventKind.FAILURE)
    assert isinstance(failure.error, Boom)


async def test_body_returning_ends_meeting_with_meeting_ended(
    autojump_clock: MockClock, tree: TaskTree, seen: Seen
) -> None:
    async def short(meeting: Meeting) -> None:
        await trio.sleep(3)

    m1, _ = await _two_meetings(tree, seen, short)
    await m1.wait_closed()
    assert set(seen.cancelled) == {"m1/p0/s", "m1/p1/s"}
    assert tree.metrics.failures.value("meeting", "body") == 0
