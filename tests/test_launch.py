"""The shared launcher: the first signal drains the service, the service's return ends it."""

from __future__ import annotations

import os
import signal
from typing import Any

import trio
import trio.lowlevel

from darktower.launch import run_until_signal


async def test_signal_sets_shutdown_and_waits_for_the_drain() -> None:
    events: list[str] = []

    async def serve(name: str, *, shutdown: trio.Event, task_status: Any) -> None:
        task_status.started(f"running {name}")
        await shutdown.wait()
        events.append("draining")
        await trio.lowlevel.checkpoint()
        events.append("drained")

    def started(running: object) -> None:
        events.append(str(running))
        os.kill(os.getpid(), signal.SIGTERM)

    with trio.fail_after(10):
        await run_until_signal(serve, "svc", on_started=started)
    assert events == ["running svc", "draining", "drained"]


async def test_service_that_returns_ends_the_launcher_without_a_signal() -> None:
    async def serve(*, shutdown: trio.Event, task_status: Any) -> None:
        task_status.started(None)

    with trio.fail_after(10):
        await run_until_signal(serve)
