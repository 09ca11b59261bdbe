"""The endpoint's dispatch of a datagram to its connection (``Endpoint._dispatch``,
docs/architecture.md §5.1): a short header packet's connection ID is read without the header
parser; what is not a well-formed short header goes through the parser, as any datagram did.

A real client's 1-RTT datagram is handed to the server's endpoint again, as it is and altered
(QUIC drops the replayed packet itself: it is a duplicate)."""

from __future__ import annotations

import trio

from darktower.transport import (
    Route,
    TlsCredentials,
    WebTransportSession,
    open_quic_connection,
    open_session,
)

from .conftest import record_sent, start_server


async def test_a_short_header_reaches_its_connection_and_a_malformed_one_nothing(
    dev_cert: TlsCredentials,
) -> None:
    async def echo(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        while data := await stream.receive_some():
            await stream.send_all(data)  # type: ignore[union-attr]
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/e": Route(echo)})
        host, port = base.removeprefix("https://").split(":")
        async with open_quic_connection(
            host, int(port), server_certificate_hashes=[dev_cert.sha256]
        ) as client:
            sent = record_sent(client)
            session = await open_session(client, f"{host}:{port}", "/e")
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"

            endpoint = server.endpoint
            assert endpoint is not None
            one_rtt = [d for d in sent if d[0] & 0xC0 == 0x40]
            assert one_rtt
            datagram = one_rtt[-1]
            conn = endpoint.by_cid[datagram[1:9]]
            addr = ("127.0.0.1", client.endpoint.local_address[1])
            now = trio.current_time()

            before = conn.datagrams_received
            assert endpoint._dispatch(datagram, addr, now) is conn
            assert conn.datagrams_received == before + 1
            # The fixed bit cleared, or cut inside the connection ID: no connection has it.
            for bad in (bytes([datagram[0] & ~0x40]) + datagram[1:], datagram[:8]):
                assert endpoint._dispatch(bad, addr, now) is None
            assert conn.datagrams_received == before + 1
            # The connection is none the worse.
            await stream.send_all(b"y")
            assert await stream.receive_some() == b"y"
        nursery.cancel_scope.cancel()
