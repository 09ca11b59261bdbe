"""Opening, migrating, restarting and closing stores; several replicas on one PostgreSQL."""

from __future__ import annotations

import pathlib
import sqlite3
from datetime import datetime
from typing import Any

import psycopg
import pytest
import trio

from darktower.global_controller.store import (
    LATEST_VERSION,
    MIGRATIONS,
    ControllerCapacity,
    HealthStatus,
    NewMeeting,
    SchemaTooNewError,
    SqliteStore,
    SqlStore,
    open_store,
    sqlite_path,
)
from darktower.model import ClientId, ControllerId

from .conftest import FakeClock

OWNER = ClientId("owner")
MC1 = ControllerId("mc-1")
CAP = ControllerCapacity(max_meetings=10, max_participants=100)


def _raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run SQL on the database behind ``url`` without the store."""
    path = sqlite_path(url)
    if path is not None:
        with sqlite3.connect(path) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(url, autocommit=True) as pg:
        cursor = pg.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _versions(url: str) -> list[tuple[Any, ...]]:
    return _raw(url, "SELECT version, description, applied_at FROM schema_version ORDER BY 1")


async def test_meetings_survive_a_restart(store_url: str, clock: FakeClock) -> None:
    async with await open_store(store_url, clock=clock) as first:
        await first.register_controller(MC1, "eu", "https://mc1", CAP)
        meeting = await first.create_meeting(NewMeeting("standup", 5, OWNER, controller_id=MC1))
        await first.record_heartbeat(MC1, CAP, HealthStatus.DEGRADED, {meeting.meeting_id: 3})
        controller = await first.get_controller(MC1)
    clock.advance(3600)
    async with await open_store(store_url, clock=clock) as second:
        again = await second.get_meeting(meeting.meeting_id)
        assert again.participant_count == 3
        assert again.created_at == meeting.created_at
        assert await second.get_controller(MC1) == controller


async def test_migrations_are_applied_once_and_recorded(store_url: str, clock: FakeClock) -> None:
    async with await open_store(store_url, clock=clock) as store:
        assert await store.schema_version() == LATEST_VERSION
    first = _versions(store_url)
    assert [(v, d) for v, d, _ in first] == [(m.version, m.description) for m in MIGRATIONS]
    clock.advance(60)
    async with await open_store(store_url, clock=clock) as store:
        assert await store.schema_version() == LATEST_VERSION
    assert _versions(store_url) == first  # nothing re-applied, applied_at unchanged


async def test_stores_opened_together_migrate_once_and_share_data(store_url: str) -> None:
    stores: list[SqlStore] = []

    async def open_one() -> None:
        stores.append(await open_store(store_url))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(open_one)
        meeting = await stores[0].create_meeting(NewMeeting("m", 5, OWNER))
        assert await stores[1].get_meeting(meeting.meeting_id) == meeting
        await stores[2].end_meeting(meeting.meeting_id)
        assert not (await stores[0].get_meeting(meeting.meeting_id)).is_active
    finally:
        for store in stores:
            await store.aclose()
    assert len(stores) == 3
    assert [v for v, _, _ in _versions(store_url)] == [m.version for m in MIGRATIONS]


async def test_refuses_a_schema_newer_than_the_code(store_url: str, clock: FakeClock) -> None:
    async with await open_store(store_url, clock=clock):
        pass
    stamp = "'2030-01-01T00:00:00.000000+00:00'"
    _raw(store_url, f"INSERT INTO schema_version VALUES ({LATEST_VERSION + 1}, 'future', {stamp})")
    with pytest.raises(SchemaTooNewError, match=f"version {LATEST_VERSION + 1}"):
        await open_store(store_url, clock=clock)


async def test_closed_store_refuses_calls_and_aclose_is_idempotent(store_url: str) -> None:
    store = await open_store(store_url)
    await store.aclose()
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.list_meetings()


async def test_cancelled_caller_leaves_the_store_usable(store_url: str) -> None:
    async with await open_store(store_url, pool_size=1) as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.list_meetings()
        assert scope.cancelled_caught
        # The only connection slot was given back.
        with trio.fail_after(10):
            assert await store.list_meetings() == []


async def test_concurrent_calls_all_complete(store_url: str) -> None:
    async with await open_store(store_url, pool_size=2) as store:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(store.create_meeting, NewMeeting(f"m{i}", 5, OWNER))
        assert len(await store.list_meetings()) == 20


async def test_real_clock_timestamps_are_aware_utc(store_url: str) -> None:
    async with await open_store(store_url) as store:
        meeting = await store.create_meeting(NewMeeting("m", 5, OWNER))
    assert meeting.created_at.tzinfo is not None
    assert abs((meeting.created_at - datetime.now(meeting.created_at.tzinfo)).total_seconds()) < 60


# -- SQLite specifics -------------------------------------------------------------------------


async def test_sqlite_uses_wal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "data" / "gc.db"  # the parent folder is created
    async with await open_store(path) as store:
        assert isinstance(store, SqliteStore)
        assert _raw(str(path), "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_in_memory() -> None:
    async with await open_store("sqlite://") as store:
        await store.create_meeting(NewMeeting("m", 5, OWNER))
        assert len(await store.list_meetings()) == 1


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("gc.db", "gc.db"),
        ("/var/lib/dt/gc.db", "/var/lib/dt/gc.db"),
        ("sqlite:///gc.db", "gc.db"),
        ("sqlite:////var/lib/dt/gc.db", "/var/lib/dt/gc.db"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("postgresql://u@127.0.0.1/db", None),
        ("postgres://u@127.0.0.1/db", None),
    ],
)
def test_sqlite_path(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:/gc.db", "sqlite://host/gc.db"])
def test_unknown_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError):
        sqlite_path(url)
