"""The RTT a connection reports leaves out the ACK delay its peer reports
(``TransportStats.rtt_ms`` and ``rtt_recent_ms``, docs/architecture.md §4.3).

A media receiver holds a lone packet's ACK for MEDIA_ACK_DELAY_S (docs/decisions.md). aioquic's
own RTT sample keeps that delay on a path under 1 ms: it floors the sample at 1 ms and takes
the delay off only above the least sample plus the delay, so its loss detection, probe timeout
and pacer, and the MH's bandwidth estimate, would read it as path. The driver redoes that
update (``CountingRecovery``): a unit case on aioquic's recovery, and real QUIC on 127.0.0.1
to an aioquic client on the media ACK policy (aioquic server only: qh3 2.1 keeps aioquic's
rule in its Rust core, docs/decisions.md)."""

from __future__ import annotations

import contextlib
import statistics

import pytest
import trio
from aioquic import tls
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    connect_webtransport,
)
from darktower.transport._config import MEDIA_ACK_DELAY_S
from darktower.transport._stats import CountingRecovery

from ._cores import aioquic_only
from .conftest import EndRecorder, open_downstream, start_server

MESSAGES = 20


@aioquic_only("qh3 2.1 takes the ACK delay off by aioquic's rule: none on a path under 1 ms")
async def test_rtt_leaves_out_the_receivers_ack_delay(dev_cert: TlsCredentials) -> None:
    recorder = EndRecorder()

    async def drain(stream: WebTransportReceiveStream) -> None:
        with contextlib.suppress(trio.ClosedResourceError):  # the client closes at the end
            while await stream.receive_some():
                pass

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/r": Route(recorder)})
        async with connect_webtransport(
            base + "/r",
            server_certificate_hashes=[dev_cert.sha256],
            limits=TransportLimits().for_media(),
        ) as client:
            with trio.fail_after(10):
                await recorder.started.wait()
                server = recorder.session
                assert server is not None
                out, incoming = await open_downstream(server, client)
                nursery.start_soon(drain, incoming)

                # Lone packets, each acknowledged MEDIA_ACK_DELAY_S after it arrives (the
                # pause paces the sender: each ACK has come back before the next packet).
                readings = []
                for _ in range(MESSAGES):
                    await out.send_all(b"m" * 200)
                    await trio.sleep(2 * MEDIA_ACK_DELAY_S)
                    readings.append(server.transport_stats())
            # A held ACK would read as the whole delay and more; a stall of this process (it
            # runs both ends) may add some. (The smoothed RTT takes a few samples to forget
            # the handshake's.)
            bound_ms = 0.8 * MEDIA_ACK_DELAY_S * 1000
            recent = [s.rtt_recent_ms for s in readings[MESSAGES // 2 :]]
            assert 0 < statistics.median(recent) < bound_ms, recent
            assert 0 < readings[-1].rtt_ms < bound_ms, readings[-1]
        nursery.cancel_scope.cancel()


def _acked(recovery: QuicPacketRecovery, space: QuicPacketSpace, rtt: float, delay: float) -> None:
    """Send a packet at a whole second and take its ACK ``rtt`` later, the peer's ACK delay
    ``delay``."""
    number = space.largest_acked_packet + 1  # (each packet is acknowledged before the next)
    now = float(number)
    packet = QuicSentPacket(
        epoch=tls.Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=now,
        sent_bytes=1200,
    )
    recovery.on_packet_sent(packet=packet, space=space)
    recovery.on_ack_received(
        ack_rangeset=RangeSet([range(number, number + 1)]),
        ack_delay=delay,
        now=now + rtt,
        space=space,
    )


def _recovery(kind: type[QuicPacketRecovery]) -> tuple[QuicPacketRecovery, QuicPacketSpace]:
    recovery = kind(
        congestion_control_algorithm="reno",
        initial_rtt=0.1,
        max_datagram_size=1200,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    return recovery, QuicPacketSpace(is_application_data=True)


@pytest.mark.parametrize("kind", [QuicPacketRecovery, CountingRecovery])
def test_a_held_ack_on_a_fast_path_is_not_a_queue(kind: type[QuicPacketRecovery]) -> None:
    """A 0.3 ms path: one ACK at once, then one held 25 ms. aioquic's own recovery keeps the
    25 ms in its sample (its least sample is floored at 1 ms); the driver's does not."""
    recovery, space = _recovery(kind)
    _acked(recovery, space, 0.0003, 0.0)
    _acked(recovery, space, 0.0253, 0.025)
    if kind is QuicPacketRecovery:
        assert recovery._rtt_latest > 0.025
        assert recovery._rtt_smoothed > 0.003
        return
    assert isinstance(recovery, CountingRecovery)
    assert recovery._rtt_latest == pytest.approx(0.0003)
    assert recovery.dt_recent_rtts.least(0.0) == pytest.approx(0.0003)
    assert recovery._rtt_smoothed == pytest.approx(0.0003)
    assert recovery._rtt_variance == pytest.approx(0.0003 / 2 * 3 / 4)
    # The pacer paces at the congestion window per smoothed RTT.
    assert recovery._pacer.packet_time == pytest.approx(
        1200 / (recovery.congestion_window / 0.0003)
    )


def test_what_is_taken_off_is_bounded() -> None:
    """Never below the least sample, nor more than the peer's max_ack_delay (25 ms)."""
    recovery, space = _recovery(CountingRecovery)
    _acked(recovery, space, 0.002, 0.0)
    _acked(recovery, space, 0.010, 0.020)  # a delay longer than the sample
    assert recovery._rtt_latest == pytest.approx(0.002)
    _acked(recovery, space, 0.080, 0.060)
    assert recovery._rtt_latest == pytest.approx(0.055)
    assert recovery._rtt_smoothed == pytest.approx(0.002 + (0.055 - 0.002) / 8)
