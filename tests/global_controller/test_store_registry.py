"""The controller registry and API clients, against both backends."""

from __future__ import annotations

from datetime import timedelta

import pytest

from darktower.errors import Conflict, NotFound
from darktower.global_controller.placement import effective_health, to_view
from darktower.global_controller.store import (
    ClientRecord,
    ControllerCapacity,
    HealthStatus,
    MeetingStatus,
    NewMeeting,
    SqlStore,
)
from darktower.model import ClientId, ControllerId, MeetingId
from darktower.protocol.heartbeats import MC_HEARTBEAT_TIMEOUT_S

from .conftest import FakeClock

MC1 = ControllerId("mc-1")
MC2 = ControllerId("mc-2")
OWNER = ClientId("owner")
CAP = ControllerCapacity(max_meetings=10, current_meetings=0, max_participants=100)


async def _meeting_on(store: SqlStore, controller_id: ControllerId) -> MeetingId:
    new = NewMeeting("m", 10, OWNER, controller_id=controller_id)
    return (await store.create_meeting(new)).meeting_id


async def test_register_controller(store: SqlStore, clock: FakeClock) -> None:
    record = await store.register_controller(MC1, "eu-west-1", "https://mc1:4433", CAP)
    assert record.controller_id == MC1
    assert record.region == "eu-west-1"
    assert record.endpoint == "https://mc1:4433"
    assert record.capacity == CAP
    assert record.health is HealthStatus.HEALTHY
    assert record.registered_at == record.last_heartbeat == clock.now
    assert await store.get_controller(MC1) == record


async def test_reregistration_replaces_the_record(store: SqlStore, clock: FakeClock) -> None:
    await store.register_controller(MC1, "eu", "https://old", CAP)
    await store.record_heartbeat(MC1, CAP, HealthStatus.DEGRADED)
    clock.advance(5)
    bigger = ControllerCapacity(max_meetings=20, max_participants=400)
    record = await store.register_controller(MC1, "us", "https://new", bigger)
    assert (record.region, record.endpoint, record.capacity) == ("us", "https://new", bigger)
    assert record.health is HealthStatus.HEALTHY
    assert record.registered_at == clock.now
    assert len(await store.list_controllers()) == 1


async def test_heartbeat_updates_capacity_health_and_time(
    store: SqlStore, clock: FakeClock
) -> None:
    registered = await store.register_controller(MC1, "eu", "https://mc1", CAP)
    clock.advance(10)
    load = ControllerCapacity(10, 3, 100, 42)
    record = await store.record_heartbeat(MC1, load, HealthStatus.DEGRADED)
    assert record.capacity == load
    assert record.health is HealthStatus.DEGRADED
    assert record.last_heartbeat == clock.now
    assert record.registered_at == registered.registered_at
    with pytest.raises(NotFound):
        await store.record_heartbeat(MC2, load, HealthStatus.HEALTHY)


async def test_heartbeat_counts_touch_only_own_meetings(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    await store.register_controller(MC2, "eu", "https://mc2", CAP)
    mine = await _meeting_on(store, MC1)
    theirs = await _meeting_on(store, MC2)
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {mine: 4, theirs: 9})
    assert (await store.get_meeting(mine)).participant_count == 4
    assert (await store.get_meeting(theirs)).participant_count == 0


async def test_list_controllers_by_region(store: SqlStore) -> None:
    await store.register_controller(MC2, "us", "https://mc2", CAP)
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    assert [c.controller_id for c in await store.list_controllers()] == [MC1, MC2]
    assert [c.controller_id for c in await store.list_controllers(region="us")] == [MC2]
    assert await store.list_controllers(region="ap") == []


async def test_effective_health_goes_unhealthy_when_heartbeats_stop(
    store: SqlStore, clock: FakeClock
) -> None:
    view = to_view(await store.register_controller(MC1, "eu", "https://mc1", CAP))
    now = clock.now.timestamp()
    assert effective_health(view, now) is HealthStatus.HEALTHY
    later = now + MC_HEARTBEAT_TIMEOUT_S + 0.001
    assert effective_health(view, later) is HealthStatus.UNHEALTHY
    assert effective_health(view, later, heartbeat_expiry_s=3600.0) is HealthStatus.HEALTHY


async def test_dead_controller_meetings_are_reported_lost(
    store: SqlStore, clock: FakeClock
) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    await store.register_controller(MC2, "eu", "https://mc2", CAP)
    kept = await _meeting_on(store, MC1)
    dropped = await _meeting_on(store, MC1)
    finished = await _meeting_on(store, MC1)
    elsewhere = await _meeting_on(store, MC2)
    await store.end_meeting(finished)
    clock.advance(60)
    await store.record_heartbeat(MC2, CAP, HealthStatus.HEALTHY)
    cutoff = clock.now - timedelta(seconds=30)

    assert await store.expire_controllers(cutoff) == [MC1]
    assert await store.expire_controllers(cutoff) == []  # reported once
    assert (await store.get_controller(MC1)).health is HealthStatus.UNHEALTHY
    assert (await store.get_controller(MC2)).health is HealthStatus.HEALTHY
    for meeting_id in (kept, dropped):
        meeting = await store.get_meeting(meeting_id)
        assert meeting.status is MeetingStatus.CONTROLLER_LOST
        assert meeting.is_active  # lost is reported, not ended
    assert (await store.get_meeting(finished)).status is MeetingStatus.ENDED
    assert (await store.get_meeting(elsewhere)).status is MeetingStatus.ACTIVE
    lost = await store.list_meetings(controller_id=MC1, active=True)
    assert {m.meeting_id for m in lost} == {kept, dropped}

    # The controller comes back and still runs one of them.
    record = await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {kept: 2})
    assert record.health is HealthStatus.HEALTHY
    assert (await store.get_meeting(kept)).status is MeetingStatus.ACTIVE
    assert (await store.get_meeting(dropped)).status is MeetingStatus.CONTROLLER_LOST
    # Once heartbeating again it can be expired again.
    clock.advance(60)
    assert await store.expire_controllers(clock.now - timedelta(seconds=30)) == [MC1, MC2]


async def test_expire_requires_aware_datetime(store: SqlStore, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.expire_controllers(clock.now.replace(tzinfo=None))


def _client(client_id: str, name: str, clock: FakeClock) -> ClientRecord:
    return ClientRecord(ClientId(client_id), name, "scrypt$n=16,r=1,p=1$c2FsdA$a2V5", clock.now)


async def test_clients_crud(store: SqlStore, clock: FakeClock) -> None:
    alice = _client("id-a", "alice", clock)
    bob = _client("id-b", "bob", clock)
    await store.add_client(bob)
    await store.add_client(alice)
    assert await store.get_client(alice.client_id) == alice
    assert await store.list_clients() == [alice, bob]
    await store.remove_client(alice.client_id)
    assert await store.list_clients() == [bob]
    with pytest.raises(NotFound):
        await store.get_client(alice.client_id)
    with pytest.raises(NotFound):
        await store.remove_client(alice.client_id)


async def test_client_id_and_name_are_unique(store: SqlStore, clock: FakeClock) -> None:
    await store.add_client(_client("id-a", "alice", clock))
    with pytest.raises(Conflict):
        await store.add_client(_client("id-a", "other", clock))
    with pytest.raises(Conflict):
        await store.add_client(_client("id-other", "alice", clock))
    assert len(await store.list_clients()) == 1


def test_client_secret_hash_stays_out_of_repr() -> None:
    record = _client("id-a", "alice", FakeClock())
    assert "scrypt" not in repr(record)
