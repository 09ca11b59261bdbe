"""``python -m darktower``'s stack in-process for tests: GC, MC and MH on free ports of
127.0.0.1 (real QUIC, HTTP/3, gRPC), ready once the MH has registered with the MC."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from darktower.__main__ import Running, Settings, serve

START_S = 60  # generous: the machine may be shared; a start takes well under a second


@asynccontextmanager
async def dev_stack(
    data_dir: pathlib.Path, shutdown: trio.Event | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    """The stack with its data in ``data_dir``; drains on exit (or when ``shutdown`` is set
    by the test). ``overrides`` are :class:`darktower.__main__.Settings` fields."""
    options: dict[str, Any] = {
        "data_dir": str(data_dir),
        "api_port": 0,
        "page_port": 0,
        "signal_port": 0,
        "media_port": 0,
        "gc_grpc_port": 0,
        "mc_grpc_port": 0,
        "mh_grpc_port": 0,
        "mc_ops_port": 0,
        "mh_ops_port": 0,
        "drain_grace_s": 2,
    }
    options.update(overrides)
    settings = Settings(**options)
    stop = shutdown if shutdown is not None else trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            running: Running = await nursery.start(
                lambda task_status: serve(settings, shutdown=stop, task_status=task_status)
            )
            # Rooms are placed only once the MH has registered with the MC.
            await running.mc.controller.mhs.wait_for(running.mh.handler_id)
        try:
            yield running
        finally:
            stop.set()
