"""A trio signaling client for the Meeting Controller (docs/protocol.md §2).

::

    async with open_signaling(signal_url, meeting_id=mid, join_token=token,
                              server_certificate_hashes=[sha256]) as client:
        client.join_response.participant_id
        reply = await client.request(ClientMessage(publish=PublishStream(...)))
        async for event in client.events: ...       # ParticipantJoined, StreamPublished ...
        await client.leave()
    client.session_ended                            # SessionEnded(reason, message) if received

One reader task (owned by the ``open_signaling`` block) dispatches replies by ``request_id``
and puts every other server message on :attr:`SignalingClient.events`; writes are serialised
by a lock (docs/architecture.md §7).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from darktower.e2ee import KeyPair
from darktower.model import LeaveReason
from darktower.protocol import (
    PROTOCOL_VERSION,
    MessageDecoder,
    encode_message,
    error_from_message,
    leave_reason_from_pb,
)
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import (
    ConnectionLost,
    IdleTimeout,
    SessionClosed,
    TransportLimits,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
)

# Server events not yet consumed. Full: the reader waits (backpressure up to the MC, which
# drops a client that stops reading for too long, as its policy says).
EVENT_QUEUE_SIZE = 1024
READ_SIZE = 64 * 1024
# A refused join: how long to look for the SessionEnded that may follow the ErrorMessage (a
# refused resume says KICKED or MEETING_ENDED there, docs/protocol.md §13). The MC finishes the
# stream right after, so this bounds only a peer that does not.
REFUSAL_READ_S = 1.0


class SignalingEnded(trio.BrokenResourceError):
    """The session ended (SessionEnded received, or the connection went away)."""

    def __init__(self, reason: LeaveReason | None, message: str) -> None:
        super().__init__(
            f"signaling session ended: {reason.name if reason else 'closed'} {message}"
        )
        self.reason = reason
        self.message = message


class SignalingClient:
    """A joined signaling session (see the module docstring)."""

    def __init__(
        self,
        session: WebTransportSession,
        stream: WebTransportStream,
        key_pair: KeyPair | None = None,
    ) -> None:
        self.session = session
        self.stream = stream
        # Whose public key the JoinRequest offered (docs/protocol.md §16).
        self.key_pair = key_pair
        self.join_response = sig.JoinResponse()
        self.session_ended: sig.SessionEnded | None = None
        self._ids = itertools.count(1)
        self._lock = trio.StrictFIFOLock()
        self._waiting: dict[int, trio.MemorySendChannel[sig.ServerMessage]] = {}
        self._events_send, self.events = trio.open_memory_channel[sig.ServerMessage](
            EVENT_QUEUE_SIZE
        )
        self._decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
        self.closed = trio.Event()

    @property
    def participant_id(self) -> str:
        return self.join_response.participant_id

    @property
    def end_reason(self) -> LeaveReason | None:
        ended = self.session_ended
        return None if ended is None else leave_reason_from_pb(ended.reason)

    @property
    def lost(self) -> bool:
        """The QUIC connection under the session went away (idle timeout, connection closed)
        without the MC ending the session: worth a resume (docs/protocol.md §13)."""
        return self.session_ended is None and isinstance(
            self.session.end, (IdleTimeout, ConnectionLost)
        )

    async def send(self, message: sig.ClientMessage) -> None:
        """Send without waiting for a reply (the caller sets ``request_id`` if it wants one).
        Every message this client sends goes through here, which stamps the protocol version
        (docs/protocol.md §12) unless the caller set one."""
        if not message.protocol_version:
            message.protocol_version = PROTOCOL_VERSION
        data = encode_message(message)
        async with self._lock:
            await self.stream.send_all(data)

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        """Send ``message`` with a fresh ``request_id`` and return the reply.

        Raises the ``DarkTowerError`` of an ``ErrorMessage`` reply, :class:`SignalingEnded`
        when the session ends first. A ``LeaveRequest``/``EndMeeting`` is answered by the
        ``SessionEnded`` that closes the session (returned, not raised). Cancel-safe: a reply
        arriving after cancellation is dropped.
        """
        request_id = next(self._ids)
        message.request_id = request_id
        send, receive = trio.open_memory_channel[sig.ServerMessage](1)
        self._waiting[request_id] = send
        try:
            await self.send(message)
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                raise self._ended() from None
        finally:
            self._waiting.pop(request_id, None)
        if reply.WhichOneof("message") == "error":
            raise error_from_message(reply.error)
        return reply

    async def leave(self) -> sig.SessionEnded | None:
        """Leave voluntarily; returns the SessionEnded (None if the session was already gone)."""
        try:
            await self.request(sig.ClientMessage(leave=sig.LeaveRequest()))
        except (SignalingEnded, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return self.session_ended

    def _ended(self) -> SignalingEnded:
        ended = self.session_ended
        if ended is None:
            return SignalingEnded(None, "")
        return SignalingEnded(leave_reason_from_pb(ended.reason), ended.message)

    async def _read(self) -> None:
        try:
            while True:
                for message in self._decoder:
                    await self._route(message)
                    if self.session_ended is not None:
                        # The server waits for our close before closing (so nothing unread
                        # is reset under us): answer at once.
                        self.session.close_nowait(0, "")
                        return
                data = await self.stream.receive_some(READ_SIZE)
                if not data:
                    return
                self._decoder.receive_data(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            self._events_send.close()
            for waiter in list(self._waiting.values()):
                waiter.close()

    async def _route(self, message: sig.ServerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "session_ended":
            self.session_ended = message.session_ended
        waiter = self._waiting.pop(message.request_id, None) if message.request_id else None
        if waiter is not None:
            waiter.send_nowait(message)  # one reply per request: the slot is free
            if kind != "session_ended":
                return
        await self._events_send.send(message)


async def _receive_join(
    stream: WebTransportStream, decoder: MessageDecoder[sig.ServerMessage]
) -> sig.ServerMessage:
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise SignalingEnded(None, "the server closed the stream during the join")
        decoder.receive_data(data)


async def _receive_batches(
    stream: WebTransportStream,
    decoder: MessageDecoder[sig.ServerMessage],
    response: sig.JoinResponse,
) -> None:
    """Append the ParticipantsBatch messages that follow ``response`` to its participants.

    The MC sends ``participant_batches`` of them right after the JoinResponse; anything else
    in their place is a protocol fault (SignalingEnded)."""
    for _ in range(response.participant_batches):
        message = await _receive_join(stream, decoder)
        if message.WhichOneof("message") != "participants_batch":
            raise SignalingEnded(
                None, f"unexpected {message.WhichOneof('message')} inside the participant list"
            )
        response.existing_participants.extend(message.participants_batch.participants)
        if message.participants_batch.final:
            break


def _ended_by(ended: sig.SessionEnded) -> SignalingEnded:
    return SignalingEnded(leave_reason_from_pb(ended.reason), ended.message)


async def _refusal_end(
    stream: WebTransportStream, decoder: MessageDecoder[sig.ServerMessage]
) -> SignalingEnded | None:
    """The SessionEnded after a join's ErrorMessage, if one follows within REFUSAL_READ_S."""
    with trio.move_on_after(REFUSAL_READ_S):
        try:
            message = await _receive_join(stream, decoder)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if message.WhichOneof("message") == "session_ended":
            return _ended_by(message.session_ended)
    return None


@asynccontextmanager
async def open_signaling(
    url: str,
    *,
    meeting_id: str,
    join_token: str,
    participant_name: str = "",
    e2ee_public_key: bytes = b"",
    e2ee_key_pair: KeyPair | None = None,
    server_certificate_hashes: Sequence[bytes] | None = None,
    limits: TransportLimits | None = None,
    origin: str | None = None,
    resume_token: str = "",
    capabilities: sig.ParticipantCapabilities | None = None,
    local_host: str | None = None,
) -> AsyncIterator[SignalingClient]:
    """Connect to the MC at ``url``, join, and yield the joined :class:`SignalingClient`.

    ``origin`` is sent as the CONNECT's ``origin`` header: an MC with a list of allowed origins
    refuses a CONNECT without one (403), as it would a foreign web page's. With
    ``resume_token`` (and an empty ``join_token``) the join resumes the participant that token
    was issued to (docs/protocol.md §13): check ``join_response.resumed``. ``capabilities``
    (the video codecs this client decodes, how many video streams it takes at once) make the MC
    transcode for it and hold it to its ``max_video_streams`` (docs/protocol.md §2.2).
    ``e2ee_key_pair`` (or its raw ``e2ee_public_key``) is the participant's X25519 key for
    end-to-end encryption, required by an encrypted meeting (docs/protocol.md §16): the
    client's ``key_pair``; a :class:`MeetingSession` on this client uses it. ``local_host``
    binds the client's socket to that address (a load test's clients as many hosts).

    Owns the WebTransport session and the reader task; leaving the block closes the session
    (without a LeaveRequest: call :meth:`SignalingClient.leave` for a clean leave). Raises
    ConnectFailed/SessionRefused, the ``DarkTowerError`` of a refused join, SignalingEnded
    (with ``reason`` set if the MC refused it with a SessionEnded, e.g. KICKED for a resume).
    """
    async with connect_webtransport(
        url,
        server_certificate_hashes=server_certificate_hashes,
        limits=limits,
        origin=origin,
        local_host=local_host,
    ) as session:
        stream = await session.open_bidirectional_stream()
        client = SignalingClient(session, stream, e2ee_key_pair)
        join = sig.JoinRequest(
            meeting_id=meeting_id,
            join_token=join_token,
            participant_name=participant_name,
            e2ee_public_key=e2ee_key_pair.public if e2ee_key_pair else e2ee_public_key,
            resume_token=resume_token,
            capabilities=capabilities,
        )
        try:
            await client.send(sig.ClientMessage(request_id=next(client._ids), join=join))
            first = await _receive_join(stream, client._decoder)
        except SessionClosed:
            raise SignalingEnded(None, "session closed during join") from None
        if first.WhichOneof("message") == "error":
            error = error_from_message(first.error)
            ended = await _refusal_end(stream, client._decoder)
            if ended is not None:
                raise ended from error
            raise error
        if first.WhichOneof("message") == "session_ended":
            raise _ended_by(first.session_ended)
        if first.WhichOneof("message") != "join_response":
            raise SignalingEnded(
                None, f"unexpected {first.WhichOneof('message')} before JoinResponse"
            )
        client.join_response = first.join_response
        # The rest of the participant list, if it did not fit (docs/protocol.md).
        await _receive_batches(stream, client._decoder, client.join_response)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
