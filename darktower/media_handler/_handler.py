"""The Media Handler service object: the MediaControl RPCs, rooms and members.

Task ownership (docs/architecture.md §4.3)::

    TaskTree (the service's)
    └── room scope (one per meeting; its body expires stale registrations)
        └── participant scope (one per media connection; its body accepts streams)
            ├── "pub:<n>"            one per published QUIC stream: decode → route
            └── "sub:<stream id>"    one per subscription: queue → a uni stream to the client

The handler composes its parts: the rooms (:class:`RoomRegistry`), the subscriptions
(:class:`MediaRouter`), the media connections and publish streams (:class:`MediaPlane`), the
telemetry to the MCs and the jobs on media processors (:class:`Processing`, whose hidden
participants are members of the rooms like any other, docs/architecture.md §10).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    InvalidRequest,
    NotFound,
)
from darktower.model import LeaveReason, MeetingId, ParticipantId, StreamId, StreamType
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.tokens import ConnectionTokenAuthority
from darktower.transport import ConnectRequest, WebTransportSession

from ._adapt import Adaptation
from ._budget import ByteBudget
from ._ingress import IngressBuffer
from ._metrics import MediaMetrics
from ._plane import MediaPlane
from ._processing import Processing
from ._registry import RoomRegistry
from ._room import (
    MediaMember,
    MediaPublication,
    MediaRoom,
    RouteOptions,
    parse_stream_id,
)
from ._router import MediaRouter
from ._settings import Settings
from ._simulcast import Layer
from ._stats import StreamStats
from ._telemetry import TelemetryHub, TelemetryReporter


class MediaHandler:
    """Rooms, members and routing of one MH process, on a running :class:`TaskTree`.

    The MediaControl methods (``register_participant``, ``route_media``,
    ``remove_participant``, ``telemetry``), and ``authorize``/``handle_session`` for the
    ``/v1/media`` route, are called by the service's servers; every task they start is owned by
    the tree (rooms, participants, streams).
    """

    def __init__(
        self,
        tree: TaskTree,
        settings: Settings,
        metrics: MediaMetrics,
        *,
        media_url: str = "",
        authority: ConnectionTokenAuthority | None = None,
    ) -> None:
        self.tree = tree
        self.settings = settings
        self.metrics = metrics
        self.media_url = media_url
        self.authority = authority or ConnectionTokenAuthority(leeway_s=settings.token_leeway_s)
        self.telemetry_hub = TelemetryHub(metrics)
        self.reporter = TelemetryReporter(self.telemetry_hub, metrics)
        self.registry = RoomRegistry(tree, settings)
        self.router = MediaRouter(settings, metrics, self.telemetry_hub)
        self.plane = MediaPlane(
            settings, metrics, self.authority, self.registry, self.router, self.telemetry_hub
        )
        self.processing = Processing(self)
        self.adaptation = Adaptation(self.router, self.telemetry_hub)  # docs/protocol.md §17
        self.registry.forgetting = self.processing.forgetting
        self.router.derived_key_frame = self.processing.key_frame

    @property
    def rooms(self) -> dict[MeetingId, MediaRoom]:
        """The rooms on this MH by meeting id (the registry's; read-only use)."""
        return self.registry.rooms

    # -- the /v1/media route -------------------------------------------------------------------

    async def authorize(self, request: ConnectRequest) -> MediaMember:
        """Verify a media CONNECT's token (see :meth:`MediaPlane.authorize`)."""
        return await self.plane.authorize(request)

    async def handle_session(self, session: WebTransportSession, member: MediaMember) -> None:
        """Serve one participant's media connection (see :meth:`MediaPlane.handle_session`)."""
        await self.plane.handle_session(session, member)

    # -- load --------------------------------------------------------------------------------

    def load(self) -> tuple[int, int, int]:
        """(rooms, registered participants, registered streams) on this MH now."""
        return self.registry.load()

    def connected(self) -> int:
        """Participants with a live media connection here now (a media processor's jobs are
        not participants: they end with the rooms)."""
        job_of = self.processing.book.job_of
        return sum(
            1
            for r in self.rooms.values()
            for x in r.members.values()
            if x.scope and job_of(x) is None
        )

    @property
    def draining(self) -> bool:
        """Draining: no new room; the MC moves the rooms away (docs/architecture.md §4.6)."""
        return self.registry.draining

    def start_draining(self) -> None:
        self.registry.draining = True

    async def wait_nobody_connected(self) -> None:
        """Return once no participant has a live media connection here."""
        while self.connected():
            await self.plane.next_disconnect()

    def refresh_gauges(self) -> None:
        rooms, participants, streams = self.load()
        m = self.metrics
        m.rooms.set(rooms)
        m.participants.set(participants)
        m.streams.set(streams)
        m.connected.set(self.connected())
        m.subscriptions.set(
            sum(len(p.subscriptions) for r in self.rooms.values() for p in r.publications.values())
        )
        m.publish_buffered.set(
            sum(x.ingress.held for r in self.rooms.values() for x in r.members.values())
        )
        self.processing.refresh_gauges()

    # -- RegisterParticipant -------------------------------------------------------------------

    async def register_participant(
        self, request: mc_pb.RegisterParticipant
    ) -> mc_pb.RegisterParticipantResponse:
        """Register (or add streams to) a participant; return a fresh connection token (each
        call; a registered participant keeps its routes, so the token re-attaches it after a
        lost media connection), the URL, and ``created``: True when this MH had no registration
        of it (its first, or it was forgotten after its media grace: its streams and routes
        must be given again, docs/protocol.md §13), False when it kept it.

        Creates the room at its first participant, or anew for a newer ``room_epoch``. Raises
        InvalidRequest (bad ids, types), Conflict (a stream id another participant registered,
        an older room epoch), CapacityExceeded (rooms, participants, streams), ScopeClosed
        while draining.
        """
        pid = ParticipantId(request.participant_id)
        mid = MeetingId(request.meeting_id)
        if not pid or not mid:
            raise InvalidRequest("participant_id and meeting_id are required")
        streams = [_parse_stream(s) for s in request.streams]
        room = await self.registry.room_for(mid, request.room_epoch)
        try:
            member = room.members.get(pid)
            created = member is None
            new = [s for s in streams if member is None or s[0] not in member.publications]
            wire_ids = [w for s in new for w in _wire_ids(s)]
            if len(set(wire_ids)) != len(wire_ids):
                raise InvalidRequest(
                    "a stream or layer id is listed twice", details={"field": "streams"}
                )
            for wire in wire_ids:
                if wire in room.layers:
                    raise Conflict(f"stream {wire.hex()} is already registered in {mid}")
            have = 0 if member is None else member.stream_count()
            if have + len(wire_ids) > self.settings.max_streams_per_participant:
                raise CapacityExceeded(
                    f"{pid} would have {have + len(wire_ids)} streams "
                    f"(limit {self.settings.max_streams_per_participant})"
                )
            if member is None:
                member = self._add_member(room, pid)
                room.speakers.join(pid)  # a participant, not a job's (_speaking.py)
            else:
                # A fresh token: a fresh wait (a member in its media grace keeps that deadline).
                member.registered_at = trio.current_time()
            self.registry.expiry_changed(room)
            added = []
            for stream_id, stream_type, layers, codec in new:
                publication = MediaPublication(
                    stream_id,
                    stream_type,
                    member,
                    layers,
                    StreamStats(stream_id),
                    self.router.count_drops,
                    codec=codec,
                )
                room.add_publication(publication)
                added.append(publication)
        except BaseException:
            self.registry.end_if_empty(room)  # a room made for nothing
            raise
        self.processing.streams_added(member, added)
        token = self.authority.issue(pid, mid, time.time())
        return mc_pb.RegisterParticipantResponse(
            connection_token=token, media_handler_url=self.media_url, created=created
        )

    def _add_member(self, room: MediaRoom, pid: ParticipantId) -> MediaMember:
        if len(room.members) >= self.settings.max_participants_per_room:
            raise CapacityExceeded(f"room {room.id} is full")
        now = trio.current_time()
        member = MediaMember(
            pid,
            room,
            now,
            ByteBudget(self.settings.budget_in_bytes_per_s, now=now),
            ByteBudget(self.settings.budget_out_bytes_per_s, now=now),
            IngressBuffer(self.settings.max_buffered_bytes_per_participant),
        )
        room.members[pid] = member
        return member

    def add_job_member(self, room: MediaRoom, pid: ParticipantId) -> tuple[MediaMember, str]:
        """A participant of the MH's own in ``room``: a media processor's job, and its
        connection token (docs/architecture.md §10). The MC never hears of it: it counts as
        removed, so the end of its media connection tells the MC nothing and forgets it at
        once (no media grace). Raises NotFound for a room that ended, Conflict for a taken id,
        CapacityExceeded for a full room."""
        if self.rooms.get(room.id) is not room:
            raise NotFound(f"room {room.id} ended")
        if pid in room.members:
            raise Conflict(f"participant {pid} exists in {room.id}")
        member = self._add_member(room, pid)
        member.removed = True
        self.registry.expiry_changed(room)
        return member, self.authority.issue(pid, room.id, time.time())

    def add_stream(
        self, member: MediaMember, stream_id: StreamId, stream_type: StreamType, codec: str
    ) -> MediaPublication:
        """Register a stream a job's participant publishes (a derived stream; no limit of a
        participant's streams applies, the job's own bounds do)."""
        publication = MediaPublication(
            stream_id,
            stream_type,
            member,
            (),
            StreamStats(stream_id),
            self.router.count_drops,
            codec=codec,
        )
        member.room.add_publication(publication)
        return publication

    # -- RouteMedia ----------------------------------------------------------------------------

    async def route_media(self, command: mc_pb.RouteMediaCommand) -> mc_pb.RouteMediaResponse:
        """Route (or with ``unroute`` stop routing) a stream to destination participants.

        Returns once every new subscription's task runs. With ``transcode`` or ``mix_audio``
        the destinations get a derived stream instead, made by a media processor
        (:class:`Processing`; its id is ``derived_stream_id``). Raises InvalidRequest for bad
        fields, NotFound for an unknown room, stream or destination, CapacityExceeded (no
        media processor, too many routes) and a processor's refusal as it is.
        """
        options = command.options
        if options.transcode or options.mix_audio:
            return await self.processing.route(command)
        source = StreamId(command.source_stream_id)
        room = self.registry.room_of_stream(MeetingId(command.meeting_id), source)
        job = self.processing.output_job(room.id, source)
        if job is not None:
            return await self.processing.route_output(job, command)
        # A stream nobody registered yet is routed ahead: its subscriptions start when its
        # publisher's first frame claims it (see _room.py).
        publication = room.publications.get(source)
        destinations = self.destinations(room, command, publication)
        wanted = RouteOptions(options.preferred_layer, options.target_bitrate, options.pinned)
        await self.route_stream(room, source, destinations, wanted, unroute=command.unroute)
        return mc_pb.RouteMediaResponse()

    def destinations(
        self,
        room: MediaRoom,
        command: mc_pb.RouteMediaCommand,
        publication: MediaPublication | None,
    ) -> list[ParticipantId]:
        """A RouteMedia's destinations: members of ``room``, none the publisher (NotFound,
        InvalidRequest)."""
        destinations = [ParticipantId(d) for d in command.destination_participant_ids]
        for dest in destinations:
            if dest not in room.members:
                raise NotFound(
                    f"participant {dest} is not registered in {room.id}",
                    details={"field": "destination_participant_ids"},
                )
            if publication is not None and dest == publication.publisher.id:
                raise InvalidRequest(
                    f"{dest} publishes {command.source_stream_id}: cannot route it to itself",
                    details={"field": "destination_participant_ids"},
                )
        return destinations

    async def route_stream(
        self,
        room: MediaRoom,
        source: StreamId,
        destinations: list[ParticipantId],
        wanted: RouteOptions,
        *,
        unroute: bool = False,
    ) -> None:
        """Route ``source`` to ``destinations`` (members of ``room``) or stop; returns once
        every new subscription's task runs. CapacityExceeded past the room's routed streams."""
        publication = room.publications.get(source)
        if source not in room.routes and len(room.routes) >= self._max_routed_streams():
            raise CapacityExceeded(f"room {room.id} routes {len(room.routes)} streams")
        table = room.routes.setdefault(source, {})
        for dest in destinations:
            if unroute:
                table.pop(dest, None)
                sub = None if publication is None else publication.subscriptions.pop(dest, None)
                if sub is not None and sub.task is not None:
                    sub.task.cancel()
                continue
            table[dest] = wanted
            member = room.members.get(dest)
            if (
                publication is not None
                and member is not None
                and member.scope is not None
                and member.session
            ):
                await self.router.subscribe(publication, member, wanted)
        if not table:
            room.routes.pop(source, None)

    def _max_routed_streams(self) -> int:
        # Bounds RouteMedia's table per room, including streams routed before they exist.
        return self.settings.max_participants_per_room * self.settings.max_streams_per_participant

    # -- RemoveParticipant ---------------------------------------------------------------------

    async def remove_participant(
        self, request: mc_pb.RemoveParticipantRequest
    ) -> mc_pb.RemoveParticipantResponse:
        """End a participant with the request's ``reason`` (the MC's kick, leave or end).

        Returns once its scope closed: every task exited, its session is closed, nothing of it
        can be sent or received any more. Unknown participants are already gone: no error.
        """
        member = self.registry.member(
            MeetingId(request.meeting_id), ParticipantId(request.participant_id)
        )
        if member is None:
            return mc_pb.RemoveParticipantResponse()
        reason = LeaveReason(request.reason)
        transcodes = self.processing.participant_removed(member, reason)
        await self.end_member(member, reason)
        await self.processing.drop_outputs(transcodes)  # their subscribers' streams end too
        return mc_pb.RemoveParticipantResponse()

    async def end_member(self, member: MediaMember, reason: LeaveReason) -> None:
        """End a member with ``reason``; returns once its scope closed (or it was forgotten,
        never connected). A member forgotten already: nothing to do."""
        if member.room.members.get(member.id) is not member:
            await trio.lowlevel.checkpoint()
            return
        if member.connecting:
            await member.settled.wait()
        member.removed = True
        scope = member.scope
        if scope is not None:
            scope.leave(reason)
            await scope.wait_closed()
        elif member.room.members.get(member.id) is member:
            self.registry.forget_member(member)

    # -- RemoveStream ----------------------------------------------------------------------------

    async def remove_stream(self, request: mc_pb.RemoveStreamRequest) -> mc_pb.RemoveStreamResponse:
        """Stop routing a stream its publisher unpublished, and forget it.

        Returns once every subscription task of it and of its transcodes' outputs exited (its
        subscribers' uni streams are reset) and the publisher's QUIC streams carrying it (each
        simulcast layer's) are reset and stopped; its layers and routes are forgotten, so the
        id can be registered again.
        An unknown room or stream is already gone: no error (routes made ahead for it are
        dropped). Raises InvalidRequest for a stream id that is not a UUID, NotFound if another
        participant publishes it.
        """
        stream_id = StreamId(request.stream_id)
        parse_stream_id(stream_id)
        room = self.rooms.get(MeetingId(request.meeting_id))
        publication = None if room is None else room.publications.get(stream_id)
        if room is None or publication is None:
            if room is not None:
                room.routes.pop(stream_id, None)
            await trio.lowlevel.checkpoint()
            return mc_pb.RemoveStreamResponse()
        if publication.publisher.id != request.participant_id:
            raise NotFound(
                f"{request.participant_id} does not publish {stream_id} in {room.id}",
                details={"field": "participant_id"},
            )
        transcodes = self.processing.stream_removed(room, publication)
        await self.drop_publication(room, publication)
        await self.processing.drop_outputs(transcodes)  # docs/protocol.md §8
        return mc_pb.RemoveStreamResponse()

    async def drop_publication(self, room: MediaRoom, publication: MediaPublication) -> None:
        """Forget a stream: returns once every subscription task of it exited and the
        publisher's QUIC streams carrying it are reset and stopped."""
        layers = [
            layer
            for layer in room.layers.values()
            if layer.publication is publication and layer.stream is not None
        ]
        room.forget_key_frames(publication)
        subs = room.remove_publication(publication)
        for layer in layers:
            stream, layer.stream = layer.stream, None
            assert stream is not None
            try:
                stream.reset(0)
                stream.stop_sending(0)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        for sub in subs:
            if sub.task is not None:
                sub.task.cancel()
        for sub in subs:
            if sub.task is not None:
                await sub.task.wait_closed()
        await trio.lowlevel.checkpoint()

    # -- Telemetry -------------------------------------------------------------------------------

    async def telemetry(
        self, request: mc_pb.TelemetryRequest, *, ready: trio.Event | None = None
    ) -> AsyncIterator[mc_pb.TelemetryEvent]:
        """The events for one MC, until it cancels the call."""
        async for event in self.telemetry_hub.subscribe(request.meeting_id, ready=ready):
            yield event

    async def report_telemetry(self) -> None:
        """Every ``telemetry_interval_s``: one MediaTelemetry per registered stream. Runs until
        cancelled (owned by the service nursery)."""
        while True:
            await trio.sleep(self.settings.telemetry_interval_s)
            self.report_once()

    def report_once(self) -> None:
        """Gauges, and one MediaTelemetry per stream with its publisher's QUIC loss."""
        self.refresh_gauges()
        self.reporter.report(self.rooms.values(), trio.current_time(), int(time.time() * 1e6))


def _parse_stream(stream: Any) -> tuple[StreamId, StreamType, tuple[Layer, ...], str]:
    stream_id = StreamId(stream.stream_id)
    parse_stream_id(stream_id)
    try:
        stream_type = StreamType(stream.stream_type)
    except ValueError:
        raise InvalidRequest(
            f"stream {stream_id}: unknown stream_type {stream.stream_type}"
        ) from None
    layers = tuple(
        Layer(StreamId(la.layer_id), la.width, la.height, la.max_bitrate)
        for la in stream.metadata.video.simulcast_layers
    )
    if layers and stream_type == StreamType.AUDIO:
        raise InvalidRequest(f"stream {stream_id}: audio has no simulcast layers")
    for la in layers:
        parse_stream_id(la.layer_id, "layer_id")
    return stream_id, stream_type, layers, stream.metadata.codec


def _wire_ids(stream: tuple[StreamId, StreamType, tuple[Layer, ...], str]) -> list[bytes]:
    stream_id, _, layers, _ = stream
    if layers:
        return [parse_stream_id(la.layer_id, "layer_id") for la in layers]
    return [parse_stream_id(stream_id)]
