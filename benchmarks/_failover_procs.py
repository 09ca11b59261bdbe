"""The failover benchmark's service processes (benchmarks/failover.py): the launchers started as
an operator starts them (``python -m darktower.global | meeting | media``), each JSON log line
read by a task of the benchmark, readiness read from a service's own ``/readyz``, and free
ports that a restarted service takes again.

A :class:`Services` owns every process it started: leaving its block stops what still runs
(SIGTERM, then SIGKILL after the drain bound) and reaps it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from benchmarks._resume_peers import Pulse

START_S = 60.0  # a launcher's ready line (an interpreter starting on a busy 2-core machine)
STOP_S = 20.0  # after SIGTERM: the drain grace and then some, before SIGKILL
READY_POLL_S = 0.05  # between two looks at a /readyz (an out-of-process observation)
MAX_RECORDS = 20_000  # log records kept per service (the oldest go first)
MAX_LINE = 64 * 1024  # a longer log line is cut
TAIL_LINES = 30  # shown when something fails
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range: no port-0 listener lands there


def service_env() -> dict[str, str]:
    """The benchmark's environment without the developer's ``DARKTOWER_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKTOWER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_bases(count: int, width: int = 1) -> list[int]:
    """``count`` base ports, each with ``width`` free TCP and UDP ports from it (apart)."""
    bases: list[int] = []
    while len(bases) < count:
        base = random.randrange(*PORT_RANGE)
        if any(abs(base - b) < width for b in bases):
            continue
        ports = range(base, base + width)
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        if all(port_free(p, k) for p in ports for k in kinds):
            bases.append(base)
    return bases


def url_port(url: str) -> int:
    """The port of ``scheme://host:port/...`` or of ``host:port``."""
    if "://" not in url:
        return int(url.rpartition(":")[2])
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


@attrs.define(eq=False)
class Service:
    """A launcher's process and what it logged (numbered, so a wait can start from a mark)."""

    name: str
    command: list[str]
    process: trio.Process
    records: collections.deque[tuple[int, dict[str, Any]]] = attrs.Factory(
        lambda: collections.deque(maxlen=MAX_RECORDS)
    )
    tail: collections.deque[str] = attrs.Factory(lambda: collections.deque(maxlen=TAIL_LINES))
    seen: int = 0
    pulse: Pulse = attrs.Factory(Pulse)
    exited: trio.Event = attrs.Factory(trio.Event)
    ready: dict[str, Any] = attrs.Factory(dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def mark(self) -> int:
        """A wait from here sees only what is logged later."""
        return self.seen

    def add(self, line: str) -> None:
        self.tail.append(line[:300])
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict):
            self.seen += 1
            self.records.append((self.seen, record))
            self.pulse.fire()

    def logged(
        self, predicate: Callable[[dict[str, Any]], bool], since: int = 0
    ) -> list[dict[str, Any]]:
        return [r for n, r in self.records if n > since and predicate(r)]

    def logged_at(self, message: str, since: int, **match: Any) -> float | None:
        """When (wall clock: the record's ``ts``) ``message`` was first logged after ``since``
        with the fields ``match``; None if it was not."""
        for record in self.logged(lambda r: r.get("msg") == message, since):
            if all(record.get(k) == v for k, v in match.items()):
                stamp = str(record.get("ts", "")).replace("Z", "+00:00")
                try:
                    return datetime.datetime.fromisoformat(stamp).timestamp()
                except ValueError:
                    return None
        return None

    async def record(
        self, predicate: Callable[[dict[str, Any]], bool], *, since: int = 0, within_s: float
    ) -> dict[str, Any]:
        """The first record after ``since`` that satisfies ``predicate``; RuntimeError if none
        came within ``within_s``."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = self.logged(predicate, since)[:1]
            return bool(found) or self.exited.is_set()

        if await self.pulse.until(seen, within_s) and found:
            return found[0]
        raise RuntimeError(f"{self.name}: not logged within {within_s} s\n{self.report()}")

    def report(self) -> str:
        code = self.process.returncode
        lines = "\n".join(f"    {line}" for line in self.tail)
        return f"  {self.name} (pid {self.pid}, exit {code}), its last lines:\n{lines}"


class Services:
    """Starts launchers in ``nursery`` (their log readers run there) and stops them all."""

    def __init__(self, nursery: trio.Nursery, cwd: str) -> None:
        self._nursery = nursery
        self._cwd = cwd
        self.started: list[Service] = []

    async def start(
        self, name: str, module: str, args: Sequence[str], ready_message: str
    ) -> Service:
        """``python -m module args``, once it logged ``ready_message`` (its fields: .ready)."""
        command = [sys.executable, "-m", module, *args]
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=service_env(),
            cwd=self._cwd,
        )
        service = Service(name, command, process)
        self.started.append(service)
        self._nursery.start_soon(self._read, service)
        service.ready = await service.record(
            lambda r: r.get("msg") == ready_message, within_s=START_S
        )
        return service

    async def restart(self, service: Service, ready_message: str) -> Service:
        """The same command again (a killed service started as its operator would)."""
        module, args = service.command[2], service.command[3:]
        return await self.start(service.name, module, args, ready_message)

    async def _read(self, service: Service) -> None:
        stream = service.process.stderr
        assert stream is not None
        pending = b""
        try:
            while data := await stream.receive_some(65536):
                pending += data
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE:
                    lines.append(pending[:MAX_LINE])
                    pending = b""
                for raw in lines:
                    service.add(raw.decode("utf-8", "replace"))
            await service.process.wait()
        finally:
            service.exited.set()
            service.pulse.fire()

    async def stop(self, service: Service, sig: int = signal.SIGTERM) -> int | None:
        """Signal it (SIGTERM: it drains), wait for its exit up to STOP_S, else SIGKILL."""
        process = service.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                process.send_signal(sig)
            with trio.move_on_after(STOP_S):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    process.kill()
                await process.wait()
        return process.returncode

    async def stop_all(self, since: int = 0) -> None:
        """Every service still running (started as ``started[since:]``), the last started
        first, each drained."""
        for service in reversed(self.started[since:]):
            await self.stop(service)


@asynccontextmanager
async def open_services(cwd: str) -> AsyncIterator[Services]:
    async with trio.open_nursery() as nursery:
        services = Services(nursery, cwd)
        try:
            yield services
        finally:
            with trio.CancelScope(shield=True):
                await services.stop_all()
            nursery.cancel_scope.cancel()


# --- readiness ----------------------------------------------------------------------------
async def readyz(ops_url: str) -> bool:
    """Whether the service at ``ops_url`` answers 200 on ``/readyz`` (registered, able)."""
    split = urllib.parse.urlsplit(ops_url if "://" in ops_url else f"http://{ops_url}")
    host, port = split.hostname or "127.0.0.1", split.port or 80
    try:
        with trio.fail_after(2.0):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode())
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return False
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200"


async def until_ready(ops_url: str, within_s: float, what: str) -> float:
    """Poll ``/readyz`` until 200; the time it took. RuntimeError after ``within_s``."""
    began = time.monotonic()
    with trio.move_on_after(within_s):
        while not await readyz(ops_url):  # noqa: ASYNC110 - another process: no event
            await trio.sleep(READY_POLL_S)
        return time.monotonic() - began
    raise RuntimeError(f"{what}: /readyz not 200 within {within_s} s")
