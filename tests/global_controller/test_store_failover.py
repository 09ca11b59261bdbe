"""What the store keeps for MC failure, drain and reconciliation, and the request rate limit
it shares between replicas (docs/protocol.md §1.3, §14), against both backends."""

from __future__ import annotations

import pytest
import trio

from darktower.global_controller.store import (
    ControllerCapacity,
    EndReason,
    HealthStatus,
    MeetingStatus,
    NewMeeting,
    SqlStore,
    open_store,
)
from darktower.model import ClientId, ControllerId, MeetingId

from .conftest import FakeClock

MC1 = ControllerId("mc-1")
MC2 = ControllerId("mc-2")
OWNER = ClientId("owner")
CAP = ControllerCapacity(max_meetings=10, max_participants=100)
ACTIVE, LOST = MeetingStatus.ACTIVE, MeetingStatus.CONTROLLER_LOST


async def _meeting_on(store: SqlStore, controller_id: ControllerId, name: str = "m") -> MeetingId:
    new = NewMeeting(name, 10, OWNER, controller_id=controller_id)
    return (await store.create_meeting(new)).meeting_id


async def _two_controllers(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "h1:1", CAP)
    await store.register_controller(MC2, "eu", "h2:1", CAP)


async def test_draining_is_stored_and_cleared_by_a_registration(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "h1:1", CAP)
    assert (await store.get_controller(MC1)).draining is False
    record = await store.record_heartbeat(MC1, CAP, HealthStatus.UNHEALTHY, draining=True)
    assert record.draining is True
    assert [c.draining for c in await store.list_controllers()] == [True]
    # a heartbeat without the flag (it changed its mind), then a restart with the same id
    assert (await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY)).draining is False
    await store.record_heartbeat(MC1, CAP, HealthStatus.UNHEALTHY, draining=True)
    assert (await store.register_controller(MC1, "eu", "h1:2", CAP)).draining is False


async def test_a_lost_meeting_moves_once_with_its_count_reset(
    store: SqlStore, clock: FakeClock
) -> None:
    await _two_controllers(store)
    meeting_id = await _meeting_on(store, MC1)
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {meeting_id: 3})
    clock.advance(60)
    await store.expire_controllers(clock.now)
    assert (await store.get_meeting(meeting_id)).status is LOST
    clock.advance(1)
    moved = await store.move_meeting(meeting_id, (MC1, LOST), (MC2, ACTIVE))
    assert moved is not None
    assert (moved.controller_id, moved.status) == (MC2, ACTIVE)
    assert moved.participant_count == 0 and moved.empty_since == clock.now
    # a second move from the state the first one found loses: the meeting changed
    assert await store.move_meeting(meeting_id, (MC1, LOST), (MC1, ACTIVE)) is None
    assert (await store.get_meeting(meeting_id)).controller_id == MC2
    # back to lost on the controller it was moved to (it did not take it), then ended: no move
    assert await store.move_meeting(meeting_id, (MC2, ACTIVE), (MC2, LOST)) is not None
    await store.end_meeting(meeting_id)
    assert await store.move_meeting(meeting_id, (MC2, LOST), (MC1, ACTIVE)) is None
    with pytest.raises(ValueError):
        await store.move_meeting(meeting_id, (MC2, LOST), (MC1, MeetingStatus.ENDED))


async def test_concurrent_moves_have_one_winner(store_url: str, clock: FakeClock) -> None:
    async with (
        await open_store(store_url, clock=clock) as a,
        await open_store(store_url, clock=clock) as b,
    ):
        await _two_controllers(a)
        meeting_ids = [await _meeting_on(a, MC1, f"m{i}") for i in range(8)]
        await a.expire_controllers(clock.now.replace(year=2100))
        wins: list[tuple[MeetingId, ControllerId]] = []

        async def move(store: SqlStore, meeting_id: MeetingId, to: ControllerId) -> None:
            if await store.move_meeting(meeting_id, (MC1, LOST), (to, ACTIVE)) is not None:
                wins.append((meeting_id, to))

        async with trio.open_nursery() as nursery:
            for meeting_id in meeting_ids:
                nursery.start_soon(move, a, meeting_id, MC1)
                nursery.start_soon(move, b, meeting_id, MC2)
        assert sorted(m for m, _ in wins) == sorted(meeting_ids)  # each moved exactly once
        for meeting_id, to in wins:
            assert (await b.get_meeting(meeting_id)).controller_id == to


async def test_reconciliation_sorts_what_a_controller_lists(
    store: SqlStore, clock: FakeClock
) -> None:
    await _two_controllers(store)
    live = await _meeting_on(store, MC1, "live")
    ended = await _meeting_on(store, MC1, "ended")
    moved = await _meeting_on(store, MC1, "moved")
    forgotten = await _meeting_on(store, MC1, "forgotten")
    lost = await _meeting_on(store, MC1, "lost")
    other = await _meeting_on(store, MC2, "other")
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {forgotten: 4, live: 2})
    await store.end_meeting(ended, EndReason.EMPTY)
    await store.move_meeting(moved, (MC1, ACTIVE), (MC2, ACTIVE))
    await store.move_meeting(lost, (MC1, ACTIVE), (MC1, LOST))
    clock.advance(30)
    view = await store.reconcile_controller(MC1, [live, ended, moved, MeetingId("nope")])
    assert [m.meeting_id for m in view.ended] == [ended]
    assert view.ended[0].end_reason is EndReason.EMPTY
    assert [m.meeting_id for m in view.elsewhere] == [moved]
    assert view.unknown == ["nope"]
    # ACTIVE here and not listed (a CONTROLLER_LOST one moves at its next join instead)
    assert [m.meeting_id for m in view.unlisted] == [forgotten]
    assert view.unlisted[0].display_name == "forgotten"
    # nobody is in a meeting its controller does not hold: its emptiness starts now
    after = await store.get_meeting(forgotten)
    assert (after.participant_count, after.empty_since) == (0, clock.now)
    assert (await store.get_meeting(live)).participant_count == 2  # listed: left alone
    assert (await store.get_meeting(other)).status is ACTIVE
    # a second reconciliation keeps the emptiness's start
    started = clock.now
    clock.advance(5)
    await store.reconcile_controller(MC1, [live])
    assert (await store.get_meeting(forgotten)).empty_since == started


async def test_reconciliation_of_many_listed_meetings(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "h1:1", CAP)
    mine = await _meeting_on(store, MC1)
    listed = [MeetingId(f"unknown-{i}") for i in range(1200)] + [mine]
    view = await store.reconcile_controller(MC1, listed)
    assert len(view.unknown) == 1200 and view.unlisted == [] and view.ended == []


async def test_rate_limit_bucket(store: SqlStore) -> None:
    now = 1_700_000_000.0
    spent = [await store.spend_request_token("k", now=now, rate_per_s=0.1, burst=3) for _ in "abcd"]
    assert [b.allowed for b in spent] == [True, True, True, False]
    assert [b.tokens for b in spent] == [2, 1, 0, 0]
    # another key has its own bucket
    assert (await store.spend_request_token("j", now=now, rate_per_s=0.1, burst=3)).tokens == 2
    # ten seconds give one token back, exactly
    back = await store.spend_request_token("k", now=now + 10, rate_per_s=0.1, burst=3)
    assert back.allowed and back.tokens == 0
    # a clock that steps back refills nothing and counts nothing twice
    early = await store.spend_request_token("k", now=now + 5, rate_per_s=0.1, burst=3)
    assert not early.allowed and early.tokens == 0
    # a long pause fills the bucket to its burst, no more
    full = await store.spend_request_token("k", now=now + 1000, rate_per_s=0.1, burst=3)
    assert full.allowed and full.tokens == 2
    # unused since before now + 500: purged (a new row starts full, the same as a full one)
    assert await store.purge_rate_limits(now + 500) == 1  # "j"
    assert (
        await store.spend_request_token("j", now=now + 1000, rate_per_s=0.1, burst=3)
    ).tokens == 2


async def test_rate_limit_holds_across_stores_counting_at_once(
    store_url: str, clock: FakeClock
) -> None:
    async with (
        await open_store(store_url, clock=clock) as a,
        await open_store(store_url, clock=clock) as b,
    ):
        allowed: list[bool] = []

        async def spend(store: SqlStore) -> None:
            bucket = await store.spend_request_token("shared", now=100.0, rate_per_s=0.01, burst=5)
            allowed.append(bucket.allowed)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(spend, a if i % 2 else b)
        assert sorted(allowed) == [False] * 15 + [True] * 5
