"""The SQLite store's own thread (``SerialWorker``): order, results, errors, cancellation,
backpressure and stopping."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from darktower.global_controller.store import _worker
from darktower.global_controller.store._worker import SerialWorker


async def test_runs_in_one_thread_in_fifo_order_and_returns_results() -> None:
    worker = SerialWorker("test")
    seen: list[tuple[int, int]] = []
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        def fn() -> int:
            seen.append((i, threading.get_ident()))
            return i * 10

        results[i] = await worker.run(fn)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()  # queued in start order
    assert [i for i, _ in seen] == list(range(50))
    threads = {t for _, t in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert results == {i: i * 10 for i in range(50)}
    await worker.stop(lambda: None)


async def test_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    worker = SerialWorker("test")

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await worker.run(boom)
    assert await worker.run(lambda: 7) == 7
    await worker.stop(lambda: None)


async def test_a_queued_call_is_withdrawn_on_cancel_a_running_one_finishes() -> None:
    worker = SerialWorker("test")
    release = threading.Event()
    started = trio.Event()
    ran: list[str] = []
    token = trio.lowlevel.current_trio_token()

    def blocker() -> str:
        token.run_sync_soon(started.set)
        release.wait(10)
        ran.append("blocker")
        return "done"

    got: list[str] = []

    async def run_blocker(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            got.append(await worker.run(blocker))

    async with trio.open_nursery() as nursery:
        box: list[trio.CancelScope] = []
        nursery.start_soon(run_blocker, box)
        await started.wait()
        with trio.CancelScope() as queued_scope:
            queued_scope.cancel()  # cancelled while queued behind the blocker
            await worker.run(lambda: ran.append("queued"))
        assert queued_scope.cancelled_caught
        box[0].cancel()  # the running call cannot be interrupted: it still returns
        release.set()
    assert got == ["done"]
    assert await worker.run(lambda: "after") == "after"
    assert ran == ["blocker"]  # the withdrawn call never ran
    assert worker._pending == 0
    await worker.stop(lambda: None)


async def test_callers_beyond_the_bound_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "MAX_PENDING_CALLS", 2)
    worker = SerialWorker("test")
    release = threading.Event()
    queued_max = 0
    finished = 0

    def fn() -> None:
        nonlocal queued_max
        release.wait(10)
        queued_max = max(queued_max, worker._queue.qsize())

    async def call() -> None:
        nonlocal finished
        await worker.run(fn)
        finished += 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert worker._pending == 2  # three callers wait in trio, not in the queue
        release.set()
    assert finished == 5 and queued_max <= 1
    await worker.stop(lambda: None)


async def test_stop_runs_the_last_call_after_queued_ones_then_refuses() -> None:
    worker = SerialWorker("test")
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run, lambda: order.append("queued"))
        await trio.testing.wait_all_tasks_blocked()
        await worker.stop(lambda: order.append("last"))
    assert order == ["queued", "last"]
    assert not worker._thread.is_alive()
    with pytest.raises(trio.ClosedResourceError):
        await worker.run(lambda: None)
    await worker.stop(lambda: order.append("again"))  # idempotent
    assert order == ["queued", "last"]


async def test_stop_is_shielded() -> None:
    worker = SerialWorker("test")
    closed: list[bool] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await worker.stop(lambda: closed.append(True))
    assert closed == [True] and not worker._thread.is_alive()


async def test_a_cancelled_call_keeps_its_place_until_the_thread_drops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "MAX_PENDING_CALLS", 2)
    worker = SerialWorker("test")
    release = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    ran: list[str] = []

    def blocker() -> None:
        token.run_sync_soon(started.set)
        release.wait(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run, blocker)
        await started.wait()  # taken out of the queue and running
        with trio.CancelScope() as scope:

            async def cancel_when_queued() -> None:
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()

            nursery.start_soon(cancel_when_queued)
            await worker.run(lambda: ran.append("cancelled"))
        assert scope.cancelled_caught
        nursery.start_soon(worker.run, lambda: ran.append("third"))
        await trio.testing.wait_all_tasks_blocked()
        # Cancel storms cannot grow the queue: the third caller still waits in trio.
        assert worker._pending == 2 and worker._queue.qsize() == 1
        release.set()
    assert ran == ["third"] and worker._pending == 0
    await worker.stop(lambda: None)
