"""Launcher: ``python -m darktower.meeting`` runs one Meeting Controller (nothing imports this).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds:
every meeting ends with MEETING_ENDED, then the process exits.
"""

from __future__ import annotations

import signal

import trio

from darktower import config, logs
from darktower.meeting_controller import Settings, serve
from darktower.transport.rpc import open_rpc_loop


async def _main(settings: Settings) -> None:
    shutdown = trio.Event()
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(
                lambda task_status: serve(settings, shutdown=shutdown, task_status=task_status)
            )
            async for _ in signals:
                shutdown.set()
                break
        # A second signal during the drain is the default: KeyboardInterrupt / termination.


def main() -> None:
    settings = config.load(
        Settings,
        prog="python -m darktower.meeting",
        description="Dark Tower Meeting Controller: WebTransport signaling for meetings.",
    )
    logs.configure(settings.log_level, json_lines=settings.log_json)
    trio.run(_main, settings)


if __name__ == "__main__":
    main()
