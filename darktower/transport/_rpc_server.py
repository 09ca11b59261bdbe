"""The server half of the RPC bridge (``darktower.transport.rpc`` documents both halves):
:func:`rpc_service` binds a plain class of trio methods to a generated grpclib ``Base``, and
:func:`serve_rpc` serves them. Each request's protocol version is checked before the method
runs (docs/protocol.md §12); a ``DarkTowerError`` leaves as the error table's gRPC status plus
trailing metadata; every connection is an error boundary (docs/architecture.md §6.1).

Over TLS (``serve_rpc(..., tls=context)``) the peer's verified certificate is the caller's
identity: ``authorize(method_name, certificate)`` given to :func:`rpc_service` runs before
every method (raising a ``DarkTowerError`` refuses the call), and the method itself reads the
certificate with :func:`rpc_peer_certificate` (docs/architecture.md §8).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from contextvars import ContextVar
from typing import Any, cast

import trio
import trio_asyncio
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Server

from darktower.errors import DarkTowerError
from darktower.protocol import error_name, grpc_status, wire_details
from darktower.protocol.versions import check_version, has_version_field
from darktower.transport._rpc_loop import open_rpc_loop

log = logging.getLogger("darktower.transport.rpc")

# Closing a server: handlers get this long to finish after cancellation, then the remaining
# connections are closed under them. Handlers that ignore cancellation cannot be bounded.
RPC_SHUTDOWN_GRACE_S = 5.0

# Trailing-metadata keys carrying a DarkTowerError across the wire; the gRPC status itself is
# the project's error table's (``darktower.protocol.grpc_status``), for generic gRPC tooling.
ERROR_CODE_KEY = "darktower-error-code"  # the contract's name, e.g. "UNAUTHORIZED"
ERROR_DETAILS_KEY = "darktower-error-details"  # JSON object str -> str (ASCII-escaped)


# The peer certificate as ``ssl.SSLSocket.getpeercert()`` gives it (verified), None in plaintext.
PeerCertificate = Mapping[str, Any]
# ``authorize(method_name, certificate)``: raises a DarkTowerError to refuse the call.
Authorize = Callable[[str, PeerCertificate | None], None]

_peer_certificate: ContextVar[PeerCertificate | None] = ContextVar(
    "darktower_rpc_peer_certificate", default=None
)


def rpc_peer_certificate() -> PeerCertificate | None:
    """The verified certificate of the peer whose call the current trio method serves (None
    over plaintext, or outside a served call)."""
    return _peer_certificate.get()


def _certificate_of(stream: Any) -> PeerCertificate | None:
    peer = getattr(stream, "peer", None)
    cert = peer.cert() if peer is not None else None
    return cert or None


def _error_metadata(exc: DarkTowerError) -> dict[str, str]:
    return {
        ERROR_CODE_KEY: error_name(exc.code),
        # wire_details adds RateLimited.retry_after_s, so make_error can restore it.
        ERROR_DETAILS_KEY: json.dumps(wire_details(exc), ensure_ascii=True),
    }


# --- handlers -----------------------------------------------------------------------------------
def _check_version(request: Any) -> None:
    """Refuse a request that speaks a protocol version we do not (docs/protocol.md §12)."""
    if has_version_field(request):
        check_version(request)


async def _send_error(stream: Any, exc: DarkTowerError) -> None:
    await stream.send_trailing_metadata(
        status=Status(int(grpc_status(exc.code))),
        status_message=exc.message,
        metadata=_error_metadata(exc),
    )


def _unary_handler(
    name: str, fn: Callable[[Any], Awaitable[Any]], authorize: Authorize | None
) -> Callable[[Any], Awaitable[None]]:
    async def run(request: Any, cert: PeerCertificate | None) -> Any:  # trio
        _peer_certificate.set(cert)  # this call's own task: nothing else sees it
        if authorize is not None:
            authorize(name, cert)
        return await fn(request)

    async def handle(stream: Any) -> None:  # asyncio, called by grpclib
        request = await stream.recv_message()
        try:
            _check_version(request)
            reply = await trio_asyncio.trio_as_aio(run)(request, _certificate_of(stream))
        except DarkTowerError as exc:
            await _send_error(stream, exc)
            return
        await stream.send_message(reply)

    return handle


def _stream_handler(
    name: str, fn: Callable[[Any], AsyncGenerator[Any, None]], authorize: Authorize | None
) -> Callable[[Any], Any]:
    async def serve(stream: Any, request: Any, cert: PeerCertificate | None) -> None:
        # trio: one task owns the generator
        _peer_certificate.set(cert)
        if authorize is not None:
            authorize(name, cert)
        async with aclosing(fn(request)) as replies:
            async for reply in replies:
                await trio_asyncio.aio_as_trio(stream.send_message)(reply)

    async def handle(stream: Any) -> None:  # asyncio, called by grpclib
        request = await stream.recv_message()
        try:
            _check_version(request)
            await trio_asyncio.trio_as_aio(serve)(stream, request, _certificate_of(stream))
        except DarkTowerError as exc:
            await _send_error(stream, exc)

    return handle


class _Routes:
    """Stands in for ``self`` when calling a generated ``Base.__mapping__``: records names."""

    def __getattr__(self, name: str) -> str:
        return name


class RpcService:
    """A trio implementation bound to a generated grpclib ``Base``; give it to :func:`serve_rpc`."""

    def __init__(self, base: type, impl: object, *, authorize: Authorize | None = None) -> None:
        routes: dict[str, Handler] = base.__mapping__(_Routes())  # type: ignore[attr-defined]
        missing = [h.func for h in routes.values() if not callable(getattr(impl, h.func, None))]
        if missing:
            raise TypeError(f"{type(impl).__name__} lacks RPC methods: {', '.join(missing)}")
        self._mapping: dict[str, Handler] = {}
        for path, route in routes.items():
            fn = getattr(impl, route.func)
            if route.cardinality is Cardinality.UNARY_UNARY:
                handle = _unary_handler(route.func, fn, authorize)
            elif route.cardinality is Cardinality.UNARY_STREAM:
                handle = _stream_handler(route.func, fn, authorize)
            else:
                raise TypeError(f"{path}: {route.cardinality.name} is not supported by the bridge")
            self._mapping[path] = Handler(
                handle, route.cardinality, route.request_type, route.reply_type
            )

    def __mapping__(self) -> dict[str, Handler]:
        return dict(self._mapping)


def rpc_service(base: type, impl: object, *, authorize: Authorize | None = None) -> RpcService:
    """Bind ``impl`` (trio methods named after the RPCs of ``base``) for :func:`serve_rpc`;
    ``authorize(method_name, peer_certificate)`` runs before each call and refuses it by
    raising a ``DarkTowerError``."""
    return RpcService(base, impl, authorize=authorize)


class _TrackingServer(Server):
    """A grpclib Server that remembers its connections, so shutdown can close them."""

    def __init__(self, handlers: Sequence[object]) -> None:
        super().__init__(cast(Any, handlers))
        self.protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def _protocol_factory(self) -> Any:
        protocol: Any = super()._protocol_factory()
        self.protocols.add(protocol)
        made, received = protocol.connection_made, protocol.data_received
        transports: list[Any] = []

        def connection_made(transport: Any) -> None:
            # Connections accepted on our own listening socket arrive here without TCP_NODELAY;
            # Nagle's algorithm and the peer's delayed ACK then add ~40 ms to every reply.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transports.append(transport)
            made(transport)

        def data_received(data: bytes) -> None:
            # An error boundary per connection (docs/architecture.md §6.1): bytes h2 or grpclib
            # cannot handle (e.g. a header value that is not ASCII) raise here, and asyncio
            # would hand the error to the loop, which trio-asyncio raises into the service.
            # The connection is dropped instead; the others go on.
            try:
                received(data)
            except Exception as exc:
                log.warning("gRPC connection dropped: malformed input (%s)", type(exc).__name__)
                if transports:
                    transports[0].abort()

        protocol.connection_made = connection_made
        protocol.data_received = data_received
        return protocol

    async def wait_handlers(self) -> None:
        """Wait until the cancelled request handlers have exited (asyncio side).

        ``Server.wait_closed`` would do on Python 3.11, but from 3.12 on it also waits for
        every client to hang up, which is what :meth:`close_connections` is for.
        """
        for handler in list(self._handlers):
            await handler.wait_closed()

    def close_connections(self) -> None:
        for protocol in list(self.protocols):
            # Closes the transport and terminates the connection's remaining streams.
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close("server shut down")


async def _bound_socket(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _type, _proto, _name, address = infos[0]
    sock = socket.create_server(address[:2], family=family)
    sock.setblocking(False)
    return sock


async def _start_server(
    services: Sequence[object], sock: socket.socket, context: ssl.SSLContext | None
) -> _TrackingServer:
    server = _TrackingServer(services)  # inside asyncio: grpclib looks up the running loop
    await server.start(sock=sock, ssl=context)
    return server


async def serve_rpc(
    services: Sequence[object],
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    shutdown_grace_s: float = RPC_SHUTDOWN_GRACE_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``services`` (from :func:`rpc_service`, or any grpclib handler) until cancelled.

    Binds ``host:port`` (0 picks a free port) and reports the bound port through
    ``task_status.started(port)``. With ``tls`` every connection is TLS (a context that
    requires client certificates makes it mutual TLS: a plaintext or unverified client's
    connection is closed in the handshake, before any HTTP/2). Owns the grpclib server, its
    connections and their request handlers (and the asyncio loop if none was running). On
    cancellation it stops accepting, cancels running handlers, gives them ``shutdown_grace_s``
    (shielded) to finish, then closes the remaining connections, whose clients see
    :class:`RpcUnavailable`. The trio methods of cancelled handlers run in the asyncio loop's
    nursery: their cleanup is awaited by whoever owns that loop (:func:`open_rpc_loop`).
    Raises ``OSError`` if the address cannot be bound.
    """
    async with open_rpc_loop():
        sock = await _bound_socket(host, port)
        bound_port: int = sock.getsockname()[1]
        try:
            server = await trio_asyncio.aio_as_trio(_start_server)(services, sock, tls)
        except BaseException:
            sock.close()
            raise
        try:
            task_status.started(bound_port)
            await trio.sleep_forever()
        finally:
            server.close()  # stops accepting and cancels the running handlers
            with trio.move_on_after(shutdown_grace_s, shield=True):
                await trio_asyncio.aio_as_trio(server.wait_handlers)()
            server.close_connections()
