"""Launcher: ``python -m darktower.processor`` (nothing imports this).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds
(every job ends SERVER_SHUTDOWN, its file finalized); a second signal interrupts at once.
"""

from __future__ import annotations

from darktower.launch import run_service
from darktower.media_processor import Settings, serve


def main() -> None:
    run_service(
        Settings,
        serve,
        prog="python -m darktower.processor",
        description=(
            "Dark Tower media processor: recording, transcoding and audio mixing for the Media "
            "Handlers, each job a scope of its task tree, the codecs on worker threads."
        ),
    )


if __name__ == "__main__":
    main()
