"""One QUIC connection: a sans-IO QUIC core, driven by the endpoint's tasks, and one trio task
that owns its sessions' tasks.

The endpoint's reader feeds datagrams in and flushes each touched connection once per batch
(``after_receive``); application calls only mark the connection for the endpoint's flusher
(``_flusher.py``), so writes made in one tick leave in one batch of packets (or, with
``delay_sends``, at its time); the endpoint's timers (``_timers.py``) wake it when aioquic's
timer or one of its own deadlines is due. WebTransport data never goes through ``H3Connection``:
``_routing.py`` routes it around (docs/decisions.md, "aioquic internals touched")."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from aioquic.h3 import events as h3e
from aioquic.h3.connection import H3Connection
from aioquic.quic.connection import NetworkAddress, stream_is_unidirectional
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ._config import MAX_SEND_DELAY_S, TransportLimits
from ._core import load_core
from ._deadlines import ConnectionDeadlines
from ._end import ConnectionLost, IdleTimeout, SessionEnd
from ._errors import SessionClosed
from ._quic import CreditedQuicConnection
from ._sent import SentWatch
from ._session import WebTransportSession
from ._stats import TransportStats
from ._streams import StreamState
from ._wire import (
    H3_GENERAL_PROTOCOL_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    WT_BUFFERED_STREAM_REJECTED,
    stream_prefix,
)

if TYPE_CHECKING:
    from ._admission import Admit
    from ._endpoint import Endpoint

logger = logging.getLogger(__name__)

# The reason phrase of a client connection whose server stopped listening (ICMP port
# unreachable, unanswered: ConnectionDeadlines.unreachable).
UNREACHABLE = "peer unreachable"


# Called with each HTTP/3 event of a request stream, and with None if the connection is lost.
H3Handler = Callable[[h3e.H3Event | None], None]


class Connection:
    """Per-connection state. Its ``run`` task owns the sessions' tasks."""

    def __init__(
        self,
        endpoint: Endpoint,
        quic: CreditedQuicConnection,
        limits: TransportLimits,
    ) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.limits = limits
        self.is_client: bool = quic.configuration.is_client
        self.core = core = load_core(limits.quic_core)  # aioquic or qh3 (_core.py)
        # qh3's H3Connection has the same methods and _stream as aioquic's, the type named here.
        self.h3: H3Connection = core.h3_class(quic, enable_webtransport=True)
        self.streams: dict[int, StreamState] = {}
        self.sessions: dict[int, WebTransportSession] = {}
        # Peer streams whose first bytes do not yet say what they are (<= 16 bytes each).
        self.pending_prefix: dict[int, bytes] = {}
        # Peer streams we refused: their late events are swallowed until QUIC forgets them.
        self.rejected: set[int] = set()
        # Streams done on our side, dropped from ``streams`` once QUIC has discarded them.
        self.sweep: set[StreamState] = set()
        self.blocked_senders: set[StreamState] = set()
        self.sent_watch = SentWatch()  # callbacks once written bytes leave (_sent.py)
        self.request_handlers: dict[int, H3Handler] = {}
        self.on_session_request: Callable[[WebTransportSession], None] | None = None
        self.cids: set[bytes] = set()
        self.handshake_complete = trio.Event()
        self.terminated = trio.Event()
        self.settled = trio.Event()  # handshake completed or connection terminated
        self.close_error_code = 0
        self.close_reason = ""
        self.datagrams_dropped = 0
        self.datagrams_received = 0  # for the incoming loss estimate (see _stats.py)
        self.nursery: trio.Nursery | None = None
        self._spawn_queue: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.wake_at = math.inf  # when the endpoint's timers wake it (_timers.py)
        self.entry_seq, self.entry_at = 0, math.inf  # its entry in their heap
        self.flush_pending = False  # a flush is scheduled (a write since the last one)
        self.send_delay_s = 0.0  # see delay_sends
        self._flush_due: float | None = None
        self._timer_at: float | None = None
        self.deadlines = ConnectionDeadlines(trio.current_time(), limits, is_client=self.is_client)
        self._failed = False  # the error boundary closed it (see fail)
        self.admit: Admit | None = None  # server side: what holds its per-address slots
        quic._dt_consumed = self._consumed_offset
        quic._dt_cid_issued = self._cid_issued
        quic.dt_apply_limits(limits)
        core.count_losses(quic)

    @property
    def peer_address(self) -> NetworkAddress | None:
        """Where the peer is now (it changes when a client migrates); None before any packet."""
        return self.quic.get_peer_address()

    @property
    def peer_host(self) -> str:
        addr = self.quic.get_peer_address()
        return "?" if addr is None else str(addr[0])

    # --- the connection task --------------------------------------------------------------
    async def run(self) -> None:
        """Own the sessions' tasks (the endpoint's timers wake the connection: ``on_timer``).

        Returns when the connection has terminated. Cancelled (endpoint shutdown), it sends a
        CONNECTION_CLOSE best-effort and cancels the sessions' tasks.
        """
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                for fn, args in self._spawn_queue:
                    nursery.start_soon(fn, *args)
                self._spawn_queue.clear()
                self._rearm()
                await self.terminated.wait()  # the endpoint's timers wake it meanwhile
                nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            if not self.terminated.is_set():
                try:
                    self.quic.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="shutdown")
                    self.flush()
                except Exception:  # a core whose state broke raises here (qh3): dropped
                    pass
                self.on_terminated(QuicErrorCode.NO_ERROR, "shutdown")
            self.endpoint.forget(self)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start a task owned by this connection (cancelled when the connection ends)."""
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)
        elif not self.terminated.is_set():
            self._spawn_queue.append((fn, args))

    def on_timer(self, now: float) -> None:
        """Its wake time has come (from the endpoint's timers, _timers.py): what is due, then
        the next wake; an error closes this connection only (see fail)."""
        try:
            self._on_wake(now)
        except Exception as exc:
            self.fail(exc)
        if not self.terminated.is_set():
            self._rearm()

    def _on_wake(self, now: float) -> None:
        timer = self._timer_at
        # With a send delay, what is held leaves at its time unless something here is due;
        # receipts since the last flush may have moved aioquic's timers (an ACK cancels a loss
        # timeout): a stale one must neither fire and probe nor send what is held.
        held = self._flush_due is not None and now < self._flush_due
        if timer is not None and now >= timer and self.send_delay_s:
            timer = self._timer_at = self.quic.get_timer()
        if timer is not None and now >= timer:
            self.quic.handle_timer(now=now)
            held = False
        deadlines = self.deadlines
        if deadlines.handshake_expired(now):
            self.quic.close(
                error_code=QuicErrorCode.CONNECTION_REFUSED,
                frame_type=QuicFrameType.PADDING,  # a transport close, as aioquic's own
                reason_phrase="handshake timeout",
            )
        if deadlines.no_session_expired(now):
            self.endpoint.counters["no_session_timeout"] += 1
            self.quic.close(error_code=H3_NO_ERROR, reason_phrase="no WebTransport session")
        if deadlines.ping_due(now):
            self.quic.send_ping(0)
            held = False
        if deadlines.unreachable_expired(now) and not self.terminated.is_set():
            self.quic.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase=UNREACHABLE)
            self.flush()
            self.on_terminated(QuicErrorCode.NO_ERROR, UNREACHABLE)
            return
        self.process_events()
        if held and self.quic._close_event is None:
            self._timer_at = self.quic.get_timer()
        else:
            self.flush()

    def fail(self, exc: Exception) -> None:
        """The error boundary: handling this connection's events raised ``exc``. Close this
        connection (H3_GENERAL_PROTOCOL_ERROR), count and log it once; nothing else is touched.
        Called by the endpoint's reader, its flusher and its timers."""
        if self.terminated.is_set():
            return
        if not self._failed:
            self._failed = True
            cause = f"peer_error:{type(exc).__name__}"
            self.endpoint.counters[cause] += 1
            logger.warning(
                "closing QUIC connection from %s after an error: %s: %s",
                self.peer_host,
                type(exc).__name__,
                exc,
            )
            logger.debug("the error that closed the connection", exc_info=exc)
            try:
                self.quic.close(error_code=H3_GENERAL_PROTOCOL_ERROR, reason_phrase="error")
                self.flush()
                return
            except Exception:  # the state is unusable: dropped below
                pass
        # A second error, or the close itself failed: drop the connection without a word.
        self.on_terminated(H3_GENERAL_PROTOCOL_ERROR, "error")

    def _rearm(self) -> None:
        at = self.deadlines.next(self._timer_at)
        due = self._flush_due  # a held flush is never pushed back
        if due is not None and due < at:
            at = due
        self.endpoint.timers.arm(self, at)

    def session_started(self) -> None:
        self.deadlines.session_started()
        self._rearm()

    def session_ended(self) -> None:
        self.deadlines.session_ended(trio.current_time())
        self._rearm()

    # --- migration (docs/protocol.md §13) -------------------------------------------------
    def migrate(self, *, new_connection_id: bool = True) -> tuple[str, int]:
        """Client side: move to a new local UDP socket (a new port), as after a network change,
        and return its address. The connection, its sessions and streams carry on: the next
        packet (a PING, sent at once) reaches the server from the new address, and the server
        validates that path. ``new_connection_id`` switches to a connection ID the server
        issued, so the two paths cannot be linked by an observer (as a client should when it
        migrates on purpose); without it the server sees a NAT rebinding. Only a connection
        alone on its endpoint should migrate (the endpoint's socket moves). Raises
        RuntimeError on a server connection."""
        if not self.is_client:
            raise RuntimeError("only a client migrates (RFC 9000 section 9)")
        address = self.endpoint.rebind()
        if new_connection_id:
            self.quic.change_connection_id()  # a no-op while the server issued no spare one
        self.quic.send_ping(0)  # not a probing frame: the server moves to the new path now
        self.schedule_flush()
        return address

    def _cid_issued(self, cid: bytes) -> None:
        # aioquic reports a connection ID it issues with an event that is handled after the
        # datagram carrying it has left; routing it from here means the peer's first packet
        # using it never arrives before the endpoint knows it.
        self.endpoint.add_cid(cid, self)

    # --- I/O, called by the endpoint and the application ----------------------------------
    def receive(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.deadlines.received(now)
        self.datagrams_received += 1
        self.quic.receive_datagram(data, addr, now=now)

    def process_events(self) -> None:
        next_event = self.quic.next_event
        dispatch = self.core.event_handlers
        event = next_event()
        while event is not None:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(self, event)
            event = next_event()
        if self.blocked_senders:
            for state in list(self.blocked_senders):
                state.check_writable()

    def transport_stats(self) -> TransportStats:
        """Packet counts of this connection so far (see ``_stats.py``)."""
        return self.core.read_stats(self.quic, self.datagrams_received, trio.current_time())

    def flush(self) -> None:
        """Send what the QUIC core has to send; re-arm the timer; forget streams QUIC discarded."""
        self.flush_pending = False
        self._flush_due = None
        # A burst to one address leaves in one system call (UDP GSO, docs/architecture.md §5.1).
        self.endpoint.send_batch(self.quic.datagrams_to_send(now=trio.current_time()))
        if self.sent_watch:
            self.sent_watch.resolve(self.quic, trio.current_time())
        gone = self.quic.dt_stream_gone
        if self.sweep:
            for state in [s for s in self.sweep if gone(s.stream_id)]:
                self.sweep.discard(state)
                if self.streams.get(state.stream_id) is state:
                    del self.streams[state.stream_id]
        if self.rejected:
            self.rejected.difference_update([i for i in self.rejected if gone(i)])
        # Every change of aioquic's timer (receive, handle_timer, API calls) is followed by a
        # flush, so computing it here once is enough (get_timer is not cheap).
        self._timer_at = self.quic.get_timer()
        self._rearm()

    def schedule_flush(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            if self.send_delay_s:
                due = self._flush_due = trio.current_time() + self.send_delay_s
                if due < self.wake_at:
                    self.endpoint.timers.arm(self, due)
            else:
                self.endpoint.flusher.schedule(self)

    def flush_scheduled(self) -> None:
        """The flush schedule_flush asked for, from the endpoint's flusher (unless one ran
        since, or the connection ended); an error closes this connection only (see fail)."""
        if self.flush_pending and self._flush_due is None and not self.terminated.is_set():
            try:  # (on_timer flushes a held one)
                self.flush()
            except Exception as exc:
                self.fail(exc)

    def after_receive(self) -> None:
        """Datagrams were handed in: their events, then a flush (or the delayed one)."""
        self.process_events()
        if not self.send_delay_s:
            self.flush()
            return
        self.schedule_flush()
        ack_at = self.quic.dt_ack_due()  # an ACK the peer's loss timer waits for is not held
        if ack_at is not None and self._flush_due is not None and ack_at < self._flush_due:
            self._flush_due = ack_at
            self._rearm()

    def delay_sends(self, seconds: float) -> None:
        """Hold what this side sends up to ``seconds`` (the largest asked, docs/protocol.md §7)."""
        self.send_delay_s = min(max(self.send_delay_s, seconds), MAX_SEND_DELAY_S)

    def close(self, error_code: int = QuicErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the QUIC connection (CONNECTION_CLOSE); ``run`` returns once it is drained."""
        if not self.terminated.is_set():
            self.quic.close(error_code=error_code, reason_phrase=reason)
            self.schedule_flush()

    # --- QUIC operations used by streams and sessions -------------------------------------
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        try:
            self.quic.send_stream_data(stream_id, data, end_stream)
        except self.core.stream_errors:
            # Already reset (by us, or for the peer's STOP_SENDING), finished or discarded.
            # The stream's state learns why from the event; nothing can be sent on it any more.
            return
        self.schedule_flush()

    def reset_stream(self, stream_id: int, h3_code: int) -> None:
        try:
            self.quic.reset_stream(stream_id, h3_code)
        except self.core.stream_errors:
            return
        self.schedule_flush()

    def stop_stream(self, stream_id: int, h3_code: int) -> None:
        try:
            self.quic.stop_stream(stream_id, h3_code)
        except self.core.stream_errors:
            return  # unknown or already discarded
        self.schedule_flush()

    def unacked(self, stream_id: int) -> int:
        return self.quic.dt_unacked(stream_id)

    def send_credit(self, stream_id: int) -> int:
        return self.quic.dt_send_credit(stream_id)

    def on_consumed(self, stream_id: int, consumed: int) -> None:
        if self.quic.dt_credit_due(stream_id, consumed):
            self.schedule_flush()  # a MAX_STREAM_DATA is due (see _quic.py)

    def _consumed_offset(self, stream_id: int) -> int | None:
        state = self.streams.get(stream_id)
        if state is not None:
            return state.consumed
        return 0 if stream_id in self.rejected else None

    def stream_half_done(self, state: StreamState) -> None:
        if (state.send_closed or state.send_error is not None) and (
            state.recv_closed or state.recv_finished
        ):
            state.session.forget_stream(state)
            self.sweep.add(state)

    def open_stream(self, session: WebTransportSession, unidirectional: bool) -> StreamState:
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)
        self.quic.send_stream_data(stream_id, stream_prefix(session.session_id, unidirectional))
        state = StreamState(
            self, session, stream_id, readable=not unidirectional, writable=True, consumed=0
        )
        self.streams[stream_id] = state
        self.schedule_flush()
        return state

    def queue_datagram(self, payload: bytes) -> None:
        # Bounded at datagram_queue_size, dropping the oldest (_quic.py).
        self.datagrams_dropped += self.quic.dt_queue_datagram(
            payload, self.limits.datagram_queue_size
        )
        self.schedule_flush()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h3.send_headers(stream_id, headers, end_stream=end)
        except self.core.h3_errors:
            return  # answered already, or the stream is gone: nothing to send on
        self.schedule_flush()

    def refuse_request(self, stream_id: int, status: int, cause: str, detail: str = "") -> None:
        """Answer a request stream with ``status`` and end it; counted under ``cause``."""
        self.endpoint.counters[cause] += 1
        if detail:
            logger.debug("refused a request from %s with %d: %s", self.peer_host, status, detail)
        self.send_headers(stream_id, [(b":status", str(status).encode())], True)
        # Ask the peer to end its side too, so the request stream does not linger.
        self.stop_stream(stream_id, H3_NO_ERROR)

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        # H3Connection would re-create state for a stream it has forgotten (and leak it).
        if stream_id not in self.h3._stream:
            return
        try:
            self.h3.send_data(stream_id, data, end_stream=end)
        except self.core.h3_errors:
            return  # our side already ended, or QUIC discarded the stream: nothing to send
        self.schedule_flush()

    def abandon_request(self, stream_id: int) -> None:
        """Give up a request stream (CONNECT or plain): reset it and forget it everywhere."""
        self.request_handlers.pop(stream_id, None)
        self.reset_stream(stream_id, H3_REQUEST_CANCELLED)
        self.stop_stream(stream_id, H3_REQUEST_CANCELLED)
        self.h3._stream.pop(stream_id, None)

    def reject_peer_stream(self, stream_id: int, fin: bool) -> None:
        self.rejected.add(stream_id)
        if not fin:
            self.stop_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
        if not stream_is_unidirectional(stream_id):
            self.reset_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)

    def forget_session(self, session: WebTransportSession) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]

    # --- what the connection's QUIC events mean for it (dispatched in _routing.py) --------
    def peer_unreachable(self, now: float) -> None:
        """The kernel says nobody listens on the peer's port (a client's server is gone):
        see ``ConnectionDeadlines.unreachable``. A PING goes out at once, so a server that
        does listen answers within the confirmation window even on an idle connection."""
        if not self.deadlines.unreachable_armed and not self.terminated.is_set():
            self.quic.send_ping(0)
            self.flush()
        self.deadlines.unreachable(now)
        self._rearm()

    def on_handshake_completed(self) -> None:
        if not self.is_client:
            self.quic.dt_loopback_packets()
        self.handshake_complete.set()
        self.settled.set()
        self.endpoint.handshake_done(self)
        self.deadlines.handshake_completed(trio.current_time())
        self._rearm()

    def on_terminated(self, error_code: int, reason: str) -> None:
        """The connection is over (aioquic says so, or it is dropped): record why, end its
        sessions (:class:`SessionEnd` says why) and pending requests. Idempotent."""
        if self.terminated.is_set():
            return
        self.close_error_code = error_code
        self.close_reason = reason
        self.terminated.set()
        self.settled.set()
        end: SessionEnd = (
            IdleTimeout()
            if self.quic.dt_idle_timeout
            else ConnectionLost(error_code, reason, by_peer=self.quic.dt_closed_by_peer)
        )
        error = SessionClosed(0, "", message=f"connection closed: {reason or error_code}")
        for session in list(self.sessions.values()):
            session.on_connection_lost(error, end)
        for handler in list(self.request_handlers.values()):
            handler(None)
        self.request_handlers.clear()
        self.pending_prefix.clear()
        self.blocked_senders.clear()
        self.endpoint.forget(self)
        self.endpoint.timers.disarm(self)
