"""The qh3 flavour of the driver's QUIC connection: the same ``dt_*`` surface as _quic.py.

qh3 2.1 keeps streams, flow control, loss recovery and congestion control in its native core
(Rust), behind a Python facade: none of the aioquic internals _quic.py overrides exists, so
this class reads the facade and a few read-only properties of the core instead. What it
cannot do (docs/architecture.md §5.1 bounds that depend on it) is listed where it falls short:

- Receive credit: qh3 raises MAX_STREAM_DATA by itself as data arrives; credit does not wait
  for the application to read (``consumed``/``window`` are kept, unused).
- Acknowledged bytes: ``dt_unacked`` counts bytes not yet sent; bytes in flight and not yet
  acknowledged are invisible to it.
- The peer's per-stream credit is not exposed (``dt_send_credit`` reads 0).
- The ACK delay, ``max_udp_payload_size`` and loopback packet sizes are fixed by qh3. The
  probe timeout's backoff cap (docs/protocol.md §13) is approximated with PINGs, once the
  handshake is complete: the handshake's retransmissions back off at qh3's own pace.
- DATAGRAM frames are not held by the congestion window and have no queue to bound.

The handshake with an aioquic client: aioquic pads its Initial datagram with zero bytes after
the packet; qh3's facade hands its core only the packet, so the core's anti-amplification
budget counts the packet, not the datagram, and the server's second flight does not fit
(its packet builder raises). Such a datagram is handed to the core whole (``receive_datagram``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import qh3.quic.connection as _qc
from qh3 import _hazmat
from qh3.h3.connection import H3Connection as _H3Connection
from qh3.h3.connection import Setting
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.packet import QuicErrorCode

from ._certs import TlsCredentials
from ._config import PTO_BACKOFF_CAP_S, TransportLimits
from ._stats import RecentMin, TransportStats, after_ack
from ._tls import apply_client_trust, configuration_fields

NetworkAddress = Any
# Peer streams qh3 reported finished and the driver has not yet asked about (see
# _FinishedStreams); beyond this many the oldest are forgotten.
MAX_FINISHED_REMEMBERED = 4096

# qh3's facade splits datagrams with this module global (swapped for one call below).
_FACADE_GLOBALS = vars(_qc)
_real_pull = _FACADE_GLOBALS["_pull_quic_header"]


def _padded_end(data: bytes, cid_length: int) -> bool:
    """Whether ``data`` is one QUIC packet followed by zero bytes only (aioquic's Initial)."""
    try:
        end = _real_pull(data, 0, cid_length)[9]
    except ValueError:
        return False
    return bool(0 < end < len(data) and data.count(0, end) == len(data) - end)


class _FinishedStreams(set[int]):
    """qh3's set of the local streams it has created. Its core's ``stream_finished`` event
    discards the stream's id here for every stream, local or the peer's: the peer's are
    remembered so the driver can tell when QUIC is done with them."""

    def __init__(self, is_client: bool) -> None:
        super().__init__()
        self.peer_bit = 1 if is_client else 0  # the low bit of the peer's stream ids
        self.finished_peer: dict[int, None] = {}

    def discard(self, stream_id: object) -> None:
        if isinstance(stream_id, int) and stream_id & 1 == self.peer_bit:
            finished = self.finished_peer
            finished[stream_id] = None
            if len(finished) > MAX_FINISHED_REMEMBERED:
                del finished[next(iter(finished))]
        super().discard(stream_id)


def _ignore_cid(cid: bytes) -> None:
    pass


class Qh3Connection(_qc.QuicConnection):
    def __init__(self, *, consumed: Any, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dt_closed_by_peer = False
        self.dt_idle_timeout = False
        self._dt_consumed = consumed
        self._dt_window = window
        self._dt_cid_issued = _ignore_cid  # qh3 reports issued IDs as events, in time
        self._created_local_stream_ids = _FinishedStreams(self._is_client)
        self.dt_packets_sent = 0
        self.dt_bytes_sent = 0
        self.dt_rtt_min = math.inf
        self.dt_pto_backoff_cap_s = PTO_BACKOFF_CAP_S
        self.dt_probes = 0  # PINGs sent for the backoff cap
        self._dt_probe_at: float | None = None
        self._dt_last_sent = -math.inf
        self._dt_rtt_last: float | None = None
        # As _stats.CountingRecovery keeps them: recent RTT samples, and the bytes in flight
        # right after the last datagram that gave one.
        self.dt_recent_rtts = RecentMin()
        self.dt_acked_in_flight: tuple[float, int] | None = None

    # --- the calls the driver makes, as aioquic's ------------------------------------------
    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        closing = self._close_event is not None
        if (
            not self._is_client
            and not self._handshake_complete
            and _padded_end(data, self._configuration.connection_id_length)
        ):
            _FACADE_GLOBALS["_pull_quic_header"] = _whole_first_packet(len(data))
            try:
                super().receive_datagram(data, addr, now)
            finally:
                _FACADE_GLOBALS["_pull_quic_header"] = _real_pull
        else:
            super().receive_datagram(data, addr, now)
        core = self._core
        if core is None:
            return
        if not closing and self._close_event is not None and core.local_error is None:
            self.dt_closed_by_peer = True
        rtt = core.latest_rtt
        if rtt and rtt != self._dt_rtt_last:  # a new sample (an equal one is not told apart)
            self._dt_rtt_last = rtt
            self.dt_rtt_min = min(self.dt_rtt_min, rtt)
            self.dt_recent_rtts.push(now, rtt)
            self.dt_acked_in_flight = (now, core.bytes_in_flight)

    def _learn_remote_source_cid(self, data: bytes) -> None:
        # qh3 2.1 skips an empty Source Connection ID, so a client using zero-length IDs
        # (Chromium does) fails its transport-parameter check: initial_source_connection_id
        # "does not match" the None left in place. An empty ID is learnt as it is.
        super()._learn_remote_source_cid(data)
        tls = self._tls
        if self._handshake_complete or tls is None or tls.remote_initial_source_connection_id:
            return
        try:
            header = _real_pull(data, 0, self._configuration.connection_id_length)
        except ValueError:
            return
        if header[0] and header[4] == b"":  # a long header (a version) with an empty source ID
            tls.remote_initial_source_connection_id = b""

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        probe = self._dt_probe_at
        return probe if probe is not None and (timer is None or probe < timer) else timer

    def handle_timer(self, now: float) -> None:
        core = self._core
        timer = core.get_timer() if core is not None else None
        if (
            timer is not None
            and timer[0] == "idle"
            and now >= timer[1]
            and self._close_event is None
        ):
            self.dt_idle_timeout = True
        super().handle_timer(now)
        self._dt_cap_pto_backoff(now)

    def _dt_cap_pto_backoff(self, now: float) -> None:
        # qh3's probe-timeout count is read-only, and its backoff doubles without bound. While
        # it backs off, a PING goes out every dt_pto_backoff_cap_s, so a path back from a
        # blackout is probed within the cap (docs/protocol.md §13); an ACK ends it. qh3 sends
        # a PING in 1-RTT packets only: during the handshake its own retransmissions pace it.
        core = self._core
        if (
            core is None
            or core.pto_count == 0
            or self._close_event is not None
            or not self._handshake_complete
        ):
            self._dt_probe_at = None
            return
        if self._dt_probe_at is None:  # backing off since the last packet sent
            self._dt_probe_at = max(now, self._dt_last_sent + self.dt_pto_backoff_cap_s)
        if now >= self._dt_probe_at:
            self.send_ping(0)
            self.dt_probes += 1
            self._dt_probe_at = now + self.dt_pto_backoff_cap_s

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        core = self._core
        if core is None or self._quic_logger is not None:
            out = super().datagrams_to_send(now)
        else:  # qh3's own loop without its logging, which parses every packet's header even
            out = []  # with no logger (about 1 % of an MH's CPU)
            poll = core.poll_transmit
            try:
                while (transmit := poll(now)) is not None:
                    out.append((transmit[0], transmit[1]))
            except RuntimeError as exc:  # as qh3's _call_core
                raise _qc.QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
        if out:
            self._dt_last_sent = now
        self.dt_packets_sent += len(out)
        self.dt_bytes_sent += sum(len(d) for d, _ in out)
        return out

    def send_ping(self, uid: int) -> None:
        # aioquic ignores a PING on a closing connection; qh3's core raises.
        if self._close_event is None:
            try:
                super().send_ping(uid)
            except _qc.QuicConnectionError:
                pass  # the core has closed: its next event says so

    def get_peer_address(self) -> NetworkAddress | None:
        # Absent in qh3, whose _remote_addr does not follow a migration: the core's path does.
        return None if self._core is None else self._core.active_path[2]

    # --- the dt_* surface (see _quic.py) ----------------------------------------------------
    def dt_write_offset(self, stream_id: int) -> int | None:
        return None  # qh3 keeps its send buffers in Rust: a watch resolves at the next flush

    def dt_sent_offset(self, stream_id: int) -> int | None:
        return None

    def dt_unacked(self, stream_id: int) -> int:
        return 0 if self._core is None else self.get_send_buffer_size(stream_id)

    def dt_send_credit(self, stream_id: int) -> int:
        return 0  # the core's stream_credit events are dropped by qh3's facade

    def dt_credit_due(self, stream_id: int, consumed: int) -> bool:
        return False  # qh3 grants credit itself

    def dt_stream_gone(self, stream_id: int) -> bool:
        ids = self._created_local_stream_ids
        assert isinstance(ids, _FinishedStreams)
        if stream_id & 1 == ids.peer_bit:
            return ids.finished_peer.pop(stream_id, 0) is None
        return stream_id not in ids

    def dt_queue_datagram(self, payload: bytes, queue_size: int) -> int:
        self.send_datagram_frame(payload)  # qh3 keeps no queue: it leaves at the next flush
        return 0

    def dt_can_open(self, unidirectional: bool) -> bool:
        # qh3 refuses a stream beyond the peer's MAX_STREAMS (ValueError, after taking its id)
        # where aioquic holds it: the session raises StreamLimitExceeded instead.
        if self._core is None:
            return False
        limits = self._core.stream_limits  # (peer bidi, peer uni, ours bidi, ours uni)
        return bool(limits[1] > limits[3] if unidirectional else limits[0] > limits[2])

    def dt_uni_stream_credit(self) -> int:
        if self._core is None:
            return 0
        limits = self._core.stream_limits  # (peer bidi, peer uni, ours bidi, ours uni)
        return int(limits[1] - limits[3])

    def dt_peer_certificate_sha256(self) -> bytes | None:
        cert = self.get_peercert()
        return None if cert is None else hashlib.sha256(cert.public_bytes()).digest()

    def dt_ack_due(self) -> float | None:
        timer = self._core.get_timer() if self._core is not None else None
        return timer[1] if timer is not None and timer[0].startswith("ack_") else None

    def dt_apply_limits(self, limits: TransportLimits) -> None:
        pass  # the ACK delay and max_udp_payload_size are fixed by qh3

    def dt_loopback_packets(self) -> None:
        pass  # qh3 fixes the packet size when its core is created


def _whole_first_packet(length: int) -> Any:
    def pull(data: bytes, offset: int, cid_length: int) -> Any:
        header = _real_pull(data, offset, cid_length)
        return (*header[:9], length, *header[10:]) if offset == 0 else header

    return pull


class Qh3H3Connection(_H3Connection):
    """qh3 never sends SETTINGS_ENABLE_CONNECT_PROTOCOL; a WebTransport server must announce
    extended CONNECT (RFC 9220) before a client may use it."""

    def _get_local_settings(self) -> dict[int, int]:
        settings: dict[int, int] = super()._get_local_settings()
        settings[Setting.ENABLE_CONNECT_PROTOCOL] = 1
        return settings


def warm_up() -> None:
    """qh3's native crypto initialises itself on the first key exchange of the process (about
    40 ms on a two-core machine): done once when the core is loaded, not in the first
    handshake a client waits for."""
    _hazmat.X25519KeyExchange().public_key()


def qh3_configuration(
    limits: TransportLimits,
    *,
    is_client: bool,
    tls: TlsCredentials | None = None,
    server_name: str | None = None,
    cafile: str | None = None,
    verify: bool = True,
) -> QuicConfiguration:
    config = QuicConfiguration(**configuration_fields(limits, is_client, server_name))
    if tls is not None:  # qh3 takes PEM, not cryptography objects
        config.load_cert_chain(tls.certificate_pem, tls.private_key_pem)
    apply_client_trust(config, is_client=is_client, cafile=cafile, verify=verify)
    return config


def read_qh3_stats(quic: Qh3Connection, datagrams_received: int, now: float) -> TransportStats:
    """TransportStats from qh3's core. Not available there: the peer's largest packet number
    (left 0: the incoming half of the loss estimate is 0). Estimated: bytes lost (packets lost
    times the mean datagram sent) and bytes acknowledged (sent, less in flight and lost; ACK-only
    packets, which are never in flight, count as acknowledged); the recent RTTs, and the bytes
    in flight with them, are sampled once per datagram received, not per ACK."""
    core = quic._core
    if core is None:
        return TransportStats(datagrams_received=datagrams_received)
    sent, packets = quic.dt_bytes_sent, quic.dt_packets_sent
    lost = core.loss_total * sent // packets if packets else 0
    return TransportStats(
        packets_sent=quic.dt_packets_sent,
        packets_lost=core.loss_total,
        packets_probed=core.pto_total,
        datagrams_received=datagrams_received,
        rtt_ms=(core.smoothed_rtt or 0.0) * 1000,
        rtt_latest_ms=(core.latest_rtt or 0.0) * 1000,
        rtt_min_ms=0.0 if quic.dt_rtt_min == math.inf else quic.dt_rtt_min * 1000,
        congestion_window=core.congestion_window,
        bytes_in_flight=core.bytes_in_flight,
        bytes_in_flight_after_ack=after_ack(quic.dt_acked_in_flight, core.bytes_in_flight, now),
        bytes_sent=sent,
        bytes_acked=max(0, sent - core.bytes_in_flight - lost),
        bytes_lost=lost,
        bytes_unsent=quic.get_send_buffer_size(),
        rtt_recent_ms=quic.dt_recent_rtts.least(0.0) * 1000,
    )
