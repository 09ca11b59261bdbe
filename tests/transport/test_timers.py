"""The endpoint's timers (docs/architecture.md §5.1): one task wakes each connection at its
time; a move later pushes nothing, a move earlier wakes the task earlier, connections due
together wake in one pass, and a disarmed connection is never woken nor kept. Unit tests of
that layer alone, with stand-in connections and trio's autojump clock (a real connection's
timers, keepalives and timeouts run through it in the rest of tests/transport)."""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing

from darktower.transport._timers import Timers


class Conn:
    """What the timers read and write on a connection, and the times it was woken."""

    def __init__(self, timers: Timers, again: list[float] | None = None) -> None:
        self.timers = timers
        self.wake_at = math.inf
        self.entry_seq = 0
        self.entry_at = math.inf
        self.woken: list[float] = []
        self.again = again or []  # the next times it asks for, one per wake

    def on_timer(self, now: float) -> None:
        self.woken.append(now)
        self.timers.arm(self, self.again.pop(0) if self.again else math.inf)  # type: ignore[arg-type]


async def _run(timers: Timers, until: float) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep_until(until)
        nursery.cancel_scope.cancel()


def _arm(timers: Timers, conn: Conn, at: float) -> None:
    timers.arm(conn, at)  # type: ignore[arg-type]


async def test_a_connection_wakes_at_its_time_and_a_later_move_pushes_nothing(
    autojump_clock: Any,
) -> None:
    timers = Timers()
    conn = Conn(timers)
    _arm(timers, conn, 1.0)
    _arm(timers, conn, 3.0)
    assert len(timers._heap) == 1  # the entry for 1.0 is pushed again for 3.0 at the top
    await _run(timers, 10.0)
    assert conn.woken == [3.0]
    assert timers.wakes == 1
    assert timers._heap == []


async def test_the_earliest_moving_later_while_the_task_sleeps(autojump_clock: Any) -> None:
    """The task's deadline is not moved later (that would cost a trio deadline change after
    nearly every flush of that connection): it wakes once at the old time for nothing, and
    the connection is woken at its new one."""
    timers = Timers()
    first, second = Conn(timers), Conn(timers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        _arm(timers, first, 1.0)
        _arm(timers, second, 2.0)
        await trio.testing.wait_all_tasks_blocked()  # asleep until 1.0
        _arm(timers, first, 3.0)
        await trio.sleep_until(10.0)
        nursery.cancel_scope.cancel()
    assert (second.woken, first.woken) == ([2.0], [3.0])
    assert timers.wakes == 3


async def test_an_earlier_move_wakes_the_sleeping_task_earlier(autojump_clock: Any) -> None:
    timers = Timers()
    conn = Conn(timers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        _arm(timers, conn, 5.0)
        await trio.testing.wait_all_tasks_blocked()  # asleep until 5.0
        _arm(timers, conn, 2.0)
        await trio.sleep_until(10.0)
        nursery.cancel_scope.cancel()
    assert conn.woken == [2.0]  # and not again at 5.0: that entry was superseded
    assert timers._heap == []


async def test_connections_due_together_wake_in_one_pass(autojump_clock: Any) -> None:
    timers = Timers()
    conns = [Conn(timers, again=[2.0 + i]) for i in range(10)]
    for conn in conns:
        _arm(timers, conn, 1.0)
    await _run(timers, 20.0)
    assert [conn.woken for conn in conns] == [[1.0, 2.0 + i] for i in range(10)]
    assert timers.wakes == 1 + 10


async def test_a_time_already_past_wakes_in_the_next_pass() -> None:
    """A connection that asks again for a time that has come is woken once per pass: the
    task yields in between, so it cannot spin while others wait."""
    timers = Timers()
    ticks = 0
    seen: list[int] = []

    class Again(Conn):
        def on_timer(self, now: float) -> None:
            seen.append(ticks)
            super().on_timer(now)

    conn = Again(timers, again=[0.0, 0.0])  # times long past (trio's clock is far on)

    async def other() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        nursery.start_soon(timers.run)
        _arm(timers, conn, 0.0)
        while len(conn.woken) < 3:
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert len(conn.woken) == 3
    assert timers.wakes == 3
    assert seen[0] < seen[2]  # another task ran in between (each pass is a scheduler batch)


async def test_a_disarmed_connection_is_never_woken_nor_kept(autojump_clock: Any) -> None:
    timers = Timers()
    live = Conn(timers)
    _arm(timers, live, 50.0)
    gone = [Conn(timers) for _ in range(500)]
    for conn in gone:
        _arm(timers, conn, 10.0)
        timers.disarm(conn)  # type: ignore[arg-type]
        _arm(timers, conn, 5.0)  # a last flush after it terminated arms nothing
    assert len(timers._heap) <= 2 * 1 + 64  # compacted as they went
    assert timers.compactions > 0
    await _run(timers, 100.0)
    assert all(conn.woken == [] for conn in gone)
    assert live.woken == [50.0]
    _arm(timers, gone[0], 200.0)  # (disarmed: nothing)
    _arm(timers, live, 200.0)
    timers.disarm(live)  # type: ignore[arg-type]
    assert timers._heap == []  # none live: nothing is kept
