"""One long-lived thread that runs a store's calls in order, fed by a queue.

``trio.to_thread.run_sync`` costs a thread-cache hand-off and a wake-up of the trio loop per
call (~240 us of CPU each on the GC's API path, more than the SQLite work itself). This
thread lives as long as its store (SQLite: one, PostgreSQL: one per pool slot), takes every
call queued since it last looked, runs them
one after the other (each in its own transaction, as before), and hands their results back
to trio in one ``run_sync_soon`` per batch (at most :data:`MAX_BATCH_CALLS`): under load one
wake-up of the trio loop serves many calls.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")

# Calls queued and not yet taken back out. A caller beyond this waits (in trio, before
# queueing) until one is: backpressure, so the queue never grows past this many entries
# (a cancelled call keeps its place until the thread drops it).
MAX_PENDING_CALLS = 256

# Results are handed back after at most this many calls, so the first caller of a batch
# waits for at most this many others' transactions, not for the whole queue.
MAX_BATCH_CALLS = 16

_QUEUED, _RUNNING, _CANCELLED = 0, 1, 2
_NOT_RUN: outcome.Outcome[Any] = outcome.Error(RuntimeError("not run"))


class _Call(Generic[T]):
    __slots__ = ("fn", "result", "state", "task")

    def __init__(self, fn: Callable[[], T], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.task = task
        self.state = _QUEUED
        self.result: outcome.Outcome[T] = _NOT_RUN


class SerialWorker:
    """Owns one daemon thread that runs submitted functions one at a time, in FIFO order.

    Create it inside a trio run; :meth:`run` from that run's tasks; :meth:`stop` once (it
    runs a last function, e.g. closing the connection, then ends the thread).
    """

    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # Bounded by MAX_PENDING_CALLS (see :meth:`run`); a None entry ends the thread.
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        # Guards each call's QUEUED -> RUNNING / CANCELLED transition (thread vs. abort).
        self._lock = threading.Lock()
        self._pending = 0
        self._room = trio.lowlevel.ParkingLot()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the thread and return its result (or raise its exception).

        Cancellation: a call still queued is withdrawn and ``Cancelled`` raised; a call
        already running cannot be interrupted, so the caller waits for it (as with
        ``trio.to_thread.run_sync``). Raises ``trio.ClosedResourceError`` after :meth:`stop`.
        """
        while self._pending >= MAX_PENDING_CALLS:
            await self._room.park()
        if self._stopped:
            raise trio.ClosedResourceError("the worker thread has stopped")
        call: _Call[T] = _Call(fn, trio.lowlevel.current_task())
        self._pending += 1
        self._queue.put(call)

        def abort(_: Any) -> trio.lowlevel.Abort:
            with self._lock:
                if call.state != _QUEUED:
                    return trio.lowlevel.Abort.FAILED  # running: its result will come
                call.state = _CANCELLED  # skipped, and counted out, by the thread
            return trio.lowlevel.Abort.SUCCEEDED

        # Resumed by _deliver with the call's outcome, which this unwraps.
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def stop(self, last: Callable[[], object]) -> None:
        """Run ``last()`` after the calls already queued, then end the thread and wait for
        it. Idempotent. Shielded: a cancelled caller still releases the thread. Raises what
        ``last()`` raises."""
        if self._stopped:
            return
        with trio.CancelScope(shield=True):
            try:
                await self.run(last)
            finally:
                self._stopped = True
                self._queue.put(None)
                await trio.to_thread.run_sync(self._thread.join)

    def _deliver(self, taken: list[_Call[Any]]) -> None:
        # In the trio thread: wake every caller of the batch whose call ran.
        self._pending -= len(taken)
        self._room.unpark(count=len(taken))
        for call in taken:
            if call.state == _RUNNING:
                trio.lowlevel.reschedule(call.task, call.result)

    def _loop(self) -> None:
        get, get_nowait, empty = self._queue.get, self._queue.get_nowait, queue.Empty
        while True:
            first = get()
            taken: list[_Call[Any]] = []
            ran = 0
            stop = False
            item: _Call[Any] | None = first
            while True:
                if item is None:
                    stop = True
                    break
                with self._lock:
                    runnable = item.state == _QUEUED
                    if runnable:
                        item.state = _RUNNING
                taken.append(item)
                if runnable:
                    item.result = outcome.capture(item.fn)
                    ran += 1
                    if ran >= MAX_BATCH_CALLS:
                        break
                try:
                    item = get_nowait()
                except empty:
                    break
            if taken:
                try:
                    self._token.run_sync_soon(self._deliver, taken)
                except trio.RunFinishedError:
                    return  # nobody is left to wait for the results
            if stop:
                return
