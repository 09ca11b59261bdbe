"""Memory per connection: handshake state released, frame table shared, heap trimmed.

See darktower/transport/_quic.py and _endpoint.py (issue #6, memory per idle session).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.transport import (
    Endpoint,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    _endpoint,
    connect_webtransport,
)
from darktower.transport._endpoint import HEAP_TRIM_INTERVAL_S, make_udp_socket
from darktower.transport._quic import CreditedQuicConnection

from ._cores import aioquic_only
from .conftest import start_server

FRAME_TABLE = "_QuicConnection__frame_handlers"
PAYLOAD = bytes(range(256)) * 2_000  # 512 KB: more than a stream window, so credit frames flow


async def _echo(session: WebTransportSession, context: Any) -> None:
    stream = await session.accept_stream()
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()
    await session.wait_closed()


async def _round_trip(session: WebTransportSession) -> bytes:
    stream = await session.open_bidirectional_stream()
    received = bytearray()
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(PAYLOAD)
            await stream.send_eof()

        nursery.start_soon(send)
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


def _crypto_capacities(quic: CreditedQuicConnection) -> list[int]:
    return [buf.capacity for buf in quic._crypto_buffers.values()]


@aioquic_only("aioquic's TLS buffers and shared frame table: qh3 2.1 keeps that state natively")
async def test_handshake_buffers_released_and_frames_still_handled(
    dev_cert: TlsCredentials,
) -> None:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)})
        hashes = [dev_cert.sha256]
        async with (
            connect_webtransport(f"{base}/echo", server_certificate_hashes=hashes) as one,
            connect_webtransport(f"{base}/echo", server_certificate_hashes=hashes) as two,
        ):
            # Every kind of traffic after the swap: stream data, ACKs, MAX_STREAM_DATA, FIN.
            assert await _round_trip(one) == PAYLOAD
            assert await _round_trip(two) == PAYLOAD
            assert server.endpoint is not None
            conns = list(server.endpoint.connections)
            assert len(conns) == 2
            for conn in conns:
                assert conn.quic._handshake_confirmed
                assert _crypto_capacities(conn.quic) == [0, 0, 0]
            # The client's connection confirmed on HANDSHAKE_DONE and released its buffers too.
            assert _crypto_capacities(one._conn.quic) == [0, 0, 0]
            # One table of handlers for all connections, bound to each on lookup.
            first, second = (getattr(conn.quic, FRAME_TABLE) for conn in conns)
            assert first._table is second._table
            handler, epochs = first[0x08]
            assert handler.__self__ is conns[0].quic
            assert epochs is second[0x08][1]
            with pytest.raises(KeyError):
                first[0x7F]  # unknown frame types still fail as aioquic expects
        nursery.cancel_scope.cancel()


async def test_heap_trimmed_once_handshakes_end(
    dev_cert: TlsCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    trimmed = trio.Event()
    monkeypatch.setattr(_endpoint, "release_free_heap", trimmed.set)
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)})
        assert server.endpoint is not None
        assert server.endpoint.heap_trims == 0  # nothing happened yet
        async with connect_webtransport(
            f"{base}/echo", server_certificate_hashes=[dev_cert.sha256]
        ):
            with trio.fail_after(10):
                await trimmed.wait()
            assert server.endpoint.heap_trims == 1
            assert not server.endpoint.handshaking
        nursery.cancel_scope.cancel()


class _FakeConnection:
    """What the endpoint's bookkeeping touches of a connection."""

    def __init__(self) -> None:
        self.cids: set[bytes] = set()
        self.admit = None  # admitted without per-address slots


async def test_heap_trim_waits_for_the_last_handshake_and_is_paced(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(_endpoint, "release_free_heap", lambda: calls.append(trio.current_time()))
    sock = make_udp_socket("127.0.0.1", 0)
    endpoint = Endpoint(sock, TransportLimits())
    a, b, c, d = (_FakeConnection() for _ in range(4))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint._trim_heap_loop)
            endpoint.handshaking.update({a, b})  # type: ignore[arg-type]
            endpoint._end_handshake(a)  # type: ignore[arg-type]
            await trio.sleep(0.1)
            assert calls == []  # b is still in progress
            endpoint._end_handshake(b)  # type: ignore[arg-type]
            await trio.sleep(0.1)
            assert calls == [pytest.approx(0.1)]
            # A connection that failed during its handshake ends it too.
            endpoint.handshaking.add(c)  # type: ignore[arg-type]
            endpoint.forget(c)  # type: ignore[arg-type]
            endpoint.handshaking.add(d)  # type: ignore[arg-type]
            endpoint._end_handshake(d)  # type: ignore[arg-type]
            await trio.sleep(0.1)
            assert len(calls) == 1  # within the pause: coalesced into the next trim
            await trio.sleep(HEAP_TRIM_INTERVAL_S)
            assert calls == [pytest.approx(0.1), pytest.approx(0.1 + HEAP_TRIM_INTERVAL_S)]
            assert endpoint.heap_trims == 2
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
