"""Launcher: ``python -m darktower.meeting`` (nothing imports this).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds;
a second signal interrupts at once.
"""

from __future__ import annotations

from darktower.launch import run_service
from darktower.meeting_controller import Settings, serve


def main() -> None:
    run_service(
        Settings,
        serve,
        prog="python -m darktower.meeting",
        description="Dark Tower Meeting Controller: WebTransport signaling, meetings as task-tree scopes.",
    )


if __name__ == "__main__":
    main()
