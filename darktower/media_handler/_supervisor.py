"""The worker supervisor of ``python -m darktower.media --workers N`` (docs/architecture.md
§4.6), and a worker's side of it.

:class:`Supervisor` owns N worker processes (``python -m darktower.media --workers=1 ...``,
each a whole MH) in one nursery, a task per worker: a worker that exits while the supervisor
is not stopping is started again, with the same options, after a backoff
(:class:`~darktower.media_handler._workers.RestartBackoff`). On SIGTERM or SIGINT it sends
SIGTERM to every worker (each drains as a lone MH does), waits for them up to their drain grace
plus STOP_MARGIN_S, then kills what is left; a second signal kills them at once. Every worker
is reaped before the supervisor returns, whatever ends it.

Each worker runs in its own process group (a terminal's Ctrl-C reaches the supervisor only, so
every worker gets one signal, not two) and holds the read end of a pipe whose write end only
the supervisor holds: when the supervisor is gone, even by SIGKILL, the kernel closes that end
and every worker drains by itself (:func:`serve_supervised`): no orphan outlives it for long.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from darktower import logs
from darktower.config import ENV_PREFIX, ConfigError, to_argv
from darktower.logs import fields
from darktower.servicekit import ClusterCa

from ._settings import Settings
from ._workers import (
    STOP_MARGIN_S,
    IssuedFiles,
    IssuingCa,
    RestartBackoff,
    WorkerCredentials,
    WorkerOptions,
    check_ports,
    issued_files,
    worker_ids,
    worker_options,
)

logger = logging.getLogger("darktower.media_handler.workers")

MODULE = "darktower.media"


@attrs.frozen
class WorkerSpec:
    """One worker: its index, its handler id and the options it is started with."""

    index: int
    handler_id: str
    options: tuple[str, ...]


class Supervisor:
    """Runs ``command`` + each worker's options + ``--supervisor-fd=FD`` as one process per
    worker until :meth:`stop`; see the module's docstring."""

    def __init__(
        self,
        command: Sequence[str],
        workers: Sequence[WorkerSpec],
        *,
        stop_after_s: float,
        rng: random.Random | None = None,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._command = list(command)
        self._env = env  # the workers' environment (None: ours)
        self._workers = list(workers)
        self._stop_after_s = stop_after_s
        self._rng = rng or random.Random()
        self._backoff = backoff
        self._stopping = trio.Event()
        self._live: dict[int, trio.Process] = {}
        self._running = 0  # worker tasks not yet returned
        self._all_returned = trio.Event()
        self.clean = True  # every worker exited with 0 after the stop
        self.pids: dict[str, int] = {}  # handler id -> pid of its latest start
        self._started = trio.Event()  # set (and replaced) at each start

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Drain: SIGTERM to every worker, no restart (idempotent)."""
        self._stopping.set()

    def kill(self) -> None:
        """Kill every worker now (a second signal)."""
        self._stopping.set()
        for process in list(self._live.values()):
            process.kill()

    async def wait_started(self, handler_id: str, not_pid: int | None = None) -> int:
        """The pid of ``handler_id``'s latest start, once it is not ``not_pid`` (tests)."""
        while self.pids.get(handler_id) in (None, not_pid):
            await self._started.wait()
        return self.pids[handler_id]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Start every worker, keep them running until :meth:`stop`, then drain them; returns
        the exit status: 0 when every worker drained cleanly, else 1. Owns the processes: all
        are reaped before it returns (cancelled, it kills them first)."""
        read_fd, write_fd = os.pipe()  # neither is inherited but as pass_fds says (read only)
        try:
            async with trio.open_nursery() as nursery:
                self._running = len(self._workers)
                for worker in self._workers:
                    nursery.start_soon(self._keep_running, worker, read_fd)
                logger.info(
                    "media workers started",
                    extra=fields(
                        workers=[w.handler_id for w in self._workers], supervisor_pid=os.getpid()
                    ),
                )
                task_status.started()
                await self._stopping.wait()
                logger.info(
                    "media workers draining",
                    extra=fields(workers=len(self._live), stop_after_s=self._stop_after_s),
                )
                for process in list(self._live.values()):
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(self._stop_after_s):
                    await self._all_returned.wait()
                for index, process in list(self._live.items()):
                    logger.warning(
                        "media worker killed: not drained in time",
                        extra=fields(handler_id=self._workers[index].handler_id, pid=process.pid),
                    )
                    process.kill()
        finally:
            os.close(read_fd)
            os.close(write_fd)
        return 0 if self.clean else 1

    async def _keep_running(self, worker: WorkerSpec, read_fd: int) -> None:
        backoff = self._backoff()
        command = [*self._command, *worker.options, f"--supervisor-fd={read_fd}"]
        ident = worker.handler_id
        try:
            while not self._stopping.is_set():
                began = trio.current_time()
                try:
                    code = await self._run_once(worker, command, read_fd)
                except OSError as exc:  # could not even start it: as an exit, with backoff
                    logger.error(
                        "media worker not started", extra=fields(handler_id=ident, error=str(exc))
                    )
                    code = None
                if self._stopping.is_set():
                    # SIGTERM's default action: it came before the worker was ready to drain.
                    self.clean = self.clean and code in (0, -signal.SIGTERM)
                    return
                delay = backoff.delay(trio.current_time() - began, self._rng.random())
                logger.warning(
                    "media worker restarting",
                    extra=fields(worker=worker.index, handler_id=ident, delay_s=round(delay, 3)),
                )
                with trio.move_on_after(delay):
                    await self._stopping.wait()
        finally:
            self._running -= 1
            if self._running == 0:
                self._all_returned.set()

    async def _run_once(self, worker: WorkerSpec, command: list[str], read_fd: int) -> int:
        """Start the worker, wait for its exit and return its status (-N: signal N); cancelled,
        kill it and reap it first."""
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            pass_fds=(read_fd,),
            env=self._env,
            process_group=0,  # its own group: a terminal's Ctrl-C reaches the supervisor only
        )
        self._live[worker.index] = process
        self.pids[worker.handler_id] = process.pid
        self._started.set()
        self._started = trio.Event()
        ident, pid = worker.handler_id, process.pid
        logger.info(
            "media worker started", extra=fields(worker=worker.index, handler_id=ident, pid=pid)
        )
        if self._stopping.is_set():  # the stop came while it was being started
            process.send_signal(signal.SIGTERM)
        began = trio.current_time()
        try:
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()  # SIGKILL: returns at once
            del self._live[worker.index]
        expected = self._stopping.is_set() and code in (0, -signal.SIGTERM)
        log = logger.info if expected else logger.warning
        log(
            "media worker exited",
            extra=fields(
                worker=worker.index,
                handler_id=ident,
                pid=pid,
                status=code,
                ran_s=round(trio.current_time() - began, 3),
                expected=self._stopping.is_set(),
            ),
        )
        return code


async def supervise(supervisor: Supervisor) -> int:
    """Run ``supervisor`` until SIGINT or SIGTERM (the first drains, a second kills); returns
    its exit status."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                async for _ in signals:
                    if supervisor.stopping:
                        supervisor.kill()
                        return
                    supervisor.stop()

            nursery.start_soon(on_signals)
            code = await supervisor.run()
            nursery.cancel_scope.cancel()
    return code


def plan_workers(
    settings: Settings, options: WorkerOptions, count: int, credentials: WorkerCredentials
) -> list[WorkerSpec]:
    """The workers' ids and options; ``ConfigError`` for a setting that cannot work."""
    check_ports(settings, count)
    ids = worker_ids(settings, options, count)
    if isinstance(credentials, IssuedFiles):  # made beforehand: check them now, not at a start
        for ident in ids:
            credentials.check(ident)
    return [
        WorkerSpec(i, ident, tuple(worker_options(settings, i, ident, credentials)))
        for i, ident in enumerate(ids)
    ]


def run_workers(settings: Settings, options: WorkerOptions, argv: Sequence[str], count: int) -> int:
    """``python -m darktower.media`` with ``count`` workers: ``argv`` is the MH's command line
    (without the supervisor's own options), passed to every worker. Returns the exit status;
    ``ConfigError`` before anything starts if a setting cannot work."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="darktower-workers-"))  # 0700
    try:
        credentials: WorkerCredentials
        if options.ca_dir:
            try:
                ca = ClusterCa.load(options.ca_dir)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--worker-ca-dir {options.ca_dir}: {exc}") from exc
            credentials = IssuingCa(ca, directory)
        else:
            credentials = issued_files(settings)
        workers = plan_workers(settings, options, count, credentials)
        logs.configure(settings.log_level, json_lines=settings.log_json)
        command = [sys.executable, "-m", MODULE, *argv]
        stop_after_s = settings.drain_grace_s + STOP_MARGIN_S
        supervisor = Supervisor(command, workers, stop_after_s=stop_after_s)
        return trio.run(supervise, supervisor)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


Serve = Callable[..., Awaitable[None]]


async def serve_supervised(
    serve: Serve,
    supervisor_fd: int,
    settings: Any,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A worker: ``serve(settings, ...)``, draining (``shutdown``) also when the supervisor's
    pipe ``supervisor_fd`` reaches end of file, i.e. the supervisor is gone."""
    async with trio.open_nursery() as nursery:

        async def drain_when_orphaned() -> None:
            # The supervisor never writes: the pipe turns readable at end of file only.
            await trio.lowlevel.wait_readable(supervisor_fd)
            logger.warning("media worker draining: its supervisor is gone")
            shutdown.set()

        nursery.start_soon(drain_when_orphaned)
        await serve(settings, shutdown=shutdown, task_status=task_status)
        nursery.cancel_scope.cancel()


async def serve_workers(
    settings: Settings,
    count: int,
    ca: ClusterCa,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``count`` MH worker processes for ``settings`` (as ``python -m darktower.media
    --workers``: ``settings.handler_id``-i, each base port + i), each worker's cluster
    certificate issued from ``ca`` into a private directory removed when this returns. Reports
    the workers' handler ids once their processes are being started (registering with the MC
    comes after); on ``shutdown`` they drain and this returns when they are gone.
    ``ConfigError`` for settings that cannot work."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="darktower-workers-"))  # 0700
    try:
        workers = plan_workers(settings, WorkerOptions(), count, IssuingCa(ca, directory))
        command = [sys.executable, "-m", MODULE, *to_argv(settings)]
        # Our DARKTOWER_* variables are the caller's settings, not the workers': they get
        # theirs from the command line only.
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        stop_after_s = settings.drain_grace_s + STOP_MARGIN_S
        supervisor = Supervisor(command, workers, stop_after_s=stop_after_s, env=env)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            task_status.started([w.handler_id for w in workers])
            await shutdown.wait()
            supervisor.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # a few small files; also when cancelled
