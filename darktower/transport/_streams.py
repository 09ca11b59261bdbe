"""WebTransport streams as trio streams, with bounded buffers in both directions.

Send: ``send_all`` hands data to QUIC in chunks and waits while the stream's unacknowledged
bytes are at or over the high-water mark, so a peer that does not read holds the sender back.
Receive: the peer may send at most the receive window beyond what the application has read
(credit is granted on read, see ``_quic.py``), so buffered data is bounded by the window. On a
QUIC core that grants credit itself (qh3), a stream that overruns the window stops receiving.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from . import _config
from ._errors import StreamReset
from ._wire import WT_BUFFERED_STREAM_REJECTED, WT_SESSION_GONE, code_from_h3, code_to_h3

if TYPE_CHECKING:
    from ._connection import Connection
    from ._session import WebTransportSession


class _Guard:
    """Two tasks using one direction of a stream at once is a bug: raise BusyResourceError."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._what = what

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._what} this stream")
        self._busy = True

    def __exit__(self, *exc: object) -> None:
        self._busy = False


class StreamState:
    """One QUIC stream of a session, shared by the connection (events) and the application."""

    def __init__(
        self,
        conn: Connection,
        session: WebTransportSession,
        stream_id: int,
        *,
        readable: bool,
        writable: bool,
        consumed: int,
    ) -> None:
        self.conn = conn
        self.session = session
        self.stream_id = stream_id
        # receive side; buffered bytes <= receive window (the peer has no credit for more)
        self._chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.consumed = consumed
        self.recv_eof = False
        self.recv_error: BaseException | None = None
        self.recv_closed = not readable  # by us: stop_sending / aclose
        self.recv_finished = not readable  # at QUIC level: FIN or reset seen
        self._recv_wait: trio.Event | None = None
        self._recv_guard = _Guard("receiving on")
        # send side
        self.send_closed = not writable  # by us: FIN or reset
        self.send_reset = False  # by us: reset (what was written will not all leave)
        self.send_error: BaseException | None = None
        self._send_wait: trio.Event | None = None
        self._send_guard = _Guard("sending on")

    # --- events from the connection -----------------------------------------------------
    def on_data(self, data: bytes, fin: bool) -> None:
        if self.recv_closed or self.recv_error is not None:
            data = b""  # we stopped reading: drop, grant no credit
        elif data:
            if self.buffered + len(data) > self.conn.limits.stream_receive_window:
                self._overrun()
                return
            self._chunks.append(data)
            self.buffered += len(data)
        if fin:
            self.recv_eof = True
            self.recv_finished = True
            self._recv_done()
        self._wake_receiver()

    def _overrun(self) -> None:
        # More than the receive window unread: only a QUIC core that grants credit as data
        # arrives (qh3, _quic_qh3.py) lets a peer get here. The bound holds: receiving stops.
        self.conn.endpoint.counters["receive_window_overrun"] += 1
        self.recv_error = trio.BrokenResourceError("the peer sent beyond the receive window")
        self.recv_closed = True
        if not self.recv_finished:
            self.conn.stop_stream(self.stream_id, WT_BUFFERED_STREAM_REJECTED)
        self._chunks.clear()
        self.buffered = 0
        self._recv_done()
        self._wake_receiver()

    def on_reset(self, h3_code: int) -> None:
        self.recv_finished = True
        if self.recv_error is None and not self.recv_eof:
            self.recv_error = StreamReset(code_from_h3(h3_code), h3_code)
        self._chunks.clear()
        self.buffered = 0
        self._recv_done()
        self._wake_receiver()

    def on_stop_sending(self, h3_code: int) -> None:
        # aioquic has already reset our sending side in answer.
        if self.send_error is None and not self.send_closed:
            self.send_error = StreamReset(code_from_h3(h3_code), h3_code, stop_sending=True)
        self.send_closed = True
        self._send_done()
        self._wake_sender()

    def on_session_gone(self, error: BaseException) -> None:
        """The session ended: reset what we still send, stop what we still receive.

        A direction we had already closed keeps raising ClosedResourceError; the others raise
        ``error`` (SessionClosed when the peer or the network ended it).
        """
        if not self.send_closed:
            self.conn.reset_stream(self.stream_id, WT_SESSION_GONE)
            self.send_closed = True
            if self.send_error is None:
                self.send_error = error
        if not self.recv_closed:
            if not self.recv_finished:
                self.conn.stop_stream(self.stream_id, WT_SESSION_GONE)
            if self.recv_error is None:
                self.recv_error = error
        self.recv_finished = True
        self._chunks.clear()
        self.buffered = 0
        self._send_done()
        self._wake_receiver()
        self._wake_sender()

    def check_writable(self) -> None:
        """Called after incoming acknowledgements: wake a sender waiting on backpressure."""
        if self._send_wait is not None and (
            self.send_closed
            or self.send_error is not None
            or self.conn.unacked(self.stream_id) < self.conn.limits.stream_send_high_water
        ):
            self._wake_sender()

    # --- application side ---------------------------------------------------------------
    def _check_send(self) -> None:
        if self.send_error is not None:
            raise self.send_error
        if self.send_closed:
            raise trio.ClosedResourceError("stream closed for sending")

    async def wait_writable(self) -> None:
        high_water = self.conn.limits.stream_send_high_water
        while True:
            self._check_send()
            if self.conn.unacked(self.stream_id) < high_water:
                return
            self._send_wait = event = trio.Event()
            self.conn.blocked_senders.add(self)
            try:
                await event.wait()
            finally:
                self.conn.blocked_senders.discard(self)
                self._send_wait = None
            # Woken in the tick its scope was cancelled (the connection's end woke it): the
            # cancellation, not the error the end left, is what it sees.
            await trio.lowlevel.checkpoint_if_cancelled()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            self._check_send()
            while view.nbytes:
                await self.wait_writable()
                chunk = view[: _config.SEND_CHUNK]
                self.conn.send_stream_data(self.stream_id, bytes(chunk), False)
                view = view[chunk.nbytes :]
            await trio.lowlevel.cancel_shielded_checkpoint()

    def try_send(self, data: bytes | bytearray | memoryview) -> bool:
        """Write all of ``data`` now if the stream is below its high-water mark and stays
        within a chunk of it: True. False: nothing was written (``send_all`` would wait).
        Raises as ``send_all`` does."""
        with self._send_guard:
            self._check_send()
            view = memoryview(data)
            # No further beyond the mark than send_all goes (its last chunk).
            high_water = self.conn.limits.stream_send_high_water
            unacked = self.conn.unacked(self.stream_id)
            if unacked >= high_water or unacked + view.nbytes > high_water + _config.SEND_CHUNK:
                return False
            while view.nbytes:
                chunk = view[: _config.SEND_CHUNK]
                self.conn.send_stream_data(self.stream_id, bytes(chunk), False)
                view = view[chunk.nbytes :]
            return True

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self.wait_writable()
            await trio.lowlevel.cancel_shielded_checkpoint()

    def finish_sending(self) -> None:
        """Send FIN (idempotent; a no-op once the sending side is closed or broken)."""
        if not self.send_closed:
            self.send_closed = True
            self.conn.send_stream_data(self.stream_id, b"", True)
            self._send_done()
            self._wake_sender()

    def reset(self, code: int) -> None:
        if not self.send_closed:
            self.send_closed = self.send_reset = True
            self.conn.reset_stream(self.stream_id, code_to_h3(code))
            self._send_done()
            self._wake_sender()

    def stop_sending(self, code: int) -> None:
        if not self.recv_closed:
            self.recv_closed = True
            if not self.recv_finished:
                self.conn.stop_stream(self.stream_id, code_to_h3(code))
            self._chunks.clear()
            self.buffered = 0
            self._recv_done()
            self._wake_receiver()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = _config.DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self.recv_error is not None:
                    raise self.recv_error
                if self.recv_closed:
                    raise trio.ClosedResourceError("stream closed for receiving")
                if self._chunks:
                    data = self._take(max_bytes)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if self.recv_eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                self._recv_wait = event = trio.Event()
                try:
                    await event.wait()
                finally:
                    self._recv_wait = None
                await trio.lowlevel.checkpoint_if_cancelled()  # (as in wait_writable)

    def _take(self, max_bytes: int) -> bytes:
        first = self._chunks[0]
        if len(first) <= max_bytes:
            self._chunks.popleft()
            data = first
            # Coalesce small chunks up to max_bytes; fewer wake-ups for small messages.
            while self._chunks and len(data) + len(self._chunks[0]) <= max_bytes:
                data += self._chunks.popleft()
        else:
            data, self._chunks[0] = first[:max_bytes], first[max_bytes:]
        self.buffered -= len(data)
        self.consumed += len(data)
        self.conn.on_consumed(self.stream_id, self.consumed)
        return data

    def close_both(self) -> None:
        """aclose(): FIN if still sending, STOP_SENDING if the peer still sends."""
        self.finish_sending()
        self.stop_sending(H3_NO_ERROR_WT)

    # --- bookkeeping --------------------------------------------------------------------
    def _send_done(self) -> None:
        self.conn.stream_half_done(self)

    def _recv_done(self) -> None:
        self.conn.stream_half_done(self)

    def _wake_receiver(self) -> None:
        if self._recv_wait is not None:
            self._recv_wait.set()

    def _wake_sender(self) -> None:
        if self._send_wait is not None:
            self._send_wait.set()


# aclose() of a stream whose peer still sends: WebTransport code 0 (no error).
H3_NO_ERROR_WT = 0


class _Base:
    _state: StreamState

    @property
    def stream_id(self) -> int:
        return self._state.stream_id

    @property
    def session(self) -> WebTransportSession:
        return self._state.session


class WebTransportStream(_Base, trio.abc.HalfCloseableStream):
    """A bidirectional WebTransport stream (opened by either side).

    ``send_all`` waits on backpressure; ``receive_some`` returns b"" at the end of the stream.
    Raises ``trio.ClosedResourceError`` after we closed that direction, ``StreamReset`` when the
    peer reset it (or asked us to stop sending), ``SessionClosed`` once the session is gone.
    """

    def __init__(self, state: StreamState) -> None:
        self._state = state

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._state.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._state.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state.finish_sending()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._state.receive_some(max_bytes)

    def reset(self, code: int = 0) -> None:
        """Abort sending with a WebTransport application error code."""
        self._state.reset(code)

    def stop_sending(self, code: int = 0) -> None:
        """Ask the peer to stop sending, with a WebTransport application error code."""
        self._state.stop_sending(code)

    async def aclose(self) -> None:
        """Close both directions (FIN; STOP_SENDING if the peer still sends). Idempotent."""
        self._state.close_both()
        await trio.lowlevel.checkpoint()


class WebTransportSendStream(_Base, trio.abc.SendStream):
    """The sending end of a unidirectional stream we opened. ``aclose`` sends FIN."""

    def __init__(self, state: StreamState) -> None:
        self._state = state

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._state.send_all(data)

    def try_send(self, data: bytes | bytearray | memoryview) -> bool:
        """``send_all`` without waiting and without a checkpoint (a sender that writes once
        per wake-up saves its reschedules): True if all of ``data`` was written; False if the
        stream's unacknowledged bytes are at the high-water mark, or would pass it by more
        than ``send_all`` lets them (nothing written: then ``send_all`` waits). Raises as
        ``send_all`` does."""
        return self._state.try_send(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._state.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state.finish_sending()

    def reset(self, code: int = 0) -> None:
        self._state.reset(code)

    @property
    def unacknowledged(self) -> int:
        """Bytes written to this stream (``send_all`` returned) that the peer has not yet
        acknowledged in order: held back by flow or congestion control, in flight or lost.
        Read-only; 0 once the stream is gone (reset or done)."""
        return self._state.conn.unacked(self._state.stream_id)

    def when_sent(self, callback: Callable[[float], None]) -> bool:
        """Call ``callback(now)`` once every byte written so far has been handed to the
        socket (at the end of the flush that sends the last of them); never if the stream is
        reset or gone first. False: refused (too many waiting on the connection; _sent.py)."""
        conn = self._state.conn
        return conn.sent_watch.add(
            conn.quic, self._state, callback, trio.current_time(), conn.flush_pending
        )

    @property
    def send_credit(self) -> int:
        """The stream offset up to which the peer lets us send (its flow-control limit). It
        grows only as the peer's application reads, so a raise is the evidence that it reads:
        acknowledgements alone come from its QUIC stack. Read-only; 0 once the stream is gone."""
        return self._state.conn.send_credit(self._state.stream_id)

    async def aclose(self) -> None:
        self._state.finish_sending()
        await trio.lowlevel.checkpoint()


class WebTransportReceiveStream(_Base, trio.abc.ReceiveStream):
    """The receiving end of a unidirectional stream the peer opened."""

    def __init__(self, state: StreamState) -> None:
        self._state = state

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._state.receive_some(max_bytes)

    def stop_sending(self, code: int = 0) -> None:
        self._state.stop_sending(code)

    async def aclose(self) -> None:
        self._state.stop_sending(H3_NO_ERROR_WT)
        await trio.lowlevel.checkpoint()


AnyStream = WebTransportStream | WebTransportSendStream | WebTransportReceiveStream
# What the peer can open: bidirectional, or unidirectional towards us.
IncomingStream = WebTransportStream | WebTransportReceiveStream
