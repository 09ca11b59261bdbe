"""Launcher: ``python -m darktower.media`` (nothing imports this).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds;
a second signal interrupts at once.
"""

from __future__ import annotations

from darktower.launch import run_service
from darktower.media_handler import Settings, serve


def main() -> None:
    run_service(
        Settings,
        serve,
        prog="python -m darktower.media",
        description="Dark Tower Media Handler: an SFU over WebTransport.",
    )


if __name__ == "__main__":
    main()
