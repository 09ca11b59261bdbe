"""The state and the readers of a meeting session (split from ``_session.py`` for size).

One reader takes the signaling events: it keeps ``participants`` exact, ends subscriptions
whose stream is gone and queues the application's events (through a table of handlers,
docs/architecture.md §7). The other takes media frames and hands each to the subscription of its
stream id (a dictionary lookup; frames of no live subscription are counted and dropped). Either ends
the session when its connection ends, with the reason the MC (or the MH's close code) gave.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import trio

from darktower.errors import InvalidRequest
from darktower.model import LeaveReason, Role
from darktower.protocol import leave_reason_from_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import (
    SETTLE_S,
    KeyFrameRequest,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    QualityUpdate,
    SessionEnded,
    StreamInfo,
    StreamPublished,
    StreamUnpublished,
    reason_from_close_code,
)
from ._media import MediaClient
from ._signaling import SignalingClient
from ._streams import EventStream, Publication, Subscription

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)


class SessionCore:
    """The state of a :class:`~darktower.client.MeetingSession`, its two readers and its end
    (the session's actions are in ``_session.py``)."""

    def __init__(
        self,
        signaling: SignalingClient,
        media: MediaClient,
        scope: trio.CancelScope,
        *,
        meeting_id: str,
        role: Role | None,
        event_buffer: int,
        subscription_buffer: int,
    ) -> None:
        self._signaling = signaling
        self._media = media
        self._scope = scope
        self.meeting_id = meeting_id
        self.participant_id: str = signaling.participant_id
        self.role = role
        self._participants = {
            p.participant_id: ParticipantInfo.from_pb(p)
            for p in signaling.join_response.existing_participants
            if p.participant_id != self.participant_id
        }
        self.participants: Mapping[str, ParticipantInfo] = MappingProxyType(self._participants)
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
        """End the session (idempotent: the first reason wins) and close its connections."""
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
        self._scope.cancel()

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

    # -- the readers ---------------------------------------------------------------------
    def _stream(self, stream_id: str) -> StreamInfo | None:
        for participant in self._participants.values():
            found = participant.stream(stream_id)
            if found is not None:
                return found
        return None

    def _on_joined(self, m: sig.ServerMessage) -> None:
        info = ParticipantInfo.from_pb(m.participant_joined.participant)
        if info.participant_id == self.participant_id:
            return
        self._participants[info.participant_id] = info
        self.events._put(ParticipantJoined(info))

    def _on_left(self, m: sig.ServerMessage) -> None:
        left = m.participant_left
        info = self._participants.pop(left.participant_id, None) or ParticipantInfo(
            left.participant_id, ""
        )
        for stream in info.streams:
            if (subscription := self._subscriptions.get(stream.stream_id)) is not None:
                self._drop(subscription)
        try:
            reason = leave_reason_from_pb(left.reason)
        except InvalidRequest:  # a newer MC's reason: gone all the same
            reason = LeaveReason.CONNECTION_LOST
        self.events._put(ParticipantLeft(info, reason))

    def _on_published(self, m: sig.ServerMessage) -> None:
        published = m.stream_published
        stream = StreamInfo.from_pb(published.participant_id, published.stream)
        info = self._participants.get(published.participant_id)
        if stream is None or info is None:
            return
        self._participants[info.participant_id] = ParticipantInfo(
            info.participant_id, info.name, (*info.streams, stream), info.joined_at_us
        )
        self.events._put(StreamPublished(stream))

    def _on_unpublished(self, m: sig.ServerMessage) -> None:
        gone = m.stream_unpublished
        info = self._participants.get(gone.participant_id)
        stream = info.stream(gone.stream_id) if info else None
        if info is None or stream is None:
            return
        self._participants[info.participant_id] = ParticipantInfo(
            info.participant_id,
            info.name,
            tuple(s for s in info.streams if s is not stream),
            info.joined_at_us,
        )
        if (subscription := self._subscriptions.get(gone.stream_id)) is not None:
            self._drop(subscription)
        self.events._put(StreamUnpublished(stream))

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
        reason = reason_from_close_code(self._media.session.peer_close_code)
        if reason in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED):
            self._finish(reason)  # the MH said why before the MC did
        await self._settle()
        self._finish(LeaveReason.CONNECTION_LOST, "media connection lost")
