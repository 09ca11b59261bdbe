"""The application-facing streams of a :class:`~darktower.client.MeetingSession`: its event
stream, one :class:`Subscription` per subscribed remote stream, one :class:`Publication` per
published local stream.

Each reads whether and why its session ended through :class:`SessionState` and is given a
``close`` callback that withdraws it at the MC; none of them calls into the session otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Protocol

import trio

from darktower.frames import Frame, FrameFlags, FrameType
from darktower.model import LeaveReason, StreamType

from ._events import SETTLE_S, SessionEnded, SessionEvent
from ._media import MediaPublisher


class SessionState(Protocol):
    """What a session's streams read of it (a :class:`~darktower.client.MeetingSession`):
    whether and why it ended."""

    @property
    def end_reason(self) -> LeaveReason | None: ...

    @property
    def ended(self) -> trio.Event: ...

    def ended_error(self) -> SessionEnded: ...


class _Ending:
    """What every stream of a session does once the session is over: raise the session's
    SessionEnded after a server-side end, stop after a voluntary leave."""

    _session: SessionState

    def _raise_end(self) -> None:
        session = self._session
        if session.end_reason is not None and session.end_reason is not LeaveReason.VOLUNTARY:
            raise session.ended_error()


class EventStream(_Ending):
    """The session's events (:data:`~darktower.client.SessionEvent`) in arrival order.

    ``async for event in session.events`` ends after a voluntary leave and raises
    :class:`~darktower.client.SessionEnded` after a server-side end, once every buffered event
    was taken. Bounded: see ``EVENT_BUFFER`` for the policy when full (oldest dropped).
    """

    def __init__(self, session: SessionState, size: int) -> None:
        self._session = session
        self._send, self._receive = trio.open_memory_channel[SessionEvent](size)
        self.dropped = 0

    def _put(self, event: SessionEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._receive.receive_nowait()  # full, so there is one to drop
            self.dropped += 1
            self._send.send_nowait(event)
        except trio.ClosedResourceError:
            pass  # ended: nothing is added after the end

    def _close(self) -> None:
        self._send.close()

    async def receive(self) -> SessionEvent:
        """The next event. Raises SessionEnded (server-side end) or trio.EndOfChannel (after
        leave()) once the session is over and the buffer is empty. Cancel-safe."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            self._raise_end()
            raise

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SessionEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Subscription(_Ending):
    """Frames of one remote stream (of all its simulcast layers), made by
    :meth:`MeetingSession.subscribe`.

    ``async for frame in subscription`` yields :class:`~darktower.frames.Frame` objects whose
    ``raw`` bytes are exactly what the publisher sent. Iteration stops when the stream is
    unpublished, its publisher leaves, the subscription is closed or the session is left; it
    raises SessionEnded after a server-side end (after the buffered frames). Bounded: see
    ``SUBSCRIPTION_BUFFER`` for the drop policy when full; ``dropped`` counts the drops.
    """

    def __init__(
        self,
        session: SessionState,
        stream_id: str,
        keys: list[bytes],
        size: int,
        *,
        close: Callable[[Subscription], Awaitable[None]],
    ) -> None:
        self._session = session
        self._close = close  # unsubscribes at the MC
        self.stream_id = stream_id
        self.keys = tuple(keys)
        self._send, self._receive = trio.open_memory_channel[Frame](size)
        self._await_key = False  # video frames were dropped: skip deltas until a key frame
        self.dropped = 0
        self.received = 0  # frames delivered into the buffer
        self.closed = False  # aclose() was called

    def _deliver(self, frame: Frame) -> None:
        """Buffer one frame by the drop policy (called by the session's media reader)."""
        kind = frame.frame_type
        if self._await_key and kind is FrameType.VIDEO_DELTA:
            self.dropped += 1
            return
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            if frame.flags & FrameFlags.DISCARDABLE:
                self.dropped += 1
                return
            if kind is FrameType.VIDEO_DELTA:
                self._await_key = True
                self.dropped += 1
                return
            self._receive.receive_nowait()  # audio or a key frame: the oldest one goes
            self.dropped += 1
            self._send.send_nowait(frame)
        except trio.ClosedResourceError:
            return
        if kind is FrameType.VIDEO_KEY:
            self._await_key = False
        self.received += 1

    def _end(self) -> None:
        self._send.close()

    async def receive(self) -> Frame:
        """The next frame. Raises trio.EndOfChannel once the subscription is over and drained,
        SessionEnded instead after a server-side end. Cancel-safe."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            self._raise_end()
            raise

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop the frames and unsubscribe at the MC. Idempotent; the local side is released
        at once even when cancelled, the UnsubscribeStream is shielded and bounded by
        ``CLOSE_GRACE_S``; errors (stream already gone, session over) are ignored."""
        if self.closed:
            return
        self.closed = True
        self._end()
        await self._close(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Publication:
    """A published local stream, made by :meth:`MeetingSession.publish`: write frames with
    :meth:`send_frame`, withdraw it with :meth:`aclose`."""

    def __init__(
        self,
        session: SessionState,
        stream_id: str,
        stream_type: StreamType,
        publishers: Mapping[str, MediaPublisher],
        *,
        close: Callable[[Publication], Awaitable[None]],
    ) -> None:
        self._session = session
        self._close = close  # finishes the media streams and unpublishes at the MC
        self.stream_id = stream_id
        self.stream_type = stream_type
        self.publishers = dict(publishers)  # wire stream id (the stream's or a layer's) → stream
        self.layer_ids = tuple(k for k in publishers if k != stream_id)
        self.closed = False

    async def send_frame(
        self,
        frame_type: FrameType,
        payload: bytes,
        *,
        layer_id: str | None = None,
        flags: FrameFlags = FrameFlags.END_OF_FRAME,
        timestamp_us: int | None = None,
        sequence: int | None = None,
    ) -> bytes:
        """Send one frame (on simulcast layer ``layer_id``, if the stream has layers); return
        its wire bytes. Waits while QUIC flow control is full. Raises SessionEnded once the
        session is over, ValueError for a layer the stream does not have (``layer_id`` is
        required on a simulcast stream), trio.ClosedResourceError after aclose(), the transport's
        BrokenResourceError (StreamReset) if the MH refused the stream while the session lives.
        """
        if self._session.end_reason is not None:
            raise self._session.ended_error()  # the connection may not be closed yet
        if self.closed:
            raise trio.ClosedResourceError("publication closed")
        publisher = self.publishers.get(self.stream_id if layer_id is None else layer_id)
        if publisher is None:
            raise ValueError(f"stream {self.stream_id} has no layer {layer_id!r}")
        try:
            return await publisher.send_frame(
                frame_type, payload, flags=flags, timestamp_us=timestamp_us, sequence=sequence
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._session.end_reason is None:  # give the session SETTLE_S to learn why
                with trio.move_on_after(SETTLE_S):
                    await self._session.ended.wait()
            if self._session.end_reason is not None:
                raise self._session.ended_error() from exc
            raise

    async def aclose(self) -> None:
        """Finish the media stream(s) and unpublish at the MC. Idempotent; shielded and bounded
        by ``CLOSE_GRACE_S``; errors (session over) are ignored."""
        if self.closed:
            return
        self.closed = True
        await self._close(self)

    async def __aenter__(self) -> Publication:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["EventStream", "Publication", "SessionState", "Subscription"]
