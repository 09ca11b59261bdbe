"""The endpoint's timers: one task wakes each connection whose time has come
(docs/architecture.md §5.1).

A connection's wake time (aioquic's timer, its own deadlines, a held flush) moves after nearly
every flush. Before, each connection's task slept in a cancel scope whose deadline followed
it: every move went through trio's deadline bookkeeping, and every wake raised and caught a
Cancelled in that task. Here a move later costs two attribute writes (the connection's entry
in the heap is pushed again for the new time when it reaches the top), a move earlier one heap
push, and a wake is a call from this task, which sleeps until the heap's earliest time. Its
sleep's deadline moves (through trio) only when an earlier time is armed: when the earliest
moves later during the sleep, the task wakes once for nothing and pushes that entry again;
moving the deadline later each time cost more (it moves after nearly every flush of that
connection).

The heap holds at most one live entry per connection; a superseded or disarmed one stays until
it comes due or the heap is compacted (when stale entries outnumber the live ones by 64, or
none is live).
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush, heapreplace
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection

_SLACK = 64  # stale entries allowed beyond the live ones before a compaction


class Timers:
    """Each connection's next wake time, and the task that wakes them (``run``).

    A connection keeps ``wake_at`` (when it wants to wake), ``entry_seq`` (its live entry's
    sequence number, 0 if it has none) and ``entry_at`` (that entry's time; ``inf`` without
    one, ``-inf`` once disarmed, which no time is earlier than).
    """

    __slots__ = ("_heap", "_live", "_scope", "_seq", "compactions", "wakes")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._seq = 0
        self._live = 0  # connections with a live entry
        self._scope: trio.CancelScope | None = None  # the task's sleep, while it sleeps
        self.wakes = 0
        self.compactions = 0

    def arm(self, conn: Connection, at: float) -> None:
        """Wake ``conn`` at ``at`` (``inf``: not at all), replacing its previous time."""
        conn.wake_at = at
        if at >= conn.entry_at:  # its entry is pushed again for ``at`` once at the top
            return
        if not conn.entry_seq:
            self._live += 1
        self._seq += 1
        conn.entry_seq = self._seq
        conn.entry_at = at
        heappush(self._heap, (at, self._seq, conn))
        self._maybe_compact()
        scope = self._scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    def _settle_top(self) -> None:
        """Drop stale entries from the top of the heap and push a live one that moved later
        again, until the top is live and exact (or the heap is empty)."""
        heap = self._heap
        while heap:
            at, seq, conn = heap[0]
            if seq != conn.entry_seq:
                heappop(heap)
            elif conn.wake_at == at:
                return
            elif conn.wake_at == math.inf:
                heappop(heap)
                self._release(conn)
            else:
                self._seq += 1
                conn.entry_seq = self._seq
                conn.entry_at = conn.wake_at
                heapreplace(heap, (conn.wake_at, self._seq, conn))

    def _release(self, conn: Connection) -> None:
        """``conn``'s live entry has left the heap: it has none now."""
        conn.entry_seq = 0
        conn.entry_at = math.inf
        self._live -= 1

    def disarm(self, conn: Connection) -> None:
        """Never wake ``conn`` again (it has terminated)."""
        if conn.entry_seq:
            self._live -= 1
        conn.entry_seq = 0
        conn.entry_at = -math.inf
        conn.wake_at = math.inf
        if not self._live:
            self._heap.clear()  # every entry is stale: an idle endpoint keeps no connection
        else:
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        heap = self._heap
        if len(heap) > 2 * self._live + _SLACK:
            heap[:] = [entry for entry in heap if entry[1] == entry[2].entry_seq]
            heapify(heap)
            self.compactions += 1

    async def run(self) -> None:
        """Owned by the endpoint's nursery; wakes connections until cancelled."""
        heap = self._heap
        try:
            while True:
                self._settle_top()
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                self.wakes += 1
                now = trio.current_time()
                due = []
                while heap and heap[0][0] <= now:
                    due.append(heappop(heap)[1:])
                for seq, conn in due:
                    if seq != conn.entry_seq:
                        continue  # superseded by an earlier entry, or disarmed
                    self._release(conn)
                    if conn.wake_at > now:
                        self.arm(conn, conn.wake_at)  # it moved later meanwhile
                    else:
                        conn.on_timer(now)  # which arms it again
        finally:
            self._scope = None
