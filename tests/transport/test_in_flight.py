"""The bytes in flight a connection reports for the MH's bandwidth estimate
(``TransportStats.bytes_in_flight_after_ack``, docs/architecture.md §4.3): those right after
the last ACK, which a queue on the path keeps up and a burst sent since does not; all in
flight once no ACK came for RECENT_RTT_S.

Real QUIC on 127.0.0.1 through the netfault proxy: a rate cap makes the queue, a blackout
holds the ACKs of a burst."""

from __future__ import annotations

import trio
import trio.testing

from darktower.loadtest import open_udp_proxy
from darktower.transport import (
    Route,
    TlsCredentials,
    WebTransportReceiveStream,
    connect_webtransport,
)
from darktower.transport._stats import RECENT_RTT_S, RecentMin, after_ack

from .conftest import EndRecorder, open_downstream, start_server

CAP_BPS = 2_000_000
QUEUED_BYTES = 200_000
BURST_BYTES = 30_000
PACKET = 1200


def test_recent_min_is_the_least_within_the_window() -> None:
    recent = RecentMin()
    assert recent.least(-1.0) == -1.0
    recent.push(0.0, 5.0)
    recent.push(0.01, 7.0)
    recent.push(0.02, 6.0)
    assert recent.least(-1.0) == 5.0
    # The 5.0 falls out of the window once a newer value is pushed RECENT_RTT_S after it.
    recent.push(RECENT_RTT_S + 0.005, 9.0)
    assert recent.least(-1.0) == 6.0
    recent.push(RECENT_RTT_S + 0.006, 1.0)
    assert recent.least(-1.0) == 1.0


def test_after_an_ack_unless_none_came_of_late() -> None:
    assert after_ack(None, 5000, now=1.0) == 5000
    assert after_ack((1.0, 1200), 5000, now=1.0 + RECENT_RTT_S) == 1200
    assert after_ack((1.0, 1200), 5000, now=1.0 + RECENT_RTT_S + 0.001) == 5000


async def _read(stream: WebTransportReceiveStream, count: int) -> int:
    """Read at least ``count`` bytes; return how many were read."""
    got = 0
    while got < count:
        data = await stream.receive_some()
        assert data
        got += len(data)
    return got


async def test_a_queue_counts_and_a_burst_just_sent_does_not(dev_cert: TlsCredentials) -> None:
    recorder = EndRecorder()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/q": Route(recorder)})
        host, port = base.removeprefix("https://").split(":")
        async with (
            open_udp_proxy((host, int(port)), rate_bps=CAP_BPS) as proxy,
            connect_webtransport(
                proxy.via(base) + "/q", server_certificate_hashes=[dev_cert.sha256]
            ) as client,
        ):
            with trio.fail_after(10):
                await recorder.started.wait()
                server = recorder.session
                assert server is not None
                out, incoming = await open_downstream(server, client)

                # A queue: the cap holds what the window lets out, and what stays in flight
                # after each ACK is that queue. Read as the data comes (a stall of this
                # process, which runs the proxy too, drains the queue for a while).
                readings = []
                async with trio.open_nursery() as writer:
                    writer.start_soon(out.send_all, b"q" * QUEUED_BYTES)
                    got = 0
                    while got < QUEUED_BYTES:
                        got += await _read(incoming, min(QUEUED_BYTES - got, 20 * PACKET))
                        readings.append(server.transport_stats().bytes_in_flight_after_ack)
                assert max(readings) > 10 * PACKET, readings

                # The client's reply comes after its ACK of all that: none of it left in flight
                # (at most a packet of control frames).
                back = await client.open_unidirectional_stream()
                await back.send_all(b"d")
                reply = await server.accept_stream()
                assert isinstance(reply, WebTransportReceiveStream)
                await _read(reply, 1)
                assert server.transport_stats().bytes_in_flight < PACKET

                # A burst into a blackout: all of it in flight, no ACK after it.
                proxy.pause()
                await out.send_all(b"b" * BURST_BYTES)
                await trio.testing.wait_all_tasks_blocked()
                burst = server.transport_stats()
                assert burst.bytes_in_flight > 4 * PACKET, burst
                # (qh3 reads the bytes in flight once per datagram that brings a new RTT
                # sample: the last it read may be from a packet before the reply)
                assert burst.bytes_in_flight_after_ack <= 2 * PACKET, burst
                # The blackout lasts: with no ACK for as long, all in flight counts.
                await trio.sleep(RECENT_RTT_S)
                late = server.transport_stats()
                assert late.bytes_in_flight_after_ack == late.bytes_in_flight > 4 * PACKET, late
                proxy.resume()
        nursery.cancel_scope.cancel()
