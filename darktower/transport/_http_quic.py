"""The GC's HTTP/3 listener: hypercorn's ``QuicProtocol`` with admission and an error boundary.

hypercorn's QUIC listener keeps reading until every connection is gone and never closes its
socket, delivers one connection's events from two tasks at once, creates a connection for
every Initial with no cap, and lets any exception raised while handling one connection's
events end the listener. :class:`_QuicServer` and :class:`_TrackingQuicProtocol` fix these
(docs/decisions.md); the bounds are in :mod:`._http_limits`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
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
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.h3 import H3Protocol
from hypercorn.protocol.quic import QuicProtocol, _Connection
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from ._http_limits import QUIC_MIN_INITIAL_SIZE, ConnectionAdmission, HttpLimits

logger = logging.getLogger("darktower.http")

MAX_DATAGRAM = 65_536
# How long QUIC connections get to say goodbye after shutdown starts; then the socket closes.
QUIC_CLOSE_GRACE_S = 1.0
# A woken timer task delivers the events it took out of its connection even if a send restarts
# it meanwhile; an app that stops reading its request body holds it at most this long.
TIMER_DELIVERY_BOUND_S = 10.0
# Length of the connection ids we issue (hypercorn parses headers with this length).
_HOST_CID_LENGTH = 8


class _DiscardStream:
    async def handle(self, event: Any) -> None:
        pass


_DISCARD = _DiscardStream()


class _StreamTable(dict[int, Any]):
    """hypercorn's ``H3Protocol`` looks its streams up with ``streams[stream_id]``: data that
    arrives for a stream it has already answered and forgotten (a 413 sent before the whole
    body came) raised ``KeyError`` and took the whole QUIC listener down. Such data is dropped.
    """

    def __missing__(self, stream_id: int) -> Any:
        return _DISCARD


def _guard_streams(connection: Any) -> None:
    h3 = getattr(connection, "h3", None)
    if h3 is not None and not isinstance(h3.streams, _StreamTable):
        h3.streams = _StreamTable(h3.streams)


def _events_lock(connection: Any) -> trio.StrictFIFOLock:
    lock: trio.StrictFIFOLock | None = getattr(connection, "_darktower_events_lock", None)
    if lock is None:
        lock = connection._darktower_events_lock = trio.StrictFIFOLock()
    return lock


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
    * a new connection is admitted under the caps of :class:`HttpLimits` (total, per peer,
      handshakes in progress), with a stateless Retry once ``quic_retry_threshold``
      handshakes are in progress; refusals are counted (``quic_refused_*``, ``quic_retry``,
      ``quic_invalid_token``, ``quic_handshake_timeout``);
    * Version Negotiation answers only datagrams of at least 1,200 bytes, never another
      Version Negotiation packet.

    Also sets ``idle_event`` when the last connection is gone, so shutdown need not poll, and
    guards each connection's HTTP/3 stream table (:class:`_StreamTable`).
    """

    def __init__(
        self, *args: Any, limits: HttpLimits, counters: Counter[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.idle_event = trio.Event()
        self.limits = limits
        self.counters = counters
        self.admission = ConnectionAdmission(
            "quic", limits.quic_max_connections, limits.quic_max_connections_per_address
        )
        self._retry = QuicRetryTokenHandler()

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
        if header.version is not None and header.version not in self.quic_config.supported_versions:
            if (
                len(data) >= QUIC_MIN_INITIAL_SIZE
                and header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            ):
                vn = encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.quic_config.supported_versions,
                )
                await self.send(RawData(data=vn, address=address))
            return None
        connection = self.connections.get(header.destination_cid)
        if (
            connection is not None
            or len(data) < QUIC_MIN_INITIAL_SIZE
            or header.packet_type != QuicPacketType.INITIAL
            or self.context.terminated.is_set()
        ):
            return connection
        now = self.context.time()
        await self._expire_handshakes(now)
        original_cid: bytes | None = header.destination_cid
        retry_cid: bytes | None = None
        if header.token:
            try:
                original_cid = self._retry.validate_token(
                    address=address,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
                retry_cid = header.destination_cid
            except ValueError:
                original_cid = header.destination_cid  # not ours (e.g. NEW_TOKEN): no validation
        if retry_cid is None and self.admission.handshakes >= self.limits.quic_retry_threshold:
            if header.token:
                self.counters["quic_invalid_token"] += 1
                return None
            source_cid = os.urandom(_HOST_CID_LENGTH)
            token = self._retry.create_token(
                address=address,
                original_destination_connection_id=header.destination_cid,
                retry_source_connection_id=source_cid,
                now=now,
            )
            retry = encode_quic_retry(
                version=header.version,  # type: ignore[arg-type]  # a long header has one
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            )
            self.counters["quic_retry"] += 1
            await self.send(RawData(data=retry, address=address))
            return None
        host = str(address[0])
        refusal = self.admission.refusal(host)
        if refusal is None and self.admission.handshakes >= self.limits.quic_max_handshakes:
            refusal = "quic_refused_handshakes"
        if refusal is not None:
            self.counters[refusal] += 1
            return None
        quic = QuicConnection(
            configuration=self.quic_config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        connection = _Connection(
            cids={header.destination_cid, quic.host_cid},
            quic=quic,
            task=self.context.single_task_class(),
        )
        self.admission.admit(connection, host)
        self.admission.handshake_started(connection, now)
        self.connections[header.destination_cid] = connection
        self.connections[quic.host_cid] = connection
        return connection

    async def _expire_handshakes(self, now: float) -> None:
        expired = self.admission.expired_handshakes(now, self.limits.quic_handshake_timeout_s)
        for connection in expired:
            assert isinstance(connection, _Connection)
            self.counters["quic_handshake_timeout"] += 1
            connection.quic.close(
                error_code=QuicErrorCode.CONNECTION_REFUSED, reason_phrase="handshake timeout"
            )
            await self.send_all(connection)

    async def _fail(self, connection: _Connection, exc: Exception) -> None:
        """The error boundary of one connection: close it, log and count the cause."""
        self.counters[_cause(exc)] += 1
        logger.warning(
            "closing an HTTP/3 connection after an error",
            extra={"fields": {"error": repr(exc)[:200]}},
        )
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

    def _forget(self, connection: _Connection) -> None:
        for cid in connection.cids:
            self.connections.pop(cid, None)
        connection.cids = set()
        self.admission.release(connection)

    async def _handle_timer(self, timer: float, connection: Any) -> None:
        await self.context.sleep(max(0, timer - self.context.time()))
        with trio.move_on_after(TIMER_DELIVERY_BOUND_S, shield=True):
            # The connection may have terminated since the timer was armed (its _close_at is
            # then None, which aioquic's handle_timer does not expect).
            if connection.quic._close_at is not None:
                try:
                    connection.quic.handle_timer(now=self.context.time())
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
        if self.idle:
            self.idle_event.set()
        elif self.idle_event.is_set():
            self.idle_event = trio.Event()

    async def _deliver_events(self, connection: Any, client: Any) -> None:
        # hypercorn's QuicProtocol._handle_events, with admission bookkeeping.
        _guard_streams(connection)
        event = connection.quic.next_event()
        while event is not None:
            if isinstance(event, ConnectionTerminated):
                await connection.task.stop()
                self._forget(connection)
            elif isinstance(event, HandshakeCompleted):
                self.admission.handshake_done(connection)
            elif isinstance(event, ProtocolNegotiated):
                connection.h3 = H3Protocol(
                    self.app,
                    self.config,
                    self.context,
                    self.task_group,
                    self.state,
                    client,
                    self.server,
                    connection.quic,
                    partial(self.send_all, connection),
                )
                _guard_streams(connection)
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
            async with TaskGroup() as task_group:
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
        while True:
            try:
                data, address = await self._socket.recvfrom(MAX_DATAGRAM)
            except ConnectionError:
                continue  # an ICMP error for an earlier send (Linux reports it here)
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
