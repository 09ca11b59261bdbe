"""Several GC replicas on one PostgreSQL database (real server, never skipped in CI)."""

from __future__ import annotations

import socket
import sys
import textwrap
from datetime import timedelta

import psycopg
import pytest
import trio

from darktower.global_controller.store import (
    LATEST_VERSION,
    ControllerCapacity,
    HealthStatus,
    NewMeeting,
    PostgresStore,
    SqlStore,
    open_store,
)
from darktower.model import ClientId, ControllerId

from ..transport.conftest import wait_until
from .conftest import FakeClock

pytestmark = pytest.mark.postgres

OWNER = ClientId("owner")
CAP = ControllerCapacity(max_meetings=10, max_participants=100)


def _scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


async def test_two_replicas_serve_the_same_meetings(postgres_dsn: str, clock: FakeClock) -> None:
    async with (
        await open_store(postgres_dsn, clock=clock) as a,
        await open_store(postgres_dsn, clock=clock) as b,
    ):
        assert isinstance(a, PostgresStore)
        meeting = await a.create_meeting(NewMeeting("standup", 10, OWNER))
        assert await b.get_meeting(meeting.meeting_id) == meeting
        await b.end_meeting(meeting.meeting_id)
        assert await a.list_meetings(active=True) == []
        await a.register_controller(ControllerId("mc"), "eu", "https://mc", CAP)
        await b.record_heartbeat(ControllerId("mc"), CAP, HealthStatus.DEGRADED)
        assert (await a.get_controller(ControllerId("mc"))).health is HealthStatus.DEGRADED


async def test_two_processes_open_and_share_one_database(postgres_dsn: str) -> None:
    script = textwrap.dedent(
        """
        import sys, trio
        from darktower.global_controller.store import NewMeeting, open_store
        from darktower.model import ClientId

        async def main():
            async with await open_store(sys.argv[1]) as store:
                meeting = await store.create_meeting(NewMeeting(sys.argv[2], 5, ClientId("o")))
                print(meeting.meeting_id)

        trio.run(main)
        """
    )
    results: dict[str, str] = {}

    async def run(name: str) -> None:
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-c", script, postgres_dsn, name], capture_stdout=True
            )
        results[name] = done.stdout.decode().strip()

    async with trio.open_nursery() as nursery:
        for name in ("gc-a", "gc-b"):
            nursery.start_soon(run, name)
    async with await open_store(postgres_dsn) as store:
        seen = {m.display_name: m.meeting_id for m in await store.list_meetings()}
    assert seen == results
    assert _scalar(postgres_dsn, "SELECT COUNT(*) FROM schema_version") == LATEST_VERSION


async def test_replicas_sweeping_together_report_each_loss_once(
    postgres_dsn: str, clock: FakeClock
) -> None:
    controllers = [ControllerId(f"mc-{i}") for i in range(10)]
    async with (
        await open_store(postgres_dsn, clock=clock) as a,
        await open_store(postgres_dsn, clock=clock) as b,
    ):
        for controller_id in controllers:
            await a.register_controller(controller_id, "eu", "https://mc", CAP)
        clock.advance(60)
        cutoff = clock.now - timedelta(seconds=30)
        reports: list[list[ControllerId]] = []

        async def sweep(store: SqlStore) -> None:
            reports.append(await store.expire_controllers(cutoff))

        async with trio.open_nursery() as nursery:
            for store in (a, b, a, b):
                nursery.start_soon(sweep, store)
    assert sorted(c for report in reports for c in report) == controllers


async def test_pool_holds_at_most_pool_size_connections(postgres_dsn: str) -> None:
    count_sql = (
        "SELECT COUNT(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    async with await open_store(postgres_dsn, pool_size=2) as store:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(store.create_meeting, NewMeeting(f"m{i}", 5, OWNER))
        assert 1 <= _scalar(postgres_dsn, count_sql) <= 2
        assert len(await store.list_meetings()) == 20
    # aclose closed them. A backend leaves pg_stat_activity when its process exits, a moment
    # after the client's Terminate message.
    await wait_until(lambda: _scalar(postgres_dsn, count_sql) == 0, "the pool's backends gone")


async def test_stale_pooled_connections_are_replaced_transparently(postgres_dsn: str) -> None:
    kill_sql = (
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    async with await open_store(postgres_dsn, pool_size=2) as store:
        async with trio.open_nursery() as nursery:  # fill the pool with two connections
            for i in range(4):
                nursery.start_soon(store.create_meeting, NewMeeting(f"m{i}", 5, OWNER))
        assert _scalar(postgres_dsn, kill_sql) == 2
        # Each call finds a dead connection first, then retries on a fresh one.
        assert len(await store.list_meetings()) == 4
        await store.create_meeting(NewMeeting("after", 5, OWNER))
        assert len(await store.list_meetings()) == 5


async def test_unreachable_server_raises(postgres_dsn: str) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dsn = f"postgresql://postgres@127.0.0.1:{port.getsockname()[1]}/nothing"
    port.close()
    with pytest.raises(psycopg.OperationalError):
        await open_store(dsn)
