"""``serve``: the Media Handler process (or part of ``python -m darktower``).

Owns, in one nursery: the task tree (rooms ⊃ participants ⊃ streams), the WebTransport server
(``/v1/media``), the MediaControl gRPC server, the ops listener, the telemetry reporter, the
registration with the MC and the links to the media processors with their jobs' tasks
(docs/architecture.md §10). Its gRPC, both ways, is mutual TLS with the cluster CA: only an MC
calls it, and it registers as the handler id its certificate names (docs/architecture.md §8).
On ``shutdown`` it drains without ending a meeting (docs/architecture.md §3.5, §4.6): takes no
new room, tells its MC (which moves the rooms to another MH), waits for its participants to
leave for their new MH, then closes what is left (CONNECTION_LOST) within ``drain_grace_s``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

import attrs
import trio

from darktower.errors import Forbidden, NotFound
from darktower.logs import fields
from darktower.metrics import Registry, count_refusals
from darktower.model import LeaveReason
from darktower.nurseries import TaskTree
from darktower.protocol.addresses import netloc, split_host_port
from darktower.protocol.heartbeats import MH_HEARTBEAT_INTERVAL_S
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.servicekit import (
    ClusterTls,
    KeepRegistered,
    ServiceRole,
    callers,
    dialable_host,
    expect_peer,
    load_cluster_tls,
    own_id,
    serve_ops,
    tls_credentials,
)
from darktower.transport import (
    MEDIA_PEER_ACK_DELAY_S,
    Route,
    ServerConfig,
    TransportLimits,
    WebTransportServer,
    parse_origins,
)
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
    DRAIN_CLOSE_SHARE,
    MC_CALL_DEADLINE_S,
    REGISTER_BACKOFF_MAX_S,
    REGISTER_BACKOFF_S,
)
from ._metrics import MediaMetrics
from ._processing_links import parse_processors
from ._settings import Settings
from ._speaking import Speaking

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
    """The MediaControl gRPC methods (trio), delegating to the :class:`MediaHandler`; only an
    MC may call them (:data:`CALLERS`)."""

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

    async def StartRecording(
        self, request: mc_pb.StartRecordingRequest
    ) -> mc_pb.StartRecordingResponse:
        return await self._handler.processing.start_recording(request)

    async def StopRecording(
        self, request: mc_pb.StopRecordingRequest
    ) -> mc_pb.StopRecordingResponse:
        return await self._handler.processing.stop_recording(request)


# Who may call each method (``servicekit.callers``): the MC, for everything.
CALLERS = {
    name: ServiceRole.MC
    for name in (
        "RegisterParticipant",
        "RouteMedia",
        "RemoveParticipant",
        "RemoveStream",
        "Telemetry",
        "StartRecording",
        "StopRecording",
    )
}


class MeetingControllerPeer:
    """The MC this MH stays registered with (the :class:`~darktower.servicekit.Peer` of its
    :class:`~darktower.servicekit.KeepRegistered` loop): registration, then our load."""

    def __init__(
        self, stub: MeetingControlStub, handler: MediaHandler, handler_id: str, endpoint: str
    ) -> None:
        self._stub = stub
        self._handler = handler
        self._handler_id = handler_id
        self._endpoint = endpoint
        settings = handler.settings
        self._capacity = mtg_pb.MediaHandlerLoad(
            rooms=settings.max_rooms,
            participants=settings.max_rooms * settings.max_participants_per_room,
            streams=0,
        )

    async def register(self) -> float:
        reply = await call(
            self._stub.RegisterMediaHandler,
            mtg_pb.RegisterMediaHandler(
                handler_id=self._handler_id,
                endpoint=self._endpoint,
                media_url=self._handler.media_url,
                capacity=self._capacity,
            ),
            deadline_s=MC_CALL_DEADLINE_S,
        )
        return reply.heartbeat_interval_ms / 1000

    async def heartbeat(self) -> None:
        """Our load; NotFound when the MC forgot us (it restarted): we register again."""
        rooms, participants, streams = self._handler.load()
        await call(
            self._stub.MediaHandlerHeartbeat,
            mtg_pb.MediaHandlerHeartbeat(
                handler_id=self._handler_id,
                load=mtg_pb.MediaHandlerLoad(
                    rooms=rooms, participants=participants, streams=streams
                ),
                health=common_pb2.HEALTHY,
                draining=self._handler.draining,
            ),
            deadline_s=MC_CALL_DEADLINE_S,
        )


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    cluster: ClusterTls | None = None,
) -> None:
    """Run the Media Handler until ``shutdown`` is set, then drain and return.

    Reports :class:`Running` once every listener is bound. Owns every task and socket it
    starts. Cancelled from outside, the tree still ends its rooms (bounded cleanups).
    ``cluster``: its credentials for gRPC (default: the ``--cluster-*`` files); its handler id
    is the one its certificate names. Raises OSError if a port cannot be bound, ValueError for
    a bad MC or processor address, ConfigError without usable cluster credentials.
    """
    cluster = load_cluster_tls(
        settings.cluster_ca,
        settings.cluster_cert,
        settings.cluster_key,
        role=ServiceRole.MH,
        given=cluster,
    )
    handler_id = own_id(cluster, settings.handler_id, "--handler-id")
    mc_address = split_host_port(settings.mc_grpc) if settings.mc_grpc else None
    parse_processors(settings.processors)  # a bad address fails here, not in the nursery
    registry = Registry()
    metrics = MediaMetrics(registry)
    tls = tls_credentials(settings.certfile, settings.keyfile, log=logger)
    public_host = settings.public_host or settings.host
    registration = KeepRegistered(
        peer_name="MC",
        address=settings.mc_grpc,
        default_interval_s=MH_HEARTBEAT_INTERVAL_S,
        backoff_s=REGISTER_BACKOFF_S,
        backoff_max_s=REGISTER_BACKOFF_MAX_S,
        retry_on=(NotFound, Forbidden, RpcError),
        log=logger,
    )
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
                    peer_ack_delay_s=MEDIA_PEER_ACK_DELAY_S,
                    quic_core=settings.quic_core,
                ).for_media(),  # it receives media too (docs/decisions.md)
            ),
            {MEDIA_PATH: Route(handler.handle_session, authorize=handler.authorize)},
        )
        count_refusals(registry, server.counters)
        host, port = await nursery.start(server.run)
        handler.media_url = f"https://{netloc(public_host, port)}{MEDIA_PATH}"
        await nursery.start(handler.processing.run, cluster, tls.sha256)
        grpc_port = await nursery.start(
            functools.partial(
                serve_rpc,
                [rpc_service(MediaControlBase, MediaControl(handler), authorize=callers(CALLERS))],
                settings.grpc_host,
                settings.grpc_port,
                tls=cluster.server_context(),
            )
        )

        def render() -> str:
            handler.refresh_gauges()
            return registry.render()

        ops_url = await nursery.start(
            functools.partial(
                serve_ops,
                settings.ops_port,
                metrics=render,
                # Ready once the MC has taken a registration (or when there is no MC).
                ready=lambda: mc_address is None or registration.registered,
                tree=tree.snapshot,
            )
        )
        nursery.start_soon(handler.report_telemetry)
        nursery.start_soon(handler.adaptation.run, lambda: handler.rooms.values())
        speaking = Speaking(
            handler.telemetry_hub, last_n=settings.last_n, room_size=settings.last_n_room_size
        )
        nursery.start_soon(speaking.run, lambda: handler.rooms.values())
        grpc_endpoint = netloc(dialable_host(settings.grpc_host, public_host), grpc_port)
        if mc_address is not None:
            nursery.start_soon(
                _stay_registered,
                registration,
                mc_address,
                cluster,
                handler,
                handler_id,
                grpc_endpoint,
            )
        running = Running(
            handler_id=handler_id,
            media_url=handler.media_url,
            media_address=(host, port),
            grpc_address=(settings.grpc_host, grpc_port),
            ops_url=ops_url,
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
        await _drain(handler, registration, tree, settings.drain_grace_s, mc_address is not None)
        nursery.cancel_scope.cancel(reason="media handler shut down")


async def _drain(
    handler: MediaHandler,
    registration: KeepRegistered,
    tree: TaskTree,
    grace_s: float,
    has_mc: bool,
) -> None:
    """Drain without ending any meeting (docs/architecture.md §4.6): take no new room, tell
    the MC at once (its next heartbeat says ``draining``: the MC moves the rooms to another MH
    and the clients reconnect their media there), wait until no participant is connected here
    or ``grace_s`` is spent, end the jobs on media processors (SERVER_SHUTDOWN), then close what
    is left with CONNECTION_LOST, whose close carries no reason (a client asks its MC for media
    again: never MEETING_ENDED, the meeting goes on) within the rest of the grace."""
    deadline = trio.current_time() + grace_s
    handler.start_draining()
    logger.info(
        "media handler draining",
        extra=fields(grace_s=grace_s, connected=handler.connected()),
    )
    if has_mc:
        registration.beat_now()
    if has_mc and handler.connected():
        with trio.move_on_at(deadline - DRAIN_CLOSE_SHARE * grace_s):
            await handler.wait_nobody_connected()
    left = handler.connected()
    if left:
        logger.warning("drain: participants still connected", extra=fields(connected=left))
    # The jobs on media processors end with the reason the meeting goes on elsewhere, before
    # the rooms close their sessions (docs/architecture.md §10).
    with trio.move_on_at(deadline):
        await handler.processing.stop_all(LeaveReason.SERVER_SHUTDOWN)
    tree.drain(max(0.0, deadline - trio.current_time()), LeaveReason.CONNECTION_LOST)
    await tree.wait_closed()


async def _stay_registered(
    registration: KeepRegistered,
    mc: tuple[str, int],
    cluster: ClusterTls,
    handler: MediaHandler,
    handler_id: str,
    endpoint: str,
) -> None:
    """Keep this MH registered with the MC at ``mc`` until cancelled; owns the channel (mutual
    TLS, to an MC's certificate)."""
    async with open_rpc_channel(
        *mc, tls=cluster.client_context(), check_peer=expect_peer(ServiceRole.MC)
    ) as channel:
        stub = MeetingControlStub(channel)
        await registration.run(MeetingControllerPeer(stub, handler, handler_id, endpoint))
