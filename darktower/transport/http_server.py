"""Serve an ASGI app on one port over TCP (HTTP/1.1 and HTTP/2 over TLS) and UDP (HTTP/3).

hypercorn's trio worker serves both, but its QUIC listener (``hypercorn.trio.UDPServer``)
keeps reading its socket until every QUIC connection is gone, and HTTP/3 clients keep idle
connections open, so a graceful shutdown waits for the whole graceful timeout; it also never
closes the UDP socket. Neither of its listeners caps connections, and an exception raised while
handling one connection ends the whole listener. We therefore run hypercorn's per-connection
protocols (``TCPServer``, ``QuicProtocol``) from listeners of our own: :class:`_TcpServer`
(``_http_tcp``) and :class:`_QuicServer` (``_http_quic``), which admit connections under the
bounds of :class:`HttpLimits`, contain each connection's errors, and on shutdown close their
sockets; QUIC connections are closed with ``H3_NO_ERROR`` and waited for at most
:data:`QUIC_CLOSE_GRACE_S` (docs/decisions.md). The QUIC listener admits new connections by the
same policy as the MC's and MH's WebTransport endpoint (``Admission``, _admission.py).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext

from ._http_limits import (
    QUIC_MAX_CONNECTIONS_PER_ADDRESS,
    QUIC_RETRY_THRESHOLD,
    READ_TIMEOUT_S,
    TCP_MAX_CONNECTIONS_PER_ADDRESS,
    TLS_HANDSHAKE_TIMEOUT_S,
    HttpLimits,
)
from ._http_quic import (
    MAX_DATAGRAM,
    QUIC_CLOSE_GRACE_S,
    TIMER_DELIVERY_BOUND_S,
    _QuicServer,
    _TrackingQuicProtocol,
)
from ._http_tcp import _TcpServer, apply_limits
from ._udp import tune_socket

__all__ = [
    "MAX_DATAGRAM",
    "QUIC_CLOSE_GRACE_S",
    "QUIC_MAX_CONNECTIONS_PER_ADDRESS",
    "QUIC_RETRY_THRESHOLD",
    "READ_TIMEOUT_S",
    "TCP_MAX_CONNECTIONS_PER_ADDRESS",
    "TIMER_DELIVERY_BOUND_S",
    "TLS_HANDSHAKE_TIMEOUT_S",
    "HttpLimits",
    "_QuicServer",
    "_TrackingQuicProtocol",
    "bind_pair",
    "bind_plain_http",
    "serve_http",
]

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
    limits: HttpLimits | None = None,
    counters: Counter[str] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over TLS on TCP and HTTP/3 on UDP, both on ``port``; reports the port.

    Owns both sockets and every connection task. Setting ``shutdown`` stops accepting and lets
    requests in flight finish within ``graceful_timeout_s``; QUIC connections are closed at
    once (``H3_NO_ERROR``). Cancellation stops everything at once. Both sockets are closed on
    every exit path.

    ``limits`` bounds connections, handshakes and timeouts (:class:`HttpLimits`; defaults
    when None). What the listeners refuse or close, and why, is counted in ``counters`` (the
    caller's mapping, read at any time: keys ``quic_*`` and ``tcp_*``, see ``_http_quic`` and
    ``_http_tcp``). An exception while handling one connection closes that connection only.

    ``plain_http_socket`` (development only: see :func:`bind_plain_http`) also serves the app
    over plain HTTP/1.1: a page from ``http://127.0.0.1`` is a secure context for browsers,
    so the browser client works without trusting the self-signed certificate. This function
    takes ownership of it and closes it on exit.
    """
    limits = limits if limits is not None else HttpLimits()
    counters = counters if counters is not None else Counter()
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
    apply_limits(config, limits)
    if configure is not None:
        configure(config)
    plain = [plain_http_socket] if plain_http_socket is not None else []
    try:
        # Its reader takes one datagram a read (no GRO); what overflows is counted (_http_quic).
        tune_socket(udp, limits.quic_udp_receive_buffer, limits.quic_udp_send_buffer, gro=False)
        tcp.listen(config.backlog)
        for sock in plain:
            sock.listen(config.backlog)
        context = WorkerContext(None)
        lifespan = Lifespan(wrapped, config, {})
        tcp_server = _TcpServer(wrapped, config, context, limits=limits, counters=counters)
        quic = _QuicServer(wrapped, config, context, udp, limits=limits, counters=counters)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as listeners:
                    await listeners.start(quic.run, shutdown)
                    with trio.CancelScope() as accepting:
                        async with trio.open_nursery() as acceptors:
                            acceptors.start_soon(
                                tcp_server.serve,
                                trio.socket.from_stdlib_socket(tcp),
                                config.create_ssl_context(),
                                connections,
                            )
                            for sock in plain:
                                acceptors.start_soon(
                                    tcp_server.serve,
                                    trio.socket.from_stdlib_socket(sock),
                                    None,
                                    connections,
                                )
                            task_status.started(bound_port)
                            await shutdown.wait()
                            accepting.cancel()
                # Idle keep-alive connections close now; requests in flight get the grace.
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + graceful_timeout_s
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
    finally:
        tcp.close()
        udp.close()
        for sock in plain:
            sock.close()
