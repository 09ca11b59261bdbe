"""The Media Handlers this MC uses: registered ones (RegisterMediaHandler + heartbeats) and an
optional static one; placement of rooms on the least-loaded live MH; one telemetry stream each.

An MH is declared lost when its telemetry stream's connection breaks or it misses two
heartbeats (docs/architecture.md §4.6): it takes no rooms until it registers again, its
telemetry no longer counts, and the pool's ``on_lost`` (the controller) moves its rooms.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.protocol.addresses import split_host_port
from darktower.protocol.heartbeats import MH_HEARTBEAT_INTERVAL_S, MH_HEARTBEAT_TIMEOUT_S
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
from darktower.servicekit import ClusterTls, ServiceRole, expect_peer
from darktower.transport.rpc import RpcUnavailable, call, open_rpc_channel, open_stream_call

from ._limits import (
    MH_CALL_DEADLINE_S,
    MH_LOSS_CHECK_S,
    TELEMETRY_BACKOFF_MAX_S,
    TELEMETRY_BACKOFF_S,
)

logger = logging.getLogger("darktower.meeting_controller.mh")

OnTelemetry = Callable[[mh_pb.TelemetryEvent], None]
# An MH that has not heartbeated for this long is declared lost: two heartbeat intervals, plus
# one check period for a beat that is merely late.
MH_LOST_AFTER_S = 2 * MH_HEARTBEAT_INTERVAL_S + MH_LOSS_CHECK_S


class MediaLink(Protocol):
    """What the MC needs of one Media Handler (a gRPC link, or a fake in tests)."""

    handler_id: str
    rooms: int

    def usable(self, now: float) -> bool: ...
    def load_key(self) -> tuple[float, ...]: ...
    async def register_participant(
        self, request: mh_pb.RegisterParticipant
    ) -> mh_pb.RegisterParticipantResponse: ...
    async def route_media(self, request: mh_pb.RouteMediaCommand) -> mh_pb.RouteMediaResponse: ...
    async def remove_participant(self, request: mh_pb.RemoveParticipantRequest) -> None: ...
    async def remove_stream(self, request: mh_pb.RemoveStreamRequest) -> None: ...
    async def start_recording(self, request: mh_pb.StartRecordingRequest) -> None: ...
    async def stop_recording(self, request: mh_pb.StopRecordingRequest) -> None: ...


@attrs.define(eq=False)
class GrpcMediaLink:
    """A Media Handler reached over gRPC; ``run`` owns its channel and telemetry stream.

    With ``cluster`` the channel is mutual TLS and the MH must hold the certificate of
    ``handler_id`` (of any MH for a static one; docs/architecture.md §8).
    """

    handler_id: str
    address: tuple[str, int]
    media_url: str = ""
    static: bool = False
    capacity: mtg_pb.MediaHandlerLoad = attrs.field(factory=mtg_pb.MediaHandlerLoad)
    load: mtg_pb.MediaHandlerLoad = attrs.field(factory=mtg_pb.MediaHandlerLoad)
    health: int = common_pb2.HEALTHY
    last_seen: float = -math.inf
    rooms: int = 0  # rooms this MC placed here
    # Participants this MC registered here since the MH's last load report: a burst of joins
    # between two heartbeats counts at once (docs/architecture.md §4.6).
    placed: int = 0
    stub: MediaControlStub | None = None
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    cluster: ClusterTls | None = None
    # Declared gone (its rooms were moved): no rooms until it registers again.
    lost: bool = False
    # Its heartbeat said it drains: no rooms; its rooms move while it still serves them.
    draining: bool = False

    def usable(self, now: float) -> bool:
        if self.lost or self.draining or self.stub is None:
            return False
        if self.health == common_pb2.UNHEALTHY:
            return False
        return self.static or now - self.last_seen <= MH_HEARTBEAT_TIMEOUT_S

    def load_key(self) -> tuple[float, ...]:
        cap = self.capacity.participants or 0
        share = (self.load.participants + self.placed) / cap if cap else 0.0
        return (float(self.health), share, float(max(self.rooms, self.load.rooms)))

    async def register_participant(
        self, request: mh_pb.RegisterParticipant
    ) -> mh_pb.RegisterParticipantResponse:
        reply = await call(self._stub().RegisterParticipant, request, deadline_s=MH_CALL_DEADLINE_S)
        self.placed += 1
        return reply

    async def route_media(self, request: mh_pb.RouteMediaCommand) -> mh_pb.RouteMediaResponse:
        """Route (or stop routing) a stream; with a transcode or a mix, the reply names the
        stream the destinations receive instead (``derived_stream_id``)."""
        return await call(self._stub().RouteMedia, request, deadline_s=MH_CALL_DEADLINE_S)

    async def remove_participant(self, request: mh_pb.RemoveParticipantRequest) -> None:
        await call(self._stub().RemoveParticipant, request, deadline_s=MH_CALL_DEADLINE_S)

    async def remove_stream(self, request: mh_pb.RemoveStreamRequest) -> None:
        """The publisher unpublished ``request.stream_id``: the MH stops routing it and ends
        its subscribers' streams before this returns. Idempotent; raises NotFound if another
        participant publishes that stream id, RpcError if the MH is unreachable."""
        await call(self._stub().RemoveStream, request, deadline_s=MH_CALL_DEADLINE_S)

    async def start_recording(self, request: mh_pb.StartRecordingRequest) -> None:
        """Record a participant through a media processor; CapacityExceeded when the MH has
        none free (docs/architecture.md §10)."""
        await call(self._stub().StartRecording, request, deadline_s=MH_CALL_DEADLINE_S)

    async def stop_recording(self, request: mh_pb.StopRecordingRequest) -> None:
        await call(self._stub().StopRecording, request, deadline_s=MH_CALL_DEADLINE_S)

    def _stub(self) -> MediaControlStub:
        if self.stub is None:
            raise DarkTowerError(f"media handler {self.handler_id} is not connected")
        return self.stub

    async def run(
        self,
        on_event: OnTelemetry,
        on_lost: Callable[[GrpcMediaLink], None] = lambda link: None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the channel and the Telemetry stream until cancelled (re-opened on failure; a
        failure to reach the MH at all, the connection refused or broken, calls ``on_lost``).

        Reports started once calls can be made (the channel connects at the first call).
        """
        backoff = TELEMETRY_BACKOFF_S
        tls = self.cluster.client_context() if self.cluster is not None else None
        check = expect_peer(ServiceRole.MH, None if self.static else self.handler_id)
        with self.cancel_scope:
            async with open_rpc_channel(
                *self.address, tls=tls, check_peer=check if tls is not None else None
            ) as channel:
                self.stub = MediaControlStub(channel)
                task_status.started()
                while True:
                    try:
                        async with open_stream_call(
                            self.stub.Telemetry, mh_pb.TelemetryRequest()
                        ) as events:
                            async for event in events:
                                backoff = TELEMETRY_BACKOFF_S
                                try:
                                    on_event(event)
                                except Exception:  # one event's handling, not the stream's
                                    logger.exception("an MH telemetry event failed")
                    except DarkTowerError as exc:
                        logger.info(
                            "telemetry stream from MH ended",
                            extra=fields(handler_id=self.handler_id, error=str(exc)),
                        )
                        if isinstance(exc, RpcUnavailable):
                            on_lost(self)
                    except Exception:
                        # The link is an error boundary: whatever the RPC machinery raises
                        # ends this stream (the MH counts as lost), never the MC.
                        logger.exception(
                            "telemetry stream from MH failed",
                            extra=fields(handler_id=self.handler_id),
                        )
                        on_lost(self)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, TELEMETRY_BACKOFF_MAX_S)


class MediaHandlers:
    """The MH links; ``run`` owns every link's task."""

    def __init__(self, on_event: OnTelemetry, *, cluster: ClusterTls | None = None) -> None:
        self.cluster = cluster  # the MC's credentials for the links it makes
        self.links: dict[str, MediaLink] = {}
        self._on_event = on_event
        self._nursery: trio.Nursery | None = None
        self._added = trio.Event()
        # Set by the controller: an MH was declared lost or drains (move its rooms); an MH can
        # take rooms (again); does telemetry from this MH about this meeting count (its room is
        # there)?
        self.on_lost: Callable[[MediaLink], None] = lambda link: None
        self.on_usable: Callable[[MediaLink], None] = lambda link: None
        self.counts: Callable[[MediaLink, str], bool] = lambda link, meeting_id: True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the links' tasks until cancelled, and declare lost every registered MH that
        missed two heartbeats (checked every MH_LOSS_CHECK_S).

        Silence is counted only while this MC runs: a check that wakes more than a check
        period late (the MC, or the whole machine, was paused) moves every link's
        ``last_seen`` on by the pause, never past now, since a heartbeat sent meanwhile may
        still be unread (docs/architecture.md §4.6)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            due = trio.current_time() + MH_LOSS_CHECK_S
            while True:
                await trio.sleep_until(due)
                now = trio.current_time()
                paused = now - due
                due = now + MH_LOSS_CHECK_S
                if paused > MH_LOSS_CHECK_S:
                    logger.info(
                        "this MC was paused; its MHs' silence meanwhile does not count",
                        extra=fields(paused_s=round(paused, 3)),
                    )
                else:
                    paused = 0.0  # late by less than a check period: on time
                for link in list(self.links.values()):
                    if not isinstance(link, GrpcMediaLink):
                        continue
                    if paused:
                        link.last_seen = min(link.last_seen + paused, now)
                    if not link.static and now - link.last_seen > MH_LOST_AFTER_S:
                        self.declare_lost(link)

    def declare_lost(self, link: MediaLink) -> None:
        """``link``'s MH is gone: no rooms until it registers again; ``on_lost`` moves its
        rooms. Once per loss."""
        if not isinstance(link, GrpcMediaLink) or link.lost or link.static:
            return  # (a static MH never registers again: it stays, as before)
        link.lost = True
        logger.warning("media handler lost", extra=fields(handler_id=link.handler_id))
        # Forgotten with its task: if it lives, its next heartbeat gets NOT_FOUND and it
        # registers again as a new link; ids that never come back leave nothing behind.
        link.cancel_scope.cancel()
        if self.links.get(link.handler_id) is link:
            del self.links[link.handler_id]
        self.on_lost(link)

    def _telemetry_of(self, link: MediaLink, event: mh_pb.TelemetryEvent) -> None:
        if self.counts(link, event.meeting_id):
            self._on_event(event)

    async def add(self, link: MediaLink) -> None:
        """Use ``link`` (a fake or a gRPC link, whose task this pool then owns); returns once
        it can take calls. Raises RuntimeError unless the pool runs."""
        old = self.links.pop(link.handler_id, None)
        if isinstance(old, GrpcMediaLink):
            old.cancel_scope.cancel()
            self.declare_lost(old)  # replaced (a new address): its rooms move
        self.links[link.handler_id] = link
        if isinstance(link, GrpcMediaLink):
            if self._nursery is None:
                raise RuntimeError("MediaHandlers is not running")
            on_event = functools.partial(self._telemetry_of, link)
            await self._nursery.start(link.run, on_event, self.declare_lost)
        else:
            await trio.lowlevel.checkpoint()
        self._added.set()
        self._added = trio.Event()
        self.on_usable(link)

    async def wait_for(self, handler_id: str) -> MediaLink:
        """Wait until the MH ``handler_id`` is linked and callable (launchers, tests)."""
        while handler_id not in self.links or not self.links[handler_id].usable(
            trio.current_time()
        ):
            await self._added.wait()
        return self.links[handler_id]

    async def register(self, request: mtg_pb.RegisterMediaHandler, now: float) -> None:
        link = self.links.get(request.handler_id)
        address = split_host_port(request.endpoint)
        if isinstance(link, GrpcMediaLink) and link.address == address and not link.lost:
            link.media_url, link.last_seen = request.media_url, now
            link.capacity.CopyFrom(request.capacity)
            await trio.lowlevel.checkpoint()
            return
        # New, moved, or back after it was declared lost (restarted: it knows no room): a new
        # link, with a fresh channel and telemetry stream.
        new = GrpcMediaLink(
            request.handler_id, address, request.media_url, last_seen=now, cluster=self.cluster
        )
        new.capacity.CopyFrom(request.capacity)
        await self.add(new)
        logger.info("media handler registered", extra=fields(handler_id=request.handler_id))

    def heartbeat(self, request: mtg_pb.MediaHandlerHeartbeat, now: float) -> bool:
        link = self.links.get(request.handler_id)
        if not isinstance(link, GrpcMediaLink) or link.lost:
            return False  # unknown or declared lost: it registers again
        link.load.CopyFrom(request.load)
        link.placed = 0  # counted in this report
        link.health = request.health
        link.last_seen = now
        if request.draining != link.draining:
            link.draining = request.draining
            if link.draining:
                logger.info("media handler draining", extra=fields(handler_id=link.handler_id))
                self.on_lost(link)  # its rooms move
            else:
                self.on_usable(link)
        return True

    def serving(self, link: MediaLink) -> bool:
        """Whether ``link``'s MH drains but still serves its rooms (they may stay until
        another MH can take them)."""
        return isinstance(link, GrpcMediaLink) and link.draining and not link.lost

    def choose(self, now: float) -> MediaLink | None:
        """The least-loaded usable MH, or None."""
        usable = [link for link in self.links.values() if link.usable(now)]
        return min(usable, key=lambda link: link.load_key(), default=None)
