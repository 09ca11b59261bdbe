"""The media processor of ``python -m darktower`` (docs/architecture.md §10): a child process,
never the launcher's own, so that a busy codec never takes the SFU's interpreter.

:class:`ProcessorChild` (the launcher's side) runs ``python -m darktower.stack_processor``,
which is ``python -m darktower.processor`` with two pipes to its parent:

* ``--ready-fd``: the child writes its gRPC port there once it listens, then closes it. The
  first start's port (0 picks a free one) is the port of every later start, so the MH's
  ``processors`` setting stays true across restarts. A first start that exits before it is
  ready (a port in use) fails the stack as any service's failed start does.
* ``--supervisor-fd``: the read end of a pipe whose write end only the launcher holds; when the
  launcher is gone, even by SIGKILL, it reaches end of file and the child drains by itself.

A child that exits while the stack runs is started again after a backoff (as the MH's worker
supervisor does, docs/architecture.md §4.6) and the stack goes on without it meanwhile. On
the stack's drain it gets SIGTERM (it ends its jobs, finalizing their files, within its drain
grace) and is killed if it is not gone STOP_MARGIN_S later. The child runs at a lower
scheduling priority (NICE): on a machine shared with the services, codec work takes what the
SFU leaves. Its certificate (role ``mp``) is written to a private directory removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import attrs
import trio

from darktower.config import ENV_PREFIX, ConfigError, to_argv
from darktower.launch import run_service
from darktower.logs import fields
from darktower.media_handler._workers import STOP_MARGIN_S, RestartBackoff
from darktower.media_processor import Running, Settings, serve
from darktower.servicekit import ClusterCa, ClusterTls

logger = logging.getLogger("darktower.stack.processor")

MODULE: Final = "darktower.stack_processor"
PROG: Final = f"python -m {MODULE}"
# The child's niceness: the scheduler gives it a small share of a core the services want.
NICE: Final = 10
# A first start that is not listening by then is killed and fails the stack.
START_TIMEOUT_S: Final = 60.0
# The ready pipe carries a port and a newline.
READY_MAX_BYTES: Final = 16


@attrs.define(eq=False)
class ProcessorChild:
    """Runs the media processor of ``settings`` (its cluster files are added here, from
    ``tls``) as a child process until :meth:`run`'s ``stop``; see the module's docstring."""

    settings: Settings
    tls: ClusterTls
    backoff: RestartBackoff = attrs.Factory(RestartBackoff)
    rng: random.Random = attrs.Factory(random.Random)
    address: tuple[str, int] | None = None  # its gRPC address, once a start was ready
    pid: int | None = None  # the process that is ready now (None: none is)
    starts: int = 0
    clean: bool = True  # it exited with 0 (or SIGTERM) on the stop
    _changed: trio.Event = attrs.Factory(trio.Event)
    _stopping: bool = False
    _live: trio.Process | None = None

    async def ready(self, *, not_pid: int | None = None) -> tuple[str, int]:
        """Its gRPC address, once a process other than ``not_pid`` is ready."""
        while self.pid is None or self.pid == not_pid:
            await self._changed.wait()
        assert self.address is not None
        return self.address

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, stop: trio.Event) -> None:
        """Keep the processor running until ``stop``, then drain it; every process it started
        is reaped before it returns (cancelled, it kills them first). ``ConfigError`` if the
        first start is never ready."""
        directory = pathlib.Path(tempfile.mkdtemp(prefix="darktower-processor-"))  # 0700
        orphan_r, orphan_w = os.pipe()  # the child inherits the read end only
        try:
            ca_file = directory / ClusterCa.CERT_FILE
            ca_file.write_bytes(self.tls.ca_pem)
            cert, key = self.tls.write(directory)
            settings = attrs.evolve(
                self.settings, cluster_ca=str(ca_file), cluster_cert=str(cert), cluster_key=str(key)
            )
            done = trio.Event()
            async with trio.open_nursery() as nursery:

                async def keep_running() -> None:
                    try:
                        await self._keep_running(settings, orphan_r, stop)
                    finally:
                        done.set()

                nursery.start_soon(keep_running)
                await stop.wait()
                self._stopping = True
                if self._live is not None:
                    self._live.send_signal(signal.SIGTERM)
                with trio.move_on_after(settings.drain_grace_s + STOP_MARGIN_S):
                    await done.wait()
                if self._live is not None:
                    logger.warning(
                        "media processor killed: not drained in time",
                        extra=fields(pid=self._live.pid),
                    )
                    self._live.kill()
        finally:
            os.close(orphan_r)
            os.close(orphan_w)
            shutil.rmtree(directory, ignore_errors=True)

    async def _keep_running(self, settings: Settings, orphan_fd: int, stop: trio.Event) -> None:
        backoff = self.backoff
        while not self._stopping:
            began = trio.current_time()
            code = await self._run_once(settings, orphan_fd)
            if self._stopping:
                # SIGTERM's default action: it came before the child was ready to drain.
                self.clean = code in (0, -signal.SIGTERM)
                return
            if self.address is None:
                raise ConfigError(
                    f"the media processor exited (status {code}) before it was ready; its log "
                    "says why (--mp-grpc-port in use?)"
                )
            assert self.address is not None  # later starts keep the first one's port
            settings = attrs.evolve(settings, grpc_port=self.address[1])
            delay = backoff.delay(trio.current_time() - began, self.rng.random())
            logger.warning(
                "media processor restarting", extra=fields(status=code, delay_s=round(delay, 3))
            )
            with trio.move_on_after(delay):
                await stop.wait()

    async def _run_once(self, settings: Settings, orphan_fd: int) -> int | None:
        """Start the child, wait for its exit and return its status (-N: signal N; None: it
        could not be started); cancelled, kill it and reap it first."""
        ready_r, ready_w = os.pipe()
        command = [
            sys.executable,
            "-m",
            MODULE,
            f"--supervisor-fd={orphan_fd}",
            f"--ready-fd={ready_w}",
            *to_argv(settings),
        ]
        # Our DARKTOWER_* variables are the stack's settings, not the processor's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=(orphan_fd, ready_w),
                env=env,
                process_group=0,  # its own group: a terminal's Ctrl-C reaches the stack only
            )
        except OSError as exc:
            os.close(ready_r)
            logger.error("media processor not started", extra=fields(error=str(exc)))
            return None
        finally:
            os.close(ready_w)
        self._live = process
        self.starts += 1
        if self._stopping:  # the stop came while it was being started
            process.send_signal(signal.SIGTERM)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_ready, process, ready_r, settings.grpc_host)
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()  # SIGKILL: returns at once
            self._live = None
            if self.pid == process.pid:
                self.pid = None
                self._notify()
        log = logger.info if self._stopping and code in (0, -signal.SIGTERM) else logger.warning
        log("media processor exited", extra=fields(pid=process.pid, status=code))
        return code

    async def _read_ready(self, process: trio.Process, ready_fd: int, host: str) -> None:
        """Wait for the child's port on ``ready_fd`` (owned: closed here); a first start that
        sends none within START_TIMEOUT_S is killed."""
        stream = trio.lowlevel.FdStream(ready_fd)
        timeout = START_TIMEOUT_S if self.address is None else math.inf
        received = b""
        async with stream:
            with trio.move_on_after(timeout) as waited:
                while len(received) < READY_MAX_BYTES:
                    data = await stream.receive_some(READY_MAX_BYTES - len(received))
                    if not data:
                        break
                    received += data
        if waited.cancelled_caught:
            logger.error("media processor not ready in time", extra=fields(pid=process.pid))
            process.kill()
            return
        text = received.decode("ascii", "replace").strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            return  # it exited first (or wrote nothing sensible): its exit is what counts
        self.address = (host, int(text))
        self.pid = process.pid
        logger.info(
            "media processor ready", extra=fields(pid=process.pid, grpc_port=self.address[1])
        )
        self._notify()


# --- the child ----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


async def _serve_child(
    supervisor_fd: int,
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running],
) -> None:
    """The processor, draining also when ``supervisor_fd`` reaches end of file (the stack is
    gone)."""
    async with trio.open_nursery() as nursery:

        async def drain_when_orphaned() -> None:
            # The launcher never writes: the pipe turns readable at end of file only.
            await trio.lowlevel.wait_readable(supervisor_fd)
            logger.warning("media processor draining: its stack is gone")
            shutdown.set()

        nursery.start_soon(drain_when_orphaned)
        await serve(settings, shutdown=shutdown, task_status=task_status)
        nursery.cancel_scope.cancel()


def _report_ready(ready_fd: int, running: Any) -> None:
    try:
        os.write(ready_fd, f"{running.grpc_address[1]}\n".encode())
    finally:
        os.close(ready_fd)


def main(argv: Sequence[str] | None = None) -> None:
    parser = _Parser(add_help=False, allow_abbrev=False)
    parser.add_argument("--supervisor-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    os.nice(NICE)
    run_service(
        Settings,
        functools.partial(_serve_child, known.supervisor_fd),
        prog=PROG,
        description="The media processor of python -m darktower (its child process).",
        argv=rest,
        on_started=functools.partial(_report_ready, known.ready_fd),
    )


if __name__ == "__main__":
    main()
