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

Task tree: the block owns a nursery; one task in it owns the signaling session, the media
connection and two readers (signaling events → participants and events; media frames →
subscriptions by stream id). The session ends when the MC says so (SessionEnded), when either
connection is lost, or on :meth:`MeetingSession.leave`; then every waiting call and iterator
raises :class:`SessionEnded` with the reason (iterators just stop after a voluntary leave).

A server-side end is a normal outcome, not an error: the ``async with`` block swallows a
SessionEnded of its own session and exits cleanly, and the caller reads ``end_reason``.
Anything else raised in the block propagates unchanged (never wrapped in an ExceptionGroup).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import attrs
import trio

from darktower.errors import Conflict
from darktower.model import LeaveReason, StreamType
from darktower.protocol import stream_type_to_pb
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._core import Broken, SessionCore
from ._events import (
    CLOSE_GRACE_S,
    LEAVE_GRACE_S,
    SessionEnded,
    SimulcastLayer,
    wire_keys,
)
from ._streams import Publication, Subscription


class MeetingSession(SessionCore):
    """A joined meeting: made by :func:`join_meeting_session` (see the module docstring).

    Attributes: ``meeting_id``, ``participant_id`` (this session's), ``role`` (from the join
    token; None if unreadable), ``participants`` (the *other* participants' ids →
    :class:`ParticipantInfo`, always up to date: it starts from the JoinResponse and the
    events say what changed since), ``events`` (:class:`EventStream`), ``publications``,
    ``end_reason`` / ``end_message`` / ``ended`` (a trio.Event) once the session is over.
    """

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
        metadata = common_pb2.StreamMetadata(codec=codec, max_bitrate=max_bitrate)
        if stream_type is not StreamType.AUDIO:
            metadata.video.CopyFrom(
                common_pb2.VideoMetadata(
                    width=width,
                    height=height,
                    framerate=framerate,
                    simulcast_layers=[
                        common_pb2.SimulcastLayer(
                            layer_id=la.layer_id,
                            width=la.width,
                            height=la.height,
                            max_bitrate=la.max_bitrate,
                        )
                        for la in layers
                    ],
                )
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
        publication = Publication(self, sid, stream_type, publishers)
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
        known = self._stream(stream_id)
        keys = wire_keys(stream_id, known.layer_ids if known else ())
        size = buffer if buffer is not None else self.subscription_buffer
        subscription = Subscription(self, stream_id, keys, max(1, size))
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
