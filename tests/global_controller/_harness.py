"""A real GC (tests/_stack.py) with a stand-in MC gRPC server, and one client API over
HTTP/1.1 (httpx) or HTTP/3 (the project's client) so every test can run on both."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from darktower.errors import DarkTowerError, NotFound
from darktower.global_controller import Running, Settings, serve
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlBase
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.transport import HTTP3Client, open_http3_client
from darktower.transport.rpc import call
from tests._cluster import open_cluster_channel
from tests._stack import HOST, StandIn, open_services, running_service, running_stand_in
from tests._stack import gc_settings as gc_settings  # the GC tests import it from here


class ManualClock:
    """The GC's wall clock (unix seconds), moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StandInMC:
    """A real ``MeetingControl`` gRPC service that records what the GC asks and can refuse."""

    def __init__(self) -> None:
        self.assigned: list[mc_pb.AssignMeeting] = []
        self.ended: list[str] = []
        self.end_requests: list[mc_pb.EndMeetingRequest] = []
        self.moderate_delay_s = 0.0  # a slow MC: its moderation answers after this long
        self.kicked: list[tuple[str, str]] = []
        self.moderated: list[mc_pb.ModerateParticipantRequest] = []
        self.participants: set[str] = {"p-1"}
        self.refuse: DarkTowerError | None = None
        self.ended_one = trio.Event()  # set at the first EndMeeting

    async def AssignMeeting(self, request: mc_pb.AssignMeeting) -> mc_pb.AssignMeetingResponse:
        if self.refuse is not None:
            raise self.refuse
        self.assigned.append(request)
        return mc_pb.AssignMeetingResponse()

    async def EndMeeting(self, request: mc_pb.EndMeetingRequest) -> mc_pb.EndMeetingResponse:
        self.ended.append(request.meeting_id)
        self.end_requests.append(request)
        self.ended_one.set()
        return mc_pb.EndMeetingResponse(participant_count=0)

    async def KickParticipant(
        self, request: mc_pb.KickParticipantRequest
    ) -> mc_pb.KickParticipantResponse:
        if request.participant_id not in self.participants:
            raise NotFound(f"participant {request.participant_id} is not in the meeting")
        self.kicked.append((request.meeting_id, request.participant_id))
        return mc_pb.KickParticipantResponse()

    async def RegisterMediaHandler(self, request: Any) -> Any:
        raise NotImplementedError

    async def ModerateParticipant(
        self, request: mc_pb.ModerateParticipantRequest
    ) -> mc_pb.ModerateParticipantResponse:
        if request.participant_id not in self.participants:
            raise NotFound(f"participant {request.participant_id} is not in the meeting")
        await trio.sleep(self.moderate_delay_s)  # the MC's work, as long as the test says
        self.moderated.append(request)
        muted = common_pb2.MODERATION_MUTE_AUDIO in request.actions
        return mc_pb.ModerateParticipantResponse(
            publication=common_pb2.PublicationState(audio_muted=muted, audio_blocked=muted)
        )

    async def MediaHandlerHeartbeat(self, request: Any) -> Any:
        raise NotImplementedError


@attrs.define
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        body = self.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "details"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        code: str = body["error"]["code"]
        return code


class Api:
    """One way to reach the GC: ``request`` returns a :class:`Reply` whatever the transport."""

    kind = ""

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        data = body if body is not None else b""
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("content-type", "application/json")
        return await self._send(method, path, hdrs, data)

    async def _send(self, method: str, path: str, headers: dict[str, str], data: bytes) -> Reply:
        raise NotImplementedError

    async def token(self, client_id: str, secret: str) -> str:
        reply = await self.request(
            "POST",
            "/api/v1/auth/token",
            json_body={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert reply.status == 200, reply.body
        token: str = reply.json()["access_token"]
        return token


class H1Api(Api):
    kind = "h1"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _send(self, method: str, path: str, headers: dict[str, str], data: bytes) -> Reply:
        r = await self._client.request(method, path, headers=headers, content=data)
        assert r.http_version == ("HTTP/2" if self.kind == "h2" else "HTTP/1.1")
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


class H3Api(Api):
    kind = "h3"

    def __init__(self, client: HTTP3Client) -> None:
        self._client = client

    async def _send(self, method: str, path: str, headers: dict[str, str], data: bytes) -> Reply:
        r = await self._client.request(method, path, list(headers.items()), data)
        return Reply(r.status, dict(r.headers), r.body)


@asynccontextmanager
async def open_api(kind: str, url: str, sha256: bytes) -> AsyncIterator[Api]:
    if kind in ("h1", "h2"):
        async with httpx.AsyncClient(base_url=url, verify=False, http2=kind == "h2") as client:
            api = H1Api(client)
            api.kind = kind
            yield api
    else:
        async with open_http3_client(url, server_certificate_hashes=[sha256]) as h3:
            yield H3Api(h3)


@attrs.define
class Stack:
    running: Running
    settings: Settings
    mc: StandInMC
    mc_endpoint: str
    clock: ManualClock
    client_id: str
    client_secret: str
    shutdown: trio.Event

    @property
    def url(self) -> str:
        return self.running.url

    def api(self, kind: str) -> Any:
        return open_api(kind, self.running.url, self.running.certificate_sha256)


def mc_channel(grpc_port: int, controller_id: str) -> Any:
    """A channel to the GC's registry as the MC ``controller_id`` of the test cluster."""
    return open_cluster_channel((HOST, grpc_port), "mc", controller_id, server="gc")


async def register_mc(
    grpc_port: int,
    controller_id: str,
    mc_endpoint: str,
    *,
    region: str = "local",
    max_meetings: int = 100,
) -> reg_pb.RegisterMeetingControllerResponse:
    """Register as ``controller_id``, with the test cluster's certificate of that MC."""
    async with mc_channel(grpc_port, controller_id) as channel:
        stub = ControllerRegistryStub(channel)
        reply: reg_pb.RegisterMeetingControllerResponse = await call(
            stub.RegisterMeetingController,
            reg_pb.RegisterMeetingController(
                controller_id=controller_id,
                region=region,
                endpoint=mc_endpoint,
                capacity=reg_pb.ControllerCapacity(
                    max_meetings=max_meetings, max_participants=1000
                ),
                signaling_url=f"https://127.0.0.1:4433/v1/signal?mc={controller_id}",
            ),
            deadline_s=5,
        )
        return reply


async def heartbeat(
    grpc_port: int,
    controller_id: str,
    *,
    counts: Mapping[str, int] | None = None,
    ended: tuple[str, ...] = (),
    health: int = 0,
) -> None:
    # The error is re-raised outside the channel's (possibly own) asyncio loop, whose nursery
    # would wrap it in an ExceptionGroup.
    error: DarkTowerError | None = None
    async with mc_channel(grpc_port, controller_id) as channel:
        stub = ControllerRegistryStub(channel)
        try:
            await call(
                stub.Heartbeat,
                reg_pb.Heartbeat(
                    controller_id=controller_id,
                    capacity=reg_pb.ControllerCapacity(max_meetings=100, max_participants=1000),
                    health=health,  # type: ignore[arg-type]
                    meetings=[
                        reg_pb.MeetingLoad(meeting_id=k, participant_count=v)
                        for k, v in (counts or {}).items()
                    ],
                    ended_meeting_ids=list(ended),
                ),
                deadline_s=5,
            )
        except DarkTowerError as exc:
            error = exc
    if error is not None:
        raise error


@asynccontextmanager
async def running_stand_in_mc(mc: StandInMC, controller_id: str = "mc-1") -> AsyncIterator[str]:
    """Serve ``mc`` on 127.0.0.1 as ``controller_id``; yields its ``host:port``."""
    async with running_stand_in(MeetingControlBase, mc, controller_id) as endpoint:
        yield endpoint


@asynccontextmanager
async def running_gc(
    settings: Settings, clock: ManualClock | None = None
) -> AsyncIterator[tuple[Running, trio.Event]]:
    """``serve`` in a nursery; on exit sets shutdown and waits for the drain."""
    async with running_service(serve, settings, clock=clock or time.time) as (running, shutdown):
        yield running, shutdown


@asynccontextmanager
async def gc_stack(data_dir: pathlib.Path, **overrides: Any) -> AsyncIterator[Stack]:
    """GC + one registered stand-in MC ("mc-1") + one API client ("alice")."""
    clock = ManualClock()
    mc = StandInMC()
    async with open_services(data_dir, gc=overrides, mc=StandIn(mc), gc_clock=clock) as stack:
        assert stack.gc is not None and stack.gc_settings is not None
        await register_mc(stack.gc.grpc_port, "mc-1", stack.stand_ins["mc"])
        yield Stack(
            stack.gc,
            stack.gc_settings,
            mc,
            stack.stand_ins["mc"],
            clock,
            stack.client_id,
            stack.client_secret,
            stack.shutdown,
        )
