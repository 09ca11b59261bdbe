"""A cluster of the operator's launchers, each its own process on 127.0.0.1, that a test kills
with SIGKILL and starts again service by service (docs/architecture.md §9).

``python -m darktower.global``, two ``python -m darktower.meeting`` (``mc-a``, ``mc-b``) and
their ``python -m darktower.media`` (``mh-a1``, ``mh-a2``... registered with ``mc-a``), started
with the flags an operator would give (tests/_stack.py's settings, turned into flags by
``config.to_argv``): every port is fixed for the run, so a service started again is where its
peers and its clients look for it; the GC's data dir holds its SQLite store, its keys and the
TLS certificate every service serves. A :class:`FaultCluster` owns every process it started
(tests/e2e/_processes.py's :func:`open_service`, each killed with its process group at the
end if still alive) and checks, once all are stopped, that none left a process, a bound port or
a stray file behind.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from darktower.config import to_argv
from darktower.errors import sole_error
from darktower.global_controller.clients import add_client
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.transport import generate_dev_certificate
from tests._stack import gc_settings, mc_settings, mh_settings

from ._processes import (
    PIPE_EOF_S,
    ServiceProcess,
    open_service,
    port_free,
    session_members,
    terminate,
    wait_ready,
)
from .test_media_workers import _free_bases
from .test_processes import EXPECTED_DATA_FILES

GC = "gc"
DRAIN_GRACE_S = 1.0
# A service stopped with SIGTERM exits within its drain grace plus this (interpreter teardown,
# the gRPC servers' shielded stop, a busy 2-core machine).
EXIT_MARGIN_S = 5.0
# A launcher's /readyz after its ready line: an MC is ready once registered with the GC and one
# of its MHs registered with it, which may wait out their registration backoff (up to 10 s).
READY_S = 45.0
READY_MESSAGES = {
    "darktower.global": "global controller serving",
    "darktower.meeting": "meeting controller running",
    "darktower.media": "media handler running",
}
TCP, UDP = socket.SOCK_STREAM, socket.SOCK_DGRAM


@attrs.frozen
class Spec:
    """One service of the cluster: how it is started and where it listens."""

    name: str
    module: str
    argv: list[str]
    readyz: str
    ports: Sequence[tuple[int, int]]  # (port, socket kind) it binds

    @property
    def role(self) -> str:
        return self.name.split("-")[0]


@attrs.frozen
class Topology:
    """What runs: the GC's heartbeat timing and each MC's number of MHs."""

    mhs: Mapping[str, int] = attrs.field(factory=lambda: {"mc-a": 2, "mc-b": 1})
    heartbeat_interval_s: float = 1.0
    heartbeat_misses: int = 3

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_misses


def _served(
    name: str, module: str, make: Callable[..., Any], ports: Iterator[int], **fixed: Any
) -> Spec:
    """An MC or MH (``make``: its settings from tests/_stack.py, with ``fixed``) on the next
    three ports: public (UDP), gRPC, ops."""
    public, grpc, ops = next(ports), next(ports), next(ports)
    settings = make(port=public, grpc_port=grpc, ops_port=ops, **fixed)
    ports_of = [(public, UDP), (grpc, TCP), (ops, TCP)]
    return Spec(name, module, to_argv(settings), f"http://127.0.0.1:{ops}/readyz", ports_of)


def _specs(topology: Topology, data: pathlib.Path) -> dict[str, Spec]:
    """Every service's flags, on ports fixed for the run (below the ephemeral range)."""
    common: dict[str, Any] = {
        "drain_grace_s": DRAIN_GRACE_S,
        "log_json": True,
        "certfile": str(data / DEV_CERT_FILE),
        "keyfile": str(data / DEV_KEY_FILE),
    }
    mhs = {mc: [f"mh-{mc[3:]}{i + 1}" for i in range(n)] for mc, n in topology.mhs.items()}
    ports = iter(_free_bases(3 * (1 + len(mhs) + sum(map(len, mhs.values())))))
    web, grpc = next(ports), next(ports)
    gc = gc_settings(
        data,
        drain_grace_s=DRAIN_GRACE_S,
        log_json=True,
        port=web,
        grpc_port=grpc,
        heartbeat_interval_s=topology.heartbeat_interval_s,
        heartbeat_misses=topology.heartbeat_misses,
        # One address for every participant here: a per-address limit would be all of theirs.
        rate_limit_per_min=100_000,
        max_active_meetings_per_client=0,
    )
    web_ports = [(web, TCP), (web, UDP), (grpc, TCP)]
    specs = {
        GC: Spec(GC, "darktower.global", to_argv(gc), f"https://127.0.0.1:{web}/readyz", web_ports)
    }
    for mc, handlers in mhs.items():
        specs[mc] = _served(
            mc,
            "darktower.meeting",
            mc_settings,
            ports,
            controller_id=mc,
            gc_grpc=f"127.0.0.1:{grpc}",
            **common,
        )
        mc_grpc = specs[mc].ports[1][0]
        for mh in handlers:
            specs[mh] = _served(
                mh,
                "darktower.media",
                mh_settings,
                ports,
                handler_id=mh,
                mc_grpc=f"127.0.0.1:{mc_grpc}",
                **common,
            )
    return specs


class FaultCluster:
    """The running cluster (see the module docstring). ``running[name]`` is a service's
    current process, absent while it is killed; ``started`` every process ever started."""

    def __init__(self, tmp_path: pathlib.Path, topology: Topology, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.topology = topology
        self.data = tmp_path / "data"
        self.specs = _specs(topology, self.data)
        self.running: dict[str, ServiceProcess] = {}
        self.started: list[ServiceProcess] = []
        self._nursery = nursery  # each process's owner task runs here
        self.client_id = ""
        self.client_secret = ""
        self.pins: list[bytes] = []

    @property
    def gc_url(self) -> str:
        return self.specs[GC].readyz.removesuffix("/readyz")

    def signal_url(self, mc: str) -> str:
        """The signaling URL of ``mc`` (what the GC names for a meeting placed there)."""
        port = self.specs[mc].ports[0][0]
        return f"https://127.0.0.1:{port}/v1/signal"

    def ops_url(self, name: str) -> str:
        return self.specs[name].readyz.removesuffix("/readyz")

    def names(self, role: str) -> list[str]:
        return [n for n, s in self.specs.items() if s.role == role]

    def mhs_of(self, mc: str) -> list[str]:
        return [n for n in self.names("mh") if n.startswith(f"mh-{mc[3:]}")]

    async def prepare(self) -> None:
        """The GC's data dir: its TLS certificate (which every service serves) and an API
        client (``clients add``)."""
        credentials = generate_dev_certificate()
        self.data.mkdir(parents=True)
        credentials.write(self.data)
        self.pins = [credentials.sha256]
        settings = gc_settings(self.data)
        self.client_id, self.client_secret = await add_client(settings, "fault-injection")

    async def _own(self, spec: Spec, task_status: trio.TaskStatus[ServiceProcess]) -> None:
        """Run one process of ``spec`` until it exits (killed, stopped, or cancelled with the
        cluster: then its process group is killed)."""
        async with open_service(
            spec.name,
            spec.module,
            spec.argv,
            ready_message=READY_MESSAGES[spec.module],
            cwd=str(self.tmp_path),  # a service writing outside its data dir shows up here
        ) as service:
            task_status.started(service)
            await service.finished.wait()

    async def start(self, name: str) -> ServiceProcess:
        """Start ``name`` (again) and return it once its /readyz answers 200."""
        spec = self.specs[name]
        assert name not in self.running, f"{name} is running"
        service: ServiceProcess = await self._nursery.start(partial(self._own, spec))
        self.started.append(service)
        self.running[name] = service
        verify: Any = True
        if spec.role == GC:
            verify = ssl.create_default_context(cafile=str(self.data / DEV_CERT_FILE))
        await wait_ready(spec.readyz, service, verify=verify, deadline_s=READY_S)
        return service

    async def start_all(self) -> None:
        """The GC, then every MC and MH at once (an MH's registration waits for its MC)."""
        await self.start(GC)
        async with trio.open_nursery() as nursery:
            for name in self.specs:
                if name != GC:
                    nursery.start_soon(self.start, name)

    async def kill(self, name: str) -> float:
        """SIGKILL ``name`` (its whole process group: a launcher is one process) and reap it;
        returns the time (trio's clock) it was gone."""
        service = self.running.pop(name)
        os.killpg(service.pid, signal.SIGKILL)
        await service.process.wait()
        gone = trio.current_time()
        with trio.move_on_after(PIPE_EOF_S):
            await service.finished.wait()
        return gone

    async def stop_all(self) -> None:
        """SIGTERM every running service, MHs first, then MCs, then the GC (none outlives what
        it reports to): each drains and exits 0 within its drain grace."""
        for role in ("mh", "mc", GC):
            async with trio.open_nursery() as nursery:
                for name in self.names(role):
                    if name in self.running:
                        nursery.start_soon(self._stop, name)

    async def _stop(self, name: str) -> None:
        service = self.running.pop(name)
        seconds = await terminate(service)
        assert service.process.returncode == 0, f"{name} exited {service.process.returncode}"
        assert seconds <= DRAIN_GRACE_S + EXIT_MARGIN_S, (name, seconds)

    def tracebacks(self) -> list[str]:
        """The processes that logged a traceback (name and pid)."""
        return [
            f"{s.name} (pid {s.pid})"
            for s in self.started
            if s.stdout.traceback or s.stderr.traceback
        ]

    def assert_nothing_left(self) -> None:
        """After :meth:`stop_all`: no process of any launcher ever started, no bound port,
        nothing in the test's directory but the GC's data dir holding what the GC keeps."""
        assert not self.running, sorted(self.running)
        leftovers = {s.name: session_members(s.pid) for s in self.started}
        assert not any(leftovers.values()), leftovers
        held = [(n, p, k) for n, s in self.specs.items() for p, k in s.ports if not port_free(p, k)]
        assert held == [], held
        assert sorted(p.name for p in self.tmp_path.iterdir()) == ["data"]
        assert {p.name for p in self.data.iterdir()} == EXPECTED_DATA_FILES


@asynccontextmanager
async def fault_cluster(
    tmp_path: pathlib.Path, topology: Topology | None = None
) -> AsyncIterator[FaultCluster]:
    """Every service of ``topology`` started and ready. Leaving the block kills (SIGKILL)
    whatever still runs and prints each process's output (pytest shows it on a failure)."""
    try:
        async with trio.open_nursery() as nursery:
            cluster = FaultCluster(tmp_path, topology or Topology(), nursery)
            await cluster.prepare()
            await cluster.start_all()
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the test's own error, not a group of one
        raise sole_error(group) from None
