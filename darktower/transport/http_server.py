"""Serve an ASGI app on one port over TCP (HTTP/1.1 and HTTP/2 over TLS) and UDP (HTTP/3).

hypercorn's trio worker serves both, but its QUIC listener (``hypercorn.trio.UDPServer``)
keeps reading its socket until every QUIC connection is gone, and HTTP/3 clients keep idle
connections open, so a graceful shutdown waits for the whole graceful timeout; it also never
closes the UDP socket. We therefore hand hypercorn only the TCP socket and run the QUIC side
with :class:`_QuicServer`, which on shutdown closes its connections with ``H3_NO_ERROR``,
waits for them at most :data:`QUIC_CLOSE_GRACE_S`, and closes its socket (docs/decisions.md).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config, Sockets
from hypercorn.events import RawData
from hypercorn.protocol.quic import QuicProtocol
from hypercorn.trio.run import worker_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

MAX_DATAGRAM = 65_536
# How long QUIC connections get to say goodbye after shutdown starts; then the socket closes.
QUIC_CLOSE_GRACE_S = 1.0
# A woken timer task delivers the events it took out of its connection even if a send restarts
# it meanwhile; an app that stops reading its request body holds it at most this long.
TIMER_DELIVERY_BOUND_S = 10.0
# Attempts at finding a port free on both TCP and UDP when asked for port 0.
_PORT_ATTEMPTS = 20


def bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a TCP and a UDP socket to the same (host, port); port 0 picks a free pair."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(_PORT_ATTEMPTS if port == 0 else 1):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            tcp.bind((host, port))
            udp.bind((host, tcp.getsockname()[1]))
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            raise
        tcp.setblocking(False)
        udp.setblocking(False)
        return tcp, udp
    raise OSError(errno.EADDRINUSE, f"no port free on both TCP and UDP at {host}")


def bind_plain_http(port: int) -> socket.socket:
    """A TCP socket on 127.0.0.1 only (never another address) for the development page."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


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


class _TrackingQuicProtocol(QuicProtocol):
    """hypercorn's QUIC protocol, made safe for concurrent requests on one connection:

    * the read loop and a connection's timer task both take events out of the connection and
      hand them to the HTTP/3 layer; each does so holding the connection's lock, so one
      stream's data is delivered in order by one task at a time;
    * every send restarts (cancels) the timer task, even in the middle of delivering an event
      it has already taken out of the connection: a request body was then lost and the request
      timed out (408). Once awake, the timer task finishes its delivery shielded, bounded by
      :data:`TIMER_DELIVERY_BOUND_S`.

    Also sets ``idle_event`` when the last connection is gone, so shutdown need not poll, and
    guards each connection's HTTP/3 stream table (:class:`_StreamTable`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_event = trio.Event()

    async def _handle_timer(self, timer: float, connection: Any) -> None:
        await self.context.sleep(max(0, timer - self.context.time()))
        with trio.move_on_after(TIMER_DELIVERY_BOUND_S, shield=True):
            # The connection may have terminated since the timer was armed (its _close_at is
            # then None, which aioquic's handle_timer does not expect).
            if connection.quic._close_at is not None:
                connection.quic.handle_timer(now=self.context.time())
            await self._handle_events(connection, None)

    async def _handle_events(self, connection: Any, client: Any = None) -> None:
        async with _events_lock(connection):
            _guard_streams(connection)
            await super()._handle_events(connection, client)
            _guard_streams(connection)  # the H3 protocol may have been created just now
        if self.idle:
            self.idle_event.set()
        elif self.idle_event.is_set():
            self.idle_event = trio.Event()


class _QuicServer:
    """hypercorn's UDPServer, with a bounded shutdown that releases its socket."""

    def __init__(
        self, app: Any, config: Config, context: WorkerContext, sock: socket.socket
    ) -> None:
        self._app = app
        self._config = config
        self._context = context
        self._socket = trio.socket.from_stdlib_socket(sock)
        self._protocol: _TrackingQuicProtocol | None = None

    async def run(self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve until ``shutdown`` is set; then close connections and the socket (bounded)."""
        addr = self._socket.getsockname()
        try:
            async with TaskGroup() as task_group:
                self._protocol = _TrackingQuicProtocol(
                    self._app,
                    self._config,
                    self._context,
                    task_group,
                    ConnectionState({}),
                    (addr[0], addr[1]),
                    self._send,
                )
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    await shutdown.wait()
                    await self._context.terminated.set()
                    await self._close_connections()
                    if not self._protocol.idle:
                        with trio.move_on_after(QUIC_CLOSE_GRACE_S):
                            await self._protocol.idle_event.wait()
                    nursery.cancel_scope.cancel()
                task_group._nursery.cancel_scope.cancel()  # type: ignore[union-attr]
        finally:
            self._socket.close()

    async def _read_loop(self) -> None:
        assert self._protocol is not None
        while True:
            data, address = await self._socket.recvfrom(MAX_DATAGRAM)
            await self._protocol.handle(RawData(data=data, address=address))

    async def _close_connections(self) -> None:
        assert self._protocol is not None
        seen: set[int] = set()
        for conn in list(self._protocol.connections.values()):
            if id(conn) in seen:
                continue
            seen.add(id(conn))
            conn.quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="server shutdown")
            await self._protocol.send_all(conn)

    async def _send(self, event: Any) -> None:
        if isinstance(event, RawData) and event.address is not None:
            try:
                await self._socket.sendto(event.data, event.address)
            except OSError:
                pass  # an unreachable peer must not take the listener down


async def serve_http(
    app: Any,
    *,
    host: str,
    port: int,
    certfile: str,
    keyfile: str,
    shutdown: trio.Event,
    graceful_timeout_s: float = 5.0,
    plain_http_socket: socket.socket | None = None,
    configure: Callable[[Config], None] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over TLS on TCP and HTTP/3 on UDP, both on ``port``; reports the port.

    Owns both sockets and every connection task. Setting ``shutdown`` stops accepting and lets
    requests in flight finish within ``graceful_timeout_s``; QUIC connections are closed at
    once (``H3_NO_ERROR``). Cancellation stops everything at once. Both sockets are closed on
    every exit path.

    ``plain_http_socket`` (development only: see :func:`bind_plain_http`) also serves the app
    over plain HTTP/1.1: a page from ``http://127.0.0.1`` is a secure context for browsers,
    so the browser client works without trusting the self-signed certificate. This function
    takes ownership of it and closes it on exit.
    """
    wrapped = ASGIWrapper(app)
    tcp, udp = bind_pair(host, port)
    bound_port: int = tcp.getsockname()[1]
    config = Config()
    config.certfile = certfile
    config.keyfile = keyfile
    config.bind = [f"{host}:{bound_port}"]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("darktower.http")
    config.include_server_header = False
    config._quic_addresses = [(host, bound_port)]  # advertised in Alt-Svc
    if configure is not None:
        configure(config)
    tcp.listen(config.backlog)
    plain = [plain_http_socket] if plain_http_socket is not None else []
    for sock in plain:
        sock.listen(config.backlog)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    worker_serve,
                    wrapped,
                    config,
                    sockets=Sockets([tcp], plain, []),
                    shutdown_trigger=shutdown.wait,
                )
            )
            quic = _QuicServer(wrapped, config, WorkerContext(None), udp)
            await nursery.start(quic.run, shutdown)
            task_status.started(bound_port)
    finally:
        tcp.close()
        udp.close()
        for sock in plain:
            sock.close()
