"""Liveness (docs/protocol.md §13): a peer that stops answering is noticed within the idle
timeout on both sides, our own keepalive PINGs do not keep it alive, and a live idle peer
stays connected.

The virtual-time tests run real QUIC on 127.0.0.1 with trio's MockClock and the default
limits (14 s, keepalive every third of it), so the times are exact; a real-time test goes through the
network-fault proxy with a 1 s idle timeout.
"""

from __future__ import annotations

from typing import Any

import trio

from darktower.loadtest import UdpProxy, netfault, open_udp_proxy
from darktower.transport import (
    ConnectionLost,
    Endpoint,
    IdleTimeout,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
    keepalive_for,
)
from darktower.transport._config import UNREACHABLE_CONFIRM_S

from ._cores import aioquic_only
from .conftest import start_server

IDLE_S = 14.0
# How late after the idle timeout a silent peer may be noticed on virtual time (the timer
# fires at the exact instant; this covers the probe timeout's floor on loopback).
SLACK_S = 0.5


class Peer:
    """A server handler that records a datagram's arrival, answers ``b"ask"`` with one of its
    own, and records when its session ends."""

    def __init__(self) -> None:
        self.session: WebTransportSession | None = None
        self.started = trio.Event()
        self.received = trio.Event()
        self.ended_at: float | None = None
        self.ended = trio.Event()

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        self.session = session
        self.started.set()
        try:
            while True:
                data = await session.receive_datagram()
                self.received.set()
                if data == b"ask":
                    session.send_datagram(b"answer")
        finally:
            self.ended_at = trio.current_time()
            self.ended.set()


def blackhole(endpoint: Endpoint) -> None:
    """The endpoint's host goes silent: nothing it sends leaves, what arrives is never read
    (a pulled cable; its own timers keep running)."""
    endpoint.send = lambda data, addr: None  # type: ignore[method-assign]
    endpoint._dispatch = lambda data, addr, now: None  # type: ignore[method-assign]


def the_connection_endpoint(session: WebTransportSession) -> Endpoint:
    return session._conn.endpoint


async def test_defaults_are_14_s_with_a_keepalive_every_third_of_what_a_browser_waits() -> None:
    limits = TransportLimits()
    assert limits.idle_timeout_s == IDLE_S
    # Chromium's QUIC stack idles out 1 s before the negotiated timeout: it waits 13 s.
    assert limits.keepalive_interval_s == (IDLE_S - 1.0) / 3 == keepalive_for(IDLE_S)
    # Chromium's WebTransport idles out after 30 s (29 s) without traffic by default.
    assert limits.keepalive_interval_s <= 10.0


def test_the_keepalive_is_a_third_of_what_a_browser_waits() -> None:
    # a 3 s idle timeout: the page gives up after 2 s
    assert keepalive_for(3.0) == 2.0 / 3
    assert keepalive_for(30.0) == 29.0 / 3
    # at 1 s or less Chromium keeps the negotiated timeout
    assert keepalive_for(0.9) == 0.9 / 3
    assert keepalive_for(1.0) == 1.0 / 3


@aioquic_only(
    "qh3 2.1's idle timer is its core's own: our first packet after a receipt restarts it (RFC 9000 allows it)"
)
async def test_server_notices_a_silent_client_despite_its_own_pings(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            await peer.started.wait()
            await trio.sleep(1.0)  # the handshake's stragglers are acknowledged
            # The client's last word: a datagram the server does not answer (it only ACKs),
            # so the server's next ack-eliciting packet is its keepalive PING, 5 s later.
            session.send_datagram(b"last")
            await peer.received.wait()
            silent_at = trio.current_time()
            blackhole(the_connection_endpoint(session))
            with trio.fail_after(IDLE_S * 3):
                await peer.ended.wait()
            assert peer.ended_at is not None
            noticed_after = peer.ended_at - silent_at
            assert peer.session is not None and peer.session.end == IdleTimeout()
            # Before the fix the PING restarted the timer: 4.7 + 14 = 18.7 s.
            assert IDLE_S - 0.1 <= noticed_after <= IDLE_S + SLACK_S, noticed_after
        nursery.cancel_scope.cancel()


@aioquic_only(
    "qh3 2.1's idle timer is its core's own: our first packet after a receipt restarts it (RFC 9000 allows it)"
)
async def test_client_notices_a_silent_server_despite_its_own_pings(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            await peer.started.wait()
            await trio.sleep(1.0)
            # The server's last word: a datagram the client only ACKs (nothing of the
            # client's is unacknowledged), so its next ack-eliciting packet is its PING.
            assert peer.session is not None
            peer.session.send_datagram(b"last")
            assert await session.receive_datagram() == b"last"
            silent_at = trio.current_time()
            assert server.endpoint is not None
            blackhole(server.endpoint)
            with trio.fail_after(IDLE_S * 3):
                await session.wait_closed()
            noticed_after = trio.current_time() - silent_at
            assert session.end == IdleTimeout()
            # Before the fix the PING restarted the timer: 4.7 + 14 = 18.7 s.
            assert IDLE_S - 0.1 <= noticed_after <= IDLE_S + SLACK_S, noticed_after
        nursery.cancel_scope.cancel()


async def test_a_live_idle_peer_stays_connected(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    # Two minutes of virtual silence at the defaults: the keepalives hold both ends.
    peer = Peer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            await peer.started.wait()
            await trio.sleep(120)
            assert session.end is None
            assert peer.session is not None and peer.session.end is None
            session.send_datagram(b"ask")
            with trio.fail_after(1):
                assert await session.receive_datagram() == b"answer"
        nursery.cancel_scope.cancel()


async def test_through_the_proxy_an_idle_peer_stays_and_a_blackout_is_noticed_on_both_sides(
    dev_cert: TlsCredentials,
) -> None:
    # Real time, a 1 s idle timeout (keepalive every third): three timeouts of silence keep
    # the session; a blackout at the proxy ends it on both sides about one timeout later.
    idle_s = 1.0
    limits = TransportLimits(idle_timeout_s=idle_s, keepalive_interval_s=idle_s / 3)
    peer = Peer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)}, limits=limits)
        host, port = base.removeprefix("https://").split(":")
        async with open_udp_proxy((host, int(port))) as proxy:
            async with connect_webtransport(
                proxy.via(base + "/s"), server_certificate_hashes=[dev_cert.sha256], limits=limits
            ) as session:
                await peer.started.wait()
                with trio.move_on_after(3 * idle_s):
                    await session.wait_closed()
                assert session.end is None
                assert peer.session is not None and peer.session.end is None

                proxy.pause()
                paused_at = trio.current_time()
                with trio.fail_after(5 * idle_s):
                    await session.wait_closed()
                    client_after = trio.current_time() - paused_at
                    await peer.ended.wait()
                assert peer.ended_at is not None
                server_after = peer.ended_at - paused_at
                assert session.end == IdleTimeout()
                assert peer.session.end == IdleTimeout()
                # The last packet arrived at most a keepalive interval before the blackout.
                for noticed_after in (client_after, server_after):
                    assert idle_s - idle_s / 3 - 0.1 <= noticed_after <= idle_s + 0.5, (
                        client_after,
                        server_after,
                    )
        nursery.cancel_scope.cancel()


async def test_a_client_whose_server_stops_listening_ends_within_a_second_not_the_idle_timeout(
    dev_cert: TlsCredentials,
) -> None:
    # The proxy between them closes its socket, as a killed server process would: the
    # client's next packets get ICMP port unreachable, which its connected socket reports;
    # with no packet from the server within UNREACHABLE_CONFIRM_S the session ends.
    limits = TransportLimits(idle_timeout_s=60.0, keepalive_interval_s=0.3)
    peer = Peer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)}, limits=limits)
        host, port = base.removeprefix("https://").split(":")
        proxy = UdpProxy(
            (host, int(port)),
            seed=None,
            queue_datagrams=netfault.QUEUE_DATAGRAMS,
            queue_bytes=netfault.QUEUE_BYTES,
            max_flows=netfault.MAX_FLOWS,
        )
        proxying = trio.CancelScope()

        async def run_proxy(task_status: trio.TaskStatus[object]) -> None:
            with proxying:
                await proxy.run(task_status=task_status)

        await nursery.start(run_proxy)
        async with connect_webtransport(
            proxy.via(base + "/s"), server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await peer.started.wait()
            proxying.cancel()  # its sockets close: nobody listens on the client's server port
            gone_at = trio.current_time()
            with trio.fail_after(10):  # far below the 60 s idle timeout
                await session.wait_closed()
            noticed_after = trio.current_time() - gone_at
            assert isinstance(session.end, ConnectionLost)
            assert session.end.reason == "peer unreachable" and not session.end.by_peer
            assert noticed_after >= UNREACHABLE_CONFIRM_S
        nursery.cancel_scope.cancel()


async def test_a_stray_port_unreachable_does_not_end_a_connection_whose_server_answers(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    # No keepalives: only the PING sent on the report can bring an answer in time.
    limits = TransportLimits(idle_timeout_s=60.0, keepalive_interval_s=None)
    peer = Peer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await peer.started.wait()
            await trio.sleep(5)  # nothing is in flight any more: the connection is quiet
            session._conn.peer_unreachable(trio.current_time())  # as if an ICMP came
            await trio.sleep(10 * UNREACHABLE_CONFIRM_S)
            assert session.end is None
        nursery.cancel_scope.cancel()
