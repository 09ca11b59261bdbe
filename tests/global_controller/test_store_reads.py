"""Single-statement reads skip BEGIN/COMMIT (``single_read``); writes stay transactional."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest
import trio

from darktower.global_controller.store import (
    ControllerCapacity,
    HealthStatus,
    MeetingStatus,
    NewMeeting,
    SqlStore,
    open_store,
)
from darktower.model import ClientId, ControllerId

OWNER = ClientId("owner")
MC1 = ControllerId("mc-1")
CAP = ControllerCapacity(max_meetings=10, max_participants=100)
# A read waiting for the write lock would wait the busy timeout (10 s): far longer than this.
READ_DEADLINE_S = 5.0


async def test_a_write_after_reads_still_rolls_back_as_a_whole(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "host:1 https://mc", CAP)
    meeting = await store.create_meeting(NewMeeting("m", 100, OWNER, controller_id=MC1))
    for _ in range(3):  # reads in between (on PostgreSQL: the same pooled connections)
        assert (await store.get_controller(MC1)).capacity == CAP
        await store.get_meeting(meeting.meeting_id)
    busy = ControllerCapacity(max_meetings=10, current_meetings=7, max_participants=100)
    # The heartbeat's controller update runs first, then the bad count fails the transaction.
    with pytest.raises(ValueError, match="negative"):
        await store.record_heartbeat(MC1, busy, HealthStatus.DEGRADED, {meeting.meeting_id: -1})
    record = await store.get_controller(MC1)
    assert record.capacity == CAP and record.health is HealthStatus.HEALTHY


async def test_create_returns_the_row_as_stored(store: SqlStore) -> None:
    await store.register_controller(MC1, "eu", "host:1 https://mc", CAP)
    created = await store.create_meeting(NewMeeting("m", 100, OWNER, controller_id=MC1))
    assert created == await store.get_meeting(created.meeting_id)
    assert created.status is MeetingStatus.ACTIVE and created.participant_count == 0


async def test_sqlite_reads_do_not_wait_for_another_writer(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gc.db"
    async with await open_store(f"sqlite:///{path}") as store:
        created = await store.create_meeting(NewMeeting("m", 100, OWNER))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with trio.fail_after(READ_DEADLINE_S):
                assert (await store.get_meeting(created.meeting_id)).display_name == "m"
                assert [m.meeting_id for m in await store.list_meetings()] == [created.meeting_id]
            other.execute("ROLLBACK")
        finally:
            other.close()
