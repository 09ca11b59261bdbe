"""The session's receive queue of datagrams is bounded in bytes as well as in count
(transport/_config.py, DATAGRAM_QUEUE_BYTES): a peer cannot park 64 datagrams of 64 KiB each
in a session nobody reads. The server session of a real QUIC connection on 127.0.0.1, fed as
its connection feeds it."""

from __future__ import annotations

import trio

from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
)

from .conftest import start_server


async def test_the_receive_queue_drops_the_oldest_to_stay_within_its_bytes(
    dev_cert: TlsCredentials,
) -> None:
    limits = TransportLimits(datagram_queue_size=64, datagram_queue_bytes=3000)
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
            server = got[0]
            # Over the wire (a packet of 1,200 bytes), one that fits.
            session.send_datagram(b"w" * 1000)
            with trio.fail_after(5):
                assert await server.receive_datagram() == b"w" * 1000
            # As the connection hands them in: a datagram larger than the whole bound is
            # dropped itself; a large one pushes out as many old ones as it needs.
            for i in range(3):
                server.on_datagram(bytes([i]) * 1000)
            server.on_datagram(b"x" * 3001)
            assert server.datagrams_dropped == 1 and server._datagram_bytes == 3000
            server.on_datagram(b"y" * 2500)
            assert server.datagrams_dropped == 4  # all three went to make room
            assert await server.receive_datagram() == b"y" * 2500
            server.on_datagram(b"z" * 3000)  # the queue is empty again: the whole bound fits
            assert await server.receive_datagram() == b"z" * 3000
            assert server._datagram_bytes == 0
        nursery.cancel_scope.cancel()
