"""Sessions joined through the GC follow their meeting when its MC drains or is gone
(docs/protocol.md §13), over real QUIC against two real MCs with their MHs, the GC's REST API
played by a stand-in that places the meeting (tests/client/_rejoin_stack.py): each session
rejoins at the MC the GC names with its display name, its publications and subscriptions
(the same objects) carry media again, and the events say what happened; a GC that refuses
ends the session with a reason that says so."""

from __future__ import annotations

import pathlib

import pytest
import trio

from darktower.client import (
    Lost,
    MeetingSession,
    ParticipantJoined,
    ParticipantLeft,
    QualityUpdate,
    Reconnecting,
    Rejoined,
    Rejoining,
    SessionEvent,
)
from darktower.errors import CapacityExceeded, Conflict, DarkTowerError, NotFound
from darktower.model import LEAVE_MESSAGES, LeaveReason, Role
from tests.client._rejoin_stack import OWNER, Stack, rejoin_stack
from tests.client.test_reconnect import expect, flows, talking

SHUTDOWN = LeaveReason.SERVER_SHUTDOWN


async def in_meeting(stack: Stack) -> tuple[MeetingSession, MeetingSession]:
    """ann (the host) and bob, each hearing the other."""
    ann = await stack.join("ann", host=True)
    bob = await stack.join("bob")
    await expect(ann, ParticipantJoined, lambda e: e.participant.name == "bob")
    return ann, bob


async def rejoined(session: MeetingSession, seen: list[SessionEvent]) -> Rejoined:
    """The session's events up to its Rejoined (kept in ``seen``)."""
    event = await expect(session, Rejoined, seen=seen)
    seen.append(event)
    return event


async def test_a_drained_mc_hands_its_participants_to_the_mc_the_gc_names(
    tmp_path: pathlib.Path,
) -> None:
    async with rejoin_stack(tmp_path) as stack:
        ann, bob = await in_meeting(stack)
        ann_to_bob = await talking(ann, bob)
        bob_to_ann = await talking(bob, ann)
        await flows(*ann_to_bob)
        await flows(*bob_to_ann)
        old = {"ann": ann.participant_id, "bob": bob.participant_id}
        stack.gc.at = stack.mc2_url  # the GC heard of the drain: the meeting goes there
        stack.stop_mc1.set()
        seen: dict[str, list[SessionEvent]] = {"ann": [], "bob": []}
        async with trio.open_nursery() as nursery:
            for name, session in (("ann", ann), ("bob", bob)):
                nursery.start_soon(rejoined, session, seen[name])
        for name, session in (("ann", ann), ("bob", bob)):
            # (The MH's periodic quality feedback may come before the drain shows.)
            events = [e for e in seen[name] if not isinstance(e, QualityUpdate)]
            assert isinstance(events[0], Reconnecting) and not events[0].media_only, events
            rejoining = [e for e in events if isinstance(e, Rejoining)]
            assert rejoining == [Rejoining(SHUTDOWN, LEAVE_MESSAGES[SHUTDOWN])], events
            assert events[-1] == Rejoined(old[name], session.participant_id, events[-1].outage_s)
            assert session.participant_id != old[name] and session.end_reason is None
            assert session.rejoins == 1
            assert not [e for e in events if isinstance(e, Lost)]
            # The old room's others left with the rejoin's reason, never MEETING_ENDED.
            left = [e for e in events if isinstance(e, ParticipantLeft)]
            assert {e.reason for e in left} <= {SHUTDOWN}, left
        # The same names at the new MC, the host still a host (the owner's access token).
        assert stack.gc.joins[-2:] in (
            [("ann", OWNER), ("bob", None)],
            [("bob", None), ("ann", OWNER)],
        )
        assert ann.role is Role.HOST
        names = {p.name for p in ann.participants.values()}
        if "bob" not in names:
            await expect(ann, ParticipantJoined, lambda e: e.participant.name == "bob")
        assert [p.name for p in ann.participants.values()] == ["bob"]
        assert bob.participants[ann.participant_id].name == "ann"
        # Media flows again both ways, on the same publication and subscription objects.
        await flows(*ann_to_bob)
        await flows(*bob_to_ann)
        assert stack.services.mc is not None
        assert len(stack.services.mc.controller.rooms["rejoin"].members) == 2


async def test_an_mc_gone_silent_is_left_for_the_one_the_gc_names(
    tmp_path: pathlib.Path,
) -> None:
    async with rejoin_stack(tmp_path) as stack:
        ann, bob = await in_meeting(stack)
        ann_to_bob = await talking(ann, bob)
        await flows(*ann_to_bob)
        old_ann = ann.participant_id
        stack.proxy.pause()  # mc1 is gone for its clients: no goodbye, no answer
        assert await expect(ann, Reconnecting) == Reconnecting(media_only=False)
        # The GC noticed: the meeting is placed at the other MC at the next join.
        stack.gc.status, stack.gc.at = "controller_lost", stack.mc2_url
        seen: list[SessionEvent] = []
        event = await rejoined(ann, seen)
        assert event.old_participant_id == old_ann != ann.participant_id
        assert [e for e in seen if isinstance(e, Rejoining)] == [
            Rejoining(LeaveReason.CONNECTION_LOST, "the meeting controller is gone")
        ]
        await rejoined(bob, [])
        await flows(*ann_to_bob)
        assert {p.name for p in bob.participants.values()} == {"ann"}


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (Conflict("meeting rejoin has ended", details={"status": "ended"}), "MEETING_ENDED"),
        (NotFound("meeting rejoin not found"), "SERVER_SHUTDOWN"),
    ],
)
async def test_a_gc_that_refuses_the_rejoin_ends_the_session_with_its_reason(
    tmp_path: pathlib.Path, refusal: DarkTowerError, reason: str
) -> None:
    async with rejoin_stack(tmp_path) as stack:
        ann = await stack.join("ann", host=True)
        stack.gc.refusal = refusal
        stack.stop_mc1.set()
        lost = await expect(ann, Lost)
        assert lost.reason is LeaveReason[reason] is ann.end_reason
        assert lost.message.startswith("the Global Controller refused to rejoin the meeting")
        assert refusal.message in lost.message and refusal.code.name in lost.message
        assert ann.end_message == lost.message


async def test_a_gc_that_cannot_place_the_meeting_ends_the_session_after_the_window(
    tmp_path: pathlib.Path,
) -> None:
    async with rejoin_stack(tmp_path) as stack:
        ann = await stack.join("ann", rejoin_window_s=3.0)
        stack.gc.refusal = CapacityExceeded("the meeting controller is not responding")
        stack.stop_mc1.set()
        started = trio.current_time()
        lost = await expect(ann, Lost)
        # Within the window (the last attempt is the last whose backoff still fits in it).
        assert trio.current_time() - started <= 3.0 + 2.0
        assert lost.reason is SHUTDOWN
        assert lost.message.startswith(LEAVE_MESSAGES[SHUTDOWN] + "; not rejoined in time")
        assert "CAPACITY_EXCEEDED" in lost.message
        assert len(stack.gc.joins) > 2  # retried, with backoff, within the window
