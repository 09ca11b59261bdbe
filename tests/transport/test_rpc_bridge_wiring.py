"""The grpclib-in-trio bridge over real 127.0.0.1 TCP: unreachable peers, bounded shutdown, the
shared asyncio loop, wiring errors at binding, and the protocol version (docs/protocol.md §12).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import grpclib.const
import grpclib.server
import pytest
import trio
from google.protobuf.wrappers_pb2 import Int32Value, StringValue

from darktower.errors import DarkTowerError, InternalError, InvalidRequest
from darktower.protocol import PROTOCOL_VERSION
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlBase, MeetingControlStub
from darktower.transport import rpc

from ._echo_service import WAIT_S, Echo, EchoBase, EchoStub, free_port


# --- unreachable peers and shutdown -----------------------------------------------------------
async def test_unreachable_port_is_rpc_unavailable() -> None:
    port = free_port()
    async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
        with trio.fail_after(WAIT_S), pytest.raises(rpc.RpcUnavailable, match=str(port)):
            await rpc.call(EchoStub(channel).Echo, StringValue(value="x"))
        with trio.fail_after(WAIT_S), pytest.raises(rpc.RpcUnavailable):
            async with rpc.open_stream_call(EchoStub(channel).Count, Int32Value(value=1)):
                pass  # pragma: no cover
    assert issubclass(rpc.RpcUnavailable, InternalError)


async def test_server_shutdown_is_bounded_and_cancels_handlers() -> None:
    impl = Echo()
    outcome: list[BaseException] = []
    server_scope = trio.CancelScope()

    async def server(task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await rpc.serve_rpc(
                [rpc.rpc_service(EchoBase, impl)],
                "127.0.0.1",
                0,
                shutdown_grace_s=1.0,
                task_status=task_status,
            )

    with trio.fail_after(WAIT_S):
        async with rpc.open_rpc_loop(), trio.open_nursery() as nursery:
            port = await nursery.start(server)
            async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
                caller_done = trio.Event()

                async def caller() -> None:
                    try:
                        await rpc.call(EchoStub(channel).Hang, StringValue(value="x"))
                    except DarkTowerError as exc:
                        outcome.append(exc)
                    finally:
                        caller_done.set()

                nursery.start_soon(caller)
                await impl.hang_started.wait()
                started = time.monotonic()
                server_scope.cancel()
                await impl.hang_cancelled.wait()
                # The server, not our channel's closing, ends the call: wait inside the block.
                await caller_done.wait()
                elapsed = time.monotonic() - started
    assert elapsed < 3.0
    # The in-flight call failed clearly instead of hanging.
    assert len(outcome) == 1
    assert isinstance(outcome[0], rpc.RpcUnavailable)
    # And nothing listens any more.
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", port))


async def test_one_loop_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    async with rpc.open_rpc_loop() as outer:
        async with rpc.open_rpc_loop() as inner:
            assert inner is outer

        def no_second_loop() -> Any:
            raise AssertionError("a second asyncio loop was opened")

        # Server and channel started under the service's loop reuse it, in child tasks too.
        monkeypatch.setattr(rpc.trio_asyncio, "open_loop", no_second_loop)
        impl = Echo()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                rpc.serve_rpc, [rpc.rpc_service(EchoBase, impl)], "127.0.0.1", 0
            )
            async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
                with trio.fail_after(WAIT_S):
                    reply = await rpc.call(EchoStub(channel).Echo, StringValue(value="a"))
            assert reply.value == "A"
            nursery.cancel_scope.cancel()


# --- wiring errors at startup -----------------------------------------------------------------
def test_missing_method_fails_at_binding() -> None:
    class Partial:
        async def Echo(self, request: Any) -> Any:
            return request

    with pytest.raises(TypeError, match="Count, Hang"):
        rpc.rpc_service(EchoBase, Partial())


def test_client_streaming_is_refused_at_binding() -> None:
    class Upload:
        def __mapping__(self) -> dict[str, grpclib.const.Handler]:
            return {
                "/test.Up/Up": grpclib.const.Handler(
                    self.Up, grpclib.const.Cardinality.STREAM_UNARY, StringValue, StringValue
                )
            }

        async def Up(self, stream: Any) -> None: ...

    with pytest.raises(TypeError, match="STREAM_UNARY"):
        rpc.rpc_service(Upload, Upload())


# --- protocol version (docs/protocol.md §12) --------------------------------------------------
class _Versions:
    """A real generated service (MeetingControl) whose methods record the version they saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def EndMeeting(self, request: mtg_pb.EndMeetingRequest) -> mtg_pb.EndMeetingResponse:
        self.seen.append(request.protocol_version)
        return mtg_pb.EndMeetingResponse()

    async def AssignMeeting(self, request: Any) -> Any:
        raise NotImplementedError

    KickParticipant = RegisterMediaHandler = MediaHandlerHeartbeat = AssignMeeting
    ModerateParticipant = AssignMeeting


async def test_requests_carry_the_protocol_version_and_others_are_refused(
    nursery: trio.Nursery,
) -> None:
    impl = _Versions()
    port = await nursery.start(
        rpc.serve_rpc, [rpc.rpc_service(MeetingControlBase, impl)], "127.0.0.1", 0
    )
    async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
        control = MeetingControlStub(channel)
        with trio.fail_after(WAIT_S):
            await rpc.call(control.EndMeeting, mtg_pb.EndMeetingRequest(meeting_id="m"))
            with pytest.raises(
                InvalidRequest, match=r"unsupported protocol version 9.*supported: 1"
            ):
                await rpc.call(
                    control.EndMeeting, mtg_pb.EndMeetingRequest(meeting_id="m", protocol_version=9)
                )
    # The stamped request reached the method as version 1; the refused one never did.
    assert impl.seen == [PROTOCOL_VERSION]
