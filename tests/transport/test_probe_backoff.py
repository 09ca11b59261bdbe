"""The probe timeout's backoff is capped (docs/protocol.md §13, Liveness): during a blackout a
connection probes the path at least once per PTO_BACKOFF_CAP_S, on both the server's and the
client's side, so data sent during it arrives within the cap (plus a round trip) of the path
coming back; a dead peer is still ended by the idle timeout, with one probe per period, not a
storm.

Real QUIC on 127.0.0.1 with trio's MockClock and the default limits (14 s idle timeout), so
the times are exact: a loopback round trip takes no virtual time.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from aioquic.quic.configuration import QuicConfiguration

from darktower.transport import (
    Endpoint,
    IdleTimeout,
    Route,
    TlsCredentials,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
)
from darktower.transport._config import IDLE_TIMEOUT_S, PTO_BACKOFF_CAP_S
from darktower.transport._quic import CreditedQuicConnection

from .conftest import EndRecorder, start_server

# A blackout well past the uncapped backoff's reach (probes ~2, ~4, ~8 s in) and shorter than
# the idle timeout, so the connection survives it.
BLACKOUT_S = 12.0
# A round trip on loopback under the MockClock, with room for the timer's granularity.
RTT_S = 0.05
# The connection ends this late after the idle timeout at most (as in test_liveness.py).
SLACK_S = 0.5


class Blackout:
    """The endpoint's path goes dark and comes back: while ``on``, nothing it sends leaves
    (the instant of each send is recorded) and nothing that arrives is read."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.on = False
        self.sent_at: list[float] = []
        send, dispatch = endpoint.send, endpoint._dispatch

        def dark_send(data: bytes, addr: Any) -> None:
            if self.on:
                self.sent_at.append(trio.current_time())
            else:
                send(data, addr)

        def dark_dispatch(data: bytes, addr: Any, now: float) -> Any:
            return None if self.on else dispatch(data, addr, now)

        endpoint.send = dark_send  # type: ignore[method-assign]
        endpoint._dispatch = dark_dispatch  # type: ignore[method-assign]


async def _open_pair(
    sender: WebTransportSession, receiver: WebTransportSession
) -> tuple[WebTransportSendStream, WebTransportStream | WebTransportReceiveStream]:
    """A unidirectional stream from ``sender``, seen by ``receiver`` (its first bytes read)."""
    out = await sender.open_unidirectional_stream()
    await out.send_all(b"hello")
    incoming = await receiver.accept_stream()
    assert await incoming.receive_some() == b"hello"
    return out, incoming


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("prober", ["server", "client"])
async def test_a_blackout_is_probed_once_per_cap_and_data_resumes_within_cap_plus_rtt(
    dev_cert: TlsCredentials, autojump_clock: Any, prober: str
) -> None:
    peer = EndRecorder()
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as client:
            await peer.started.wait()
            assert peer.session is not None and server.endpoint is not None
            if prober == "server":
                sender, receiver, endpoint = peer.session, client, server.endpoint
            else:
                sender, receiver, endpoint = client, peer.session, client._conn.endpoint
            out, incoming = await _open_pair(sender, receiver)
            await trio.sleep(1.0)  # everything so far is acknowledged
            blackout = Blackout(endpoint)
            blackout.on = True
            started_at = trio.current_time()
            await out.send_all(b"during")  # lost: only the probes carry it again
            await trio.sleep(BLACKOUT_S)
            blackout.on = False
            back_at = trio.current_time()
            with trio.fail_after(PTO_BACKOFF_CAP_S + RTT_S):
                assert await incoming.receive_some() == b"during"
            resumed_after = trio.current_time() - back_at

            sent = [started_at, *blackout.sent_at, back_at]
            # Before the fix the gaps doubled: ~3.8 s, then a keepalive, then ~7.7 s.
            assert max(_gaps(sent)) <= PTO_BACKOFF_CAP_S + 0.01, _gaps(sent)
            # Not a storm: past the first doublings, at most about two probes per cap (a
            # keepalive PING every 5 s comes on top).
            assert len(blackout.sent_at) <= 2 * BLACKOUT_S / PTO_BACKOFF_CAP_S + 10
            assert resumed_after <= PTO_BACKOFF_CAP_S + RTT_S
            assert client.end is None and peer.session.end is None
        nursery.cancel_scope.cancel()


async def test_a_dead_peer_still_ends_at_the_idle_timeout_without_a_probe_storm(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    peer = EndRecorder()
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as client:
            await peer.started.wait()
            assert peer.session is not None and server.endpoint is not None
            out, _incoming = await _open_pair(peer.session, client)
            last, last_incoming = await _open_pair(client, peer.session)
            await trio.sleep(1.0)
            # The client's last word; then its host vanishes: the server probes a peer that
            # never answers.
            await last.send_all(b"last")
            assert await last_incoming.receive_some() == b"last"
            silent_at = trio.current_time()
            Blackout(client._conn.endpoint).on = True
            probes = Blackout(server.endpoint)
            probes.on = True
            await out.send_all(b"into the void")
            with trio.fail_after(IDLE_TIMEOUT_S * 2):
                await peer.ended.wait()
            assert peer.session.end == IdleTimeout()
            assert peer.ended_at is not None
            noticed_after = peer.ended_at - silent_at
            # The capped probes do not keep the peer alive (only its packets would).
            assert IDLE_TIMEOUT_S - 0.1 <= noticed_after <= IDLE_TIMEOUT_S + SLACK_S
            assert max(_gaps(probes.sent_at)) <= PTO_BACKOFF_CAP_S + 0.01
            assert len(probes.sent_at) <= 2 * IDLE_TIMEOUT_S / PTO_BACKOFF_CAP_S + 10
        nursery.cancel_scope.cancel()


def _probe_gaps(initial_rtt: float, probes: int) -> list[float]:
    """A client whose Initial is never answered (no socket: aioquic driven by hand): the gaps
    between its probes. Before the first RTT sample its PTO is twice ``initial_rtt``."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], initial_rtt=initial_rtt)
    quic = CreditedQuicConnection(configuration=config, consumed=lambda _sid: None, window=1)
    quic.connect(("127.0.0.1", 4433), now=0.0)
    assert quic.datagrams_to_send(now=0.0)
    sent = [0.0]
    for _ in range(probes):
        at = quic.get_timer()
        assert at is not None
        quic.handle_timer(now=at)
        assert quic.datagrams_to_send(now=at)  # the probe
        sent.append(at)
    return [round(gap, 6) for gap in _gaps(sent)]


def test_the_backoff_doubles_until_the_cap_and_a_pto_above_it_is_kept() -> None:
    # PTO 0.1 s: 0.1, 0.2, then 0.4 s for good (0.8 would exceed the 0.5 s cap).
    assert PTO_BACKOFF_CAP_S == 0.5
    assert _probe_gaps(0.05, 6) == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    # PTO 0.8 s, above the cap: neither doubled nor shortened.
    assert _probe_gaps(0.4, 4) == [0.8, 0.8, 0.8, 0.8]
