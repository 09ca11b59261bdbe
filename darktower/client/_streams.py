"""The application-facing streams of a :class:`~darktower.client.MeetingSession`: its event
stream and one :class:`Subscription` per subscribed remote stream (one
:class:`~darktower.client.Publication` per published local stream is in ``_publication.py``).

Each reads whether and why its session ended through :class:`SessionState` and is given a
``close`` callback that withdraws it at the MC; none of them calls into the session otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import trio

from darktower.frames import Frame, FrameFlags, FrameType
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import (
    DerivedStream,
    QualityUpdate,
    SessionEnded,
    SessionEvent,
)
from ._reception import Reception


class SessionState(Protocol):
    """What a session's streams read of it (a :class:`~darktower.client.MeetingSession`):
    whether and why it ended."""

    @property
    def end_reason(self) -> LeaveReason | None: ...

    @property
    def ended(self) -> trio.Event: ...

    def ended_error(self) -> SessionEnded: ...


async def first_of(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""

    async def wait(event: trio.Event, done: trio.CancelScope) -> None:
        await event.wait()
        done.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(wait, event, nursery.cancel_scope)


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
    :meth:`MeetingSession.subscribe`, or of the session's audio mix, made by
    :meth:`MeetingSession.subscribe_mix` (``mix``; its ``stream_id`` is empty).

    ``derived`` says when the frames come from a stream the server makes for this subscription
    instead of the source (docs/protocol.md §2.2): a transcode to a codec this session listed,
    or the audio mix (the MC mixes by itself in a meeting with many audio publishers; the mix
    is then delivered to one of the audio subscriptions it answers, the oldest live one, and
    the others yield nothing). None: the source's own frames.

    ``async for frame in subscription`` yields :class:`~darktower.frames.Frame` objects whose
    ``raw`` bytes are exactly what the publisher sent (in an end-to-end encrypted meeting: its
    frame decrypted, the same header with the plaintext's ``payload_length``; frames that do not
    decrypt never reach it, they are counted in ``session.e2ee.drops``). Iteration stops when the stream is
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
        options: sig.SubscriptionOptions | None = None,
        mix: bool = False,
    ) -> None:
        self._session = session
        self._close = close  # unsubscribes at the MC
        self.stream_id = stream_id
        self.options = options or sig.SubscriptionOptions()  # as asked (made again so)
        self.keys = tuple(keys)
        self.mix = mix
        self.derived: DerivedStream | None = None
        self._send, self._receive = trio.open_memory_channel[Frame](size)
        self._await_key = False  # video frames were dropped: skip deltas until a key frame
        self.dropped = 0
        self.received = 0  # frames delivered into the buffer
        self.closed = False  # aclose() was called
        # What arrived, before the buffer's policy: the session's quality reports use it.
        self.reception = Reception()
        # The last QualityUpdate about this stream (the MH's estimate, the layer this session
        # gets, whether LastN holds it back: docs/protocol.md §17.2), None before the first.
        self.quality: QualityUpdate | None = None

    def _deliver(self, frame: Frame) -> None:
        """Buffer one frame by the drop policy (called by the session's media reader)."""
        self.reception.on_frame(frame.stream_id_bytes, frame.sequence, frame.raw.nbytes)
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


__all__ = ["EventStream", "SessionState", "Subscription", "first_of"]
