"""The store contract, run against both backends (a SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import pathlib
from datetime import timedelta

import pytest

from darktower.errors import Conflict, ErrorCode, NotFound
from darktower.global_controller.store import (
    MAX_LIST_ROWS,
    ControllerCapacity,
    HealthStatus,
    MeetingRecord,
    MeetingSettings,
    MeetingStatus,
    NewMeeting,
    SqlStore,
    Store,
)
from darktower.model import ClientId, ControllerId, MeetingId

from .conftest import FakeClock

ALICE = ClientId("client-alice")
BOB = ClientId("client-bob")
MC1 = ControllerId("mc-1")
MC2 = ControllerId("mc-2")
CAP = ControllerCapacity(max_meetings=10, current_meetings=0, max_participants=100)


def _new(owner: ClientId = ALICE, **kwargs: object) -> NewMeeting:
    return NewMeeting(display_name="Team Standup", max_participants=100, owner=owner, **kwargs)  # type: ignore[arg-type]


async def test_backends_satisfy_the_protocol(store: SqlStore) -> None:
    typed: Store = store  # mypy checks the structural match; this checks the runtime object
    assert callable(typed.create_meeting)


async def test_create_and_get_meeting(store: SqlStore, clock: FakeClock) -> None:
    settings = MeetingSettings(
        enable_e2e_encryption=True, require_auth=False, recording_enabled=True
    )
    new = _new(settings=settings)
    created = await store.create_meeting(new)
    assert created.meeting_id == new.meeting_id
    assert created.display_name == "Team Standup"
    assert created.max_participants == 100
    assert created.settings == settings
    assert created.owner == ALICE
    assert created.controller_id is None
    assert created.status is MeetingStatus.ACTIVE
    assert created.participant_count == 0
    assert created.created_at == clock.now
    assert created.created_at.utcoffset() == timedelta(0)
    assert created.ended_at is None
    assert await store.get_meeting(new.meeting_id) == created


async def test_meeting_ids_default_to_fresh_uuids(store: SqlStore) -> None:
    first, second = _new(), _new()
    assert first.meeting_id != second.meeting_id
    assert len(first.meeting_id) == 36
    await store.create_meeting(first)
    await store.create_meeting(second)


async def test_duplicate_meeting_id_is_a_conflict_and_store_stays_usable(store: SqlStore) -> None:
    new = _new()
    await store.create_meeting(new)
    with pytest.raises(Conflict) as info:
        await store.create_meeting(_new(owner=BOB, meeting_id=new.meeting_id))
    assert info.value.code is ErrorCode.CONFLICT
    assert (await store.get_meeting(new.meeting_id)).owner == ALICE


async def test_missing_meeting_is_not_found(store: SqlStore) -> None:
    missing = MeetingId("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound) as info:
        await store.get_meeting(missing)
    assert info.value.code is ErrorCode.NOT_FOUND
    assert info.value.details == {"meeting_id": missing}
    with pytest.raises(NotFound):
        await store.end_meeting(missing)


async def test_create_on_unknown_controller_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        await store.create_meeting(_new(controller_id=MC1))
    await store.register_controller(MC1, "eu-west-1", "https://mc1:4433", CAP)
    created = await store.create_meeting(_new(controller_id=MC1))
    assert created.controller_id == MC1


async def test_list_meetings_filters_and_orders_newest_first(
    store: SqlStore, clock: FakeClock
) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    a1 = await store.create_meeting(_new(ALICE, controller_id=MC1))
    clock.advance(1)
    b1 = await store.create_meeting(_new(BOB))
    clock.advance(1)
    a2 = await store.create_meeting(_new(ALICE))
    clock.advance(1)
    await store.end_meeting(a2.meeting_id)
    a2 = await store.get_meeting(a2.meeting_id)

    def ids(meetings: list[MeetingRecord]) -> list[MeetingId]:
        return [m.meeting_id for m in meetings]

    assert ids(await store.list_meetings()) == ids([a2, b1, a1])
    assert ids(await store.list_meetings(owner=ALICE)) == ids([a2, a1])
    assert ids(await store.list_meetings(owner=ALICE, active=True)) == ids([a1])
    assert ids(await store.list_meetings(active=False)) == ids([a2])
    assert ids(await store.list_meetings(controller_id=MC1)) == ids([a1])
    assert ids(await store.list_meetings(owner=ClientId("nobody"))) == []
    assert ids(await store.list_meetings(limit=2)) == ids([a2, b1])
    assert ids(await store.list_meetings(before=b1.created_at)) == ids([a1])
    assert ids(await store.list_meetings(limit=0)) == []
    with pytest.raises(ValueError):
        await store.list_meetings(limit=-1)


async def test_list_is_capped(store: SqlStore) -> None:
    assert MAX_LIST_ROWS >= 2
    await store.create_meeting(_new())
    assert len(await store.list_meetings(limit=MAX_LIST_ROWS * 10)) == 1


async def test_end_meeting_is_idempotent_and_keeps_first_end(
    store: SqlStore, clock: FakeClock
) -> None:
    meeting = await store.create_meeting(_new())
    clock.advance(60)
    ended = await store.end_meeting(meeting.meeting_id)
    assert ended.status is MeetingStatus.ENDED
    assert not ended.is_active
    assert ended.ended_at == clock.now
    clock.advance(60)
    again = await store.end_meeting(meeting.meeting_id)
    assert again == ended


async def test_heartbeat_participant_counts(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "https://mc1", CAP)
    # Ids fixed so that m1 is updated before m2 fails below.
    m1 = await store.create_meeting(_new(meeting_id=MeetingId("a-meeting"), controller_id=MC1))
    m2 = await store.create_meeting(_new(meeting_id=MeetingId("b-meeting"), controller_id=MC1))
    ended = await store.create_meeting(_new(controller_id=MC1))
    await store.end_meeting(ended.meeting_id)
    counts = {m1.meeting_id: 5, m2.meeting_id: 0, ended.meeting_id: 9, MeetingId("unknown"): 3}
    await store.record_heartbeat(MC1, CAP, HealthStatus.HEALTHY, counts)
    assert (await store.get_meeting(m1.meeting_id)).participant_count == 5
    assert (await store.get_meeting(m2.meeting_id)).participant_count == 0
    assert (await store.get_meeting(ended.meeting_id)).participant_count == 0
    with pytest.raises(ValueError):
        await store.record_heartbeat(
            MC1, CAP, HealthStatus.DEGRADED, {m1.meeting_id: 7, m2.meeting_id: -1}
        )
    # The failed call rolled back as a whole.
    assert (await store.get_meeting(m1.meeting_id)).participant_count == 5
    assert (await store.get_controller(MC1)).health is HealthStatus.HEALTHY


async def test_sqlite_file_is_owner_only(tmp_path: pathlib.Path) -> None:
    from darktower.global_controller.store import open_store

    path = tmp_path / "sub" / "gc.db"
    async with await open_store(str(path)) as store:
        await store.create_meeting(
            NewMeeting(display_name="m", max_participants=2, owner=ClientId("c"))
        )
    for file in path.parent.iterdir():
        assert file.stat().st_mode & 0o777 == 0o600, file
