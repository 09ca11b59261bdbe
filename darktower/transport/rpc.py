"""Internal RPC (GC<->MC, MC<->MH): grpclib inside trio through trio-asyncio, behind one adapter.

grpclib is asyncio code; everything else in Dark Tower is trio. This module is the only place
where the two meet, so the rest of the code sees plain trio functions:

**Server.** A service author writes a plain class of *trio* methods named after the RPCs, one
request in, the reply out::

    class Registry:                                          # no grpclib base class
        async def RegisterMeetingController(self, request):  # trio code
            return RegisterMeetingControllerResponse(...)
        async def Telemetry(self, request):                  # server streaming:
            for item in ...:                                 # an async generator
                yield item

and serves it with ``serve_rpc([rpc_service(ControllerRegistryBase, Registry())], ...)``.
:func:`rpc_service` reads the routes, cardinalities and message types from the generated
``*Base.__mapping__`` (so a typo in a method name or a missing method fails at startup, not at
the first call) and wraps each method into the asyncio ``(stream)`` handler grpclib expects; the
handler runs the trio method through ``trio_asyncio.trio_as_aio``. Unary-unary and unary-stream
are supported (all the contract needs); client-streaming methods are refused at startup.
Raising a :class:`~darktower.errors.DarkTowerError` in a method sends the gRPC status of the
project's error table (``darktower.protocol.grpc_status``) and, in trailing metadata, the
error's name and details (``retry_after_s`` included), so the client restores the same
subclass; any other exception becomes ``UNKNOWN`` "Internal Server Error" (logged by grpclib,
its text never sent).

**Client.** ``async with open_rpc_channel(host, port) as channel:`` gives a grpclib ``Channel``
to build the generated ``*Stub`` with; then ``await call(stub.Method, request, deadline_s=...)``
for unary calls and ``async with open_stream_call(stub.Method, request) as replies: async for
reply in replies`` for server streams (a context manager, not a bare async generator, so the
call is always closed by its owner). A wire error comes back as the same ``DarkTowerError``
subclass with the same message and details; transport failures are :class:`RpcUnavailable`
(peer unreachable or connection lost), :class:`RpcDeadlineExceeded` (``deadline_s``, which
is also sent to the server as the gRPC deadline) or :class:`RpcError`.

**Cancellation.** Cancelling the trio caller cancels the asyncio task of the call; grpclib then
resets the HTTP/2 stream, the server cancels the request's asyncio task and trio-asyncio cancels
the trio method, which sees ``trio.Cancelled`` at its current checkpoint.

**One asyncio loop per trio run.** :func:`open_rpc_loop` reuses the enclosing
``trio_asyncio`` loop if there is one and opens one otherwise; :func:`serve_rpc` and
:func:`open_rpc_channel` call it, so they work stand-alone, but a service should enter
``open_rpc_loop()`` once around its whole task tree so that its servers and channels share one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Generic, TypeVar, cast

import trio
import trio_asyncio
from grpclib.client import Channel, Stream, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from darktower.errors import DarkTowerError, ErrorCode, InternalError
from darktower.protocol import (
    PEER_CODE_DETAIL,
    code_from_grpc_status,
    code_from_name,
    error_name,
    grpc_status,
    make_error,
    wire_details,
)
from darktower.protocol.versions import PROTOCOL_VERSION, check_version, has_version_field

log = logging.getLogger(__name__)

# Closing a server: handlers get this long to finish after cancellation, then the remaining
# connections are closed under them. Handlers that ignore cancellation cannot be bounded.
RPC_SHUTDOWN_GRACE_S = 5.0

# Trailing-metadata keys carrying a DarkTowerError across the wire; the gRPC status itself is
# the project's error table's (``darktower.protocol.grpc_status``), for generic gRPC tooling.
ERROR_CODE_KEY = "darktower-error-code"  # the contract's name, e.g. "UNAUTHORIZED"
ERROR_DETAILS_KEY = "darktower-error-details"  # JSON object str -> str (ASCII-escaped)

RequestT = TypeVar("RequestT")
ReplyT = TypeVar("ReplyT")


class RpcError(InternalError):
    """An RPC failed for a reason other than a DarkTowerError raised by the peer."""

    def __init__(
        self,
        message: str,
        *,
        status: Status = Status.UNKNOWN,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, details={"grpc_status": status.name, **(details or {})})
        self.status = status


class RpcUnavailable(RpcError):
    """The peer could not be reached, or the connection to it was lost."""


class RpcDeadlineExceeded(RpcError):
    """The call's ``deadline_s`` elapsed (the server saw the same deadline)."""


# --- the asyncio loop --------------------------------------------------------------------------
@asynccontextmanager
async def open_rpc_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Enter the trio-asyncio loop of this task: the enclosing one if any, else a new one.

    Owns the loop only when it opened it; on exit that loop is closed and any asyncio work
    still running on it is cancelled.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        yield loop
        return
    async with trio_asyncio.open_loop() as new_loop:
        new_loop.set_exception_handler(_connection_errors_stay_there)
        yield new_loop


def _connection_errors_stay_there(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: an error asyncio reports for one connection (its context
    names the transport) closes that connection and is logged; anything else goes to
    trio-asyncio's handler, which raises it into the service (docs/architecture.md §6.1)."""
    transport = context.get("transport")
    if transport is None:
        loop.default_exception_handler(context)
        return
    asyncio.BaseEventLoop.default_exception_handler(loop, context)  # type: ignore[arg-type]
    transport.abort()


# --- error mapping -----------------------------------------------------------------------------
def _error_metadata(exc: DarkTowerError) -> dict[str, str]:
    return {
        ERROR_CODE_KEY: error_name(exc.code),
        # wire_details adds RateLimited.retry_after_s, so make_error can restore it.
        ERROR_DETAILS_KEY: json.dumps(wire_details(exc), ensure_ascii=True),
    }


def _details(text: str | None) -> dict[str, str]:
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _from_grpc(exc: GRPCError, trailers: Any) -> DarkTowerError:
    """The DarkTowerError a GRPCError stands for: the peer's, or an RpcError.

    Without our metadata the status alone decides: ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``
    then come from grpclib or a proxy, not from a peer's ``CapacityExceeded`` (which always
    carries the metadata), so they are :class:`RpcUnavailable` / :class:`RpcDeadlineExceeded`;
    other statuses of the error table map back to their code, the rest are :class:`RpcError`.
    """
    message = exc.message or exc.status.name
    name = trailers.get(ERROR_CODE_KEY) if trailers is not None else None
    if isinstance(name, str):
        code = code_from_name(name)
        details = _details(trailers.get(ERROR_DETAILS_KEY))
        if code is ErrorCode.UNKNOWN and name != error_name(ErrorCode.UNKNOWN):
            details.setdefault(PEER_CODE_DETAIL, name)
        return make_error(code, message, details)
    if exc.status is Status.UNAVAILABLE:
        return RpcUnavailable(f"peer unavailable: {message}", status=exc.status)
    if exc.status is Status.DEADLINE_EXCEEDED:
        return RpcDeadlineExceeded(f"deadline exceeded: {message}", status=exc.status)
    code = code_from_grpc_status(exc.status.value)
    if code is not ErrorCode.UNKNOWN:
        return make_error(code, message, {})
    return RpcError(f"RPC failed with {exc.status.name}: {message}", status=exc.status)


def _describe(method: Any) -> str:
    return f"{method.name} via {method.channel!r}"


async def _client_step(
    method: Any, stream: Stream[Any, Any], fn: Callable[[], Awaitable[Any]]
) -> Any:
    """Run one asyncio step of a client call and translate its failure (asyncio side)."""
    try:
        return await fn()
    except GRPCError as exc:
        raise _from_grpc(exc, stream.trailing_metadata) from None
    except TimeoutError:  # before OSError, its base class
        raise RpcDeadlineExceeded(
            f"{_describe(method)}: deadline exceeded", status=Status.DEADLINE_EXCEEDED
        ) from None
    except (OSError, StreamTerminatedError) as exc:
        raise RpcUnavailable(f"{_describe(method)}: {exc or type(exc).__name__}") from exc


# --- client ------------------------------------------------------------------------------------
@asynccontextmanager
async def open_rpc_channel(host: str, port: int) -> AsyncIterator[Channel]:
    """A grpclib ``Channel`` to ``host:port``, usable from trio with :func:`call`.

    Owns the channel (and the asyncio loop if none was running, see :func:`open_rpc_loop`); it
    connects lazily on the first call and is closed on exit, also when cancelled. Nothing here
    raises for an unreachable peer: the first call does, with :class:`RpcUnavailable`.
    """
    async with open_rpc_loop():
        channel = await trio_asyncio.aio_as_trio(_make_channel)(host, port)
        try:
            yield channel
        finally:
            channel.close()


async def _make_channel(host: str, port: int) -> Channel:
    return Channel(host, port)  # inside asyncio: grpclib looks up the running loop


def _stamp_version(request: Any) -> None:
    """Every request says which protocol version it speaks (docs/protocol.md §12)."""
    if has_version_field(request) and not request.protocol_version:
        request.protocol_version = PROTOCOL_VERSION


async def call(
    method: UnaryUnaryMethod[RequestT, ReplyT],
    request: RequestT,
    *,
    deadline_s: float | None = None,
    metadata: Any = None,
) -> ReplyT:
    """Make a unary call ``method(request)`` (``method`` is a stub attribute) from trio.

    Cancelling the caller cancels the call on the server. Raises the peer's
    ``DarkTowerError`` subclass, :class:`RpcUnavailable`, :class:`RpcDeadlineExceeded` when
    ``deadline_s`` (seconds, also the server's gRPC deadline) elapses, or :class:`RpcError`.
    """

    _stamp_version(request)

    async def unary() -> ReplyT:  # asyncio
        stream = method.open(timeout=deadline_s, metadata=metadata)

        async def run() -> ReplyT | None:
            async with stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message()

        reply: ReplyT | None = await _client_step(method, stream, run)
        if reply is None:  # grpclib raises before this for a unary call; keep mypy honest
            raise RpcError(f"{_describe(method)}: no reply", status=Status.INTERNAL)
        return reply

    result: ReplyT = await trio_asyncio.aio_as_trio(unary)()
    return result


class RpcReplies(Generic[ReplyT]):
    """The replies of a server-streaming call, as a trio async iterator."""

    def __init__(self, method: Any, stream: Stream[Any, ReplyT]) -> None:
        self._method = method
        self._stream = stream
        self.finished = False

    def __aiter__(self) -> RpcReplies[ReplyT]:
        return self

    async def __anext__(self) -> ReplyT:
        if self.finished:
            raise StopAsyncIteration
        method, stream = self._method, self._stream
        step = trio_asyncio.aio_as_trio(_client_step)
        reply = await step(method, stream, stream.recv_message)
        if reply is None:
            self.finished = True
            # The status (and a DarkTowerError raised after some replies) is in the trailers.
            await step(method, stream, stream.recv_trailing_metadata)
            raise StopAsyncIteration
        return reply  # type: ignore[no-any-return]


@asynccontextmanager
async def open_stream_call(
    method: UnaryStreamMethod[RequestT, ReplyT],
    request: RequestT,
    *,
    deadline_s: float | None = None,
    metadata: Any = None,
) -> AsyncIterator[RpcReplies[ReplyT]]:
    """Start a server-streaming call and yield its replies as an async iterator (trio).

    Owns the call: leaving the block before the last reply, or being cancelled, resets the
    stream, which cancels the server's handler. Raises what :func:`call` raises, from the
    ``async for`` (the server's error arrives after the replies it sent before it).
    """
    _stamp_version(request)
    step = trio_asyncio.aio_as_trio(_client_step)
    stream = method.open(timeout=deadline_s, metadata=metadata)
    await step(method, stream, stream.__aenter__)
    replies: RpcReplies[ReplyT] = RpcReplies(method, stream)
    try:
        await step(method, stream, lambda: stream.send_message(request, end=True))
        yield replies
    finally:
        # Shielded and bounded: the reset is one frame to write; a dead peer must not hold us.
        with trio.move_on_after(RPC_SHUTDOWN_GRACE_S, shield=True):
            await trio_asyncio.aio_as_trio(_close_client_stream)(stream, replies.finished)


async def _close_client_stream(stream: Stream[Any, Any], finished: bool) -> None:
    """Release the stream; reset it first unless it ended (asyncio side)."""
    if finished:
        await stream.__aexit__(None, None, None)
        return
    # Exiting with an exception makes grpclib reset the stream (RST_STREAM: the server cancels
    # its handler) and release it without waiting for trailers; the exception is not re-raised.
    abandoned = asyncio.CancelledError("stream call abandoned by its owner")
    await stream.__aexit__(type(abandoned), abandoned, None)


# --- server ------------------------------------------------------------------------------------
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


def _unary_handler(fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[None]]:
    async def handle(stream: Any) -> None:  # asyncio, called by grpclib
        request = await stream.recv_message()
        try:
            _check_version(request)
            reply = await trio_asyncio.trio_as_aio(fn)(request)
        except DarkTowerError as exc:
            await _send_error(stream, exc)
            return
        await stream.send_message(reply)

    return handle


def _stream_handler(fn: Callable[[Any], AsyncGenerator[Any, None]]) -> Callable[[Any], Any]:
    async def serve(stream: Any, request: Any) -> None:  # trio: one task owns the generator
        async with aclosing(fn(request)) as replies:
            async for reply in replies:
                await trio_asyncio.aio_as_trio(stream.send_message)(reply)

    async def handle(stream: Any) -> None:  # asyncio, called by grpclib
        request = await stream.recv_message()
        try:
            _check_version(request)
            await trio_asyncio.trio_as_aio(serve)(stream, request)
        except DarkTowerError as exc:
            await _send_error(stream, exc)

    return handle


class _Routes:
    """Stands in for ``self`` when calling a generated ``Base.__mapping__``: records names."""

    def __getattr__(self, name: str) -> str:
        return name


class RpcService:
    """A trio implementation bound to a generated grpclib ``Base``; give it to :func:`serve_rpc`."""

    def __init__(self, base: type, impl: object) -> None:
        routes: dict[str, Handler] = base.__mapping__(_Routes())  # type: ignore[attr-defined]
        missing = [h.func for h in routes.values() if not callable(getattr(impl, h.func, None))]
        if missing:
            raise TypeError(f"{type(impl).__name__} lacks RPC methods: {', '.join(missing)}")
        self._mapping: dict[str, Handler] = {}
        for path, route in routes.items():
            fn = getattr(impl, route.func)
            if route.cardinality is Cardinality.UNARY_UNARY:
                handle = _unary_handler(fn)
            elif route.cardinality is Cardinality.UNARY_STREAM:
                handle = _stream_handler(fn)
            else:
                raise TypeError(f"{path}: {route.cardinality.name} is not supported by the bridge")
            self._mapping[path] = Handler(
                handle, route.cardinality, route.request_type, route.reply_type
            )

    def __mapping__(self) -> dict[str, Handler]:
        return dict(self._mapping)


def rpc_service(base: type, impl: object) -> RpcService:
    """Bind ``impl`` (trio methods named after the RPCs of ``base``) for :func:`serve_rpc`."""
    return RpcService(base, impl)


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


async def _start_server(services: Sequence[object], sock: socket.socket) -> _TrackingServer:
    server = _TrackingServer(services)  # inside asyncio: grpclib looks up the running loop
    await server.start(sock=sock)
    return server


async def serve_rpc(
    services: Sequence[object],
    host: str,
    port: int,
    *,
    shutdown_grace_s: float = RPC_SHUTDOWN_GRACE_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``services`` (from :func:`rpc_service`, or any grpclib handler) until cancelled.

    Binds ``host:port`` (0 picks a free port) and reports the bound port through
    ``task_status.started(port)``. Owns the grpclib server, its connections and their request
    handlers (and the asyncio loop if none was running). On cancellation it stops accepting,
    cancels running handlers, gives them ``shutdown_grace_s`` (shielded) to finish, then closes
    the remaining connections, whose clients see :class:`RpcUnavailable`. The trio methods of
    cancelled handlers run in the asyncio loop's nursery: their cleanup is awaited by whoever
    owns that loop (:func:`open_rpc_loop`). Raises ``OSError`` if the address cannot be bound.
    """
    async with open_rpc_loop():
        sock = await _bound_socket(host, port)
        bound_port: int = sock.getsockname()[1]
        try:
            server = await trio_asyncio.aio_as_trio(_start_server)(services, sock)
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
