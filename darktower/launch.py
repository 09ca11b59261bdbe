"""What every launcher does: settings, logging, one asyncio loop for gRPC, signals → drain.

``python -m darktower.global|meeting|media`` and ``python -m darktower`` call
:func:`run_service`; the first SIGINT/SIGTERM sets the service's ``shutdown`` event (a drain
bounded by the service's own deadline), a second one interrupts at once.
"""

from __future__ import annotations

import functools
import gc
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from darktower import config, logs
from darktower.transport.rpc import open_rpc_loop

S = TypeVar("S")

Serve = Callable[..., Awaitable[None]]


async def run_until_signal(
    serve: Serve, *args: Any, on_started: Callable[[Any], None] | None = None
) -> None:
    """Run ``serve(*args, shutdown=event, task_status=...)`` until it returns; the first
    SIGINT/SIGTERM sets ``event``. Owns the trio-asyncio loop used by every gRPC call."""
    shutdown = trio.Event()
    watcher = trio.CancelScope()

    async def _serve(task_status: trio.TaskStatus[Any]) -> None:
        try:
            await serve(*args, shutdown=shutdown, task_status=task_status)
        finally:
            watcher.cancel()  # the service returned (drained or failed): stop listening

    async with open_rpc_loop(), trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            running = await nursery.start(_serve)
            freeze_startup_objects()
            if on_started is not None:
                on_started(running)
            with watcher:
                async for _ in signals:
                    shutdown.set()
                    break
    # Leaving the signal receiver restores the default handlers: a second Ctrl-C interrupts.


def freeze_startup_objects() -> None:
    """Move everything allocated by start-up (modules, routes, certificates, the empty
    registries) to the collector's permanent generation: full collections then scan only
    what serving allocates, which keeps their pauses short in a long-running server."""
    gc.collect()
    gc.freeze()


def run_service(
    settings_cls: type[S],
    serve: Serve,
    *,
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
    on_started: Callable[[Any], None] | None = None,
) -> None:
    try:
        settings = config.load(settings_cls, argv, prog=prog, description=description)
    except config.ConfigError as exc:
        # As argparse does for a bad flag: one line on stderr, exit status 2, no traceback.
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    level = getattr(settings, "log_level", "info")
    json_lines = getattr(settings, "log_json", True)
    logs.configure(level, json_lines=json_lines)
    try:
        trio.run(functools.partial(run_until_signal, serve, settings, on_started=on_started))
    except* config.ConfigError as group:
        # A setting only the service can check (e.g. the cluster certificate): as above.
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"{prog}: error: {first}", file=sys.stderr)
        raise SystemExit(2) from None
