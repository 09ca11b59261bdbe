"""A service in the shape grpclib's code generator writes ``*_grpc.py`` files (an abstract
``Base`` with ``__mapping__`` and a ``Stub`` of method objects), with well-known protobuf types,
and its trio implementation: the bridge is tested on the shape the real generated services have.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import AsyncIterator

import grpclib.const
import grpclib.server
import sniffio
import trio
from google.protobuf.wrappers_pb2 import Int32Value, StringValue
from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
    StreamError,
    Unauthorized,
)

# Real sockets, real time: a bound on every wait so a regression fails instead of hanging.
WAIT_S = 10.0


# --- a service in the generated shape ---------------------------------------------------------
class EchoBase(abc.ABC):
    @abc.abstractmethod
    async def Echo(self, stream: grpclib.server.Stream[StringValue, StringValue]) -> None: ...

    @abc.abstractmethod
    async def Count(self, stream: grpclib.server.Stream[Int32Value, Int32Value]) -> None: ...

    @abc.abstractmethod
    async def Hang(self, stream: grpclib.server.Stream[StringValue, StringValue]) -> None: ...

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/test.Echo/Echo": grpclib.const.Handler(
                self.Echo, grpclib.const.Cardinality.UNARY_UNARY, StringValue, StringValue
            ),
            "/test.Echo/Count": grpclib.const.Handler(
                self.Count, grpclib.const.Cardinality.UNARY_STREAM, Int32Value, Int32Value
            ),
            "/test.Echo/Hang": grpclib.const.Handler(
                self.Hang, grpclib.const.Cardinality.UNARY_UNARY, StringValue, StringValue
            ),
        }


class EchoStub:
    def __init__(self, channel: Channel) -> None:
        self.Echo = UnaryUnaryMethod(channel, "/test.Echo/Echo", StringValue, StringValue)
        self.Count = UnaryStreamMethod(channel, "/test.Echo/Count", Int32Value, Int32Value)
        self.Hang = UnaryUnaryMethod(channel, "/test.Echo/Hang", StringValue, StringValue)


ERRORS: dict[str, DarkTowerError] = {
    "invalid": InvalidRequest("bad field", details={"field": "name"}),
    "unauthorized": Unauthorized("token expired"),
    "forbidden": Forbidden("not your meeting"),
    "not_found": NotFound("no such meeting", details={"meeting_id": "m-1"}),
    "conflict": Conflict("already registered"),
    "internal": InternalError("boom"),
    "capacity": CapacityExceeded("no healthy meeting controller"),
    "stream": StreamError("stream reset"),
    "rate": RateLimited("slow down", retry_after_s=2.5, details={"limit": "100"}),
    "unicode": NotFound("réunion introuvable ✓", details={"nom": "café"}),
}


class Echo:
    """The trio implementation: plain ``request -> reply`` methods, no grpclib in sight."""

    def __init__(self) -> None:
        self.hang_started = trio.Event()
        self.hang_cancelled = trio.Event()
        self.count_cancelled = trio.Event()
        self.in_trio: list[bool] = []

    async def Echo(self, request: StringValue) -> StringValue:
        # Proves the method runs as trio code: trio checkpoints work here.
        await trio.lowlevel.checkpoint()
        self.in_trio.append(sniffio.current_async_library() == "trio")
        if request.value in ERRORS:
            raise ERRORS[request.value]
        if request.value == "crash":
            raise RuntimeError("secret traceback detail")
        return StringValue(value=request.value.upper())

    async def Count(self, request: Int32Value) -> AsyncIterator[Int32Value]:
        try:
            for i in range(abs(request.value)):
                yield Int32Value(value=i)
                await trio.lowlevel.checkpoint()
            if request.value < 0:
                raise NotFound("counted too far", details={"n": str(request.value)})
            if request.value == 0:  # one reply, then wait until cancelled
                yield Int32Value(value=0)
                await trio.sleep_forever()
        except trio.Cancelled:
            self.count_cancelled.set()
            raise

    async def Hang(self, request: StringValue) -> StringValue:
        self.hang_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.hang_cancelled.set()
            raise
        raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
