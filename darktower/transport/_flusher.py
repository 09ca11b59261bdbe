"""The endpoint's flusher: one task sends what every connection wrote in a loop tick
(docs/architecture.md §5.1).

A write marks its connection and, once per tick, wakes this task, which flushes each marked
connection in the next tick. Before it, each write woke its connection's own timer task by
cancelling that task's timer scope: an MH frame routed to five subscribers cost five task
wake-ups, each a raised and caught Cancelled; now it costs at most one. The connections' timer
tasks wake only for their timers (ACK and loss timers, the pacer, pings, a held flush).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._connection import Connection


class Flusher:
    """Connections with a flush due, and the task that flushes them (``run``)."""

    __slots__ = ("_due", "_task", "wakes")

    def __init__(self) -> None:
        self._due: list[Connection] = []  # each at most once: Connection.flush_pending
        self._task: trio.lowlevel.Task | None = None  # parked, waiting for a connection
        self.wakes = 0

    def schedule(self, conn: Connection) -> None:
        """Flush ``conn`` in the next tick (called once per flush it asks for)."""
        self._due.append(conn)
        task = self._task
        if task is not None:
            self._task = None
            self.wakes += 1
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """Owned by the endpoint's nursery; flushes until cancelled."""
        while True:
            if self._due:  # (asked while it flushed, or before it started): after the others
                await trio.lowlevel.checkpoint()
            else:
                self._task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            due, self._due = self._due, []
            for conn in due:
                conn.flush_scheduled()

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED
