"""``python -m darktower.media --workers 2`` as a real process behind a real MC (in this test's
process, tests/_stack.py): each worker registers on its own as ``ID-i`` with its own
certificate and ports; two meetings land on different workers and a room stays on its
worker; a worker killed with SIGKILL is started again with the same id and ports and
registers again; SIGTERM drains both (exit 0) and leaves no process or port behind; a
supervisor killed with SIGKILL leaves no worker behind either (docs/architecture.md §4.6)."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from darktower.model import MeetingId, Role
from tests._cluster import stack_cluster
from tests.meeting_controller._harness import Stack, open_stack

from ._processes import (
    ServiceProcess,
    open_service,
    port_free,
    session_members,
    terminate,
    wait_ready,
)

DRAIN_GRACE_S = 1.0
STOP_MARGIN_S = 3.0  # darktower.media_handler._workers.STOP_MARGIN_S, plus interpreter exit
WAIT_S = 30.0  # a bound on each wait: real interpreters start on a shared 2-core machine
POLL_S = 0.05  # interval between looks at a process's output (an out-of-process observation)
WORKERS = 2
# Base ports are drawn below Linux's ephemeral range (32768+), where the port-0 listeners of
# other tests never land.
PORT_RANGE = (20000, 32000)


def _free_bases(count: int) -> list[int]:
    """``count`` base ports, each with WORKERS free TCP and UDP ports from it."""
    bases: list[int] = []
    while len(bases) < count:
        base = random.randrange(*PORT_RANGE)
        ports = range(base, base + WORKERS)
        if any(abs(base - b) < WORKERS for b in bases):
            continue
        if all(port_free(p, k) for p in ports for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            bases.append(base)
    return bases


def _started(service: ServiceProcess, handler_id: str) -> list[int]:
    """The pids the supervisor logged starting for ``handler_id``, in order."""
    return [
        r["pid"]
        for r in service.log_records()
        if r.get("msg") == "media worker started" and r.get("handler_id") == handler_id
    ]


async def _until(predicate: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(WAIT_S):
        while True:
            if predicate():
                return
            await trio.sleep(POLL_S)  # a poll interval, not a wait for an event
    raise AssertionError(f"not within {WAIT_S} s: {what}")


@asynccontextmanager
async def _workers(
    tmp_path: pathlib.Path, stack: Stack, base_id: str, *extra: str
) -> AsyncIterator[tuple[ServiceProcess, list[int]]]:
    """The supervisor of WORKERS MHs registered with ``stack``'s MC (``extra``: more options
    for them), once every worker is linked; yields it and its base ports (media, gRPC, ops)."""
    cluster = stack_cluster()
    for i in range(WORKERS):
        cluster.options("mh", f"{base_id}-{i}")  # 'ca issue --role mh --id ID-i', per worker
    bases = _free_bases(3)
    args = [
        "--workers",
        str(WORKERS),
        "--handler-id",
        base_id,
        *(
            f"--{name}={base}"
            for name, base in zip(("port", "grpc-port", "ops-port"), bases, strict=True)
        ),
        f"--mc-grpc=127.0.0.1:{stack.running.grpc_address[1]}",
        f"--drain-grace-s={DRAIN_GRACE_S}",
        f"--cluster-ca={cluster.ca_file}",
        f"--cluster-cert={cluster.directory}/mh-{{id}}.pem",
        f"--cluster-key={cluster.directory}/mh-{{id}}-key.pem",
        *extra,
    ]
    async with open_service(
        "mh-workers",
        "darktower.media",
        args,
        ready_message="media workers started",
        cwd=str(tmp_path),
    ) as supervisor:
        with trio.fail_after(WAIT_S):
            for i in range(WORKERS):
                await stack.running.controller.mhs.wait_for(f"{base_id}-{i}")
        yield supervisor, bases


@pytest.mark.slow
async def test_workers_take_rooms_apart_restart_with_their_id_and_ports_and_drain(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        open_stack(tmp_path, media_handler="") as stack,
        _workers(tmp_path, stack, "mh-w") as (supervisor, (media, grpc, ops)),
    ):
        links = stack.running.controller.mhs.links
        for i in range(WORKERS):
            assert links[f"mh-w-{i}"].address == ("127.0.0.1", grpc + i)  # type: ignore[attr-defined]
        # Two meetings land on the two workers; a room stays on its worker.
        await stack.assign("m1")
        await stack.assign("m2")
        async with stack.join("m1", Role.HOST) as h1, stack.join("m2", Role.HOST) as h2:
            async with stack.join("m1") as guest:
                urls = [c.join_response.media_server.media_handler_url for c in (h1, h2, guest)]
        rooms = stack.running.controller.rooms
        placed = {rooms[MeetingId(m)].mh.handler_id for m in ("m1", "m2")}  # type: ignore[union-attr]
        assert placed == {"mh-w-0", "mh-w-1"}
        assert urls[0] != urls[1] and urls[2] == urls[0]
        assert {urls[0], urls[1]} == {f"https://127.0.0.1:{media + i}/v1/media" for i in (0, 1)}

        # SIGKILL a worker: the same id on the same ports, registered with the MC again.
        [first] = _started(supervisor, "mh-w-0")
        [other] = _started(supervisor, "mh-w-1")
        os.kill(first, signal.SIGKILL)
        await _until(lambda: len(_started(supervisor, "mh-w-0")) == 2, "mh-w-0 started again")
        again = _started(supervisor, "mh-w-0")[1]
        assert again != first and _started(supervisor, "mh-w-1") == [other]  # left alone
        await wait_ready(f"http://127.0.0.1:{ops}/readyz", supervisor)  # registered again
        with trio.fail_after(WAIT_S):
            link = await stack.running.controller.mhs.wait_for("mh-w-0")
        assert link.address == ("127.0.0.1", grpc)  # type: ignore[attr-defined]
        exits = [r for r in supervisor.log_records() if r.get("msg") == "media worker exited"]
        assert [(r["pid"], r["status"]) for r in exits] == [(first, -signal.SIGKILL)]
        await stack.assign("m3")  # the restarted worker takes rooms
        async with stack.join("m3", Role.HOST) as h3:
            assert h3.join_response.media_server.media_handler_url

        # SIGTERM: both workers drain, the supervisor exits 0, nothing is left.
        seconds = await terminate(supervisor)
        assert supervisor.process.returncode == 0, supervisor.report()
        assert seconds < DRAIN_GRACE_S + STOP_MARGIN_S
        assert session_members(supervisor.pid) == []  # neither worker outlived it
        drained = [r for r in supervisor.log_records() if r.get("msg") == "media worker exited"]
        assert sorted(r["status"] for r in drained[1:]) == [0, 0]
        for base in (media, grpc, ops):
            for port in range(base, base + WORKERS):
                assert port_free(port, socket.SOCK_STREAM) and port_free(port, socket.SOCK_DGRAM)
        assert not supervisor.stderr.traceback, supervisor.report()


@pytest.mark.slow
async def test_workers_of_a_killed_supervisor_drain_by_themselves(tmp_path: pathlib.Path) -> None:
    async with (
        open_stack(tmp_path, media_handler="") as stack,
        _workers(tmp_path, stack, "mh-k") as (supervisor, _),
    ):
        workers = [_started(supervisor, f"mh-k-{i}")[0] for i in range(WORKERS)]
        assert sorted(session_members(supervisor.pid)) == sorted([supervisor.pid, *workers])
        os.kill(supervisor.pid, signal.SIGKILL)
        await _until(
            lambda: session_members(supervisor.pid) == [], "the workers exited by themselves"
        )
        await _until(lambda: supervisor.finished.is_set(), "the output ended")
        drains = [r for r in supervisor.log_records() if "supervisor is gone" in r.get("msg", "")]
        assert len(drains) == WORKERS
