"""``Store.expire_controller``: one controller found unreachable is marked lost now, as the
heartbeat timeout marks it (docs/protocol.md §14), unless it was heard from after the probe
began; against both backends."""

from __future__ import annotations

from datetime import timedelta

from darktower.global_controller.store import (
    ControllerCapacity,
    HealthStatus,
    MeetingStatus,
    NewMeeting,
    SqlStore,
)
from darktower.model import ClientId, ControllerId, MeetingId

from .conftest import FakeClock

MC1 = ControllerId("mc-1")
MC2 = ControllerId("mc-2")
CAP = ControllerCapacity(max_meetings=10, max_participants=100)


async def _meeting_on(store: SqlStore, controller_id: ControllerId) -> MeetingId:
    new = NewMeeting("m", 10, ClientId("owner"), controller_id=controller_id)
    return (await store.create_meeting(new)).meeting_id


async def test_an_unreachable_controller_is_lost_at_once(store: SqlStore, clock: FakeClock) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    await store.register_controller(MC2, "eu", "https://mc2", CAP)
    lost = await _meeting_on(store, MC1)
    finished = await _meeting_on(store, MC1)
    elsewhere = await _meeting_on(store, MC2)
    await store.end_meeting(finished)
    probed_at = clock.advance(0.5)

    assert await store.expire_controller(MC1, probed_at)
    assert not await store.expire_controller(MC1, probed_at)  # once
    assert (await store.get_controller(MC1)).health is HealthStatus.UNHEALTHY
    assert (await store.get_meeting(lost)).status is MeetingStatus.CONTROLLER_LOST
    assert (await store.get_meeting(finished)).status is MeetingStatus.ENDED
    assert (await store.get_meeting(elsewhere)).status is MeetingStatus.ACTIVE
    assert (await store.get_controller(MC2)).health is HealthStatus.HEALTHY
    # the sweep does not report it again
    clock.advance(60)
    assert await store.expire_controllers(clock.now - timedelta(seconds=30)) == [MC2]
    assert not await store.expire_controller(ControllerId("mc-unknown"), clock.now)


async def test_a_controller_heard_after_the_probe_began_is_kept(
    store: SqlStore, clock: FakeClock
) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    meeting = await _meeting_on(store, MC1)
    probed_at = clock.advance(1)
    clock.advance(0.2)
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {meeting: 1})
    assert not await store.expire_controller(MC1, probed_at)
    assert (await store.get_controller(MC1)).health is HealthStatus.HEALTHY
    assert (await store.get_meeting(meeting)).status is MeetingStatus.ACTIVE
    # a registration counts as being heard from too
    probed_at = clock.advance(1)
    clock.advance(0.2)
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    assert not await store.expire_controller(MC1, probed_at)
    # silent since: lost, and back with its next heartbeat
    assert await store.expire_controller(MC1, clock.advance(1))
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, {meeting: 1})
    assert (await store.get_meeting(meeting)).status is MeetingStatus.ACTIVE
    assert (await store.get_controller(MC1)).health is HealthStatus.HEALTHY
