"""Two Meeting Controllers, each with its Media Handler (the real services on 127.0.0.1, one
certificate), and a stand-in for the Global Controller's REST API that places the meeting where
the test says: what a session needs to rejoin a meeting whose MC is gone or drains
(docs/protocol.md §13).

The stand-in (:class:`FakeGc`, a quart-trio app on the real HTTP/3 listener) answers
``POST /api/v1/meetings/{id}/join`` with a join token both MCs accept (the owner's access token
gets a host's) for the MC it places the meeting at (``at``; it assigns the meeting there first,
over gRPC, as the GC does), or with ``refusal``; and ``GET /api/v1/meetings/{id}`` with
``status`` and that MC. The first MC (``mc1``) can be drained alone (``stop_mc1``); its
signaling can also be reached through a UDP proxy (``proxy``: pause it and the MC is gone for
its clients, as a crashed machine is).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from darktower import media_handler, meeting_controller
from darktower.client import (
    GlobalControllerClient,
    MeetingSession,
    join_meeting_via_gc,
    open_gc_client,
)
from darktower.errors import DarkTowerError
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.model import MeetingId, Role
from darktower.protocol import error_body, http_status
from darktower.protocol.addresses import netloc
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.protocol.tokens import JoinTokenIssuer
from darktower.transport import TransportLimits, generate_dev_certificate
from darktower.transport.http_server import serve_http
from darktower.transport.rpc import call
from tests._cluster import GC_ID, open_cluster_channel
from tests._stack import HOST, Services, mc_settings, mh_settings, open_services, running_service

MEETING = "rejoin"
OWNER = "owner-access-token"  # the access token the stand-in takes for the meeting's owner
IDLE_S = 1.0  # the clients' liveness: a dead path is noticed about this long after it died
LIMITS = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 3)
GRACE_S = 8.0  # the MCs' and the clients' resume grace
WAIT_S = 30.0  # real-time bound on each wait: these run on a shared machine


@attrs.define(eq=False)
class FakeGc:
    """The REST API's stand-in (see the module docstring); ``joins`` records every join asked
    for: (participant name, access token or None)."""

    issuer: JoinTokenIssuer
    assign: Callable[[str], Awaitable[None]]  # places the meeting at an MC (its signal URL)
    at: str = ""  # the MC (its signaling URL) the meeting is placed at
    status: str = "active"
    refusal: DarkTowerError | None = None
    joins: list[tuple[str, str | None]] = attrs.Factory(list)

    def app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        def error(exc: DarkTowerError) -> Response:
            body = json.dumps(error_body(exc))
            return Response(body, status=http_status(exc.code), content_type="application/json")

        @app.post("/api/v1/meetings/<meeting_id>/join")
        async def join(meeting_id: str) -> Response | dict[str, Any]:
            body = json.loads(await request.get_data() or b"{}")
            auth = request.headers.get("authorization", "")
            token = auth.removeprefix("Bearer ") or None
            name = body.get("participant_name", "")
            self.joins.append((name, token))
            if self.refusal is not None:
                return error(self.refusal)
            await self.assign(self.at)
            role = Role.HOST if token == OWNER else Role.GUEST
            join_token = self.issuer.issue(
                MeetingId(meeting_id), role, time.time(), participant_name=name or None
            )
            return {
                "meeting_id": meeting_id,
                "join_token": join_token,
                "role": role.value,
                "meeting_controller_url": self.at,
            }

        @app.get("/api/v1/meetings/<meeting_id>")
        async def info(meeting_id: str) -> dict[str, Any]:
            return {
                "meeting_id": meeting_id,
                "status": self.status,
                "meeting_controller_url": self.at,
            }

        return app


@attrs.define(eq=False)
class Stack:
    services: Services  # the second MC and its MH (they stay)
    mc1: meeting_controller.Running
    stop_mc1: trio.Event
    proxy: UdpProxy  # to mc1's signaling
    gc: FakeGc
    gc_url: str
    pins: list[bytes]
    exits: AsyncExitStack

    @property
    def mc1_url(self) -> str:
        return self.mc1.signal_url

    @property
    def mc1_via_proxy(self) -> str:
        return self.proxy.via(self.mc1.signal_url)

    @property
    def mc2_url(self) -> str:
        return self.services.signal_url

    async def gc_client(self, access_token: str | None) -> GlobalControllerClient:
        """A GC client of the stand-in that lives as long as the stack."""
        gc = await self.exits.enter_async_context(
            open_gc_client(self.gc_url, server_certificate_hashes=self.pins)
        )
        gc.access_token = access_token
        return gc

    async def join(self, name: str, *, host: bool = False, **options: Any) -> MeetingSession:
        """A session joined through the stand-in, living as long as the stack."""
        gc = await self.gc_client(OWNER if host else None)
        session: AbstractAsyncContextManager[MeetingSession] = join_meeting_via_gc(
            gc,
            MEETING,
            name,
            server_certificate_hashes=self.pins,
            resume_grace_s=GRACE_S,
            transport_limits=LIMITS,
            **options,
        )
        return await self.exits.enter_async_context(session)


async def _assign_at(
    meeting_id: str, stubs: dict[str, MeetingControlStub], signal_url: str
) -> None:
    for url, stub in stubs.items():
        if url == signal_url:
            await call(stub.AssignMeeting, mtg_pb.AssignMeeting(meeting_id=meeting_id))


@asynccontextmanager
async def rejoin_stack(
    tmp_path: pathlib.Path, *, mc_idle_timeout_s: float = IDLE_S
) -> AsyncIterator[Stack]:
    """The stack of the module docstring, the meeting placed at mc1 (through the proxy)."""
    tls = generate_dev_certificate()
    certfile, keyfile = tls.write(tmp_path)
    files = {"certfile": str(certfile), "keyfile": str(keyfile)}
    mc = {"resume_grace_s": GRACE_S, "idle_timeout_s": mc_idle_timeout_s, **files}
    async with open_services(tmp_path / "data", mc=mc, mh=files) as services:
        assert services.issuer is not None and services.join_key_file is not None
        mc1_set = mc_settings(join_public_key_file=str(services.join_key_file), **mc)
        async with (
            running_service(meeting_controller.serve, mc1_set) as (mc1, stop_mc1),
            running_service(
                media_handler.serve, mh_settings(mc_grpc=netloc(*mc1.grpc_address), **files)
            ) as (mh1, _),
            open_cluster_channel(mc1.grpc_address, "gc", GC_ID, server="mc") as channel,
            open_udp_proxy((HOST, mc1.signal_address[1])) as proxy,
        ):
            with trio.fail_after(WAIT_S):
                await mc1.controller.mhs.wait_for(mh1.handler_id)
            assert services.mc_control is not None
            stubs = {
                proxy.via(mc1.signal_url): MeetingControlStub(channel),
                services.signal_url: services.mc_control,
            }
            gc = FakeGc(services.issuer, functools.partial(_assign_at, MEETING, stubs))
            gc.at = proxy.via(mc1.signal_url)
            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    functools.partial(
                        serve_http,
                        gc.app(),
                        host=HOST,
                        port=0,
                        certfile=str(certfile),
                        keyfile=str(keyfile),
                        shutdown=shutdown,
                        graceful_timeout_s=1.0,
                    )
                )
                try:
                    async with AsyncExitStack() as exits:  # the sessions: left first
                        yield Stack(
                            services,
                            mc1,
                            stop_mc1,
                            proxy,
                            gc,
                            f"https://{HOST}:{port}",
                            [tls.sha256],
                            exits,
                        )
                finally:
                    shutdown.set()
