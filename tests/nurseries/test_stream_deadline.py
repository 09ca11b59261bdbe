"""Stream tasks with a deadline of their own (a window the clock cancels, e.g. a participant's
reconnecting state on the MC) and stream tasks started from synchronous code."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from darktower.errors import Conflict
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import ScopeClosed, open_task_tree
from darktower.nurseries.testing import Journal, cancel_at_every_checkpoint


async def test_a_streams_deadline_cancels_it_alone_and_shows_in_the_snapshot(
    autojump_clock: MockClock,
) -> None:
    async with open_task_tree() as tree:
        meeting = await tree.start_meeting(MeetingId("m"))
        participant = await meeting.start_participant(ParticipantId("p"))
        start = trio.current_time()
        window = await participant.start_stream(
            "reconnecting", trio.sleep_forever, deadline=start + 2.0
        )
        assert window.deadline == start + 2.0
        await trio.sleep(0.5)
        [streams] = [p["streams"] for m in tree.snapshot()["meetings"] for p in m["participants"]]
        assert streams == [
            {
                "name": "reconnecting",
                "path": "meeting:m/participant:p/stream:reconnecting",
                "state": "running",
                "age_s": 0.5,
                "deadline_in_s": 1.5,
            }
        ]
        assert json.loads(json.dumps(tree.snapshot())) == tree.snapshot()
        await window.wait_closed()
        assert trio.current_time() == start + 2.0
        # only the stream ended: the participant carries on, with no reason
        assert participant.reason is None and not participant.closed
        assert participant.stream("reconnecting") is None
        assert tree.metrics.cancel_latency.count("stream") == 1
        assert tree.metrics.cancel_latency.sum("stream") == 0


async def test_a_stream_finished_before_its_deadline_is_not_cancelled(
    autojump_clock: MockClock,
) -> None:
    async with open_task_tree() as tree:
        meeting = await tree.start_meeting(MeetingId("m"))
        participant = await meeting.start_participant(ParticipantId("p"))
        done = trio.Event()
        finished: list[bool] = []

        async def wait_for_done() -> None:
            await done.wait()
            finished.append(True)

        window = await participant.start_stream(
            "reconnecting", wait_for_done, deadline=trio.current_time() + 2.0
        )
        await trio.sleep(1)
        done.set()
        await window.wait_closed()
        assert finished == [True] and trio.current_time() == 1


async def test_start_stream_soon_from_synchronous_code(autojump_clock: MockClock) -> None:
    async with open_task_tree() as tree:
        meeting = await tree.start_meeting(MeetingId("m"))
        participant = await meeting.start_participant(ParticipantId("p"))
        ran = trio.Event()

        async def work(value: int) -> None:
            assert value == 7
            ran.set()

        stream = participant.start_stream_soon("media-reconnect", work, 7)
        # registered at once: a second one of that name is refused until it ends
        assert participant.stream("media-reconnect") is stream
        with pytest.raises(Conflict):
            participant.start_stream_soon("media-reconnect", work, 7)
        await stream.wait_closed()
        assert ran.is_set() and participant.stream("media-reconnect") is None
        participant.leave(LeaveReason.VOLUNTARY)
        with pytest.raises(ScopeClosed):
            participant.start_stream_soon("late", work, 7)
        await participant.wait_closed()
        assert tree.snapshot()["counts"]["streams"] == 0


async def test_start_stream_soon_survives_cancellation_at_every_checkpoint(
    autojump_clock: MockClock,
) -> None:
    async def lifecycle(tree) -> None:  # type: ignore[no-untyped-def]
        meeting = await tree.start_meeting(MeetingId("m"))
        participant = await meeting.start_participant(ParticipantId("p"))
        participant.start_stream_soon("soon", trio.sleep, 1)
        window = await participant.start_stream(
            "window", trio.sleep_forever, deadline=trio.current_time() + 1
        )
        await window.wait_closed()
        # As a caller must (the MC's media reconnection does): a participant that is leaving
        # (here, the meeting ended at an injected checkpoint) starts nothing more.
        if participant.reason is None:
            participant.start_stream_soon("late", trio.sleep_forever)
        participant.leave(LeaveReason.CONNECTION_LOST)
        await participant.wait_closed()

    def check(tree, journal: Journal) -> None:  # type: ignore[no-untyped-def]
        assert all(
            r == ["CONNECTION_LOST"] or r == ["MEETING_ENDED"] for r in journal.reasons().values()
        )

    report = await cancel_at_every_checkpoint(lifecycle, check=check)
    assert report.runs > 5
