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

**Trust.** ``serve_rpc(..., tls=server_context)`` and ``open_rpc_channel(host, port,
tls=client_context, check_peer=check)`` run every connection over (mutual) TLS; the contexts
come from ``darktower.servicekit`` (the cluster CA, docs/architecture.md §8). A served method
reads its caller's verified certificate with :func:`rpc_peer_certificate`; ``rpc_service(...,
authorize=...)`` refuses calls before the method runs. On the client, ``check(certificate)``
runs on the server's certificate before each request's message is sent; a ``ValueError`` from
it fails the call with :class:`RpcWrongPeer` (the request's message never leaves).

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
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio
import trio_asyncio
from grpclib.client import Channel, Stream, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from darktower.errors import DarkTowerError, ErrorCode, InternalError
from darktower.protocol import (
    PEER_CODE_DETAIL,
    code_from_grpc_status,
    code_from_name,
    error_name,
    make_error,
)
from darktower.protocol.versions import PROTOCOL_VERSION, has_version_field
from darktower.transport._rpc_loop import open_rpc_loop
from darktower.transport._rpc_server import (
    ERROR_CODE_KEY,
    ERROR_DETAILS_KEY,
    RPC_SHUTDOWN_GRACE_S,
    Authorize,
    PeerCertificate,
    RpcService,
    rpc_peer_certificate,
    rpc_service,
    serve_rpc,
)

__all__ = [
    "ERROR_CODE_KEY",
    "ERROR_DETAILS_KEY",
    "RPC_SHUTDOWN_GRACE_S",
    "Authorize",
    "PeerCertificate",
    "PeerCheck",
    "RpcDeadlineExceeded",
    "RpcError",
    "RpcReplies",
    "RpcService",
    "RpcUnavailable",
    "RpcWrongPeer",
    "call",
    "open_rpc_channel",
    "open_rpc_loop",
    "open_stream_call",
    "rpc_peer_certificate",
    "rpc_service",
    "serve_rpc",
]

# ``check(certificate)`` of a channel's server (None over plaintext): ValueError refuses it.
PeerCheck = Callable[[PeerCertificate | None], None]


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


class RpcWrongPeer(RpcUnavailable):
    """The server's certificate is not the one the channel's ``check_peer`` expects: the
    service we meant to reach is not at that address (nothing of the request was sent but
    its method name)."""


# --- error mapping -----------------------------------------------------------------------------
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
class _Channel(Channel):
    """A grpclib ``Channel`` that knows which server it must reach (``check_peer``)."""

    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None, check_peer: PeerCheck | None
    ) -> None:
        super().__init__(host, port, ssl=tls)
        self.check_peer = check_peer


@asynccontextmanager
async def open_rpc_channel(
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    check_peer: PeerCheck | None = None,
) -> AsyncIterator[Channel]:
    """A grpclib ``Channel`` to ``host:port``, usable from trio with :func:`call`.

    Owns the channel (and the asyncio loop if none was running, see :func:`open_rpc_loop`); it
    connects lazily on the first call and is closed on exit, also when cancelled. Nothing here
    raises for an unreachable peer: the first call does, with :class:`RpcUnavailable` (also
    when the TLS handshake fails). With ``check_peer`` every call first checks the server's
    certificate (:class:`RpcWrongPeer`).
    """
    async with open_rpc_loop():
        channel = await trio_asyncio.aio_as_trio(_make_channel)(host, port, tls, check_peer)
        try:
            yield channel
        finally:
            channel.close()


async def _make_channel(
    host: str, port: int, tls: ssl.SSLContext | None, check_peer: PeerCheck | None
) -> Channel:
    return _Channel(host, port, tls, check_peer)  # inside asyncio: grpclib needs the loop


def _peer_check(method: Any) -> PeerCheck | None:
    check: PeerCheck | None = getattr(method.channel, "check_peer", None)
    return check


def _verify_peer(method: Any, stream: Stream[Any, Any]) -> None:
    """Run the channel's ``check_peer`` on the server of ``stream`` (its request is sent)."""
    check = _peer_check(method)
    if check is None:
        return
    peer = stream.peer
    try:
        cert = (peer.cert() or None) if peer is not None else None
    except Exception as exc:  # the connection went meanwhile: its SSL object is gone
        raise RpcUnavailable(f"{_describe(method)}: connection lost ({exc!r})") from None
    try:
        check(cert)
    except ValueError as exc:
        raise RpcWrongPeer(f"{_describe(method)}: {exc}", status=Status.UNAUTHENTICATED) from None


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
                if _peer_check(method) is not None:
                    await stream.send_request()  # connects: the server's certificate is known
                    _verify_peer(method, stream)
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
        if _peer_check(method) is not None:
            await step(method, stream, stream.send_request)
            _verify_peer(method, stream)
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
