"""Per-connection packet counters for loss telemetry, read from aioquic's loss recovery.

aioquic 1.7.2 keeps no counters, so two of its internals are used, both cheap:

* ``QuicConnection._packet_number``: the next packet number. aioquic numbers the packets of
  every packet number space with one counter, so it equals the packets sent so far (it is reset
  only by an incompatible version negotiation, before any data flows). Read, never written.
* ``QuicConnection._loss`` (a ``QuicPacketRecovery``): its class is swapped for a subclass
  whose ``_on_packets_lost`` counts the packets declared lost before doing what it always does.
  Only losses found by the RFC 9002 packet and time thresholds (``congestion_event=True``) are
  counted; a probe timeout that retransmits early is counted apart, as it implies no loss.

Incoming loss is estimated as RTP receivers do (RFC 3550 §6.4.1): the peer's packets expected
(from the largest 1-RTT packet number received) against the datagrams the connection received.
Once the handshake is done a datagram carries exactly one 1-RTT packet, so over an interval
the difference of the two is what went missing; see :meth:`TransportStats.loss_since`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs
from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

_ONE_RTT: Final = tls.Epoch.ONE_RTT


class CountingRecovery(QuicPacketRecovery):
    """aioquic's loss recovery, counting what it declares lost. Installed by
    :func:`count_losses` on an existing instance (aioquic builds its own in ``__init__``)."""

    dt_lost = 0  # packets declared lost by the packet or time threshold
    dt_probed = 0  # packets retransmitted early on a probe timeout (not a loss)

    def _on_packets_lost(
        self,
        *,
        congestion_event: bool = True,
        now: float,
        packets: Iterable[QuicSentPacket],
        persistent_congestion: bool = False,
        space: QuicPacketSpace,
    ) -> None:
        if not isinstance(packets, list | tuple):
            packets = list(packets)
        if congestion_event:
            self.dt_lost += len(packets)
        else:
            self.dt_probed += len(packets)
        super()._on_packets_lost(
            congestion_event=congestion_event,
            now=now,
            packets=packets,
            persistent_congestion=persistent_congestion,
            space=space,
        )


def count_losses(quic: QuicConnection) -> None:
    """Make ``quic``'s loss recovery count lost packets (idempotent)."""
    recovery = quic._loss
    if not isinstance(recovery, CountingRecovery):
        # Same layout (no __slots__, attributes only added with class defaults): a safe swap.
        recovery.__class__ = CountingRecovery


@attrs.frozen(slots=True, kw_only=True)
class TransportStats:
    """Cumulative packet counts of one QUIC connection, as seen by this end.

    ``packets_sent`` / ``packets_lost``: our packets, and those QUIC's loss detection declared
    lost (RFC 9002 thresholds). ``packets_probed``: packets retransmitted early on a probe
    timeout. ``datagrams_received``: datagrams the endpoint handed to this connection.
    ``peer_packets_expected``: one more than the largest 1-RTT packet number received from the
    peer (0 before any). ``rtt_ms``: QUIC's smoothed round-trip time.
    """

    packets_sent: int = 0
    packets_lost: int = 0
    packets_probed: int = 0
    datagrams_received: int = 0
    peer_packets_expected: int = 0
    rtt_ms: float = 0.0

    def loss_since(self, earlier: TransportStats) -> float:
        """The fraction (0..1) of the packets of both directions lost between ``earlier`` and
        this sample: (ours lost + the peer's missing) / (ours sent + the peer's expected).
        0.0 when nothing was sent either way. Reordering and the handshake's coalesced
        packets can only hide losses in the incoming estimate, never invent them (clamped)."""
        sent = self.packets_sent - earlier.packets_sent
        lost = self.packets_lost - earlier.packets_lost
        expected = self.peer_packets_expected - earlier.peer_packets_expected
        missing = max(0, expected - (self.datagrams_received - earlier.datagrams_received))
        total = max(0, sent) + max(0, expected)
        if total <= 0:
            return 0.0
        return min(1.0, (max(0, lost) + missing) / total)


def read_stats(quic: QuicConnection, datagrams_received: int) -> TransportStats:
    """A sample of ``quic``'s counters (zeros for losses unless :func:`count_losses` ran)."""
    recovery = quic._loss
    space = getattr(quic, "_spaces", {}).get(_ONE_RTT)
    largest = -1 if space is None else space.largest_received_packet
    return TransportStats(
        packets_sent=quic._packet_number,
        packets_lost=getattr(recovery, "dt_lost", 0),
        packets_probed=getattr(recovery, "dt_probed", 0),
        datagrams_received=datagrams_received,
        peer_packets_expected=largest + 1,
        rtt_ms=recovery._rtt_smoothed * 1000,
    )
