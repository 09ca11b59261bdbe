"""The media plane of the MH: the ``/v1/media`` route and the router's tasks.

Who owns which task: docs/architecture.md §4.3.

:class:`MediaPlane` moves the bytes of :class:`~darktower.media_handler.MediaHandler`: it
accepts a participant's media connection into its room's scope and runs one task per published
QUIC stream (decode, budget, route) and one that relays the session's data messages
(``_data.py``). It is given the rooms (:class:`RoomRegistry`, shared with the RPCs in
``_handler.py``) and the :class:`MediaRouter` that runs the subscriptions.

A participant holds one media connection at a time, and each connection token opens one
(a used token gets 409). A participant whose connection was lost (not removed by the MC, not
kicked) is kept with its routes for the media grace (_limits.py); a connection with a fresh
token (the MC's RegisterParticipant again) re-attaches it: its publish streams are accepted
again and its subscriptions start over at a key frame. A connection with a fresh token while
the first is still open replaces it: the old session is closed with CONFLICT ("replaced by a
newer media connection") and the MC is not told of a loss (docs/protocol.md §13).
"""

from __future__ import annotations

import functools
import logging
import time

import trio

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    ErrorCode,
    StreamError,
    Unauthorized,
)
from darktower.frames import Frame, FrameDecoder, FrameError, FrameType, audio_level_of
from darktower.logs import fields
from darktower.model import LeaveReason, StreamId, StreamType
from darktower.nurseries import Participant, ScopeClosed
from darktower.protocol import close_code_for
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.tokens import ConnectionTokenAuthority
from darktower.servicekit import leave_reason_of
from darktower.transport import (
    ConnectRequest,
    RejectSession,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
)

from ._budget import priority_of
from ._data import DataRelay
from ._limits import MAX_USED_TOKENS_PER_PARTICIPANT, RECEIVE_CHUNK
from ._metrics import MediaMetrics
from ._registry import RoomRegistry
from ._room import (
    KeyFrameCallback,
    MediaMember,
    MediaPublication,
    PublishedLayer,
    frame_kind_matches,
)
from ._router import MediaRouter
from ._settings import Settings
from ._stats import StreamStats
from ._telemetry import TelemetryHub

logger = logging.getLogger("darktower.media_handler")

STREAM_ERROR = int(StreamError.code)
CAPACITY_EXCEEDED = int(CapacityExceeded.code)


class PublishBufferFull(CapacityExceeded):
    """A publish stream's partial frame would take its participant over the buffer cap (the
    policy is in _limits.py; the class name is the stream_errors label)."""


class MediaPlane:
    """Media connections and publish streams of the members in ``rooms``."""

    def __init__(
        self,
        settings: Settings,
        metrics: MediaMetrics,
        authority: ConnectionTokenAuthority,
        rooms: RoomRegistry,
        router: MediaRouter,
        telemetry: TelemetryHub,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.authority = authority
        self.rooms = rooms
        self.router = router
        self.telemetry = telemetry
        self.data = DataRelay(metrics)  # docs/protocol.md §18.4
        self._disconnected = trio.Event()  # set and replaced whenever a media connection ends

    async def next_disconnect(self) -> None:
        """Return when the next media connection ends."""
        await self._disconnected.wait()

    async def authorize(self, request: ConnectRequest) -> MediaMember:
        """Verify ``?token=`` before the session is accepted: 401 unless valid and registered,
        409 while the participant has a media connection."""
        token = request.query.get("token", "")
        try:
            claims = self.authority.verify(token, now=time.time())
        except Unauthorized as exc:
            self.metrics.sessions_refused.inc(1, "401")
            raise RejectSession(401, str(exc)) from None
        member = self.rooms.member(claims.meeting_id, claims.participant_id)
        if member is None:
            self.metrics.sessions_refused.inc(1, "401")
            raise RejectSession(401, "registration expired or removed")
        refusal = self._use_token(member, claims.token_id, claims.expires_at)
        if refusal:
            self.metrics.sessions_refused.inc(1, "409")
            raise RejectSession(409, refusal)
        delay_ms = request.query.get("send_delay_ms", "")  # docs/protocol.md §7
        member.send_delay_s = (
            int(delay_ms) / 1000 if delay_ms.isdecimal() and len(delay_ms) <= 3 else 0.0
        )
        await trio.lowlevel.checkpoint()
        return member

    def _use_token(self, member: MediaMember, token_id: str, expires_at: float) -> str:
        """Record that ``token_id`` opens a connection of ``member``; why not, if it may not."""
        if member.connecting:
            return "participant is connecting already"
        used = member.used_tokens
        if token_id in used:
            return "this connection token was used already"
        now = time.time()
        for old, expiry in list(used.items()):
            if expiry + self.settings.token_leeway_s < now:
                del used[old]
        if len(used) >= MAX_USED_TOKENS_PER_PARTICIPANT:
            return "too many media connections for this participant"
        used[token_id] = expires_at
        return ""

    async def handle_session(self, session: WebTransportSession, member: MediaMember) -> None:
        """Run one participant's media connection in its room; returns when it ended."""
        room = member.room
        if member.connecting or room.members.get(member.id) is not member:
            session.close_nowait(int(Conflict.code), "participant connecting already or gone")
            return
        member.connecting = True
        if member.settled.is_set():
            member.settled = trio.Event()
        try:
            old = member.scope
            if old is not None:  # a newer connection replaces the live one
                member.replacing = True
                try:
                    old.leave(LeaveReason.CONNECTION_LOST)
                    await old.wait_closed()
                finally:
                    member.replacing = False
                if room.members.get(member.id) is not member:
                    raise Conflict("participant removed while reconnecting")
            member.session = session
            if member.send_delay_s:
                session.delay_sends(member.send_delay_s)
            participant = await room.scope.start_participant(
                member.id,
                functools.partial(self._serve_member, member, session),
                cleanup=functools.partial(self._member_left, member, session),
            )
            member.scope = participant
            member.lost_at = None
        except (ScopeClosed, Conflict, CapacityExceeded) as exc:
            member.session = None
            code = exc.code if isinstance(exc, DarkTowerError) else ErrorCode.CONFLICT
            session.close_nowait(int(code), str(exc))
            return
        finally:
            member.connecting = False
            member.settled.set()
        try:
            await participant.wait_closed()
        finally:
            participant.leave(LeaveReason.CONNECTION_LOST)
            with trio.move_on_after(self.settings.drain_grace_s, shield=True):
                await participant.wait_closed()

    async def _serve_member(
        self, member: MediaMember, session: WebTransportSession, participant: Participant
    ) -> None:
        """The participant body: subscribe to what is routed to it, accept published streams."""
        member.scope = participant  # before start_participant returns: routes need it now
        room = member.room
        for source, table in list(room.routes.items()):
            options = table.get(member.id)
            publication = room.publications.get(source)
            if options is not None and publication is not None:
                await self.router.subscribe(publication, member, options)
        if not member.removed:  # a processor's job has no data messages (_data.py)
            await participant.start_stream("data", self.data.serve, member, session)
        serial = 0
        try:
            while True:
                stream = await session.accept_stream()
                if isinstance(stream, WebTransportReceiveStream):
                    stream.stop_sending(STREAM_ERROR)  # clients publish on bidi streams only
                    continue
                # Refused before anything of it is read: the cap on open publish streams
                # (_limits.py); the scope registers a stream task before it runs.
                publishing = sum(1 for name in participant.streams if name.startswith("pub:"))
                if publishing >= self.settings.max_streams_per_participant:
                    self._refuse(member, stream, "TooManyPublishStreams")
                    continue
                serial += 1
                try:
                    await participant.start_stream(f"pub:{serial}", self._publish, member, stream)
                except CapacityExceeded:  # the task tree's own bound on stream tasks
                    self._refuse(member, stream, "TooManyPublishStreams")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            participant.leave(leave_reason_of(session.end))

    def _refuse(self, member: MediaMember, stream: WebTransportStream, cause: str) -> None:
        """Reset and stop a publish stream with CAPACITY_EXCEEDED, counted by ``cause``."""
        self.metrics.stream_errors.inc(1, cause)
        logger.info(
            "publish stream refused",
            extra=fields(participant=member.id, meeting=member.room.id, cause=cause),
        )
        try:
            stream.reset(CAPACITY_EXCEEDED)
            stream.stop_sending(CAPACITY_EXCEEDED)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _member_left(
        self, member: MediaMember, session: WebTransportSession, reason: LeaveReason
    ) -> None:
        """A media connection ended: a replaced one quietly, a lost one keeps the member for
        the media grace (the MC is told), a removal or kick forgets it."""
        member.scope = None
        member.session = None
        self._disconnected.set()
        self._disconnected = trio.Event()
        room = member.room
        if member.replacing:
            session.close_nowait(int(Conflict.code), "replaced by a newer media connection")
            for publication in member.publications.values():
                publication.publisher_lost()
            await trio.lowlevel.checkpoint()
            return
        # CONNECTION_LOST (a drain's leftovers) carries no reason: the client asks its MC for
        # media again instead of ending its session (docs/protocol.md §9).
        code = 0 if reason is LeaveReason.CONNECTION_LOST else close_code_for(reason)
        session.close_nowait(code, reason.name)
        if not member.removed and reason in (LeaveReason.VOLUNTARY, LeaveReason.CONNECTION_LOST):
            self.telemetry.publish(
                mc_pb.TelemetryEvent(
                    meeting_id=room.id,
                    participant_disconnected=mc_pb.ParticipantDisconnected(
                        participant_id=member.id
                    ),
                )
            )
            if (
                self.settings.media_grace_s > 0
                and not room.scope.ending
                and room.members.get(member.id) is member
            ):
                member.lost_at = trio.current_time()
                for publication in member.publications.values():
                    publication.publisher_lost()
                self.rooms.expiry_changed(room)
                await trio.lowlevel.checkpoint()
                return
        self.rooms.forget_member(member)
        await trio.lowlevel.checkpoint()

    async def _publish(self, member: MediaMember, stream: WebTransportStream) -> None:
        """Decode one published QUIC stream and route its frames. A bad frame resets this
        stream with STREAM_ERROR, a partial frame over the participant's buffer cap with
        CAPACITY_EXCEEDED, and nothing else."""
        decoder = FrameDecoder(self.settings.max_frame_payload)
        layer: PublishedLayer | None = None
        metrics = self.metrics
        on_key = functools.partial(self.router.key_frame, member.room)
        ingress = member.ingress
        held = 0  # of the participant's ingress buffer: this stream's partial frame
        try:
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    decoder.end_of_stream()
                    # Every frame is routed: say so by finishing our side (frees the stream).
                    await stream.send_eof()
                    return
                decoder.receive_data(data)
                # The partial frame counts as its bytes arrive, before anything else runs.
                delta = decoder.buffered - held
                if delta:
                    if not ingress.change(delta):
                        raise PublishBufferFull(
                            f"{member.id} would hold {ingress.held + delta} bytes of partial "
                            f"frames (limit {ingress.cap})"
                        )
                    held += delta
                now = trio.current_time()
                frames = 0
                try:
                    for frame in decoder:
                        if layer is None:
                            layer = await self._bind(member, frame, stream)
                        elif frame.stream_id_bytes != layer.key:
                            raise StreamError("a publish stream carries one stream id")
                        elif layer.removed:
                            return  # RemoveStream reset this stream: route nothing more
                        self._on_frame(member, layer, frame, now, on_key)
                        frames += 1
                finally:  # counted once per chunk: the per-frame path stays short
                    metrics.frames_received.inc(frames)
                    metrics.bytes_received.inc(len(data))
        except (FrameError, StreamError, PublishBufferFull) as exc:
            cause = type(exc).__name__
            code = int(exc.code)
            self.metrics.stream_errors.inc(1, cause)
            logger.info(
                "publish stream reset: %s",
                exc,
                extra=fields(participant=member.id, meeting=member.room.id, cause=cause),
            )
            try:
                stream.reset(code)
                stream.stop_sending(code)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the publisher reset the stream, the session ended, or RemoveStream
        finally:
            ingress.change(-held)
            if layer is not None:
                layer.bound = False
                if layer.stream is stream:
                    layer.stream = None

    async def _bind(
        self, member: MediaMember, frame: Frame, stream: WebTransportStream
    ) -> PublishedLayer:
        """The layer a publish stream carries, from its first frame (StreamError if not its)."""
        layer = member.room.layers.get(frame.stream_id_bytes)
        if layer is None:
            layer = await self._claim(member, frame)
        if layer.publication.publisher is not member:
            raise StreamError(f"stream {frame.stream_id} is published by another participant")
        if layer.bound:
            raise StreamError(f"stream {frame.stream_id} is already being published")
        layer.bound = True
        layer.stream = stream
        return layer

    async def _claim(self, member: MediaMember, frame: Frame) -> PublishedLayer:
        """A stream id nobody registered becomes the sender's (its type from this frame), and
        the routes made ahead for it start."""
        room = member.room
        have = member.stream_count()
        if have >= self.settings.max_streams_per_participant:
            raise StreamError(f"{member.id} already publishes {have} streams")
        stream_id = StreamId(str(frame.stream_id))
        audio = frame.frame_type == FrameType.AUDIO
        publication = MediaPublication(
            stream_id,
            StreamType.AUDIO if audio else StreamType.VIDEO_CAMERA,
            member,
            (),
            StreamStats(stream_id),
            self.router.count_drops,
        )
        room.add_publication(publication)
        for dest, options in list(room.routes.get(stream_id, {}).items()):
            target = room.members.get(dest)
            if target is None or target is member or target.scope is None or not target.session:
                continue
            try:
                await self.router.subscribe(publication, target, options)
            except (trio.ClosedResourceError, DarkTowerError):
                continue  # that subscriber is leaving: its loss, not the publisher's
        return room.layers[frame.stream_id_bytes]

    def _on_frame(
        self,
        member: MediaMember,
        layer: PublishedLayer,
        frame: Frame,
        now: float,
        on_key: KeyFrameCallback,
    ) -> None:
        publication = layer.publication
        frame_type = frame.frame_type
        if not frame_kind_matches(publication, frame_type):
            raise StreamError(f"{frame_type.name} frame on a {publication.stream_type.name} stream")
        size = frame.raw.nbytes
        publication.stats.on_received(size, frame.timestamp_us, now)
        if frame_type is FrameType.AUDIO and not member.removed:  # a participant's, not a job's
            member.room.speakers.on_level(member.id, audio_level_of(frame.raw), now)
        priority = priority_of(frame_type, int(frame.flags), top_layer=layer.top)
        if member.budget_in.admit(priority, size, now):
            if (tap := self.router.tap) is not None:
                tap(frame.raw)
            publication.route(layer, frame, now, on_key)
        else:
            publication.drop_at_ingress(frame, now, on_key)
