"""The grpclib-in-trio bridge over real 127.0.0.1 TCP: calls, errors across the wire, cancellation
and hostile connections (startup, shutdown and versions: test_rpc_bridge_wiring.py).

The service (tests/transport/_echo_service.py) is written exactly as grpclib's code generator
writes ``*_grpc.py`` files, so the bridge is tested on the shape the real generated services have.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import grpclib.const
import grpclib.server
import h2.config
import h2.connection
import pytest
import trio
import trio_asyncio
from google.protobuf.wrappers_pb2 import Int32Value, StringValue
from grpclib.client import UnaryUnaryMethod
from grpclib.exceptions import GRPCError

from darktower.errors import DarkTowerError, NotFound, RateLimited
from darktower.protocol import grpc_status, wire_details
from darktower.transport import rpc
from tests._fuzz import fuzz_cases, fuzz_rng

from ._echo_service import ERRORS, WAIT_S, Echo, EchoBase, EchoStub


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> tuple[Echo, int]:
    impl = Echo()
    port = await nursery.start(rpc.serve_rpc, [rpc.rpc_service(EchoBase, impl)], "127.0.0.1", 0)
    return impl, port


@pytest.fixture
async def stub(echo_server: tuple[Echo, int]) -> AsyncIterator[EchoStub]:
    async with rpc.open_rpc_channel("127.0.0.1", echo_server[1]) as channel:
        yield EchoStub(channel)


# --- calls ------------------------------------------------------------------------------------
async def test_unary_call(echo_server: tuple[Echo, int], stub: EchoStub) -> None:
    with trio.fail_after(WAIT_S):
        reply = await rpc.call(stub.Echo, StringValue(value="hello"))
    assert reply == StringValue(value="HELLO")
    assert echo_server[0].in_trio == [True]


async def test_port_zero_reports_the_bound_port(echo_server: tuple[Echo, int]) -> None:
    port = echo_server[1]
    assert port > 0
    with socket.socket() as s:  # something really listens there
        s.settimeout(WAIT_S)
        s.connect(("127.0.0.1", port))


async def test_many_concurrent_calls(stub: EchoStub) -> None:
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await rpc.call(stub.Echo, StringValue(value=f"m{i}"))).value

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
    assert results == {i: f"M{i}" for i in range(20)}


async def test_server_stream(stub: EchoStub) -> None:
    with trio.fail_after(WAIT_S):
        async with rpc.open_stream_call(stub.Count, Int32Value(value=5)) as replies:
            values = [reply.value async for reply in replies]
    assert values == [0, 1, 2, 3, 4]


async def test_server_stream_error_after_replies(stub: EchoStub) -> None:
    values = []
    with trio.fail_after(WAIT_S), pytest.raises(NotFound, match="counted too far") as info:
        async with rpc.open_stream_call(stub.Count, Int32Value(value=-3)) as replies:
            async for reply in replies:
                values.append(reply.value)
    assert values == [0, 1, 2]
    assert info.value.details == {"n": "-3"}


async def test_leaving_a_stream_early_cancels_the_server_generator(
    echo_server: tuple[Echo, int], stub: EchoStub
) -> None:
    impl = echo_server[0]
    with trio.fail_after(WAIT_S):
        async with rpc.open_stream_call(stub.Count, Int32Value(value=0)) as replies:
            async for reply in replies:
                assert reply.value == 0
                break
        # Leaving the block reset the stream; the server's generator sees cancellation.
        await impl.count_cancelled.wait()


async def test_cancelling_a_stream_cancels_the_server_generator(
    echo_server: tuple[Echo, int], stub: EchoStub
) -> None:
    impl = echo_server[0]
    got_first = trio.Event()
    with trio.fail_after(WAIT_S):
        with trio.CancelScope() as scope:
            async with rpc.open_stream_call(stub.Count, Int32Value(value=0)) as replies:
                async for _reply in replies:
                    got_first.set()
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
        assert got_first.is_set()
        await impl.count_cancelled.wait()


# --- error mapping ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(ERRORS))
async def test_darktower_errors_cross_the_wire_both_ways(stub: EchoStub, key: str) -> None:
    sent = ERRORS[key]
    with trio.fail_after(WAIT_S), pytest.raises(DarkTowerError) as info:
        await rpc.call(stub.Echo, StringValue(value=key))
    received = info.value
    assert type(received) is type(sent)
    assert received.code is sent.code
    assert received.message == sent.message
    assert received.details == wire_details(sent)  # sent's own, plus retry_after_s if any
    if isinstance(sent, RateLimited):
        assert isinstance(received, RateLimited)
        assert received.retry_after_s == sent.retry_after_s


@pytest.mark.parametrize("key", sorted(ERRORS))
async def test_grpc_status_is_the_error_tables(echo_server: tuple[Echo, int], key: str) -> None:
    # What a plain grpclib client (no bridge on its side) sees: the table's status and message.
    async with rpc.open_rpc_channel("127.0.0.1", echo_server[1]) as channel:
        stub = EchoStub(channel)

        async def raw() -> None:
            await stub.Echo(StringValue(value=key))

        with trio.fail_after(WAIT_S), pytest.raises(GRPCError) as info:
            await trio_asyncio.aio_as_trio(raw)()
    assert info.value.status.value == grpc_status(ERRORS[key].code)
    assert info.value.message == ERRORS[key].message


async def test_status_without_metadata_maps_through_the_table() -> None:
    # A peer that is not our bridge (or raises GRPCError itself) still yields the right class.
    class Raw(EchoBase):
        async def Echo(self, stream: Any) -> None:
            await stream.recv_message()
            raise GRPCError(grpclib.const.Status.NOT_FOUND, "gone")

        async def Count(self, stream: Any) -> None:
            await stream.recv_message()
            raise GRPCError(grpclib.const.Status.UNAVAILABLE, "overloaded proxy")

        async def Hang(self, stream: Any) -> None:
            await stream.recv_message()
            raise GRPCError(grpclib.const.Status.DATA_LOSS, "eaten")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(rpc.serve_rpc, [Raw()], "127.0.0.1", 0)
        async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
            stub = EchoStub(channel)
            with trio.fail_after(WAIT_S):
                with pytest.raises(NotFound, match="gone"):
                    await rpc.call(stub.Echo, StringValue(value="x"))
                with pytest.raises(rpc.RpcUnavailable, match="overloaded proxy"):
                    async with rpc.open_stream_call(stub.Count, Int32Value(value=1)) as replies:
                        async for _reply in replies:
                            pass  # pragma: no cover
                with pytest.raises(rpc.RpcError, match="DATA_LOSS") as info:
                    await rpc.call(stub.Hang, StringValue(value="x"))
                assert info.value.status is grpclib.const.Status.DATA_LOSS
        nursery.cancel_scope.cancel()


async def test_other_exceptions_do_not_leak(stub: EchoStub) -> None:
    with trio.fail_after(WAIT_S), pytest.raises(rpc.RpcError) as info:
        await rpc.call(stub.Echo, StringValue(value="crash"))
    assert "secret" not in info.value.message
    assert info.value.status is grpclib.const.Status.UNKNOWN


async def test_unknown_method_is_an_rpc_error(echo_server: tuple[Echo, int]) -> None:
    async with rpc.open_rpc_channel("127.0.0.1", echo_server[1]) as channel:
        missing = UnaryUnaryMethod(channel, "/test.Echo/Nope", StringValue, StringValue)
        with trio.fail_after(WAIT_S), pytest.raises(rpc.RpcError) as info:
            await rpc.call(missing, StringValue(value="x"))
    # grpclib's server answers UNIMPLEMENTED without a content-type, which its own client then
    # reports as UNKNOWN: either way the caller gets an RpcError, not a hang or a raw GRPCError.
    assert info.value.status in {grpclib.const.Status.UNIMPLEMENTED, grpclib.const.Status.UNKNOWN}


# --- cancellation and deadlines ---------------------------------------------------------------
async def test_cancelling_the_caller_cancels_the_server_handler(
    echo_server: tuple[Echo, int], stub: EchoStub
) -> None:
    impl = echo_server[0]
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:

            async def caller() -> None:
                await rpc.call(stub.Hang, StringValue(value="x"))

            nursery.start_soon(caller)
            await impl.hang_started.wait()
            nursery.cancel_scope.cancel()
        await impl.hang_cancelled.wait()
    # The channel is still usable afterwards.
    with trio.fail_after(WAIT_S):
        assert (await rpc.call(stub.Echo, StringValue(value="ok"))).value == "OK"


async def test_deadline_is_enforced_on_both_sides(
    echo_server: tuple[Echo, int], stub: EchoStub
) -> None:
    with trio.fail_after(WAIT_S), pytest.raises(rpc.RpcDeadlineExceeded):
        await rpc.call(stub.Hang, StringValue(value="x"), deadline_s=0.2)
    with trio.fail_after(WAIT_S):
        await echo_server[0].hang_cancelled.wait()


# --- hostile input: every connection is an error boundary (docs/architecture.md §6.1) ----------
def _h2_request_bytes(header_value: bytes) -> bytes:
    """An HTTP/2 connection preface and a HEADERS frame whose header value is not ASCII."""
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/test.Echo/Echo"),
            (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"x-hostile", header_value),
        ],
    )
    return conn.data_to_send()


@pytest.mark.parametrize("payload", ["bad_header", "garbage"])
async def test_a_malformed_connection_is_closed_and_the_server_goes_on(
    echo_server: tuple[Echo, int], stub: EchoStub, payload: str
) -> None:
    _, port = echo_server
    data = _h2_request_bytes(b"\xad\xa4[\xba") if payload == "bad_header" else b"\x00" * 64
    with trio.fail_after(WAIT_S):
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(data)
        # The server drops the connection (no reply can be made to it) ...
        with pytest.raises(trio.BrokenResourceError):
            while await bad.receive_some(65536):
                pass
            raise trio.BrokenResourceError  # a clean close is fine too
        await bad.aclose()
        # ... and every other connection, old and new, is served.
        assert (await rpc.call(stub.Echo, StringValue(value="still"))).value == "STILL"
        async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
            fresh = EchoStub(channel)
            assert (await rpc.call(fresh.Echo, StringValue(value="new"))).value == "NEW"


async def test_an_asyncio_error_of_one_connection_closes_only_that_connection() -> None:
    """The loop's exception handler is the backstop behind the data_received boundary."""

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    async with rpc.open_rpc_loop() as loop:
        transport = Transport()
        context = {"message": "boom", "exception": ValueError("x"), "transport": transport}
        loop.call_exception_handler(context)
        assert transport.aborted
        await trio.testing.wait_all_tasks_blocked()  # nothing was raised into the loop


@pytest.mark.fuzz
async def test_fuzz_grpc_listener_with_hostile_connections(
    echo_server: tuple[Echo, int], stub: EchoStub
) -> None:
    """Random HTTP/2 requests (header names and values of random bytes) and random bytes after
    a valid preface, one connection each: the server answers a real call after every batch."""
    _, port = echo_server
    rng = fuzz_rng("grpc listener")
    for case in range(fuzz_cases(60)):
        if rng.random() < 0.5:
            data = _h2_request_bytes(rng.randbytes(rng.randrange(1, 64)))
        else:
            config = h2.config.H2Configuration(client_side=True)
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
            data = conn.data_to_send() + rng.randbytes(rng.randrange(1, 512))
        with trio.fail_after(WAIT_S):
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await bad.send_all(data)
            except trio.BrokenResourceError:
                pass  # the server already dropped it
            finally:
                await bad.aclose()
            if case % 10 == 9:
                assert (await rpc.call(stub.Echo, StringValue(value="ok"))).value == "OK"
    assert (await rpc.call(stub.Echo, StringValue(value="ok"))).value == "OK"
