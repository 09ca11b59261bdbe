"""The MC's event outbox (docs/protocol.md §18.5): batches in order, at least once, bounded."""

from __future__ import annotations

import trio
import trio.testing

from darktower.errors import InternalError
from darktower.meeting_controller._events import MAX_BATCH, EventOutbox, new_event
from darktower.protocol.pb.v1 import registry_pb2 as pb


def _joined(meeting: str, name: str) -> pb.MeetingEvent:
    return new_event(
        meeting, participant_joined=pb.ParticipantEvent(participant_id=name, name=name)
    )


async def test_events_are_sent_in_order_and_again_until_the_gc_takes_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = EventOutbox()
    calls: list[list[str]] = []
    failures = 2
    done = trio.Event()

    async def send(batch: list[pb.MeetingEvent]) -> None:
        nonlocal failures
        calls.append([e.participant_joined.name for e in batch])
        if failures:
            failures -= 1
            raise InternalError("the GC is away")
        if sum(map(len, calls[2:])) >= 3:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run, send)
        for name in ("a", "b", "c"):
            outbox.emit(_joined("m", name))
        with trio.fail_after(30):
            await done.wait()
        nursery.cancel_scope.cancel()
    # the failed batch was sent again whole, and nothing was lost or reordered
    assert calls[0] == calls[1] == calls[2] == ["a", "b", "c"]
    assert outbox.sent == 3 and len(outbox) == 0
    event = new_event("m", meeting_started=pb.MeetingStartedEvent())
    assert event.WhichOneof("kind") == "meeting_started" and len(event.event_id) == 36


async def test_a_full_outbox_drops_its_oldest_events_and_batches_are_bounded() -> None:
    outbox = EventOutbox(capacity=MAX_BATCH + 10)
    for i in range(MAX_BATCH + 15):
        outbox.emit(_joined("m", str(i)))
    assert outbox.dropped == 5 and len(outbox) == MAX_BATCH + 10
    batches: list[list[str]] = []

    async def send(batch: list[pb.MeetingEvent]) -> None:
        await trio.lowlevel.checkpoint()
        batches.append([e.participant_joined.name for e in batch])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run, send)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [len(b) for b in batches] == [MAX_BATCH, 10]
    assert batches[0][0] == "5" and batches[1][-1] == str(MAX_BATCH + 14)
