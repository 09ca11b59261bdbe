"""One object for a meeting session: signaling and media together (issue #8).

::

    async with join_meeting_session(signal_url, meeting_id=mid, join_token=token,
                                    server_certificate_hashes=[sha256]) as session:
        camera = await session.publish(StreamType.VIDEO_CAMERA, codec="VP8")
        await camera.send_frame(FrameType.VIDEO_KEY, payload)
        async with trio.open_nursery() as nursery:
            async for event in session.events:       # ParticipantJoined, StreamPublished ...
                if isinstance(event, StreamPublished):
                    frames = await session.subscribe(event.stream.stream_id)
                    nursery.start_soon(play, frames)  # async for frame in frames: ...
    session.end_reason                               # LeaveReason.KICKED, MEETING_ENDED ...

``examples/echo_bot.py`` and ``examples/recorder.py`` are complete, runnable programs.

Task tree: the block owns a nursery; one task in it owns the signaling session and the media
connection and runs :meth:`MeetingSession.run`, whose own nursery holds the session's two readers
(signaling events → participants and events, through a table of handlers, docs/architecture.md
§7; media frames → the subscription of their stream id, a dictionary lookup: frames of no live
subscription are counted and dropped). The session ends when the MC says so (SessionEnded),
when either connection is lost, or on :meth:`MeetingSession.leave`; then every waiting call and
iterator raises :class:`SessionEnded` with the reason (iterators just stop after a voluntary leave).

A server-side end is a normal outcome, not an error: the ``async with`` block swallows a
SessionEnded of its own session and exits cleanly, and the caller reads ``end_reason``.
Anything else raised in the block propagates unchanged (never wrapped in an ExceptionGroup).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from darktower.errors import Conflict, InvalidRequest
from darktower.model import LeaveReason, Role, StreamType
from darktower.protocol import reason_from_close_code, stream_type_to_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ClosedByPeer

from ._events import (
    CLOSE_GRACE_S,
    EVENT_BUFFER,
    LEAVE_GRACE_S,
    SETTLE_S,
    SUBSCRIPTION_BUFFER,
    KeyFrameRequest,
    ParticipantInfo,
    QualityUpdate,
    SessionEnded,
    SimulcastLayer,
    stream_metadata,
    wire_keys,
)
from ._media import MediaClient
from ._roster import Roster
from ._signaling import SignalingClient
from ._streams import EventStream, Publication, Subscription

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)


class MeetingSession:
    """A joined meeting: made by :func:`join_meeting_session` (see the module docstring), or
    from a joined :class:`SignalingClient` and its :class:`MediaClient` and run with
    :meth:`run` by an owner that closes both once ``run`` returns.

    Attributes: ``meeting_id``, ``participant_id`` (this session's), ``role`` (from the join
    token; None if unreadable), ``participants`` (the *other* participants' ids →
    :class:`ParticipantInfo`, always up to date: it starts from the JoinResponse and the
    events say what changed since), ``events`` (:class:`EventStream`), ``publications``,
    ``end_reason`` / ``end_message`` / ``ended`` (a trio.Event) once the session is over.
    """

    def __init__(
        self,
        signaling: SignalingClient,
        media: MediaClient,
        *,
        meeting_id: str,
        role: Role | None = None,
        event_buffer: int = EVENT_BUFFER,
        subscription_buffer: int = SUBSCRIPTION_BUFFER,
    ) -> None:
        self._signaling = signaling
        self._media = media
        self.meeting_id = meeting_id
        self.participant_id: str = signaling.participant_id
        self.role = role
        self._roster = Roster(self.participant_id, signaling.join_response.existing_participants)
        self.participants: Mapping[str, ParticipantInfo] = self._roster.participants
        self.events = EventStream(self, max(1, event_buffer))
        self.subscription_buffer = subscription_buffer
        self._routes: dict[bytes, Subscription] = {}  # 16-byte wire id → subscription
        self._subscriptions: dict[str, Subscription] = {}
        self.publications: dict[str, Publication] = {}
        self.end_reason: LeaveReason | None = None
        self.end_message = ""
        self.ended = trio.Event()
        self.unrouted_frames = 0  # frames of no live subscription (late, after unsubscribe)
        self._calls: set[trio.CancelScope] = set()  # requests waiting for their reply
        self._handlers: dict[str, Callable[[sig.ServerMessage], None]] = {
            "participant_joined": self._on_joined,
            "participant_left": self._on_left,
            "stream_published": self._on_published,
            "stream_unpublished": self._on_unpublished,
            "quality": self._on_quality,
            "key_frame_request": self._on_key_frame_request,
            "session_ended": self._on_session_ended,
            "error": self._on_error,
        }

    def ended_error(self) -> SessionEnded:
        """The exception that says why the session ended (call once it has)."""
        reason = self.end_reason if self.end_reason is not None else LeaveReason.CONNECTION_LOST
        return SessionEnded(reason, self.end_message, session=self)

    def _finish(self, reason: LeaveReason, message: str = "") -> None:
        """End the session (idempotent: the first reason wins): every waiting call and
        iterator learns it, and :meth:`run` returns so that its owner closes the connections."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.end_message = message or self.end_message
        self.events._close()
        for subscription in list(self._subscriptions.values()):
            subscription._end()
        self._routes.clear()
        for call in self._calls:
            call.cancel()
        self.ended.set()

    async def _settle(self) -> None:
        """A connection broke under a call: give the readers SETTLE_S to learn why."""
        if self.end_reason is None:
            with trio.move_on_after(SETTLE_S):
                await self.ended.wait()

    def _drop(self, subscription: Subscription) -> None:
        subscription._end()
        if self._subscriptions.get(subscription.stream_id) is subscription:
            del self._subscriptions[subscription.stream_id]
        for key in subscription.keys:
            if self._routes.get(key) is subscription:
                del self._routes[key]

    async def run(
        self, *, task_status: trio.TaskStatus[MeetingSession] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the session's two readers in a nursery of its own until the session ends;
        ``task_status.started(self)`` once they run.

        Returns once the session ended (:meth:`leave`, the MC's or the MH's end, a lost
        connection); its owner then closes the two connections. Cancelling it stops the readers
        without choosing a reason (call :meth:`leave` for that). Raises nothing of its own.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_signaling)
            nursery.start_soon(self._read_media)
            task_status.started(self)
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    # -- the readers ---------------------------------------------------------------------
    def _on_joined(self, m: sig.ServerMessage) -> None:
        if (event := self._roster.joined(m.participant_joined)) is not None:
            self.events._put(event)

    def _on_left(self, m: sig.ServerMessage) -> None:
        event = self._roster.left(m.participant_left)
        for stream in event.participant.streams:
            if (subscription := self._subscriptions.get(stream.stream_id)) is not None:
                self._drop(subscription)
        self.events._put(event)

    def _on_published(self, m: sig.ServerMessage) -> None:
        if (event := self._roster.published(m.stream_published)) is not None:
            self.events._put(event)

    def _on_unpublished(self, m: sig.ServerMessage) -> None:
        event = self._roster.unpublished(m.stream_unpublished)
        if event is None:
            return
        if (subscription := self._subscriptions.get(event.stream.stream_id)) is not None:
            self._drop(subscription)
        self.events._put(event)

    def _on_quality(self, m: sig.ServerMessage) -> None:
        q = m.quality
        self.events._put(QualityUpdate(q.stream_id, q.available_bitrate, q.packet_loss, q.rtt_ms))

    def _on_key_frame_request(self, m: sig.ServerMessage) -> None:
        self.events._put(KeyFrameRequest(m.key_frame_request.stream_id))

    def _on_session_ended(self, m: sig.ServerMessage) -> None:
        self.end_message = m.session_ended.message or self.end_message

    def _on_error(self, m: sig.ServerMessage) -> None:
        # An unsolicited error precedes the SessionEnded of a session the MC fails.
        self.end_message = m.error.message

    async def _read_signaling(self) -> None:
        try:
            async for message in self._signaling.events:
                handler = self._handlers.get(message.WhichOneof("message") or "")
                if handler is not None:  # key shares: end-to-end encryption is not here yet
                    handler(message)
        except Broken:
            pass
        try:
            reason = self._signaling.end_reason
        except InvalidRequest:
            reason = None
        self._finish(LeaveReason.CONNECTION_LOST if reason is None else reason)

    async def _read_media(self) -> None:
        routes = self._routes
        try:
            async for frame in self._media:
                subscription = routes.get(frame.stream_id_bytes)
                if subscription is None:
                    self.unrouted_frames += 1
                else:
                    subscription._deliver(frame)
        except Broken:
            pass
        end = self._media.session.end  # the MH closes with the reason's code (docs/protocol.md §9)
        reason = reason_from_close_code(end.code if isinstance(end, ClosedByPeer) else None)
        if reason in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED):
            self._finish(reason)  # the MH said why before the MC did
        await self._settle()
        self._finish(LeaveReason.CONNECTION_LOST, "media connection lost")

    async def _request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        """A request that raises SessionEnded once the session is over, also while waiting."""
        if self.end_reason is not None:
            raise self.ended_error()
        call = trio.CancelScope()
        self._calls.add(call)
        try:
            with call:
                return await self._signaling.request(message)
        except Broken as exc:  # SignalingEnded included
            await self._settle()
            self._finish(LeaveReason.CONNECTION_LOST, "signaling connection lost")
            raise self.ended_error() from exc
        finally:
            self._calls.discard(call)
        raise self.ended_error()  # _finish cancelled the call

    async def leave(self) -> LeaveReason:
        """Leave voluntarily and return ``end_reason`` (VOLUNTARY, or the reason the session
        had already ended with). Sends LeaveRequest and waits for the MC's SessionEnded at most
        ``LEAVE_GRACE_S``; ends the session either way. Idempotent; raises nothing. Cancelling
        it still ends the session locally."""
        if self.end_reason is None:
            try:
                with trio.move_on_after(LEAVE_GRACE_S):
                    await self._signaling.leave()
            finally:
                self._finish(LeaveReason.VOLUNTARY)
        assert self.end_reason is not None
        return self.end_reason

    # -- actions -------------------------------------------------------------------------
    async def publish(
        self,
        stream_type: StreamType,
        *,
        stream_id: str | None = None,
        codec: str = "",
        max_bitrate: int = 0,
        width: int = 0,
        height: int = 0,
        framerate: int = 0,
        simulcast_layers: Sequence[SimulcastLayer] = (),
    ) -> Publication:
        """Publish a stream (PublishStream, acknowledged by the MC) and open its media
        stream(s), one per simulcast layer if there are layers. ``stream_id`` defaults to a
        fresh UUID. Raises the MC's ``DarkTowerError`` (Conflict, CapacityExceeded ...),
        SessionEnded once the session is over. If cancelled after the MC acknowledged, the
        stream stays published until the session ends."""
        sid = stream_id or str(uuid.uuid4())
        layers = [
            layer if layer.layer_id else attrs.evolve(layer, layer_id=str(uuid.uuid4()))
            for layer in simulcast_layers
        ]
        metadata = stream_metadata(
            stream_type,
            codec=codec,
            max_bitrate=max_bitrate,
            width=width,
            height=height,
            framerate=framerate,
            layers=layers,
        )
        await self._request(
            sig.ClientMessage(
                publish=sig.PublishStream(
                    stream_id=sid, stream_type=stream_type_to_pb(stream_type), metadata=metadata
                )
            )
        )
        try:
            publishers = {
                wire: await self._media.publish(wire)
                for wire in [la.layer_id for la in layers] or [sid]
            }
        except Broken as exc:
            await self._settle()
            self._finish(LeaveReason.CONNECTION_LOST, "media connection lost")
            raise self.ended_error() from exc
        publication = Publication(self, sid, stream_type, publishers, close=self._unpublish)
        self.publications[sid] = publication
        return publication

    async def _unpublish(self, publication: Publication) -> None:
        self.publications.pop(publication.stream_id, None)
        with trio.move_on_after(CLOSE_GRACE_S, shield=True):
            for publisher in publication.publishers.values():
                await publisher.aclose()
            await self._quietly(
                sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id=publication.stream_id))
            )

    async def subscribe(
        self,
        stream_id: str,
        *,
        preferred_layer: str = "",
        max_bitrate: int = 0,
        buffer: int | None = None,
    ) -> Subscription:
        """Subscribe to another participant's stream; frames of it (of all its simulcast
        layers) go to the returned :class:`Subscription` only. Frames that arrive before the
        MC's acknowledgement are kept. Raises Conflict if already subscribed, the MC's
        ``DarkTowerError`` (NotFound, InvalidRequest), SessionEnded once the session is over."""
        if stream_id in self._subscriptions:
            raise Conflict(f"already subscribed to {stream_id}")
        known = self._roster.stream(stream_id)
        keys = wire_keys(stream_id, known.layer_ids if known else ())
        size = buffer if buffer is not None else self.subscription_buffer
        subscription = Subscription(self, stream_id, keys, max(1, size), close=self._unsubscribe)
        # Registered first: the MH may send frames before the MC's Ack reaches us.
        self._subscriptions[stream_id] = subscription
        self._routes.update(dict.fromkeys(keys, subscription))
        try:
            await self._request(
                sig.ClientMessage(
                    subscribe=sig.SubscribeStream(
                        stream_id=stream_id,
                        options=sig.SubscriptionOptions(
                            preferred_layer=preferred_layer, max_bitrate=max_bitrate
                        ),
                    )
                )
            )
        except BaseException:
            self._drop(subscription)
            raise
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> None:
        self._drop(subscription)
        with trio.move_on_after(CLOSE_GRACE_S, shield=True):
            await self._quietly(
                sig.ClientMessage(
                    unsubscribe=sig.UnsubscribeStream(stream_id=subscription.stream_id)
                )
            )

    async def _quietly(self, message: sig.ClientMessage) -> None:
        """A request whose failure changes nothing for the caller (cleanup)."""
        if self.end_reason is not None:
            return
        try:
            await self._signaling.request(message)
        except Exception:
            pass

    async def send_quality(
        self, stream_id: str, *, available_bitrate: int, packet_loss: float = 0.0, rtt_ms: int = 0
    ) -> None:
        """Report quality: on a subscribed stream it steers the MH's layer choice for this
        session; on a published one it is relayed to that stream's subscribers. Raises
        NotFound for any other stream, SessionEnded once the session is over."""
        await self._request(
            sig.ClientMessage(
                quality=sig.StreamQualityUpdate(
                    stream_id=stream_id,
                    available_bitrate=available_bitrate,
                    packet_loss=packet_loss,
                    rtt_ms=rtt_ms,
                )
            )
        )

    async def kick(self, participant_id: str) -> None:
        """Host only: remove a participant (Forbidden for a guest, NotFound if absent)."""
        await self._request(
            sig.ClientMessage(kick=sig.KickParticipant(participant_id=participant_id))
        )

    async def end_meeting(self) -> None:
        """Host only: end the meeting for everyone; this session then ends with
        MEETING_ENDED (Forbidden for a guest)."""
        try:
            await self._request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
        except SessionEnded as exc:
            if exc.reason is not LeaveReason.MEETING_ENDED:
                raise
        await self._settle()  # the reader ends the session on the SessionEnded that answered


__all__ = ["MeetingSession"]
