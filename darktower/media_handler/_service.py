"""``serve``: the Media Handler process (or part of ``python -m darktower``).

Owns, in one nursery: the task tree (rooms ⊃ participants ⊃ streams), the WebTransport server
(``/v1/media``), the MediaControl gRPC server, the ops listener, the telemetry reporter and the
registration with the MC. On ``shutdown`` it drains (docs/architecture.md §3.5): stops accepting,
ends every room (MEETING_ENDED) with a deadline of ``drain_grace_s``, then cancels the rest.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import attrs
import trio

from darktower.errors import NotFound
from darktower.logs import fields
from darktower.metrics import Registry, count_refusals
from darktower.nurseries import TaskTree
from darktower.protocol.heartbeats import MH_HEARTBEAT_INTERVAL_S
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.transport import (
    Route,
    ServerConfig,
    TlsCredentials,
    TransportLimits,
    WebTransportServer,
    generate_dev_certificate,
    parse_origins,
)
from darktower.transport.ops_http import serve_ops
from darktower.transport.rpc import (
    RpcError,
    call,
    open_rpc_channel,
    open_rpc_loop,
    rpc_service,
    serve_rpc,
)

from ._handler import MediaHandler
from ._limits import (
    MC_CALL_DEADLINE_S,
    REGISTER_BACKOFF_MAX_S,
    REGISTER_BACKOFF_S,
)
from ._settings import Settings
from ._telemetry import MediaMetrics

logger = logging.getLogger("darktower.media_handler")

MEDIA_PATH = "/v1/media"


@attrs.frozen
class Running:
    """What a started MH listens on."""

    handler_id: str
    media_url: str  # https://HOST:PORT/v1/media (clients add ?token=...)
    media_address: tuple[str, int]
    grpc_address: tuple[str, int]
    ops_url: str
    certificate_sha256: bytes
    handler: MediaHandler = attrs.field(eq=False, repr=False)  # for tests and the launcher
    server: WebTransportServer = attrs.field(eq=False, repr=False)


class MediaControl:
    """The MediaControl gRPC methods (trio), delegating to the :class:`MediaHandler`."""

    def __init__(self, handler: MediaHandler) -> None:
        self._handler = handler

    async def RegisterParticipant(
        self, request: mc_pb.RegisterParticipant
    ) -> mc_pb.RegisterParticipantResponse:
        return await self._handler.register_participant(request)

    async def RouteMedia(self, request: mc_pb.RouteMediaCommand) -> mc_pb.RouteMediaResponse:
        return await self._handler.route_media(request)

    async def RemoveParticipant(
        self, request: mc_pb.RemoveParticipantRequest
    ) -> mc_pb.RemoveParticipantResponse:
        return await self._handler.remove_participant(request)

    async def RemoveStream(self, request: mc_pb.RemoveStreamRequest) -> mc_pb.RemoveStreamResponse:
        return await self._handler.remove_stream(request)

    async def Telemetry(
        self, request: mc_pb.TelemetryRequest
    ) -> AsyncIterator[mc_pb.TelemetryEvent]:
        async for event in self._handler.telemetry(request):
            yield event


def _credentials(settings: Settings) -> TlsCredentials:
    if settings.certfile and settings.keyfile:
        return TlsCredentials.from_files(settings.certfile, settings.keyfile)
    creds = generate_dev_certificate()
    logger.info("generated a dev certificate", extra=fields(sha256=creds.sha256.hex()))
    return creds


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the Media Handler until ``shutdown`` is set, then drain and return.

    Reports :class:`Running` once every listener is bound. Owns every task and socket it
    starts. Cancelled from outside, the tree still ends its rooms (bounded cleanups). Raises
    OSError if a port cannot be bound.
    """
    registry = Registry()
    metrics = MediaMetrics(registry)
    tls = _credentials(settings)
    public_host = settings.public_host or settings.host
    handler_id = settings.handler_id or f"mh-{secrets.token_hex(4)}"
    ready = trio.Event() if settings.mc_grpc else None
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        tree = TaskTree(registry=registry)
        await nursery.start(tree.run)
        handler = MediaHandler(tree, settings, metrics)
        server = WebTransportServer(
            ServerConfig(
                tls=tls,
                host=settings.host,
                port=settings.port,
                allowed_origins=parse_origins(settings.allowed_origins),
                limits=TransportLimits(
                    retry_threshold=settings.quic_retry_threshold,
                    max_connections_per_address=settings.max_connections_per_address,
                ),
            ),
            {MEDIA_PATH: Route(handler.handle_session, authorize=handler.authorize)},
        )
        count_refusals(registry, server.counters)
        host, port = await nursery.start(server.run)
        handler.media_url = f"https://{_netloc(public_host, port)}{MEDIA_PATH}"
        grpc_port = await nursery.start(
            serve_rpc,
            [rpc_service(MediaControlBase, MediaControl(handler))],
            settings.host,
            settings.grpc_port,
        )

        def render() -> str:
            handler.refresh_gauges()
            return registry.render()

        ops_port = await nursery.start(
            lambda task_status: serve_ops(
                "127.0.0.1",
                settings.ops_port,
                metrics=render,
                ready=lambda: ready is None or ready.is_set(),
                tree=tree.snapshot,
                task_status=task_status,
            )
        )
        nursery.start_soon(handler.report_telemetry)
        grpc_endpoint = f"{_netloc(public_host, grpc_port)}"
        if settings.mc_grpc and ready is not None:
            nursery.start_soon(
                _register_with_mc, settings.mc_grpc, handler, handler_id, grpc_endpoint, ready
            )
        running = Running(
            handler_id=handler_id,
            media_url=handler.media_url,
            media_address=(host, port),
            grpc_address=(settings.host, grpc_port),
            ops_url=f"http://127.0.0.1:{ops_port}",
            certificate_sha256=tls.sha256,
            handler=handler,
            server=server,
        )
        logger.info(
            "media handler running",
            extra=fields(media_url=running.media_url, grpc=grpc_endpoint, ops=running.ops_url),
        )
        task_status.started(running)
        await shutdown.wait()
        logger.info("media handler draining", extra=fields(grace_s=settings.drain_grace_s))
        tree.drain(settings.drain_grace_s)
        await tree.wait_closed()
        nursery.cancel_scope.cancel(reason="media handler shut down")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _load(handler: MediaHandler) -> mtg_pb.MediaHandlerLoad:
    rooms, participants, streams = handler.load()
    return mtg_pb.MediaHandlerLoad(rooms=rooms, participants=participants, streams=streams)


async def _register_with_mc(
    mc: str, handler: MediaHandler, handler_id: str, endpoint: str, ready: trio.Event
) -> None:
    """Register with the MC, then heartbeat our load; register again when the MC forgets us
    (NOT_FOUND), retry with backoff while it is unreachable. Runs until cancelled."""
    host, _, port = mc.rpartition(":")
    settings = handler.settings
    capacity = mtg_pb.MediaHandlerLoad(
        rooms=settings.max_rooms,
        participants=settings.max_rooms * settings.max_participants_per_room,
        streams=0,
    )
    backoff = REGISTER_BACKOFF_S
    async with open_rpc_channel(host.strip("[]"), int(port)) as channel:
        stub = MeetingControlStub(channel)
        while True:
            try:
                reply = await call(
                    stub.RegisterMediaHandler,
                    mtg_pb.RegisterMediaHandler(
                        handler_id=handler_id,
                        endpoint=endpoint,
                        media_url=handler.media_url,
                        capacity=capacity,
                    ),
                    deadline_s=MC_CALL_DEADLINE_S,
                )
                ready.set()
                backoff = REGISTER_BACKOFF_S
                interval = (reply.heartbeat_interval_ms / 1000) or MH_HEARTBEAT_INTERVAL_S
                while True:
                    await trio.sleep(interval)
                    await call(
                        stub.MediaHandlerHeartbeat,
                        mtg_pb.MediaHandlerHeartbeat(
                            handler_id=handler_id,
                            load=_load(handler),
                            health=common_pb2.HEALTHY,
                        ),
                        deadline_s=MC_CALL_DEADLINE_S,
                    )
            except (NotFound, RpcError) as exc:
                logger.warning(
                    "registration with the MC failed; retrying",
                    extra=fields(mc=mc, error=str(exc), retry_s=backoff),
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, REGISTER_BACKOFF_MAX_S)
