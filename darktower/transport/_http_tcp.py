"""The GC's TCP listeners (HTTP/1.1 and HTTP/2 over TLS; plain HTTP for the development page).

hypercorn's ``worker_serve`` accepts every connection with ``trio.serve_listeners`` (no cap,
and an exception in one connection's handler ends the server), so we accept ourselves and
hand each admitted connection to hypercorn's ``TCPServer``, which applies the configured read
and keep-alive timeouts (docs/decisions.md); the bounds are in :mod:`._http_limits`.
"""

from __future__ import annotations

import errno
import logging
import math
import ssl
from collections import Counter
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from darktower.errors import sole_error
from darktower.protocol.addresses import address_key

from ._admission import AddressCounter
from ._http_limits import HttpLimits

logger = logging.getLogger("darktower.http")

# accept() errors that mean "out of resources for now": wait this long and accept again
# (as trio.serve_listeners does) instead of ending the listener.
_ACCEPT_BACKOFF_S = 0.1
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# accept() errors that belong to one connection not yet accepted (Linux reports a pending
# connection's network errors there): counted (``tcp_accept_error:<ERRNO>``) and accepting
# goes on, as trio.SocketListener does (the same list as trio/_highlevel_socket.py).
_ACCEPT_PEER_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
}


def apply_limits(config: Config, limits: HttpLimits) -> None:
    """Set hypercorn's own bounds from ``limits``."""
    config.ssl_handshake_timeout = limits.tls_handshake_timeout_s
    config.read_timeout = limits.read_timeout_s  # type: ignore[assignment]  # float is fine
    config.keep_alive_timeout = limits.keep_alive_timeout_s
    config.h11_max_incomplete_size = limits.h11_max_incomplete_size
    config.h2_max_header_list_size = limits.h2_max_header_list_size
    config.h2_max_concurrent_streams = limits.h2_max_concurrent_streams


class _TcpConnection(TCPServer):
    """hypercorn's ``TCPServer``, which ends once reading has ended, and whose read timeout
    counts from the last byte that moved either way.

    When reading ends (EOF, a reset or the read timeout) while the connection is idle, hypercorn
    still waits for its keep-alive timer before closing: a client that sent half a request
    line was closed after ``keep_alive_timeout`` instead of ``read_timeout``. Nothing more can
    arrive, so the keep-alive timer is stopped; requests in flight still finish.

    hypercorn's read timeout runs from the last byte received, so a response that took longer
    than it to send (a recording's download, during which an HTTP/1.1 client sends nothing)
    was cut. Each send the peer takes now restarts it too. A send the peer does not take
    within the read timeout (it stopped reading) closes the connection, where hypercorn's
    shielded send held the response's task for as long as the peer kept the connection open.
    """

    _reading: trio.CancelScope | None = None

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        timeout = self.config.read_timeout or math.inf
        sent = False
        async with self.send_lock:
            # Shielded as hypercorn's: a cancelled TLS write leaves the stream unusable.
            with trio.CancelScope(shield=True), trio.move_on_after(timeout):
                try:
                    await self.stream.send_all(event.data)
                    sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        if sent:
            if self._reading is not None:
                self._reading.deadline = trio.current_time() + timeout
            return
        await trio.aclose_forcefully(self.stream)  # ends the read loop
        await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        # hypercorn's, with a deadline that protocol_send moves.
        timeout = self.config.read_timeout or math.inf
        while True:
            with trio.CancelScope(deadline=trio.current_time() + timeout) as self._reading:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            if self._reading.cancelled_caught:
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        self._reading = None
        await self.protocol.handle(Closed())
        await self.idle_task.stop()


class _TcpServer:
    """Accepts on its listeners and runs one hypercorn ``TCPServer`` per admitted connection.

    A connection beyond ``tcp_max_connections`` or ``tcp_max_connections_per_address`` is
    closed at once; a TLS handshake not done within ``tls_handshake_timeout_s`` closes the
    connection; an exception while serving one connection closes that connection only. Each
    is counted in ``counters`` by cause (``tcp_refused_total``, ``tcp_refused_address``,
    ``tcp_tls_handshake_timeout``, ``tcp_tls_handshake_failed``, ``tcp_error:<Type>``); an
    error ``accept()`` reports for one pending connection is counted as
    ``tcp_accept_error:<ERRNO>`` and accepting goes on.
    """

    def __init__(
        self,
        app: Any,
        config: Config,
        context: WorkerContext,
        *,
        limits: HttpLimits,
        counters: Counter[str],
    ) -> None:
        self._app = app
        self._config = config
        self._context = context
        self._limits = limits
        self._counters = counters
        self.connections = 0
        self.per_address = AddressCounter(limits.tcp_max_connections_per_address)

    async def serve(
        self,
        sock: trio.socket.SocketType,
        ssl_context: ssl.SSLContext | None,
        connections: trio.Nursery,
    ) -> None:
        """Accept on ``sock`` until cancelled; connections run in ``connections``, which
        outlives this loop (the caller drains it). Closes ``sock`` on exit."""
        with sock:
            while True:
                try:
                    conn, address = await sock.accept()
                except OSError as exc:
                    if exc.errno is not None and exc.errno in _ACCEPT_PEER_ERRNOS:
                        name = errno.errorcode[exc.errno]
                        self._counters[f"tcp_accept_error:{name}"] += 1
                        continue
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    logger.error("accept failed", extra={"fields": {"error": repr(exc)}})
                    await trio.sleep(_ACCEPT_BACKOFF_S)
                    continue
                stream = trio.SocketStream(conn)
                key = address_key(str(address[0]))
                refusal = None
                if self.connections >= self._limits.tcp_max_connections:
                    refusal = "tcp_refused_total"
                elif not self.per_address.try_acquire(key):
                    refusal = "tcp_refused_address"
                if refusal is not None:
                    self._counters[refusal] += 1
                    await trio.aclose_forcefully(stream)
                    continue
                self.connections += 1
                connections.start_soon(self._serve_connection, stream, ssl_context, key)

    async def _serve_connection(
        self, stream: trio.SocketStream, ssl_context: ssl.SSLContext | None, key: str
    ) -> None:
        served: trio.abc.Stream = stream
        try:
            if ssl_context is not None:
                tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
                served = tls
                with trio.move_on_after(self._limits.tls_handshake_timeout_s) as handshake:
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError:
                        self._counters["tcp_tls_handshake_failed"] += 1
                        return
                if handshake.cancelled_caught:
                    self._counters["tcp_tls_handshake_timeout"] += 1
                    return
            await _TcpConnection(
                self._app,
                self._config,
                self._context,
                ConnectionState({}),
                served,  # type: ignore[arg-type]  # TCPServer serves plain streams too
            )
        except Exception as exc:  # one connection's failure never ends the listener
            self._count_error(exc)
        except BaseExceptionGroup as group:
            # An error beside a cancellation (the drain deadline): the error stays here, the
            # cancellation goes on to its scope.
            cancelled, errors = group.split(trio.Cancelled)
            if not isinstance(errors, Exception):
                raise
            self._count_error(errors)
            if cancelled is not None:
                raise cancelled from None
        finally:
            self.connections -= 1
            self.per_address.release(key)
            await trio.aclose_forcefully(served)

    def _count_error(self, group: Exception) -> None:
        exc = sole_error(group)  # hypercorn's task group wraps what it raises
        self._counters[f"tcp_error:{type(exc).__name__}"] += 1
        logger.warning(
            "closing a TCP connection after an error",
            extra={"fields": {"error": repr(exc)[:200]}},
        )
