"""``--processes N``: the meetings shared out among N worker processes, one summary.

One Python process drives a few hundred frames per second before it is itself the
bottleneck (the summary's "frames not sent on time" says when). Each worker is
``python -m darktower.loadtest --worker`` with its share of the meetings and the resolved
target; it runs its own phases and reports JSON lines on stdout: ``{"progress": counts}``
once a second and ``{"stats": raw}`` at the end (``{"target_error": text}`` if the target is
unusable). The parent merges them. Workers run in their own session, so a terminal's Ctrl-C
reaches only the parent, which passes each signal on once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, TextIO

import attrs
import trio

from ._limits import MAX_WORKER_LINE, PROGRESS_INTERVAL_S
from ._options import LoadTestSettings
from ._stats import Stats
from ._summary import progress_line
from ._target import Target, TargetError, resolve_target


@attrs.define(eq=False)
class _Worker:
    argv: list[str]
    progress: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    target_error: str | None = None
    process: trio.Process | None = None


def worker_argv(settings: LoadTestSettings, target: Target, meetings: int) -> list[str]:
    """The command line of a worker running ``meetings`` meetings against ``target``."""
    argv = [
        sys.executable, "-m", "darktower.loadtest", "--worker", "--no-progress",
        "--meetings", str(meetings), "--participants", str(settings.participants),
        "--duration", repr(settings.duration), "--publishers", str(settings.publishers),
        "--video-kbps", str(settings.video_kbps),
        "--audio" if settings.audio else "--no-audio",
        "--join-concurrency", str(settings.join_concurrency),
        "--setup-timeout", repr(settings.setup_timeout),
        "--connect-timeout", repr(settings.connect_timeout),
        "--resume-grace", repr(settings.resume_grace),
        "--api", target.api_url, "--client-id", target.client_id,
    ]  # fmt: skip
    if target.certificate_hashes:
        argv += ["--cert-sha256", target.certificate_hashes[0].hex()]
    return argv


async def run_workers(
    settings: LoadTestSettings,
    stats: Stats,
    *,
    stop: trio.Event,
    progress: TextIO | None = None,
) -> None:
    """Run the load of ``settings`` in ``settings.processes`` workers and merge their figures
    into ``stats``. Owns the worker processes: ``stop`` sends each a SIGINT (they leave
    cleanly and report); cancelled, they are killed and their last progress is merged.
    Raises :class:`TargetError` when the target is unusable (checked here first)."""
    target = await resolve_target(settings)
    count = min(settings.processes, settings.meetings)
    shares = [len(range(k, settings.meetings, count)) for k in range(count)]
    # The secret travels in the environment, not on the command line (visible to `ps`).
    env = {**os.environ, "DARKTOWER_CLIENT_SECRET": target.client_secret}
    workers = [_Worker(worker_argv(settings, target, m)) for m in shares]
    try:
        async with trio.open_nursery() as nursery:
            if progress is not None:
                nursery.start_soon(_progress, progress, stats, workers, settings.duration)
            nursery.start_soon(_forward_stop, stop, workers)
            async with trio.open_nursery() as running:
                for worker in workers:
                    running.start_soon(_run_worker, worker, env)
            nursery.cancel_scope.cancel()
    finally:
        for worker in workers:
            report = worker.final if worker.final is not None else worker.progress
            if report is not None:
                stats.merge_raw(report)
            elif worker.target_error is None:
                stats.error("worker:NO_REPORT", f"a worker ended without a report: {worker.argv}")
    errors = [w.target_error for w in workers if w.target_error is not None]
    if errors and len(errors) == len(workers):
        raise TargetError(errors[0])
    for text in errors:
        stats.error("worker:TARGET_ERROR", text)
    if progress is not None:
        line = progress_line(stats, "done", settings.duration)
        progress.write(f"\r\x1b[K{line}\n" if progress.isatty() else f"{line}\n")
        progress.flush()


async def _run_worker(worker: _Worker, env: dict[str, str]) -> None:
    process = await trio.lowlevel.open_process(
        worker.argv, stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    worker.process = process
    try:
        assert process.stdout is not None
        buffered = b""
        while chunk := await process.stdout.receive_some(1 << 16):
            buffered += chunk
            if len(buffered) > MAX_WORKER_LINE:
                raise ValueError("a worker's report line is too long")
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                _take(worker, json.loads(line))
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def _take(worker: _Worker, message: dict[str, Any]) -> None:
    if "progress" in message:
        worker.progress = message["progress"]
    elif "stats" in message:
        worker.final = message["stats"]
    elif "target_error" in message:
        worker.target_error = str(message["target_error"])


async def _forward_stop(stop: trio.Event, workers: list[_Worker]) -> None:
    await stop.wait()
    for worker in workers:
        if worker.process is not None and worker.process.returncode is None:
            worker.process.send_signal(signal.SIGINT)


async def _progress(out: TextIO, stats: Stats, workers: list[_Worker], duration_s: float) -> None:
    tty = out.isatty()
    while True:
        await trio.sleep(PROGRESS_INTERVAL_S)
        merged = Stats()
        merged.started_at = stats.started_at
        for worker in workers:
            report = worker.final if worker.final is not None else worker.progress
            if report is not None:
                merged.merge_raw(report)
        done = sum(w.final is not None for w in workers)
        phase = "running" if merged.media_started_at is not None else "joining"
        line = f"{progress_line(merged, phase, duration_s)}  workers {done}/{len(workers)} done"
        out.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
        out.flush()
