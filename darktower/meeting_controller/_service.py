"""``serve``: the Meeting Controller process (or part of ``python -m darktower``).

Owns, in one nursery: the task tree (meetings ⊃ sessions ⊃ reader/writer), the WebTransport
server (``/v1/signal``), the MeetingControl gRPC server, the Media Handler links, the ops
listener and the registration with the GC. Its gRPC, both ways, is mutual TLS with the cluster
CA (docs/architecture.md §8), on its own ``--grpc-host``. On ``shutdown`` it drains (docs/architecture.md §3.5):
stops accepting and hands its participants over — each session ends with SERVER_SHUTDOWN and a
message saying to rejoin, so that the client rejoins the meeting, which goes on, through the GC
(docs/protocol.md §13) — with a deadline of ``drain_grace_s``, then cancels the rest.
"""

from __future__ import annotations

import functools
import logging

import attrs
import trio

from darktower.logs import fields
from darktower.metrics import Registry, count_refusals
from darktower.model import LEAVE_MESSAGES, LeaveReason
from darktower.nurseries import TaskTree
from darktower.protocol.addresses import netloc, split_host_port
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlBase
from darktower.protocol.tokens import JoinTokenVerifier, load_public_key_pem
from darktower.servicekit import (
    ClusterTls,
    ServiceRole,
    callers,
    dialable_host,
    load_cluster_tls,
    own_id,
    serve_ops,
    tls_credentials,
)
from darktower.transport import (
    Route,
    ServerConfig,
    TransportLimits,
    WebTransportServer,
    WebTransportSession,
    WebTransportStream,
    keepalive_for,
    parse_origins,
)
from darktower.transport.rpc import open_rpc_loop, rpc_service, serve_rpc

from ._controller import MeetingController
from ._events import DRAIN_FLUSH_S
from ._limits import KEEPALIVE_INTERVAL_S
from ._mh import GrpcMediaLink, MediaHandlers
from ._port import webtransport_port
from ._registration import Registration
from ._rpc import CALLERS, MeetingControl
from ._settings import Settings

logger = logging.getLogger("darktower.meeting_controller")

SIGNAL_PATH = "/v1/signal"


# What a participant of a draining MC is told with SERVER_SHUTDOWN (docs/protocol.md §13).
SHUTDOWN_MESSAGE = LEAVE_MESSAGES[LeaveReason.SERVER_SHUTDOWN]


def hand_over(controller: MeetingController, message: str = SHUTDOWN_MESSAGE) -> int:
    """Every participant of every meeting leaves with SERVER_SHUTDOWN and ``message`` (the first
    reason wins: one already leaving keeps its own); returns how many were asked. Synchronous,
    so no join slips in before the tree stops accepting; each session's cleanup says goodbye
    and removes the participant at its MH with that reason."""
    count = 0
    for room in list(controller.rooms.values()):
        for member in list(room.members.values()):
            member.end_message = member.end_message or message
            member.leave(LeaveReason.SERVER_SHUTDOWN)
            count += 1
    return count


@attrs.frozen
class Running:
    """What a started MC listens on."""

    controller_id: str
    signal_url: str  # https://HOST:PORT/v1/signal
    signal_address: tuple[str, int]
    grpc_address: tuple[str, int]
    ops_url: str
    certificate_sha256: bytes
    controller: MeetingController = attrs.field(eq=False, repr=False)  # for tests, the launcher
    server: WebTransportServer = attrs.field(eq=False, repr=False)


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    cluster: ClusterTls | None = None,
) -> None:
    """Run the Meeting Controller until ``shutdown`` is set, then drain and return.

    Reports :class:`Running` once every listener is bound. Owns every task and socket it
    starts. Cancelled from outside, the tree still ends its meetings (bounded cleanups).
    ``cluster``: its credentials for gRPC (default: the ``--cluster-*`` files); its controller
    id is the one its certificate names. Raises OSError if a port cannot be bound, ValueError
    for a bad address or key file, ConfigError without usable cluster credentials.
    """
    cluster = load_cluster_tls(
        settings.cluster_ca,
        settings.cluster_cert,
        settings.cluster_key,
        role=ServiceRole.MC,
        given=cluster,
    )
    controller_id = own_id(cluster, settings.controller_id, "--controller-id")
    registry = Registry()
    # A bad address fails the start here, before anything is bound.
    gc = split_host_port(settings.gc_grpc) if settings.gc_grpc else None
    static_mh = split_host_port(settings.media_handler) if settings.media_handler else None
    tls = tls_credentials(settings.certfile, settings.keyfile, log=logger)
    public_host = settings.public_host or settings.host
    verifier = None
    if settings.join_public_key_file:
        key = load_public_key_pem(await trio.Path(settings.join_public_key_file).read_bytes())
        verifier = JoinTokenVerifier(
            key,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            leeway_s=settings.token_leeway_s,
        )
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        tree = TaskTree(registry=registry)
        await nursery.start(tree.run)
        mhs = MediaHandlers(lambda event: controller.on_telemetry(event), cluster=cluster)
        controller = MeetingController(
            tree,
            mhs,
            verifier=verifier,
            registry=registry,
            max_meetings=settings.max_meetings,
            handshake_timeout_s=settings.handshake_timeout_s,
            outbound_queue_size=settings.outbound_queue_size,
            token_audience=settings.token_audience,
            empty_meeting_timeout_s=settings.empty_meeting_timeout_s,
            resume_grace_s=settings.resume_grace_s,
            mix_above_audio_publishers=settings.mix_above_audio_publishers,
        )
        await nursery.start(mhs.run)
        if static_mh is not None:
            await mhs.add(GrpcMediaLink("static", static_mh, static=True, cluster=cluster))

        async def handle(session: WebTransportSession, context: object) -> None:
            with trio.move_on_after(settings.handshake_timeout_s) as scope:
                stream = await session.accept_stream()
            if scope.cancelled_caught:
                session.close_nowait(1, "no signaling stream within the handshake timeout")
                return
            if not isinstance(stream, WebTransportStream):
                session.close_nowait(1, "the signaling stream must be bidirectional")
                return
            await controller.serve_session(webtransport_port(session, stream))

        # Our keepalives hold live clients (a browser idles out after 30 s); a vanished one
        # stops answering and is dropped idle_timeout_s after its last packet (docs/protocol.md §13).
        limits = TransportLimits(
            idle_timeout_s=settings.idle_timeout_s,
            keepalive_interval_s=min(KEEPALIVE_INTERVAL_S, keepalive_for(settings.idle_timeout_s)),
            retry_threshold=settings.quic_retry_threshold,
            max_connections_per_address=settings.max_connections_per_address,
            quic_core=settings.quic_core,
        )
        server = WebTransportServer(
            ServerConfig(
                tls=tls,
                host=settings.host,
                port=settings.port,
                allowed_origins=parse_origins(settings.allowed_origins),
                limits=limits,
            ),
            {SIGNAL_PATH: Route(handle)},
        )
        count_refusals(registry, server.counters)
        host, port = await nursery.start(server.run)
        signal_url = f"https://{netloc(public_host, port)}{SIGNAL_PATH}"
        grpc_port = await nursery.start(
            functools.partial(
                serve_rpc,
                [
                    rpc_service(
                        MeetingControlBase,
                        MeetingControl(controller),
                        authorize=callers(CALLERS),
                    )
                ],
                settings.grpc_host,
                settings.grpc_port,
                tls=cluster.server_context(),
            )
        )
        registration = Registration(
            controller,
            controller_id=controller_id,
            region=settings.region,
            endpoint=netloc(dialable_host(settings.grpc_host, public_host), grpc_port),
            signaling_url=signal_url,
            max_meetings=settings.max_meetings,
            max_participants=settings.max_participants,
            issuer=settings.token_issuer,
            leeway_s=settings.token_leeway_s,
            gc=gc,
            cluster=cluster,
            pinned=verifier is not None,
        )

        def ready() -> bool:
            now = trio.current_time()
            if registration.draining or controller.verifier is None:
                return False
            if controller.mhs.choose(now) is None:
                return False  # no usable Media Handler: a join would be refused
            return gc is None or registration.fresh(now)

        ops_url = await nursery.start(
            functools.partial(
                serve_ops,
                settings.ops_port,
                metrics=registry.render,
                ready=ready,
                tree=tree.snapshot,
            )
        )
        if gc is not None:
            controller.refresh_keys = registration.refresh_keys
            nursery.start_soon(registration.run)
        running = Running(
            controller_id=controller_id,
            signal_url=signal_url,
            signal_address=(host, port),
            grpc_address=(settings.grpc_host, grpc_port),
            ops_url=ops_url,
            certificate_sha256=tls.sha256,
            controller=controller,
            server=server,
        )
        logger.info(
            "meeting controller running",
            extra=fields(signal_url=signal_url, grpc=registration.endpoint, ops=running.ops_url),
        )
        task_status.started(running)
        await shutdown.wait()
        logger.info("meeting controller draining", extra=fields(grace_s=settings.drain_grace_s))
        if gc is None:
            registration.draining = True
        else:
            # The GC hears that we take no more meetings before anyone is told to rejoin
            # through it (else it would send them back here); bounded by half the grace.
            with trio.move_on_after(settings.drain_grace_s / 2):
                await registration.tell_draining()
        handed = hand_over(controller)
        logger.info("participants handed over", extra=fields(participants=handed))
        # The meetings close here with the same reason: they go on elsewhere, nothing ended.
        tree.drain(settings.drain_grace_s, LeaveReason.SERVER_SHUTDOWN)
        await tree.wait_closed()
        if gc is not None:
            # The sessions' last events (their SERVER_SHUTDOWN leaves, their streams) go to
            # the GC before the registration, which sends them, is cancelled; bounded.
            with trio.move_on_after(DRAIN_FLUSH_S):
                await controller.events.wait_empty()
        nursery.cancel_scope.cancel(reason="meeting controller shut down")
