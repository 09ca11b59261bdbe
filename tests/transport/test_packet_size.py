"""Packet size and ACK delay by what a client asks for (docs/architecture.md §10): a client on
the loopback interface that advertises a large max_udp_payload_size (a co-located media
processor) receives large packets; any other client gets the usual 1,200-byte ones. A client
with ``ack_delay_s`` acks once per that delay instead of once per burst."""

from __future__ import annotations

import pytest
import trio

from darktower.transport import (
    LOOPBACK_PACKET_SIZE,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSession,
    connect_webtransport,
)

from ._cores import aioquic_only
from .conftest import start_server

PAYLOAD = 256 * 1024


async def send_payload(session: WebTransportSession, context: object) -> None:
    stream = await session.open_unidirectional_stream()
    await stream.send_all(b"x" * PAYLOAD)
    await stream.aclose()
    await trio.sleep_forever()


async def _receive(base: str, cert: TlsCredentials, limits: TransportLimits) -> int:
    """The datagrams a client receives from its start until it has read
    PAYLOAD bytes. Counted from the start, handshake included: the server sends at once, so a
    sample taken after the connect could miss the first packets of data."""
    async with connect_webtransport(
        base + "/send", server_certificate_hashes=[cert.sha256], limits=limits
    ) as session:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportReceiveStream)
        received = 0
        while data := await stream.receive_some():
            received += len(data)
        assert received == PAYLOAD
        return session.transport_stats().datagrams_received


@pytest.mark.parametrize(
    "large",
    [
        pytest.param(
            True, marks=aioquic_only("qh3 2.1 fixes the packet size when its core is created")
        ),
        False,
    ],
)
async def test_a_loopback_client_that_asks_receives_large_packets(
    dev_cert: TlsCredentials, large: bool
) -> None:
    limits = TransportLimits(receive_packet_size=LOOPBACK_PACKET_SIZE if large else None)
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/send": Route(send_payload)})
        datagrams = await _receive(base, dev_cert, limits)
        nursery.cancel_scope.cancel()
    at_1200 = PAYLOAD // 1200  # fewer than the data alone needs in packets of 1,200 bytes
    if large:
        assert datagrams < at_1200 // 4  # 16 KiB packets, less the congestion window's start
    else:
        assert datagrams >= at_1200


@aioquic_only("qh3 2.1 has no ACK delay setting")
async def test_a_client_with_an_ack_delay_sends_fewer_acks(dev_cert: TlsCredentials) -> None:
    """Forty messages 5 ms apart (_paced): acked one by one at once, a few at a time with a
    25 ms ACK delay."""

    async def acks(limits: TransportLimits) -> int:
        async with connect_webtransport(
            f"{base}/paced?delay_ms=0", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            before = session.transport_stats().packets_sent
            stream = await session.accept_stream()
            assert isinstance(stream, WebTransportReceiveStream)
            while await stream.receive_some():
                pass
            return session.transport_stats().packets_sent - before

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/paced": Route(_paced)})
        eager = await acks(TransportLimits())
        delayed = await acks(TransportLimits(ack_delay_s=0.025))
        nursery.cancel_scope.cancel()
    assert delayed * 2 < eager, (delayed, eager)


async def _paced(session: WebTransportSession, context: object) -> None:
    """Forty 100-byte messages 5 ms apart on one stream, with the send delay the query asks."""
    session.delay_sends(int(session.request.query.get("delay_ms", "0")) / 1000)
    stream = await session.open_unidirectional_stream()
    for _ in range(40):
        await stream.send_all(b"m" * 100)
        await trio.sleep(0.005)  # the traffic's pace, not a wait for something
    await stream.aclose()
    await trio.sleep_forever()


async def test_a_send_delay_sends_the_same_bytes_in_fewer_packets(
    dev_cert: TlsCredentials,
) -> None:
    async def datagrams(delay_ms: int) -> int:
        async with connect_webtransport(
            f"{base}/paced?delay_ms={delay_ms}", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            before = session.transport_stats().datagrams_received
            stream = await session.accept_stream()
            assert isinstance(stream, WebTransportReceiveStream)
            received = b""
            while data := await stream.receive_some():
                received += data
            assert received == b"m" * 4000  # nothing lost or reordered
            return session.transport_stats().datagrams_received - before

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/paced": Route(_paced)})
        at_once = await datagrams(0)
        delayed = await datagrams(100)
        nursery.cancel_scope.cancel()
    assert at_once >= 30  # about one packet per message
    assert delayed <= 10  # about one per 100 ms of messages


async def test_an_idle_connection_with_a_send_delay_sends_nothing(dev_cert: TlsCredentials) -> None:
    """The held flush re-reads QUIC's timers after each receipt: a stale loss timeout would
    otherwise fire and probe again and again (some 16 packets a second) on an idle link."""

    async def once(session: WebTransportSession, context: object) -> None:
        session.delay_sends(0.1)
        stream = await session.open_unidirectional_stream()
        await stream.send_all(b"hello")
        await stream.aclose()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/once": Route(once)})
        async with connect_webtransport(
            base + "/once", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.accept_stream()
            assert isinstance(stream, WebTransportReceiveStream)
            while await stream.receive_some():
                pass
            before = session.transport_stats().datagrams_received
            await trio.sleep(1.0)  # a window of idle link, measured (no event can say "none")
            # The last ACKs, and one per silence probe of the client (docs/protocol.md §13):
            # a few. A stale loss timer firing made some 16.
            assert session.transport_stats().datagrams_received - before <= 6
        nursery.cancel_scope.cancel()
