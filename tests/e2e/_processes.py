"""Run Dark Tower launchers as real subprocesses under trio, for end-to-end tests.

:func:`open_service` starts ``python -m darktower.<module>`` in its own session (process
group), reads its output in tasks it owns, and yields a :class:`ServiceProcess` once the
launcher has logged its ready line (the structured ``... running`` / ``... serving`` log line
that carries the bound URLs, so every port can be 0 and nothing races for a free port). On
exit the process is killed (the whole group) if it is still alive and its output is printed,
so a failing test shows what each process said.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import trio

# Limit: bytes of a process's output kept for the report; beyond it lines are counted and
# dropped (they are still scanned for tracebacks), so a log flood cannot exhaust memory.
MAX_CAPTURE_BYTES = 4 * 1024 * 1024
# Limit: one line longer than this is cut into pieces (the pipe is never left unread).
MAX_LINE_BYTES = 256 * 1024
READ_SIZE = 64 * 1024
# How long a launcher gets from exec to its ready line (imports, keys, certificate, binds).
STARTUP_S = 60.0
# /readyz polling: the interval between probes and the deadline for the first 200.
READY_POLL_S = 0.05
READY_S = 30.0
# After the kill, how long the pipes get to deliver the last output (EOF) before the report.
PIPE_EOF_S = 5.0
# ``DARKTOWER_*`` variables of the developer's shell must not leak into the services.
ENV_PREFIX = "DARKTOWER_"


class ServiceFailed(AssertionError):
    """A launcher exited or stayed unready before the test could use it."""


@attrs.define(eq=False)
class Output:
    """One pipe's captured lines (bounded: see MAX_CAPTURE_BYTES)."""

    lines: list[str] = attrs.field(factory=list)
    kept_bytes: int = 0
    dropped_lines: int = 0
    traceback: bool = False

    def add(self, line: str) -> None:
        if "Traceback (most recent call last)" in line or '"exc":' in line:
            self.traceback = True
        if self.kept_bytes + len(line) > MAX_CAPTURE_BYTES:
            self.dropped_lines += 1
            return
        self.kept_bytes += len(line)
        self.lines.append(line)

    def text(self) -> str:
        dropped = f"\n[{self.dropped_lines} lines dropped]" if self.dropped_lines else ""
        return "\n".join(self.lines) + dropped


@attrs.define(eq=False)
class ServiceProcess:
    """A running launcher: its process, its captured output and its ready line's fields."""

    name: str
    process: trio.Process
    ready: dict[str, Any]
    stdout: Output
    stderr: Output
    # Set when the process has exited and both pipes reached EOF (all output is in).
    finished: trio.Event = attrs.field(factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines of stderr, parsed (other lines are skipped)."""
        records = []
        for line in self.stderr.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def report(self) -> str:
        code = self.process.returncode
        return (
            f"===== {self.name} (pid {self.pid}, exit {code}) stdout =====\n"
            f"{self.stdout.text()}\n"
            f"===== {self.name} stderr =====\n{self.stderr.text()}\n"
        )


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


async def _pump(
    stream: trio.abc.ReceiveStream,
    output: Output,
    on_line: Callable[[str], None] | None = None,
) -> None:
    # Read to EOF, never stopping early: a full pipe would block the service's logging.
    pending = b""
    while True:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            break
        pending += data
        *complete, pending = pending.split(b"\n")
        while len(pending) > MAX_LINE_BYTES:
            complete.append(pending[:MAX_LINE_BYTES])
            pending = pending[MAX_LINE_BYTES:]
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            output.add(line)
            if on_line is not None:
                on_line(line)
    if pending:
        line = pending.decode("utf-8", "replace")
        output.add(line)
        if on_line is not None:
            on_line(line)


async def _kill_group(process: trio.Process) -> None:
    """Kill the launcher and anything left in its process group, then reap the launcher."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with trio.CancelScope(shield=True):
        await process.wait()


@asynccontextmanager
async def open_service(
    name: str,
    module: str,
    args: Sequence[str],
    *,
    ready_message: str,
    cwd: str,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ServiceProcess]:
    """Start ``python -m <module> <args>`` and yield it once it logs ``ready_message``.

    Owns the process and the two pipe readers. Leaving the block kills the process group if
    the process is still running (a test that stopped it with SIGTERM first finds it gone),
    waits for the pipes to reach EOF, and prints the captured output (pytest shows it when
    the test fails). Raises :class:`ServiceFailed` if the process exits or stays silent for
    STARTUP_S before its ready line.
    """
    command = [sys.executable, "-m", module, *args]
    stdout, stderr = Output(), Output()
    ready_event = trio.Event()
    ready_fields: dict[str, Any] = {}

    def on_stderr(line: str) -> None:
        if ready_event.is_set():
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict) and record.get("msg") == ready_message:
            ready_fields.update(record)
            ready_event.set()

    # The nursery wraps what the test body raises in an ExceptionGroup; unwrap a lone one
    # so tests see (and ``pytest.raises``) the exception itself.
    try:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                    cwd=cwd,
                    env=service_env(env),
                    start_new_session=True,  # its own process group: killpg reaches its children
                    deliver_cancel=_kill_group,
                )
            )
            service = ServiceProcess(name, process, ready_fields, stdout, stderr)

            async def watch() -> None:
                assert process.stdout is not None and process.stderr is not None
                async with trio.open_nursery() as pipes:
                    pipes.start_soon(_pump, process.stdout, stdout)
                    pipes.start_soon(_pump, process.stderr, stderr, on_stderr)
                await process.wait()
                service.finished.set()

            nursery.start_soon(watch)
            try:
                with trio.move_on_after(STARTUP_S):
                    async with trio.open_nursery() as race:

                        async def exited() -> None:
                            await service.finished.wait()
                            race.cancel_scope.cancel()

                        race.start_soon(exited)
                        await ready_event.wait()
                        race.cancel_scope.cancel()
                if not ready_event.is_set():
                    state = "exited" if service.finished.is_set() else "was not ready"
                    raise ServiceFailed(f"{name} {state} before logging {ready_message!r}")
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    # Always: a launcher that exited may have left children in its group.
                    await _kill_group(process)
                    with trio.move_on_after(PIPE_EOF_S):
                        await service.finished.wait()
                    print(service.report())
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def wait_ready(
    url: str,
    service: ServiceProcess,
    *,
    verify: Any = True,
    deadline_s: float = READY_S,
) -> None:
    """Poll ``url`` (a /readyz) until it answers 200. Raises ServiceFailed if ``service``
    exits first or the deadline passes."""
    last = "no answer"
    async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=5.0) as http:
        with trio.move_on_after(deadline_s):
            while not service.finished.is_set():
                try:
                    response = await http.get(url)
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text.strip()}"
                await trio.sleep(READY_POLL_S)  # a poll interval, not a wait for an event
    raise ServiceFailed(f"{service.name} not ready at {url}: {last}")


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        response = await http.get(url)
        response.raise_for_status()
        return response.json()


async def terminate(service: ServiceProcess) -> float:
    """Send SIGTERM and wait for the exit; returns the seconds until the process exited. Then
    waits (at most PIPE_EOF_S) for its last output: a pipe still open after that is held by a
    leftover process, which the caller's checks report. Cancellation (a test deadline) leaves
    the process to the owner's kill."""
    started = trio.current_time()
    service.process.send_signal(signal.SIGTERM)
    await service.process.wait()
    seconds = trio.current_time() - started
    with trio.move_on_after(PIPE_EOF_S):
        await service.finished.wait()
    return seconds


def session_members(sid: int) -> list[int]:
    """PIDs of live processes whose session is ``sid`` (a launcher's children outliving it)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command (which may hold spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            members.append(int(entry))
    return members


def port_free(port: int, kind: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound again (TCP with SO_REUSEADDR, as servers do,
    so TIME_WAIT connections of a closed listener do not count)."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        sock.close()
    return True
