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
(a :class:`~darktower.client._link.Link`: signaling events → participants and events, through a
table of handlers, docs/architecture.md §7; media frames → the subscription of their stream id,
a dictionary lookup: frames of no live subscription are counted and dropped) and the task that
subscribes again after a rejoin, and the one that sends key shares and expires keys in an
end-to-end encrypted meeting (:class:`~darktower.client.Encryption`: received frames are
decrypted before the subscriptions see them, docs/protocol.md §16). A lost connection is
brought back by the link (docs/protocol.md §13: a resume, a new media connection, or a rejoin
through the GC) with the events Reconnecting, then Resumed, Rejoined or Lost. The session ends
when the MC says so (SessionEnded), when a lost connection does not come back (or without
encryption), or on :meth:`MeetingSession.leave`; then every waiting call and iterator raises
:class:`SessionEnded` with the reason (iterators just stop after a voluntary leave).

A server-side end is a normal outcome, not an error: the ``async with`` block swallows a
SessionEnded of its own session and exits cleanly, and the caller reads ``end_reason``.
Anything else raised in the block propagates unchanged (never wrapped in an ExceptionGroup).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from darktower.frames import Frame
from darktower.model import LeaveReason, Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._adaptive import Adaptation, quality_message
from ._chat import Chat, ChatLog
from ._controls import Controls, moderation_message
from ._data import DataMessages
from ._e2ee import Encryption
from ._events import (
    CLOSE_GRACE_S,
    EVENT_BUFFER,
    LEAVE_GRACE_S,
    REJOIN_WINDOW_S,
    RESUME_GRACE_S,
    SETTLE_S,
    SUBSCRIPTION_BUFFER,
    ConnectionState,
    KeyFrameRequest,
    Lost,
    ParticipantInfo,
    RecordingChanged,
    RequestInterrupted,
    SessionEnded,
    SessionEvent,
    SimulcastLayer,
    role_of,
)
from ._link import Link
from ._meeting_models import ModerationAction, PublicationState, may_publish_of
from ._publication import Publication
from ._publishing import Publishing, announcement
from ._requests import Requests
from ._room import Room
from ._roster import Roster
from ._seams import Connector, MediaLink, Rejoiner, SignalingLink
from ._streams import EventStream, Subscription
from ._subscribing import Subscribing

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)


class MeetingSession:
    """A joined meeting: made by :func:`join_meeting_session` (see the module docstring), or
    from a joined :class:`SignalingClient` and its :class:`MediaClient` and run with
    :meth:`run` by an owner that closes both once ``run`` returns. With a ``connector`` (and
    ``resume_grace_s`` > 0) it reconnects lost connections by itself (docs/protocol.md §13);
    without one a lost connection ends it with CONNECTION_LOST. With a ``rejoiner`` too (and
    ``rejoin_window_s`` > 0) it rejoins through the GC when resuming cannot succeed.

    Attributes: ``meeting_id``, ``participant_id`` (this session's), ``role`` (from the join
    token; None if unreadable), ``participants`` (the *other* participants' ids →
    :class:`ParticipantInfo`, always up to date: it starts from the JoinResponse and the
    events say what changed since), ``events`` (:class:`EventStream`), ``publications``,
    ``connection`` (CONNECTED, or RECONNECTING while a lost connection is being brought back),
    ``reconnects`` (outages recovered), ``rejoins`` (of them, by a rejoin: a new
    ``participant_id``), ``recording`` (the meeting is being recorded: a RecordingChanged event
    says when that changes, docs/protocol.md §2.1), ``e2ee`` (:class:`Encryption`: whether
    the meeting is end-to-end encrypted, this session's fingerprint, the frames that did not
    decrypt; docs/protocol.md §16), ``adaptation`` (:class:`Adaptation`: active speakers and
    this session's quality reports, docs/protocol.md §17), ``publication`` (this session's
    :class:`PublicationState`, docs/protocol.md §18.1; ``may_publish``: the join token's grant,
    which :func:`join_meeting_session` reads), ``chat`` (:class:`ChatLog`, §18.3),
    ``data`` (:class:`DataMessages`: the data messages received, §18.4), ``end_reason`` /
    ``end_message`` / ``ended`` (a trio.Event).
    """

    def __init__(
        self,
        signaling: SignalingLink,
        media: MediaLink,
        *,
        meeting_id: str,
        role: Role | None = None,
        event_buffer: int = EVENT_BUFFER,
        subscription_buffer: int = SUBSCRIPTION_BUFFER,
        connector: Connector | None = None,
        resume_grace_s: float = RESUME_GRACE_S,
        rejoiner: Rejoiner | None = None,
        rejoin_window_s: float = REJOIN_WINDOW_S,
        require_e2ee: bool = False,
        may_publish: Iterable[str] | None = None,
    ) -> None:
        self.meeting_id = meeting_id
        self.participant_id: str = signaling.join_response.participant_id
        self.role = role
        self._link = Link(
            self,
            signaling,
            media,
            connector=connector,
            grace_s=resume_grace_s,
            rejoiner=rejoiner,
            rejoin_window_s=rejoin_window_s,
        )
        self._roster = Roster(self.participant_id, signaling.join_response.existing_participants)
        self._requests = Requests(self, self._link)
        self._request = self._requests.request
        self._subscribing = Subscribing(self, self._request, self._requests.quietly)
        self.e2ee = Encryption(self._roster, self._subscribing.deliver, self._request, self)
        self.e2ee.joined(signaling, required=require_e2ee)  # may raise EncryptionRequired
        self._publishing = Publishing(self.e2ee)
        self.recording = signaling.join_response.recording
        self.participants: Mapping[str, ParticipantInfo] = self._roster.participants
        self.events = EventStream(self, max(1, event_buffer))
        self.subscription_buffer = subscription_buffer
        self.publications: dict[str, Publication] = self._publishing.publications
        self.end_reason: LeaveReason | None = None
        self.end_message = ""
        self.ended = trio.Event()
        self._controls = Controls(
            lambda: self.participant_id,
            self.publications,
            self._publishing.remove,
            self.events._put,
            may_publish=may_publish,
        )
        self._chat = Chat(self.events._put)
        self.data = DataMessages(self)
        media.on_datagram = self.data.on_datagram
        self._room = Room(
            self._roster, self._subscribing, self.e2ee, self._controls, self.events._put
        )
        self.adaptation = Adaptation(self, self._subscribing.subscriptions, self._roster.stream)
        self._handlers: dict[str, Callable[[sig.ServerMessage], None]] = {
            **self.adaptation.handlers(),  # quality, key frame requests, active speakers
            **self._controls.handlers(),  # moderated
            **self._chat.handlers(),  # chat, chat_history
            **self._room.handlers(),  # participants and streams
            "recording_status": lambda m: self._recording(m.recording_status.recording),
            "subscription_updated": lambda m: self._subscribing.updated(m.subscription_updated),
            "session_ended": self._on_session_ended,
            "key_share": self.e2ee.on_share,
            "error": self._on_error,
        }

    @property
    def _signaling(self) -> SignalingLink:
        return self._link.signaling  # the current one

    @property
    def _media(self) -> MediaLink:
        return self._link.media

    @property
    def connection(self) -> ConnectionState:
        """RECONNECTING while a lost connection is being brought back, else CONNECTED."""
        return (
            ConnectionState.RECONNECTING if self._link.reconnecting else ConnectionState.CONNECTED
        )

    @property
    def reconnects(self) -> int:
        """Outages this session recovered from (each a Resumed or Rejoined event)."""
        return self._link.reconnects

    @property
    def rejoins(self) -> int:
        """Outages this session recovered from by a rejoin (each a Rejoined event)."""
        return self._link.rejoins

    @property
    def unrouted_frames(self) -> int:
        """Frames of no live subscription (late, after an unsubscribe), dropped."""
        return self._subscribing.unrouted

    def ended_error(self) -> SessionEnded:
        """The exception that says why the session ended (call once it has)."""
        reason = self.end_reason if self.end_reason is not None else LeaveReason.CONNECTION_LOST
        return SessionEnded(reason, self.end_message, session=self)

    def finish(self, reason: LeaveReason, message: str = "") -> None:
        """End the session (idempotent: the first reason wins): every waiting call and
        iterator learns it, and :meth:`run` returns so that its owner closes the connections."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.end_message = message or self.end_message
        if self._link.reconnecting and reason is not LeaveReason.VOLUNTARY:
            self.events._put(Lost(reason, self.end_message))
        self.events._close()
        self.data._close()
        self._subscribing.end_all()
        self._requests.cancel_all()
        self.ended.set()

    async def settle(self) -> None:
        """A connection broke under a call: give the readers SETTLE_S to learn why."""
        if self.end_reason is None:
            with trio.move_on_after(SETTLE_S):
                await self.ended.wait()

    # -- what the link tells the session (LinkOwner) -----------------------------------------
    def put_event(self, event: SessionEvent) -> None:
        self.events._put(event)

    def on_message(self, message: sig.ServerMessage) -> None:
        handler = self._handlers.get(message.WhichOneof("message") or "")
        if handler is not None:
            handler(message)

    def on_frame(self, frame: Frame) -> None:
        if not self.e2ee.enabled:
            self._subscribing.deliver(frame)
        elif (opened := self.e2ee.open(frame)) is not None:  # else it waits, or was dropped
            self._subscribing.deliver(opened)

    def on_resumed(self, join: sig.JoinResponse) -> None:
        """Catch up with what happened while the signaling connection was lost."""
        if not self.e2ee.kept(join):
            return
        self._room.resumed(join)
        self._recording(join.recording)

    def on_rejoined(self, join: sig.JoinResponse, join_token: str, reason: LeaveReason) -> None:
        """Joined again as a new participant (docs/protocol.md §13): its id, its role and the
        room as the new MC has it (the old room's participants left with ``reason``)."""
        if not self.e2ee.kept(join):
            return
        old = self.participant_id
        self.participant_id = self._roster.own_id = join.participant_id
        self.role = role_of(join_token) or self.role
        self._room.rejoined(join, old, reason)
        self.e2ee.joined(self._link.signaling)  # new keys, shared with the room as it is
        self._controls.rejoined(may_publish_of(join_token))
        self._publishing.rejoined()
        self._subscribing.rejoined()
        self._recording(join.recording)

    async def restore(self, signaling: SignalingLink) -> None:
        """After a rejoin, on its signaling connection: publish again, then subscribe again to
        the streams already back (the others as they come). Raises the Broken errors."""
        await self._publishing.republish(signaling.request)
        await self._controls.restore(signaling.request)
        await self._subscribing.restore(self._present, signaling.request)

    def _present(self, stream_id: str) -> bool:
        return self._roster.stream(stream_id) is not None

    def on_media_down(self) -> None:
        self._publishing.pause()

    async def on_media(self, media: MediaLink) -> None:
        """Give every publication its streams on the new media connection; a video one then
        needs a key frame (a KeyFrameRequest event for the application)."""
        media.on_datagram = self.data.on_datagram
        for stream_id in await self._publishing.rebind(media):
            self.events._put(KeyFrameRequest(stream_id))

    async def run(
        self, *, task_status: trio.TaskStatus[MeetingSession] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the session's two readers in a nursery of its own until the session ends;
        ``task_status.started(self)`` once they run. The connections the session opens to
        reconnect are owned by these tasks and closed before ``run`` returns.

        Returns once the session ended (:meth:`leave`, the MC's or the MH's end, a lost
        connection that did not come back); its owner then closes the two connections it gave.
        Cancelling it stops the readers without choosing a reason (call :meth:`leave` for
        that). Raises nothing of its own.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._link.run_signaling)
            nursery.start_soon(self._link.run_media)
            nursery.start_soon(self._subscribing.run_restores, self._present, self._request)
            nursery.start_soon(self.e2ee.run)
            nursery.start_soon(self.adaptation.run)  # quality reports, once started
            task_status.started(self)
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    # -- the server's messages -----------------------------------------------------------
    def _recording(self, recording: bool) -> None:
        if recording != self.recording:
            self.recording = recording
            self.events._put(RecordingChanged(recording))

    def _on_session_ended(self, m: sig.ServerMessage) -> None:
        self.end_message = m.session_ended.message or self.end_message

    def _on_error(self, m: sig.ServerMessage) -> None:
        # An unsolicited error precedes the SessionEnded of a session the MC fails.
        self.end_message = m.error.message

    async def leave(self) -> LeaveReason:
        """Leave voluntarily and return ``end_reason`` (VOLUNTARY, or the reason the session
        had already ended with). Sends LeaveRequest and waits for the MC's SessionEnded at most
        ``LEAVE_GRACE_S``; ends the session either way. Idempotent; raises nothing. Cancelling
        it still ends the session locally."""
        if self.end_reason is None:
            try:
                with trio.move_on_after(LEAVE_GRACE_S):
                    await self._link.signaling.leave()
            finally:
                self.finish(LeaveReason.VOLUNTARY)
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
        described: dict[str, Any] = {"codec": codec, "max_bitrate": max_bitrate}
        described.update(width=width, height=height, framerate=framerate)
        publication = self._publishing.new(
            self, self._unpublish, stream_type, stream_id, simulcast_layers, described
        )
        self._controls.prepare(publication)  # a muted microphone sends nothing from the start
        await self._request(announcement(publication))
        self._publishing.add(publication)
        try:
            await self._publishing.attach(publication, self._link.media)
        except Broken:
            # The media connection went: the link gives the publication its streams on the
            # next one (send_frame follows the reconnection policy meanwhile) or the session
            # ends.
            await self.settle()
            if self.end_reason is not None and self.end_reason is not LeaveReason.VOLUNTARY:
                raise self.ended_error() from None
        return publication

    async def _unpublish(self, publication: Publication) -> None:
        self._publishing.remove(publication)
        with trio.move_on_after(CLOSE_GRACE_S, shield=True):
            for publisher in publication.publishers.values():
                await publisher.aclose()
            await self._requests.quietly(
                sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id=publication.stream_id))
            )

    async def subscribe(
        self,
        stream_id: str,
        *,
        preferred_layer: str = "",
        max_bitrate: int = 0,
        pinned: bool = False,
        buffer: int | None = None,
    ) -> Subscription:
        """Subscribe to another participant's stream; frames of it (of all its simulcast
        layers, or of the stream made for it instead: ``Subscription.derived``) go to the
        returned :class:`Subscription` only (the source's from before the MC's Ack too). Raises
        Conflict if already subscribed, the MC's ``DarkTowerError`` (NotFound, InvalidRequest,
        CapacityExceeded past ``max_video_streams``), SessionEnded once the session is over.
        ``pinned``: the MH never holds this video back for LastN (docs/protocol.md §17.4)."""
        known = self._roster.stream(stream_id)
        options = sig.SubscriptionOptions(
            preferred_layer=preferred_layer, max_bitrate=max_bitrate, pinned=pinned
        )
        return await self._subscribing.subscribe(
            stream_id, known.layer_ids if known else (), options, self._buffer(buffer)
        )

    async def subscribe_mix(self, *, buffer: int | None = None) -> Subscription:
        """Subscribe to this session's audio mix: every other participant's audio as one Opus
        stream (docs/protocol.md §2.2), its id in ``Subscription.derived``. Raises Conflict if
        subscribed already, the MC's ``DarkTowerError`` (InvalidRequest with end-to-end
        encryption, CapacityExceeded: no mixer free), SessionEnded once the session is over."""
        return await self._subscribing.subscribe_mix(self._buffer(buffer))

    def _buffer(self, buffer: int | None) -> int:
        return max(1, buffer if buffer is not None else self.subscription_buffer)

    async def send_quality(
        self, stream_id: str, *, available_bitrate: int, packet_loss: float = 0.0, rtt_ms: int = 0
    ) -> None:
        """Report quality: on a subscribed stream it steers the MH's layer choice for this
        session; on a published one it is relayed to that stream's subscribers. Raises
        NotFound for any other stream, SessionEnded once the session is over.
        ``session.adaptation`` sends such reports from what the session measured."""
        await self._request(quality_message(stream_id, available_bitrate, packet_loss, rtt_ms))

    @property
    def publication(self) -> PublicationState:
        """This session's own publication state, as the MC has it (docs/protocol.md §18.1)."""
        return self._controls.publication

    @property
    def chat(self) -> ChatLog:
        """The chat messages this session received, oldest first (see :class:`ChatLog`)."""
        return self._chat.log

    async def set_publication(
        self, *, audio_muted: bool | None = None, video_off: bool | None = None
    ) -> PublicationState:
        """Mute or unmute the microphone, turn the camera off or on (None: as it is); returns
        :attr:`publication` once the MC acknowledged. A muted kind stays published and its
        frames are dropped by ``Publication.send_frame`` from the moment of the call (an unmute
        from the answer on). Raises the MC's ``DarkTowerError`` (Forbidden, ``details["reason"]
        == "blocked_by_host"``, to unmute a kind a host blocked), SessionEnded."""
        return await self._controls.set(self._request, audio_muted, video_off)

    async def moderate(
        self,
        participant_id: str,
        actions: Sequence[ModerationAction | str],
        message: str = "",
    ) -> None:
        """Host only: mute, stop or allow a participant's publications (docs/protocol.md
        §18.2); returns once every stream the actions stop has ended at the MH. Raises
        ValueError for an unknown action, the MC's ``DarkTowerError`` (Forbidden for a guest,
        NotFound, InvalidRequest: no or a repeated action, a message over 200 characters)."""
        await self._request(moderation_message(participant_id, actions, message))

    async def send_chat(self, text: str, to: str | None = None) -> None:
        """Send a chat message to everyone, or to participant ``to`` only (docs/protocol.md
        §18.3); it comes back as a ChatMessage event. Raises ValueError for an empty text or
        one over 2,000 characters, the MC's ``DarkTowerError`` (RateLimited with
        ``retry_after_s``, NotFound), SessionEnded."""
        await self._chat.send(self._request, text, to)

    def send_data(self, payload: bytes, to: str | None = None) -> bool:
        """Send a data message to every other participant, or to participant ``to`` only
        (docs/protocol.md §18.4; ``session.data`` receives theirs): one datagram, lossy, never
        waits; False if it was dropped (see :class:`DataMessages`). Raises ValueError for a
        payload over 1,000 bytes or a ``to`` that is not a participant id, SessionEnded."""
        if self.end_reason is not None:
            raise self.ended_error()
        return self.data.send(self._link.media, payload, to)

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
        await self.settle()  # the reader ends the session on the SessionEnded that answered


__all__ = ["MeetingSession", "RequestInterrupted"]
