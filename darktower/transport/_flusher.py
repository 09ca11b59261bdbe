"""The endpoint's flusher: one task sends what every connection wrote in a loop tick
(docs/architecture.md §5.1).

A write marks its connection and, once per tick, wakes this task, which flushes each marked
connection in the next tick. Before it, each write woke its connection's own timer task by
cancelling that task's timer scope: an MH frame routed to five subscribers cost five task
wake-ups, each a raised and caught Cancelled; now it costs at most one. Timers (ACK and loss
timers, the pacer, pings, a held flush) are the endpoint's timers' (``_timers.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._connection import Connection


class Flusher:
    """Connections with a flush due, and the task that flushes them (``run``)."""

    __slots__ = ("_due", "_stopped", "_task", "wakes")

    def __init__(self) -> None:
        # Connections asked for (once per flush_pending; one flushed meanwhile may be asked
        # again, and is flushed once: flush_scheduled checks).
        self._due: list[Connection] = []
        self._task: trio.lowlevel.Task | None = None  # parked, waiting for a connection
        self._stopped = False  # the endpoint stopped: connections send their last themselves
        self.wakes = 0

    def schedule(self, conn: Connection) -> None:
        """Flush ``conn`` in the next tick (called once per flush it asks for)."""
        if self._stopped:
            return
        self._due.append(conn)
        task = self._task
        if task is not None:
            self._task = None
            self.wakes += 1
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """Owned by the endpoint's nursery; flushes until cancelled (then each connection's
        own task sends its last packets)."""
        try:
            while True:
                if self._due:  # (asked while it flushed, or before it started): after the rest
                    await trio.lowlevel.checkpoint()
                else:
                    self._task = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort)
                due, self._due = self._due, []
                for conn in due:
                    conn.flush_scheduled()
        finally:
            self._stopped = True  # nothing keeps a connection once the endpoint stops
            self._due = []
            self._task = None

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED
