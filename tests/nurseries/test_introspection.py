"""The live tree as JSON, the metrics, and the registry matching trio's own task tree."""

from __future__ import annotations

import json

import trio
import trio.testing
from trio.testing import MockClock

from darktower.metrics import Registry
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Level, TaskTree, open_task_tree
from darktower.nurseries.testing import live_task_paths, registry_paths


async def test_snapshot_shape_counts_ages_and_states(autojump_clock: MockClock) -> None:
    async with open_task_tree() as tree:
        m = await tree.start_meeting(MeetingId("m1"))
        await trio.sleep(10)
        p1 = await m.start_participant(ParticipantId("p1"))
        await p1.start_stream("audio", trio.sleep_forever)
        await trio.sleep(5)
        await p1.start_stream("video", trio.sleep_forever)

        async def slow(reason: LeaveReason) -> None:
            await trio.sleep(100)

        p2 = await m.start_participant(ParticipantId("p2"), cleanup=slow, grace=50)
        p2.leave(LeaveReason.KICKED)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
        snap = tree.snapshot()
        assert json.loads(json.dumps(snap)) == snap  # JSON-able as is
        assert snap["state"] == "running"
        assert snap["counts"] == {"meetings": 1, "participants": 2, "streams": 2}
        assert snap["age_s"] == 16
        [meeting] = snap["meetings"]
        assert meeting["id"] == "m1" and meeting["state"] == "running"
        assert meeting["age_s"] == 16 and meeting["participant_count"] == 2
        first, second = meeting["participants"]
        assert first == {
            "id": "p1",
            "path": "meeting:m1/participant:p1",
            "state": "running",
            "age_s": 6,
            "reason": None,
            "stream_count": 2,
            "streams": [
                {
                    "name": "audio",
                    "path": "meeting:m1/participant:p1/stream:audio",
                    "state": "running",
                    "age_s": 6,
                },
                {
                    "name": "video",
                    "path": "meeting:m1/participant:p1/stream:video",
                    "state": "running",
                    "age_s": 1,
                },
            ],
        }
        assert second["state"] == "closing" and second["reason"] == "KICKED"
        assert snap["failures"]["stream.body"] == 0 and snap["overruns"]["participant"] == 0


async def test_cancel_latency_histogram_and_registry(autojump_clock: MockClock) -> None:
    registry = Registry()
    async with open_task_tree(registry=registry) as tree:
        m = await tree.start_meeting(MeetingId("m"))

        async def bye(reason: LeaveReason) -> None:
            await trio.sleep(0.002)

        for i in range(4):
            p = await m.start_participant(ParticipantId(f"p{i}"), cleanup=bye)
            await p.start_stream("s", trio.sleep_forever)
        p = m.participant(ParticipantId("p0"))
        assert p is not None
        p.leave(LeaveReason.KICKED)
        await p.wait_closed()
        hist = tree.metrics.cancel_latency
        assert hist.count("participant") == 1 and hist.sum("participant") == 0.002
        assert hist.count("stream") == 0  # streams ending with their owner count there
        p1 = m.participant(ParticipantId("p1"))
        assert p1 is not None
        stream = p1.stream("s")
        assert stream is not None
        stream.cancel()
        await stream.wait_closed()
        assert hist.count("stream") == 1 and hist.sum("stream") == 0
        m.end()
        await m.wait_closed()
        assert hist.count("participant") == 4 and hist.count("meeting") == 1
        assert hist.sum("meeting") == 0.002
        text = registry.render()
        assert 'darktower_tree_cancel_latency_seconds_count{level="participant"} 4' in text
        assert 'darktower_tree_scopes{level="meeting"} 0' in text
        await tree.start_meeting(MeetingId("n"))
        assert 'darktower_tree_scopes{level="meeting"} 1' in registry.render()


async def test_registry_equals_live_tasks(autojump_clock: MockClock) -> None:
    async with open_task_tree() as tree:
        m = await tree.start_meeting(MeetingId("m"))
        for i in range(3):
            p = await m.start_participant(ParticipantId(f"p{i}"))
            for s in range(i):
                await p.start_stream(f"s{s}", trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        assert registry_paths(tree) == live_task_paths(tree)
        assert len(live_task_paths(tree)) == 1 + 3 + 3
        assert tree.live_counts() == {Level.MEETING: 1, Level.PARTICIPANT: 3, Level.STREAM: 3}


def test_live_task_paths_can_fail() -> None:
    # The helper reads trio's tree, not the registry: an unstarted tree has no tasks.
    assert live_task_paths(TaskTree()) == set()
