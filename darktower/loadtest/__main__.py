"""``python -m darktower.loadtest``: see ``--help`` and :mod:`darktower.loadtest`.

Ctrl-C (or SIGTERM) once: stop early, leave cleanly and print the summary; twice: close
everything at once and print the summary of what was counted. With ``--processes N`` the
workers are children of this process (``_workers.py``); ``--worker`` is how they run.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from typing import Any, TextIO

import trio

from darktower.config import ConfigError

from ._limits import PROGRESS_INTERVAL_S
from ._options import PROG, LoadTestSettings, parse_args
from ._run import run_loadtest, summarize
from ._stats import Stats
from ._summary import Summary
from ._target import TargetError
from ._workers import run_workers

EXIT_OK = 0
EXIT_FAILED = 1  # errors occurred or nothing was delivered
EXIT_UNUSABLE = 2  # bad options, or the target cannot be reached


def report(settings: LoadTestSettings, summary: Summary, out: TextIO, err: TextIO) -> None:
    """The text summary (stdout, or stderr with --json) and the JSON line (last on stdout
    with --json; also to --json-file)."""
    if settings.json:
        err.write(summary.text() + "\n")
        out.write(summary.json_line() + "\n")
    else:
        out.write(summary.text() + "\n")
    out.flush()
    if settings.json_file:
        with open(settings.json_file, "w") as file:
            file.write(summary.json_line() + "\n")


async def _watch_signals(
    stop: trio.Event, everything: trio.CancelScope, stats: Stats, *, quiet: bool
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if not stop.is_set():
                stats.stopped_early = True
                stop.set()
                if not quiet:
                    sys.stderr.write("\nstopping: leaving cleanly (again to stop at once)\n")
            else:
                everything.cancel()


async def amain(settings: LoadTestSettings, out: TextIO, err: TextIO) -> int:
    """Run with signal handling; print the summary; return the exit status."""
    stats = Stats()
    stop = trio.Event()
    everything = trio.CancelScope()
    progress = err if settings.progress else None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(_watch_signals, stop, everything, stats, quiet=settings.worker)
        )
        if settings.worker:
            nursery.start_soon(_report_progress, stats, out)
        try:
            with everything:
                if settings.processes > 1 and not settings.worker:
                    await run_workers(settings, stats, stop=stop, progress=progress)
                else:
                    await run_loadtest(settings, stats, stop=stop, progress=progress)
        except TargetError as exc:
            if settings.worker:
                _json_line(out, {"target_error": str(exc)})
            err.write(f"{PROG}: error: {exc}\n")
            return EXIT_UNUSABLE
        finally:
            nursery.cancel_scope.cancel()
    summary = summarize(settings, stats)
    if settings.worker:
        _json_line(out, {"stats": stats.to_raw()})
    else:
        report(settings, summary, out, err)
    return EXIT_OK if summary.ok else EXIT_FAILED


def _json_line(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


async def _report_progress(stats: Stats, out: TextIO) -> None:
    """A worker's progress for its parent (see _workers.py), until cancelled."""
    while True:
        await trio.sleep(PROGRESS_INTERVAL_S)
        _json_line(out, {"progress": stats.to_raw(samples=False)})


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_UNUSABLE
    return trio.run(amain, settings, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
