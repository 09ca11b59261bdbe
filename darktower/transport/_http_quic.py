"""The GC's HTTP/3 listener: hypercorn's ``QuicProtocol`` with admission and an error boundary.

hypercorn's QUIC listener keeps reading until every connection is gone and never closes its
socket, delivers one connection's events from two tasks at once, creates a connection for
every Initial with no cap, and lets any exception raised while handling one connection's
events end the listener. :class:`_QuicServer` and :class:`_TrackingQuicProtocol` fix these
(docs/decisions.md). New connections are admitted by the WebTransport endpoint's policy
(``Admission``, _admission.py) with the GC's numbers (:mod:`._http_limits`). Its socket's
receive-buffer overflows are counted as the endpoint's are (``udp_receive_overflows``,
_udp.py).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from aioquic._buffer import Buffer
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, pull_quic_header
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.quic import QuicProtocol, _Connection
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from darktower.metrics import UDP_RECEIVE_OVERFLOWS

from ._admission import CAUSES, Admission, Admit
from ._http_limits import HttpLimits
from ._http_streams import BoundedTaskGroup, GuardedH3Protocol, guard_streams, stream_cause
from ._udp import RECEIVE_ANCBUF, drops_grown, read_ancillary

logger = logging.getLogger("darktower.http")

MAX_DATAGRAM = 65_536
# How long QUIC connections get to say goodbye after shutdown starts; then the socket closes.
QUIC_CLOSE_GRACE_S = 1.0
# A woken timer task delivers the events it took out of its connection even if a send restarts
# it meanwhile; an app that stops reading its request body holds it at most this long.
TIMER_DELIVERY_BOUND_S = 10.0
# Length of the connection ids we issue (hypercorn parses headers with this length).
_HOST_CID_LENGTH = 8
# The names the GC's listener counts ``Admission``'s causes under (keys of its /metrics).
COUNTER_NAMES = {cause: f"quic_{cause}" for cause in CAUSES} | {
    "retry_sent": "quic_retry",
    "retry_invalid": "quic_invalid_token",
    "refused_connections": "quic_refused_total",
    "refused_per_address": "quic_refused_address",
    "refused_handshakes": "quic_refused_handshakes",
    "refused_handshakes_per_address": "quic_refused_handshakes_address",
}


def _events_lock(connection: Any) -> trio.StrictFIFOLock:
    lock: trio.StrictFIFOLock | None = getattr(connection, "_darktower_events_lock", None)
    if lock is None:
        lock = connection._darktower_events_lock = trio.StrictFIFOLock()
    return lock


@dataclass(eq=False)
class _AdmittedConnection(_Connection):
    """A connection with what its admission holds: per-address slots until it ends, a
    handshake slot until ``handshake_deadline`` is cleared (handshake over or timed out)."""

    admit: Admit | None = None
    handshake_deadline: float | None = None


def _cause(exc: BaseException) -> str:
    return f"quic_error:{type(exc).__name__}"


class _TrackingQuicProtocol(QuicProtocol):
    """hypercorn's QUIC protocol, made safe for concurrent requests and for hostile peers:

    * the read loop and a connection's timer task both take events out of the connection and
      hand them to the HTTP/3 layer; each does so holding the connection's lock, so one
      stream's data is delivered in order by one task at a time;
    * every send restarts (cancels) the timer task, even in the middle of delivering an event
      it has already taken out of the connection: a request body was then lost and the request
      timed out (408). Once awake, the timer task finishes its delivery shielded, bounded by
      :data:`TIMER_DELIVERY_BOUND_S`;
    * an exception while handling one connection's datagrams, timers or HTTP/3 events closes
      that connection (``H3_GENERAL_PROTOCOL_ERROR``), logged and counted by cause in
      ``counters`` (``quic_error:<ExceptionType>``); nothing else is affected;
    * an exception while sending on one request stream (from the app's task too) resets that
      stream (``H3_INTERNAL_ERROR``), counted as ``quic_stream_error:<ExceptionType>``
      (:class:`GuardedH3Protocol`, :class:`BoundedTaskGroup`);
    * a datagram for no known connection gets what ``Admission`` decides (caps in total, per
      peer and on handshakes, stateless Retry, Version Negotiation only for datagrams of at
      least 1,200 bytes), counted under :data:`COUNTER_NAMES`; a handshake still in progress
      ``quic_handshake_timeout_s`` after its first Initial is closed by the connection's
      timer (``quic_handshake_timeout``).

    Also sets ``idle_event`` when the last connection is gone, so shutdown need not poll, and
    guards each connection's HTTP/3 stream table (:class:`StreamTable`).
    """

    def __init__(
        self, *args: Any, limits: HttpLimits, counters: Counter[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.idle_event = trio.Event()
        self.limits = limits
        self.counters = counters
        self.admission = Admission(
            limits.quic_admission, self.quic_config.supported_versions, counters, COUNTER_NAMES
        )
        self.live_connections = 0
        self.handshakes = 0  # in progress

    async def handle(self, event: Any) -> None:
        if not isinstance(event, RawData) or event.address is None:
            return
        try:
            connection = await self._connection_for(event.data, event.address)
        except Exception as exc:  # a datagram must never end the listener
            self.counters[_cause(exc)] += 1
            logger.warning("QUIC datagram dropped", extra={"fields": {"error": repr(exc)[:200]}})
            return
        if connection is None:
            return
        try:
            connection.quic.receive_datagram(event.data, event.address, now=self.context.time())
        except Exception as exc:
            await self._fail(connection, exc)
            return
        await self._handle_events(connection, event.address)

    async def _connection_for(self, data: bytes, address: Any) -> _Connection | None:
        """The connection ``data`` belongs to, a new one if admitted, or None (answered or
        dropped here)."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=_HOST_CID_LENGTH)
        except ValueError:
            return None
        connection = self.connections.get(header.destination_cid)
        if connection is not None or self.context.terminated.is_set():
            return connection
        now = self.context.time()
        verdict = self.admission.decide(
            header,
            len(data),
            address,
            now,
            connections=self.live_connections,
            handshakes=self.handshakes,
        )
        if verdict is None:
            return None
        if isinstance(verdict, bytes):  # Version Negotiation or Retry
            await self.send(RawData(data=verdict, address=address))
            return None
        try:
            quic = QuicConnection(
                configuration=self.quic_config,
                original_destination_connection_id=verdict.original_destination_cid,
                retry_source_connection_id=verdict.retry_source_cid,
            )
            connection = _AdmittedConnection(
                cids={header.destination_cid, quic.host_cid},
                quic=quic,
                task=self.context.single_task_class(),
                admit=verdict,
                handshake_deadline=now + self.limits.quic_handshake_timeout_s,
            )
        except BaseException:  # release what admission took; the caller drops the datagram
            self.admission.handshake_ended(verdict)
            self.admission.connection_ended(verdict)
            raise
        self.live_connections += 1
        self.handshakes += 1
        self.connections[header.destination_cid] = connection
        self.connections[quic.host_cid] = connection
        return connection

    def _end_handshake(self, connection: _Connection) -> None:
        """Release the handshake slot (idempotent)."""
        if isinstance(connection, _AdmittedConnection) and connection.admit is not None:
            if connection.handshake_deadline is not None:
                connection.handshake_deadline = None
                self.handshakes -= 1
                self.admission.handshake_ended(connection.admit)

    def _forget(self, connection: _Connection) -> None:
        for cid in connection.cids:
            self.connections.pop(cid, None)
        connection.cids = set()
        self._end_handshake(connection)
        if isinstance(connection, _AdmittedConnection) and connection.admit is not None:
            self.admission.connection_ended(connection.admit)
            connection.admit = None
            self.live_connections -= 1

    async def send_all(self, connection: _Connection) -> None:
        # hypercorn's, with the timer armed for the handshake deadline too.
        for data, address in connection.quic.datagrams_to_send(now=self.context.time()):
            await self.send(RawData(data=data, address=address))
        timer = connection.quic.get_timer()
        deadline = getattr(connection, "handshake_deadline", None)
        if deadline is not None:
            timer = deadline if timer is None else min(timer, deadline)
        if timer is not None:
            await connection.task.restart(
                self.task_group, partial(self._handle_timer, timer, connection)
            )

    async def _fail(self, connection: _Connection, exc: Exception) -> None:
        """The error boundary of one connection: close it, log and count the cause."""
        self.counters[_cause(exc)] += 1
        logger.warning(
            "closing an HTTP/3 connection after an error",
            extra={"fields": {"error": repr(exc)[:200]}},
        )
        if isinstance(connection.h3, GuardedH3Protocol):
            connection.h3.progress()  # senders waiting on it see it closing
        connection.h3 = None  # its state is unknown: deliver nothing more to it
        try:
            connection.quic.close(
                error_code=H3ErrorCode.H3_GENERAL_PROTOCOL_ERROR,
                reason_phrase="internal error",
            )
            await self.send_all(connection)
        except Exception:
            # The connection cannot even be closed: forget it (aioquic drops its packets).
            self._forget(connection)

    async def _send_from_stream(self, connection: _Connection) -> None:
        """``send_all`` for the HTTP/3 layer, which calls it from the app's task too (outside
        the connection's other boundaries): an error closes the connection."""
        try:
            await self.send_all(connection)
        except Exception as exc:
            await self._fail(connection, exc)

    async def _stream_failed(self, connection: _Connection, stream_id: int, exc: Exception) -> None:
        """The error boundary of one request stream: reset it (``H3_INTERNAL_ERROR``), log and
        count the cause (``quic_stream_error:<Type>``); the connection goes on. If even the
        reset fails, the connection's state is unknown: it is closed (:meth:`_fail`)."""
        self.counters[stream_cause(exc)] += 1
        logger.warning(
            "resetting an HTTP/3 stream after an error",
            extra={"fields": {"stream_id": stream_id, "error": repr(exc)[:200]}},
        )
        try:
            connection.quic.reset_stream(stream_id, H3ErrorCode.H3_INTERNAL_ERROR)
        except Exception as reset_exc:
            await self._fail(connection, reset_exc)
            return
        await self._send_from_stream(connection)

    async def _handle_timer(self, timer: float, connection: Any) -> None:
        await self.context.sleep(max(0, timer - self.context.time()))
        with trio.move_on_after(TIMER_DELIVERY_BOUND_S, shield=True):
            now = self.context.time()
            try:
                deadline = getattr(connection, "handshake_deadline", None)
                if deadline is not None and now >= deadline:
                    self.counters["quic_handshake_timeout"] += 1
                    self._end_handshake(connection)
                    connection.quic.close(  # a transport close: readable before 1-RTT keys
                        error_code=QuicErrorCode.CONNECTION_REFUSED,
                        frame_type=QuicFrameType.PADDING,
                        reason_phrase="handshake timeout",
                    )
                # The connection may have terminated since the timer was armed (its _close_at
                # is then None, which aioquic's handle_timer does not expect).
                if connection.quic._close_at is not None:
                    connection.quic.handle_timer(now=now)
            except Exception as exc:
                await self._fail(connection, exc)
                return
            await self._handle_events(connection, None)

    async def _handle_events(self, connection: Any, client: Any = None) -> None:
        async with _events_lock(connection):
            try:
                await self._deliver_events(connection, client)
            except Exception as exc:
                await self._fail(connection, exc)
        if isinstance(connection.h3, GuardedH3Protocol):
            connection.h3.progress()  # acknowledgements in: room in the send buffers
        if self.idle:
            self.idle_event.set()
        elif self.idle_event.is_set():
            self.idle_event = trio.Event()

    async def _deliver_events(self, connection: Any, client: Any) -> None:
        # hypercorn's QuicProtocol._handle_events, with admission bookkeeping.
        guard_streams(connection)
        event = connection.quic.next_event()
        while event is not None:
            if isinstance(event, ConnectionTerminated):
                await connection.task.stop()
                self._forget(connection)
            elif isinstance(event, HandshakeCompleted):
                self._end_handshake(connection)
            elif isinstance(event, ProtocolNegotiated):
                connection.h3 = GuardedH3Protocol(
                    self.app,
                    self.config,
                    self.context,
                    self.task_group,
                    self.state,
                    client,
                    self.server,
                    connection.quic,
                    partial(self._send_from_stream, connection),
                    on_stream_error=partial(self._stream_failed, connection),
                )
                guard_streams(connection)
            elif isinstance(event, ConnectionIdIssued):
                connection.cids.add(event.connection_id)
                self.connections[event.connection_id] = connection
            elif isinstance(event, ConnectionIdRetired):
                connection.cids.discard(event.connection_id)
                self.connections.pop(event.connection_id, None)
            if connection.h3 is not None:
                await connection.h3.handle(event)
            event = connection.quic.next_event()
        await self.send_all(connection)


class _QuicServer:
    """hypercorn's UDPServer, with a bounded shutdown that releases its socket."""

    def __init__(
        self,
        app: Any,
        config: Config,
        context: WorkerContext,
        sock: socket.socket,
        *,
        limits: HttpLimits,
        counters: Counter[str],
    ) -> None:
        self._app = app
        self._config = config
        self._context = context
        self._socket = trio.socket.from_stdlib_socket(sock)
        self._limits = limits
        self._counters = counters
        self.protocol: _TrackingQuicProtocol | None = None

    async def run(self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve until ``shutdown`` is set; then close connections and the socket (bounded)."""
        addr = self._socket.getsockname()
        try:
            async with BoundedTaskGroup(self._counters) as task_group:
                self.protocol = _TrackingQuicProtocol(
                    self._app,
                    self._config,
                    self._context,
                    task_group,
                    ConnectionState({}),
                    (addr[0], addr[1]),
                    self._send,
                    limits=self._limits,
                    counters=self._counters,
                )
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    await shutdown.wait()
                    await self._context.terminated.set()
                    await self._close_connections()
                    if not self.protocol.idle:
                        with trio.move_on_after(QUIC_CLOSE_GRACE_S):
                            await self.protocol.idle_event.wait()
                    nursery.cancel_scope.cancel()
                task_group._nursery.cancel_scope.cancel()  # type: ignore[union-attr]
        finally:
            self._socket.close()

    async def _read_loop(self) -> None:
        assert self.protocol is not None
        sock = self._socket
        counted = RECEIVE_ANCBUF > 0 and hasattr(sock, "recvmsg")
        seen = 0  # the socket's drop count so far (SO_RXQ_OVFL, on every read once not 0)
        address: Any
        while True:
            try:
                if counted:
                    data, ancdata, _, address = await sock.recvmsg(MAX_DATAGRAM, RECEIVE_ANCBUF)
                    drops, _ = read_ancillary(ancdata) if ancdata else (None, 0)
                    if drops is not None and drops != seen:
                        self._counters[UDP_RECEIVE_OVERFLOWS] += drops_grown(drops, seen)
                        seen = drops
                else:
                    data, address = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise
                continue  # an ICMP error for an earlier send (Linux reports it here), ENOMEM
            await self.protocol.handle(RawData(data=data, address=address))

    async def _close_connections(self) -> None:
        assert self.protocol is not None
        seen: set[int] = set()
        for conn in list(self.protocol.connections.values()):
            if id(conn) in seen:
                continue
            seen.add(id(conn))
            conn.quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="server shutdown")
            await self.protocol.send_all(conn)

    async def _send(self, event: Any) -> None:
        if isinstance(event, RawData) and event.address is not None:
            try:
                await self._socket.sendto(event.data, event.address)
            except OSError:
                pass  # an unreachable peer must not take the listener down
