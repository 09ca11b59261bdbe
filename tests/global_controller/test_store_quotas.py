"""Per-client cap on active meetings and the end of meetings that stay empty, on both backends
and, for the cap, under concurrent creates (several replicas race for the last slot)."""

from __future__ import annotations

from datetime import timedelta

import trio

from darktower.errors import Forbidden, RateLimited
from darktower.global_controller.store import (
    ControllerCapacity,
    EndReason,
    HealthStatus,
    MeetingStatus,
    NewMeeting,
    SqlStore,
    open_store,
)
from darktower.model import ClientId, ControllerId

from .conftest import FakeClock

ALICE = ClientId("client-alice")
BOB = ClientId("client-bob")
MC1 = ControllerId("mc-1")
HOUR = timedelta(hours=1)
CAP = ControllerCapacity(max_meetings=10, max_participants=100)


def _new(owner: ClientId = ALICE) -> NewMeeting:
    return NewMeeting("standup", 10, owner, controller_id=MC1)


async def test_active_meetings_per_owner_are_capped(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "mc1", CAP)
    first = await store.create_meeting(_new(), max_active_per_owner=2)
    await store.create_meeting(_new(), max_active_per_owner=2)
    try:
        await store.create_meeting(_new(), max_active_per_owner=2)
    except RateLimited as exc:
        assert exc.details["max_active_meetings"] == "2"
    else:
        raise AssertionError("a third active meeting was created")
    await store.create_meeting(_new(BOB), max_active_per_owner=2)  # another client's own cap
    await store.end_meeting(first.meeting_id)
    await store.create_meeting(_new(), max_active_per_owner=2)  # an ended one frees its slot
    assert len(await store.list_meetings(owner=ALICE, active=True)) == 2


async def test_the_cap_holds_under_concurrent_creates(store_url: str, clock: FakeClock) -> None:
    # Two stores (two GC replicas, or two connections) create at once: never more than the cap.
    async with (
        await open_store(store_url, clock=clock) as a,
        await open_store(store_url, clock=clock) as b,
    ):
        await a.register_controller(MC1, "eu", "mc1", CAP)
        refused = 0

        async def create(store: SqlStore) -> None:
            nonlocal refused
            try:
                await store.create_meeting(_new(), max_active_per_owner=5)
            except RateLimited:
                refused += 1

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(create, a if i % 2 else b)
        assert refused == 7
        assert len(await a.list_meetings(owner=ALICE, active=True)) == 5


async def test_meetings_empty_for_too_long_end_with_a_reason(
    store: SqlStore, clock: FakeClock
) -> None:
    await store.register_controller(MC1, "eu", "mc1", CAP)
    never_joined = await store.create_meeting(_new())
    busy = await store.create_meeting(_new())
    emptied = await store.create_meeting(_new())
    clock.advance(60)
    await store.record_heartbeat(
        MC1, CAP, HealthStatus.HEALTHY, {busy.meeting_id: 2, emptied.meeting_id: 1}
    )
    clock.advance(500)
    await store.record_heartbeat(
        MC1, CAP, HealthStatus.HEALTHY, {busy.meeting_id: 2, emptied.meeting_id: 0}
    )
    clock.advance(100)  # never_joined: empty for 600 s; emptied: for 100 s
    ended = await store.end_empty_meetings(clock.now - timedelta(seconds=550))
    assert [m.meeting_id for m in ended] == [never_joined.meeting_id]
    assert ended[0].status is MeetingStatus.ENDED
    assert ended[0].end_reason is EndReason.EMPTY
    again = await store.get_meeting(never_joined.meeting_id)
    assert (again.status, again.end_reason) == (MeetingStatus.ENDED, EndReason.EMPTY)
    assert await store.end_empty_meetings(clock.now - timedelta(seconds=550)) == []  # once only
    clock.advance(500)
    ended = await store.end_empty_meetings(clock.now - timedelta(seconds=550))
    assert [m.meeting_id for m in ended] == [emptied.meeting_id]
    assert (await store.get_meeting(busy.meeting_id)).is_active


async def test_issuing_a_join_token_counts_as_activity(store: SqlStore, clock: FakeClock) -> None:
    await store.register_controller(MC1, "eu", "mc1", CAP)
    meeting = await store.create_meeting(_new())
    clock.advance(590)
    # The host is about to join (its token is not recorded, the meeting's emptiness restarts).
    await store.record_join(meeting.meeting_id, "jti-host", "", clock.now + timedelta(hours=1))
    clock.advance(20)
    assert await store.end_empty_meetings(clock.now - timedelta(seconds=600)) == []
    owner_end = await store.end_meeting(meeting.meeting_id)
    assert owner_end.end_reason is EndReason.OWNER


async def test_bans_are_shared_by_every_store_on_the_database(
    store_url: str, clock: FakeClock
) -> None:
    async with (
        await open_store(store_url, clock=clock) as a,
        await open_store(store_url, clock=clock) as b,
    ):
        await a.register_controller(MC1, "eu", "mc1", CAP)
        meeting = await a.create_meeting(_new())
        later = clock.now + timedelta(seconds=300)
        await a.record_join(meeting.meeting_id, "jti-1", "addr:192.0.2.7", later)
        assert await a.ban_token_holder(meeting.meeting_id, "unknown", later) is None
        banned = await b.ban_token_holder(meeting.meeting_id, "jti-1", later)
        assert banned == "addr:192.0.2.7"
        try:
            await a.record_join(meeting.meeting_id, "jti-2", "addr:192.0.2.7", later)
        except Forbidden as exc:
            assert "banned_until" in exc.details
        else:
            raise AssertionError("a banned identity got a join token")
        await b.record_join(meeting.meeting_id, "jti-3", "addr:192.0.2.8", later)  # others may
        await a.record_join(meeting.meeting_id, "jti-4", "", later)  # the host always may
        clock.advance(301)
        assert await a.purge_expired() == 1  # the ban; the tokens stay while the meeting is on
        await a.end_meeting(meeting.meeting_id)
        assert await a.purge_expired() == 2  # its expired tokens, the meeting ended
        await b.record_join(meeting.meeting_id, "jti-5", "addr:192.0.2.7", later)


async def test_an_identitys_join_tokens_newest_first(store: SqlStore, clock: FakeClock) -> None:
    """What a kick with ban revokes at the MC: the identity's unexpired tokens for that
    meeting only, newest first, at most the limit."""
    await store.register_controller(MC1, "eu", "mc1", CAP)
    meeting = await store.create_meeting(_new())
    other = await store.create_meeting(_new())
    troll, bystander = "addr:192.0.2.7", "addr:192.0.2.8"
    for n in range(4):
        expires = clock.now + timedelta(seconds=100 + n)
        await store.record_join(meeting.meeting_id, f"jti-{n}", troll, expires)
    await store.record_join(meeting.meeting_id, "jti-other", bystander, clock.now + HOUR)
    await store.record_join(other.meeting_id, "jti-elsewhere", troll, clock.now + HOUR)
    got = await store.join_tokens_of(meeting.meeting_id, troll, limit=3)
    assert [t.token_id for t in got] == ["jti-3", "jti-2", "jti-1"]
    assert got[0].expires_at == clock.now + timedelta(seconds=103)
    clock.advance(101.5)  # jti-0 and jti-1 have expired
    got = await store.join_tokens_of(meeting.meeting_id, troll, limit=100)
    assert [t.token_id for t in got] == ["jti-3", "jti-2"]
    assert await store.join_tokens_of(meeting.meeting_id, "addr:192.0.2.9", limit=100) == []
