"""Per-connection packet counters for loss telemetry, read from aioquic's loss recovery, and
aioquic's RTT put right.

aioquic 1.7.2 keeps no counters, so two of its internals are used, both cheap:

* ``QuicConnection._packet_number``: the next packet number. aioquic numbers the packets of
  every packet number space with one counter, so it equals the packets sent so far (it is reset
  only by an incompatible version negotiation, before any data flows). Read, never written.
* ``QuicConnection._loss`` (a ``QuicPacketRecovery``): its class is swapped for a subclass
  whose ``_on_packets_lost`` counts the packets declared lost before doing what it always does.
  Only losses found by the RFC 9002 packet and time thresholds (``congestion_event=True``) are
  counted; a probe timeout that retransmits early is counted apart, as it implies no loss.

The RTT: aioquic floors a sample at 1 ms and takes the ACK delay the peer reports off only
above its least sample plus that delay, so on a path under 1 ms it takes none off. A receiver
that holds its ACKs (the media ACK policy, docs/decisions.md) then reads as that much path, in
aioquic's loss detection, probe timeout and pacer and in the MH's estimate. The subclass's
``on_ack_received`` redoes aioquic's RTT update with the delay taken off, down to the least
sample (RFC 9002 §5.3), whenever the largest packet acknowledged brings a sample.

For the MH's bandwidth estimate (docs/architecture.md §4.3) the same subclass counts the bytes
of in-flight packets sent, acknowledged and declared lost (``on_packet_sent``,
``on_ack_received``), keeps the RTT samples of the last RECENT_RTT_S and the bytes in flight
right after the last ACK that gave one; a sample reads those, the RTT figures, the congestion
window and the bytes in flight that aioquic keeps, and the stream bytes written but never sent
yet.

Incoming loss is estimated as RTP receivers do (RFC 3550 §6.4.1): the peer's packets expected
(from the largest 1-RTT packet number received) against the datagrams the connection received.
Once the handshake is done a datagram carries exactly one 1-RTT packet, so over an interval
the difference of the two is what went missing; see :meth:`TransportStats.loss_since`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Final

import attrs
from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

_ONE_RTT: Final = tls.Epoch.ONE_RTT
# The window of ``TransportStats.rtt_recent_ms``, and a bound on the samples it keeps.
RECENT_RTT_S: Final = 0.1
RECENT_RTT_SAMPLES: Final = 64


class RecentMin:
    """The smallest of the values pushed within RECENT_RTT_S of the newest: a monotonic queue
    of (time, value), increasing in value, at most RECENT_RTT_SAMPLES long."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: deque[tuple[float, float]] = deque(maxlen=RECENT_RTT_SAMPLES)

    def push(self, now: float, value: float) -> None:
        kept = self._kept
        while kept and kept[-1][1] >= value:
            kept.pop()
        kept.append((now, value))
        while kept[0][0] < now - RECENT_RTT_S:
            kept.popleft()

    def least(self, default: float) -> float:
        return self._kept[0][1] if self._kept else default


class CountingRecovery(QuicPacketRecovery):
    """aioquic's loss recovery, counting what it declares lost. Installed by
    :func:`count_losses` on an existing instance (aioquic builds its own in ``__init__``)."""

    dt_lost = 0  # packets declared lost by the packet or time threshold
    dt_probed = 0  # packets retransmitted early on a probe timeout (not a loss)
    dt_bytes_sent = 0  # bytes of in-flight packets sent
    dt_bytes_acked = 0  # bytes of in-flight packets acknowledged
    dt_bytes_lost = 0  # bytes of in-flight packets declared lost (or probed)
    dt_raw_min = math.inf  # the least RTT sample, ACK delay included
    # The RTT samples of the last RECENT_RTT_S; when the last ACK that gave one came and the
    # bytes in flight right after it (a queue on the path keeps them up, a burst just sent
    # is not in them).
    dt_recent_rtts: RecentMin
    dt_acked_in_flight: tuple[float, int]

    def on_packet_sent(self, *, packet: QuicSentPacket, space: QuicPacketSpace) -> None:
        if packet.in_flight:
            self.dt_bytes_sent += packet.sent_bytes
        super().on_packet_sent(packet=packet, space=space)

    def on_ack_received(
        self, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
    ) -> None:
        # What left the flight here was acknowledged, or declared lost (counted apart).
        before, lost = self._cc.bytes_in_flight, self.dt_bytes_lost
        # aioquic takes an RTT sample when the largest packet acknowledged is newly so and any
        # newly acknowledged is ack-eliciting; this redoes it when that largest one is (nearly
        # always: ACK-only packets go mostly to peers that send more than they receive).
        largest = space.sent_packets.get(ack_rangeset.bounds().stop - 1)
        rtt = (self._rtt_initialized, self._rtt_smoothed, self._rtt_variance)
        super().on_ack_received(
            ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space
        )
        gone = before - self._cc.bytes_in_flight - (self.dt_bytes_lost - lost)
        if gone > 0:
            self.dt_bytes_acked += gone
        if largest is not None and largest.is_ack_eliciting and largest.sent_time is not None:
            raw = now - largest.sent_time
            self._dt_sample(raw, min(ack_delay, self.max_ack_delay), rtt, now)

    def _dt_sample(
        self, raw: float, ack_delay: float, rtt: tuple[bool, float, float], now: float
    ) -> None:
        """Redo aioquic's RTT update with the sample ``raw`` less the peer's ACK delay, down
        to the least raw sample (RFC 9002 §5.3 without aioquic's 1 ms floor, under which it
        takes off none: a receiver that holds its ACKs, docs/decisions.md, read as path);
        ``rtt``: aioquic's (initialized, smoothed, variance) before the ACK."""
        floor = self.dt_raw_min = min(self.dt_raw_min, raw)
        sample = self._rtt_latest = max(raw - ack_delay, floor)
        initialized, smoothed, variance = rtt
        if initialized:
            variance += (abs(smoothed - sample) - variance) / 4
            smoothed += (sample - smoothed) / 8
        else:
            smoothed, variance = sample, sample / 2
        self._rtt_smoothed, self._rtt_variance = smoothed, variance
        self._pacer.update_rate(congestion_window=self._cc.congestion_window, smoothed_rtt=smoothed)
        rtts = self.__dict__.get("dt_recent_rtts")
        if rtts is None:
            rtts = self.dt_recent_rtts = RecentMin()
        rtts.push(now, sample)
        self.dt_acked_in_flight = (now, self._cc.bytes_in_flight)

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
        self.dt_bytes_lost += sum(p.sent_bytes for p in packets if p.in_flight)
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
    """Make ``quic``'s loss recovery count lost packets and take the peer's ACK delay off its
    RTT samples (idempotent)."""
    recovery = quic._loss
    if not isinstance(recovery, CountingRecovery):
        # Same layout (no __slots__, attributes only added with class defaults or, for
        # dt_recent_rtts, at first use): a safe swap.
        recovery.__class__ = CountingRecovery


@attrs.frozen(slots=True, kw_only=True)
class TransportStats:
    """Cumulative packet counts of one QUIC connection, as seen by this end.

    ``packets_sent`` / ``packets_lost``: our packets, and those QUIC's loss detection declared
    lost (RFC 9002 thresholds). ``packets_probed``: packets retransmitted early on a probe
    timeout. ``datagrams_received``: datagrams the endpoint handed to this connection.
    ``peer_packets_expected``: one more than the largest 1-RTT packet number received from the
    peer (0 before any). ``rtt_ms``: the smoothed round-trip time; ``rtt_latest_ms`` QUIC's
    last sample, ``rtt_recent_ms`` the smallest sample within RECENT_RTT_S of the newest (a
    stall of this end's event loop inflates some samples, a queue on the path all of them),
    ``rtt_min_ms`` the smallest over the connection (0.0 before any sample). The samples are
    less the ACK delay the peer reports: on aioquic down to the least sample
    (``CountingRecovery``); qh3 takes it off by aioquic's own rule, so a receiver that holds
    its ACKs still reads as a queue on a path under 1 ms there (docs/decisions.md).
    ``congestion_window`` and ``bytes_in_flight``: the congestion controller's;
    ``bytes_in_flight_after_ack`` those right after the last ACK that gave an RTT sample, if it
    came within RECENT_RTT_S: what a queue on the path holds, without the burst sent since
    (else ``bytes_in_flight``: nothing came back). ``bytes_sent`` / ``bytes_acked`` /
    ``bytes_lost``: of in-flight packets (whole UDP payloads). ``bytes_unsent``: stream bytes
    written and not sent yet (reset streams left out).
    """

    packets_sent: int = 0
    packets_lost: int = 0
    packets_probed: int = 0
    datagrams_received: int = 0
    peer_packets_expected: int = 0
    rtt_ms: float = 0.0
    rtt_latest_ms: float = 0.0
    rtt_recent_ms: float = 0.0
    rtt_min_ms: float = 0.0
    congestion_window: int = 0
    bytes_in_flight: int = 0
    bytes_in_flight_after_ack: int = 0
    bytes_sent: int = 0
    bytes_acked: int = 0
    bytes_lost: int = 0
    bytes_unsent: int = 0

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


def after_ack(acked: tuple[float, int] | None, in_flight: int, now: float) -> int:
    """``TransportStats.bytes_in_flight_after_ack`` from the last (time, bytes in flight)
    after an ACK."""
    if acked is None or acked[0] < now - RECENT_RTT_S:
        return in_flight
    return acked[1]


def read_stats(quic: QuicConnection, datagrams_received: int, now: float) -> TransportStats:
    """A sample of ``quic``'s counters at ``now`` (zeros for losses unless
    :func:`count_losses` ran)."""
    recovery = quic._loss
    rtts: RecentMin | None = getattr(recovery, "dt_recent_rtts", None)
    in_flight = recovery.bytes_in_flight
    space = getattr(quic, "_spaces", {}).get(_ONE_RTT)
    largest = -1 if space is None else space.largest_received_packet
    return TransportStats(
        packets_sent=quic._packet_number,
        packets_lost=getattr(recovery, "dt_lost", 0),
        packets_probed=getattr(recovery, "dt_probed", 0),
        datagrams_received=datagrams_received,
        peer_packets_expected=largest + 1,
        rtt_ms=recovery._rtt_smoothed * 1000,
        rtt_latest_ms=recovery._rtt_latest * 1000,
        rtt_min_ms=0.0 if recovery._rtt_min == math.inf else recovery._rtt_min * 1000,
        congestion_window=recovery.congestion_window,
        bytes_in_flight=in_flight,
        bytes_in_flight_after_ack=after_ack(
            getattr(recovery, "dt_acked_in_flight", None), in_flight, now
        ),
        bytes_sent=getattr(recovery, "dt_bytes_sent", 0),
        bytes_acked=getattr(recovery, "dt_bytes_acked", 0),
        bytes_lost=getattr(recovery, "dt_bytes_lost", 0),
        bytes_unsent=sum(
            max(0, s.sender._buffer_stop - s.sender.highest_offset)
            for s in quic._streams.values()
            # (aioquic's flag is True only once nothing is left to send; a reset stream
            # sends nothing more)
            if not s.sender.buffer_is_empty and s.sender._reset_error_code is None
        ),
        rtt_recent_ms=0.0 if rtts is None else rtts.least(0.0) * 1000,
    )
