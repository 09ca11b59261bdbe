"""The one in-process stack harness: any subset of the real services (GC, MC, MH) on
127.0.0.1 with ports 0, started through their public ``serve(settings, shutdown=...,
task_status=...)``, wired to each other, and drained in the order ``python -m darktower``
drains (the MC, then the MH, then the GC).

Each role is absent (``None``), the real service (a mapping of its ``Settings`` overrides) or
a :class:`StandIn` (a test double served over the real gRPC in that role). Wiring follows
the roles present, and an explicit override always wins:

* a real MC registers with the GC's registry (``gc_grpc``) (a stand-in's test registers it);
* a real MH registers with the MC (``mc_grpc``); a stand-in MH is the MC's static
  ``media_handler``; the stack is ready once a real MH is registered with a real MC;
* without a GC the MC verifies join tokens with a key made here (:attr:`Services.issuer`
  mints them); with a real GC the MC learns the GC's keys and an API client is registered
  (:attr:`Services.client_id`), and the MC and MH serve the GC's certificate (one pin);
* every service and stand-in speaks mutual TLS with the test cluster (:func:`stack_cluster`:
  one CA per test process, a certificate per role and id on demand); the settings helpers
  below put a service's certificate files in its settings.

:func:`dev_stack` runs ``python -m darktower``'s own composition (``darktower.__main__``)
instead, for the tests of that launcher and of what it serves (the page, the dev credential).
"""

from __future__ import annotations

import functools
import pathlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from darktower import __main__ as dev
from darktower import global_controller, media_handler, meeting_controller
from darktower.client import (
    CreatedMeeting,
    GlobalControllerClient,
    SignalingClient,
    open_gc_client,
)
from darktower.global_controller.clients import add_client
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase, MediaControlStub
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlBase, MeetingControlStub
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryBase
from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key, public_key_pem
from darktower.transport.rpc import call, open_rpc_loop, rpc_service, serve_rpc
from tests._cluster import GC_ID, open_cluster_channel, stack_cluster

HOST = "127.0.0.1"
# Generous: the machine may be shared; a start takes well under a second, and so does a drain
# (each service's own drain is bounded by its drain_grace_s).
START_S = 60.0
STOP_S = 60.0
WAIT_S = 20.0  # a bound on each wait of the helpers below: real QUIC on real time
DRAIN_GRACE_S = 2.0
API_CLIENT_NAME = "alice"
JOIN_KEY_FILE = "join-key.pem"  # the MC's join-token public key when there is no GC

Serve = Callable[..., Awaitable[None]]
Overrides = Mapping[str, Any]


# --- settings ---------------------------------------------------------------------------------
def _with_cluster(role: str, id_setting: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus the certificate files of the service's id (``id_setting``, else a
    new random one), unless the test gives its own."""
    if "cluster_cert" in overrides:
        return overrides
    ident = overrides.get(id_setting) or f"{role}-{uuid.uuid4().hex[:8]}"
    return {id_setting: ident, **stack_cluster().options(role, ident), **overrides}


def gc_settings(data_dir: pathlib.Path, **overrides: Any) -> global_controller.Settings:
    """The GC's settings for tests: ports 0, its store and keys in ``data_dir``."""
    values: dict[str, Any] = {
        "host": HOST,
        "data_dir": str(data_dir),
        "port": 0,
        "grpc_port": 0,
        "drain_grace_s": DRAIN_GRACE_S,
        "heartbeat_interval_s": 5.0,
        "log_json": False,
        **stack_cluster().options("gc", GC_ID),
    }
    return global_controller.Settings(**{**values, **overrides})


def mc_settings(**overrides: Any) -> meeting_controller.Settings:
    values = {"host": HOST, "port": 0, "grpc_port": 0, "ops_port": 0}
    overrides = _with_cluster("mc", "controller_id", overrides)
    return meeting_controller.Settings(**{**values, "drain_grace_s": DRAIN_GRACE_S, **overrides})


def mh_settings(**overrides: Any) -> media_handler.Settings:
    values = {"host": HOST, "port": 0, "grpc_port": 0, "ops_port": 0}
    overrides = _with_cluster("mh", "handler_id", overrides)
    return media_handler.Settings(**{**values, "drain_grace_s": DRAIN_GRACE_S, **overrides})


# --- one service ------------------------------------------------------------------------------
@attrs.define(eq=False)
class _Task:
    """One role's task: ``stop`` asks it to drain, ``done`` is set once it has returned."""

    stop: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)

    async def serve(
        self,
        serve: Serve,
        settings: Any,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
        **serve_kwargs: Any,
    ) -> None:
        try:
            await serve(settings, shutdown=self.stop, task_status=task_status, **serve_kwargs)
        finally:
            self.done.set()

    async def stand_in(
        self,
        base: type,
        servicer: object,
        ident: str = "",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``servicer`` as ``base`` over gRPC until ``stop``, with the test cluster's
        certificate of that role and ``ident`` (default: the role's); reports its
        ``host:port``."""
        role = STAND_IN_ROLES[base]
        tls = stack_cluster().tls(role, ident or STAND_IN_IDS[role]).server_context()
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    functools.partial(serve_rpc, [rpc_service(base, servicer)], HOST, 0, tls=tls)
                )
                task_status.started(f"{HOST}:{port}")
                await self.stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.done.set()

    async def drain(self) -> None:
        self.stop.set()
        await self.done.wait()


@asynccontextmanager
async def running_service(
    serve: Serve, settings: Any, **serve_kwargs: Any
) -> AsyncIterator[tuple[Any, trio.Event]]:
    """One service: yields its ``Running`` and its shutdown event; on exit sets the event and
    waits until ``serve`` has drained and returned."""
    task = _Task()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            running = await nursery.start(
                functools.partial(task.serve, serve, settings, **serve_kwargs)
            )
        try:
            yield running, task.stop
        finally:
            task.stop.set()


@asynccontextmanager
async def running_stand_in(base: type, servicer: object, ident: str = "") -> AsyncIterator[str]:
    """``servicer`` served as ``base`` (e.g. ``MeetingControlBase``) with the certificate of
    ``ident`` (default: the role's stand-in id); yields its ``host:port``."""
    task = _Task()
    async with trio.open_nursery() as nursery:
        endpoint: str = await nursery.start(task.stand_in, base, servicer, ident)
        try:
            yield endpoint
        finally:
            task.stop.set()


# --- the stack --------------------------------------------------------------------------------
@attrs.frozen
class StandIn:
    """A test double for one role, served over the real gRPC (the role's ``*Base``) with the
    test cluster's certificate of ``ident`` (default: :data:`STAND_IN_IDS`)."""

    servicer: object
    ident: str = ""


Slot = Overrides | StandIn | None
STAND_IN_BASES = {"gc": ControllerRegistryBase, "mc": MeetingControlBase, "mh": MediaControlBase}
STAND_IN_ROLES = {base: role for role, base in STAND_IN_BASES.items()}
STAND_IN_IDS = {"gc": GC_ID, "mc": "mc-1", "mh": "mh-stand-in"}
DRAIN_ORDER = ("mc", "mh", "gc")


@attrs.define(eq=False)
class Services:
    """A started stack: each role's ``Running`` (None when absent or a stand-in), the
    stand-ins' ``host:port``, and what tests need to reach it."""

    data_dir: pathlib.Path
    shutdown: trio.Event  # set it to drain every service (also done when the block exits)
    gc: global_controller.Running | None = None
    mc: meeting_controller.Running | None = None
    mh: media_handler.Running | None = None
    gc_settings: global_controller.Settings | None = None
    stand_ins: dict[str, str] = attrs.Factory(dict)  # "gc" | "mc" | "mh" -> host:port
    client_id: str = ""  # an API client of the GC ("" without a GC)
    client_secret: str = ""
    issuer: JoinTokenIssuer | None = None  # join tokens the MC accepts (without a GC)
    join_key_file: pathlib.Path | None = None
    mc_control: MeetingControlStub | None = None  # set by open_services for a real MC
    mh_control: MediaControlStub | None = None  # set by open_services for a real MH

    @property
    def api_url(self) -> str:
        assert self.gc is not None, "no GC in this stack"
        return self.gc.url

    @property
    def signal_url(self) -> str:
        assert self.mc is not None, "no MC in this stack"
        return self.mc.signal_url

    @property
    def media_url(self) -> str:
        assert self.mh is not None, "no MH in this stack"
        return self.mh.media_url

    @property
    def pins(self) -> list[bytes]:
        """The certificate hashes the stack serves (one when a GC shares its certificate)."""
        hashes = (r.certificate_sha256 for r in (self.gc, self.mc, self.mh) if r is not None)
        return list(dict.fromkeys(hashes))

    @property
    def certificate_sha256(self) -> bytes:
        return self.pins[0]

    def token(self, meeting_id: str, role: Role = Role.GUEST, **claims: Any) -> str:
        """A join token the MC accepts (stacks without a GC)."""
        assert self.issuer is not None, "with a GC, tokens come from its API"
        return self.issuer.issue(MeetingId(meeting_id), role, time.time(), **claims)

    async def assign(self, meeting_id: str, **config: Any) -> None:
        """Assign a meeting to the real MC, as the GC does."""
        assert self.mc_control is not None, "no real MC in this stack"
        await call(
            self.mc_control.AssignMeeting,
            mtg_pb.AssignMeeting(meeting_id=meeting_id, config=mtg_pb.MeetingConfig(**config)),
        )

    @asynccontextmanager
    async def gc_client(self) -> AsyncIterator[GlobalControllerClient]:
        """The client library's GC client, authenticated as the stack's API client."""
        async with open_gc_client(self.api_url, server_certificate_hashes=self.pins) as client:
            await client.authenticate(self.client_id, self.client_secret)
            yield client

    async def create_meeting(self, display_name: str = "test", **options: Any) -> CreatedMeeting:
        """Create a meeting through the GC's REST API (the host's join token is in it)."""
        async with self.gc_client() as client:
            return await client.create_meeting(display_name, **options)


def _wired(wiring: Mapping[str, str | None], overrides: Overrides) -> dict[str, Any]:
    """The settings that connect a service to the others present; an override wins."""
    return {**{k: v for k, v in wiring.items() if v is not None}, **overrides}


async def serve_services(
    data_dir: pathlib.Path,
    *,
    gc: Slot = None,
    mc: Slot = None,
    mh: Slot = None,
    gc_clock: Callable[[], float] | None = None,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the roles given (see the module's docstring) and report :class:`Services`; when
    ``shutdown`` is set, drain the MC, then the MH, then the GC, then stop the stand-ins.
    Owns every service it starts; for ``nursery.start``, as each service's own ``serve``."""
    roles: dict[str, Slot] = {"gc": gc, "mc": mc, "mh": mh}
    tasks = {name: _Task() for name, role in roles.items() if role is not None}
    # Stand-ins last (the real services call them); the MC first: its meetings end while the
    # MH can still remove participants and the GC still hears of it.
    order = sorted(tasks, key=lambda n: (isinstance(roles[n], StandIn), DRAIN_ORDER.index(n)))
    services = Services(data_dir=data_dir, shutdown=shutdown)

    async def drain_in_order() -> None:
        await shutdown.wait()
        with trio.fail_after(STOP_S):
            for name in order:
                await tasks[name].drain()

    async with open_rpc_loop(), trio.open_nursery() as nursery:
        nursery.start_soon(drain_in_order)
        with trio.fail_after(START_S):
            for name, role in roles.items():
                if isinstance(role, StandIn):
                    services.stand_ins[name] = await nursery.start(
                        tasks[name].stand_in, STAND_IN_BASES[name], role.servicer, role.ident
                    )
            await _start_real(nursery, services, roles, tasks, gc_clock)
        task_status.started(services)


async def _start_real(
    nursery: trio.Nursery,
    services: Services,
    roles: dict[str, Slot],
    tasks: dict[str, _Task],
    gc_clock: Callable[[], float] | None,
) -> None:
    """Start the real services among ``roles``: the GC, then the MC, then the MH."""
    data_dir, stand_ins = services.data_dir, services.stand_ins
    tls: dict[str, str] = {}
    if isinstance(gc := roles["gc"], Mapping):
        gc_set = services.gc_settings = gc_settings(data_dir, **gc)
        services.client_id, services.client_secret = await add_client(gc_set, API_CLIENT_NAME)
        kwargs: dict[str, Any] = {"clock": gc_clock} if gc_clock is not None else {}
        services.gc = await nursery.start(
            functools.partial(tasks["gc"].serve, global_controller.serve, gc_set, **kwargs)
        )
        if services.gc.dev_certificate:  # the MC and MH serve it too: one pin for the stack
            data = gc_set.data_path
            tls = {"certfile": str(data / DEV_CERT_FILE), "keyfile": str(data / DEV_KEY_FILE)}
    if isinstance(mc := roles["mc"], Mapping):
        key_file: pathlib.Path | None = None
        if gc is None:
            key = generate_signing_key()
            services.issuer = JoinTokenIssuer(key)
            key_file = services.join_key_file = data_dir / JOIN_KEY_FILE
            await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
            await trio.Path(key_file).write_bytes(public_key_pem(key))
        wiring: dict[str, str | None] = {
            "gc_grpc": services.gc.grpc_endpoint if services.gc else stand_ins.get("gc"),
            "media_handler": stand_ins.get("mh"),
            "join_public_key_file": str(key_file) if key_file else None,
            **tls,
        }
        mc_set = mc_settings(**_wired(wiring, mc))
        services.mc = await nursery.start(tasks["mc"].serve, meeting_controller.serve, mc_set)
    if isinstance(mh := roles["mh"], Mapping):
        mc_grpc = stand_ins.get("mc")
        if services.mc is not None:
            mc_grpc = "{}:{}".format(*services.mc.grpc_address)
        mh_set = mh_settings(**_wired({"mc_grpc": mc_grpc, **tls}, mh))
        services.mh = await nursery.start(tasks["mh"].serve, media_handler.serve, mh_set)
        if services.mc is not None and mh_set.mc_grpc == mc_grpc:
            # Rooms are placed only once the MH has registered with the MC.
            await services.mc.controller.mhs.wait_for(services.mh.handler_id)


@asynccontextmanager
async def open_services(
    data_dir: pathlib.Path | None = None,
    *,
    gc: Slot = None,
    mc: Slot = None,
    mh: Slot = None,
    gc_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Services]:
    """:func:`serve_services` for the block (its data in ``data_dir``, else a temporary
    directory), with gRPC stubs to the real MC and MH; drains on exit (or when the test sets
    ``services.shutdown``). The block runs in the trio-asyncio loop the services use."""
    async with AsyncExitStack() as exits:
        if data_dir is None:
            data_dir = pathlib.Path(exits.enter_context(tempfile.TemporaryDirectory()))
        await exits.enter_async_context(open_rpc_loop())
        nursery = await exits.enter_async_context(trio.open_nursery())
        shutdown = trio.Event()
        exits.callback(shutdown.set)
        services: Services = await nursery.start(
            functools.partial(
                serve_services, data_dir, gc=gc, mc=mc, mh=mh, gc_clock=gc_clock, shutdown=shutdown
            )
        )
        if services.mc is not None:  # as the GC
            channel = await exits.enter_async_context(
                open_cluster_channel(services.mc.grpc_address, "gc", GC_ID, server="mc")
            )
            services.mc_control = MeetingControlStub(channel)
        if services.mh is not None:  # as an MC
            channel = await exits.enter_async_context(
                open_cluster_channel(services.mh.grpc_address, "mc", "mc-1", server="mh")
            )
            services.mh_control = MediaControlStub(channel)
        yield services


# --- python -m darktower ----------------------------------------------------------------------
@asynccontextmanager
async def dev_stack(
    data_dir: pathlib.Path, shutdown: trio.Event | None = None, **overrides: Any
) -> AsyncIterator[dev.Running]:
    """``python -m darktower``'s stack with its data in ``data_dir``, ready once the MH has
    registered with the MC; drains on exit (or when ``shutdown`` is set by the test).
    ``overrides`` are :class:`darktower.__main__.Settings` fields."""
    ports = ("api", "page", "signal", "media", "gc_grpc", "mc_grpc", "mh_grpc", "mc_ops", "mh_ops")
    ports += ("mp_grpc", "mp_ops")  # the media processor's child process
    options: dict[str, Any] = {f"{name}_port": 0 for name in ports}
    options.update(data_dir=str(data_dir), drain_grace_s=DRAIN_GRACE_S)
    options.update(overrides)
    stop = shutdown if shutdown is not None else trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            running: dev.Running = await nursery.start(
                functools.partial(dev.serve, dev.Settings(**options), shutdown=stop)
            )
            await running.mc.controller.mhs.wait_for(running.mh.handler_id)
        try:
            yield running
        finally:
            stop.set()


# --- clients ----------------------------------------------------------------------------------
async def next_message(
    client: SignalingClient, kind: str, *, wait_s: float = WAIT_S
) -> sig.ServerMessage:
    """The next server message of ``kind`` on a signaling client (others are skipped)."""
    with trio.fail_after(wait_s):
        async for event in client.events:
            if event.WhichOneof("message") == kind:
                return event
    raise AssertionError(f"events ended before a {kind}")
