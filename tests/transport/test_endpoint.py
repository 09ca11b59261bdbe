"""Endpoint limits: version negotiation, handshakes in progress, handshake timeout, stream and
datagram bounds."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from darktower.transport import (
    Route,
    StreamLimitExceeded,
    StreamReset,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
)
from darktower.transport._wire import WT_BUFFERED_STREAM_REJECTED

from .conftest import start_server, wait_until


def _initial_packet(version: int, dcid: bytes) -> bytes:
    header = bytes([0xC3]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    header += bytes([8]) + os.urandom(8)
    header += b"\x00"  # token length
    header += (0x4000 | 1150).to_bytes(2, "big")  # length varint
    return header.ljust(1200, b"\x00")


async def _idle(session: WebTransportSession, context: object) -> None:
    await session.wait_closed()


async def test_unknown_version_gets_version_negotiation(dev_cert: TlsCredentials) -> None:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(_idle)})
        port = int(base.rsplit(":", 1)[1])
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            await sock.sendto(_initial_packet(0x1A2A3A4A, b"12345678"), ("127.0.0.1", port))
            with trio.fail_after(5):
                reply, _ = await sock.recvfrom(2048)
        assert reply[0] & 0x80 and reply[1:5] == b"\x00\x00\x00\x00"  # Version Negotiation
        assert (1).to_bytes(4, "big") in reply[5:]  # QUIC v1 offered
        assert server.endpoint is not None and not server.endpoint.connections
        nursery.cancel_scope.cancel()


async def test_handshake_limit_and_timeout(dev_cert: TlsCredentials) -> None:
    limits = TransportLimits(max_handshakes_in_progress=2, handshake_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(_idle)}, limits=limits)
        endpoint = server.endpoint
        assert endpoint is not None
        port = int(base.rsplit(":", 1)[1])
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            for i in range(3):
                await sock.sendto(_initial_packet(1, bytes([i]) * 8), ("127.0.0.1", port))
            await wait_until(lambda: endpoint.refused_connections == 1, "third refused")
            assert len(endpoint.connections) == 2
            # Handshakes that never complete are closed by the timeout.
            await wait_until(lambda: not endpoint.connections, "half-open connections closed")
            assert endpoint.by_cid == {} and not endpoint.handshaking
        nursery.cancel_scope.cancel()


async def test_stream_limit_per_session(dev_cert: TlsCredentials) -> None:
    server_limits = TransportLimits(max_streams_per_session=2)
    accepted: list[object] = []

    async def handler(session: WebTransportSession, context: object) -> None:
        while True:
            accepted.append(await session.accept_stream())

    async with trio.open_nursery() as nursery:
        _, base = await start_server(
            nursery, dev_cert, {"/s": Route(handler)}, limits=server_limits
        )
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=server_limits
        ) as session:
            a = await session.open_bidirectional_stream()
            await session.open_bidirectional_stream()
            with pytest.raises(StreamLimitExceeded):
                await session.open_unidirectional_stream()
            await a.aclose()  # frees a slot
            await session.open_unidirectional_stream()
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            # Opening sends the stream's header: the server sees all three.
            streams = [await session.open_bidirectional_stream() for _ in range(3)]
            # The server takes two; the third is refused with a reset.
            with trio.fail_after(5), pytest.raises(StreamReset) as info:
                await streams[2].receive_some()
            assert info.value.h3_code == WT_BUFFERED_STREAM_REJECTED
        nursery.cancel_scope.cancel()


async def test_datagram_receive_queue_drops_oldest(dev_cert: TlsCredentials) -> None:
    limits = TransportLimits(datagram_queue_size=4)
    got: list[WebTransportSession] = []
    ready = trio.Event()

    async def handler(session: WebTransportSession, context: object) -> None:
        got.append(session)
        ready.set()
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await ready.wait()
            server_session = got[0]
            for i in range(10):
                server_session.on_datagram(b"%d" % i)  # as the connection would, unread
            assert server_session.datagrams_dropped == 6
            assert [await server_session.receive_datagram() for _ in range(4)] == [
                b"6",
                b"7",
                b"8",
                b"9",
            ]
            # The send queue is bounded the same way (oldest unsent dropped, counted); qh3 2.1
            # keeps no DATAGRAM queue (each leaves at the next flush), so nothing drops there.
            conn = session._conn
            if conn.core.name == "qh3":
                nursery.cancel_scope.cancel()
                return
            for i in range(10):  # no checkpoint in between: nothing is flushed meanwhile
                session.send_datagram(b"%d" % i)
            assert conn.datagrams_dropped == 6
            assert [d[-1:] for d in conn.quic._datagrams_pending] == [b"6", b"7", b"8", b"9"]
        nursery.cancel_scope.cancel()
