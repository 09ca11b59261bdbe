"""Limits and configuration of the transport: every bound is named here with its policy."""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

from ._certs import TlsCredentials

# --- Endpoint -------------------------------------------------------------------------------
# Admission of new connections (the rules and their order: _admission.py). A refused Initial
# is dropped and counted: the client retransmits it, then times out. Per-address caps count a
# peer by darktower.protocol.addresses.address_key (an IPv4 address, an IPv6 /64).
# New connections beyond this are refused. Bounds the per-connection state a flood of
# handshakes can create.
MAX_CONNECTIONS = 1000
# Handshakes in progress at once; beyond it new Initial packets are refused (as above).
MAX_HANDSHAKES_IN_PROGRESS = 100
# Connections one address may hold: a quarter of MAX_CONNECTIONS, so one client holding idle
# connections cannot keep others out, while a NAT with a few hundred participants still fits.
MAX_CONNECTIONS_PER_ADDRESS = 250
# Handshakes in progress per address, counted apart for validated (Retry) and unvalidated
# addresses. An unvalidated address beyond it gets a Retry; a validated one is refused (its
# Initial retransmitted later), so a burst of joins from one address is smoothed, not lost.
MAX_HANDSHAKES_PER_ADDRESS = 10
# From this many handshakes in progress, a new client must validate its address with a
# stateless Retry (one more round trip) before a connection is created, so a flood of spoofed
# Initials holds at most this many handshake slots. RETRY_ALWAYS asks it of every client;
# None never asks (an Initial beyond the caps is then refused).
RETRY_ALWAYS = 0
RETRY_THRESHOLD = 20
# A connection whose TLS handshake has not completed by then is closed.
HANDSHAKE_TIMEOUT_S = 10.0
# Server side: a connection with no live WebTransport session this long after its handshake
# (or after its last session ended) is closed with H3_NO_ERROR; keepalives do not extend it.
# None keeps such connections until the idle timeout.
NO_SESSION_TIMEOUT_S = 10.0
# Datagrams read from the socket per wake-up before the touched connections are flushed once.
# Bounds the work done between two checkpoints (fairness with the other tasks).
RECEIVE_BATCH = 64
# Largest UDP payload accepted from the socket (bigger ones are truncated by the kernel and
# then fail to decrypt, i.e. dropped).
MAX_UDP_PAYLOAD = 65_535

# --- Connection -----------------------------------------------------------------------------
# A peer from which nothing arrives for this long is gone: the connection is closed and its
# sessions end with IdleTimeout (docs/protocol.md §13, Liveness). Only packets received from
# the peer restart the timer, never our own (_quic.py), so our PINGs cannot keep a dead peer.
# 14 s, so that a peer gone is noticed within 15 s of its last packet with the timer's own
# lateness (a loaded event loop wakes tens of milliseconds late) included (docs/decisions.md).
IDLE_TIMEOUT_S = 14.0
# Chromium's QUIC stack, as a client, idles out this much before the negotiated idle timeout
# (when that is over 1 s): a browser waits 13 s for our packets where we wait 14 s for its.
BROWSER_IDLE_MARGIN_S = 1.0


def keepalive_for(idle_timeout_s: float) -> float:
    """The keepalive interval for ``idle_timeout_s``: a third of what a browser waits (it idles
    out BROWSER_IDLE_MARGIN_S early), so that a live one receives two PINGs before it gives up
    even when our timer wakes late (docs/protocol.md §13, Liveness)."""
    if idle_timeout_s > BROWSER_IDLE_MARGIN_S:
        return (idle_timeout_s - BROWSER_IDLE_MARGIN_S) / 3
    return idle_timeout_s / 3


# A PING is sent when nothing was received for this long: keepalive_for the idle timeout
# (4.3 s), at most 10 s, so that browsers (which idle out after 29 s without traffic by
# default) and NATs keep the connection.
KEEPALIVE_INTERVAL_S = keepalive_for(IDLE_TIMEOUT_S)
# Client side: a PING goes out when a flow of received packets (two within this interval)
# stops for this long, then after doubling pauses up to the keepalive interval while the
# silence lasts (docs/protocol.md §13, Liveness). A receive-only client sends nothing else, so
# after a NAT rebinding the server would keep sending to the old address until the next
# keepalive; the PING from the new address moves it within this interval plus a round trip.
# An idle connection costs a few PINGs after each burst, never more than one per interval.
# None: keepalives only (and no probe when keepalives are off).
SILENCE_PROBE_S = 0.15
# Client side: the kernel reports an ICMP port unreachable from the server (nobody listens on
# its port any more: the process is gone) on the client's connected socket; the connection
# then ends (ConnectionLost, "peer unreachable") unless a packet from the server arrives within
# this long. Far sooner than the idle timeout; an unauthenticated ICMP message alone cannot
# end a connection whose server still answers (docs/protocol.md §13, Liveness).
UNREACHABLE_CONFIRM_S = 1.0
# The probe timeout's backoff stops here (docs/protocol.md §13, Liveness). aioquic doubles the
# PTO after each unanswered probe without bound (RFC 9002 §6.2.1), so a path back after a
# blackout of a few seconds was probed again only seconds later. The doubling stops before the
# backed-off PTO would exceed this cap (_quic.py), so a silent path is probed at least once
# per cap (and at most about twice) and a path that returns carries data again within the cap
# plus a round trip. A PTO already above the cap (a slow path) is kept, never shortened. A dead
# peer costs a probe per period until the idle timeout above ends the connection; persistent
# congestion (measured with the PTO without backoff) and the anti-amplification limit (a
# blocked server arms no PTO) are unchanged.
PTO_BACKOFF_CAP_S = 0.5
# QUIC packet size; 1,200 is safe on every path, 1,452 saves CPU where the path allows.
PACKET_SIZE = 1200
# Kernel receive buffer asked for each UDP socket (the default, ~208 KiB, overflows in bursts
# of media: a datagram dropped there is a QUIC loss, a retransmission and a smaller window).
# Measured on loopback: the default holds 92 datagrams of 1,200 bytes, 4 MiB holds 3,640.
# Linux grants at most net.core.rmem_max (the sizes granted are logged once at start);
# what overflows is counted (udp_receive_overflows, on /metrics).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
# Kernel send buffer asked for each UDP socket (capped at net.core.wmem_max): a batched send
# (UDP GSO) hands the kernel up to 64 KiB at once, and a fan-out flushes many connections
# within one tick.
UDP_SEND_BUFFER = 4 * 1024 * 1024
# How long this side may hold an ACK (None: aioquic's 1 ms). A connection that mostly receives
# bulk media (a media processor's) acks once per max_ack_delay (25 ms, what QUIC advertises)
# instead of once per burst of packets: fewer packets both ways for the same data.
ACK_DELAY_S: float | None = None
# A media receiver's ACK policy (``TransportLimits.for_media``; docs/architecture.md §5.1):
# an ACK once MEDIA_ACK_THRESHOLD ack-eliciting packets are unacknowledged, at once for one
# out of order or after a gap, else MEDIA_ACK_DELAY_S after the first. Most then ride on the
# receiver's own media instead of leaving alone every millisecond. Below the max_ack_delay
# advertised (25 ms): the MH's estimate reads a lone packet's ACK delay as queuing on a
# loopback path, and must still see a quiet one (docs/decisions.md).
MEDIA_ACK_DELAY_S = 0.010
MEDIA_ACK_THRESHOLD = 10
# The ACK delay the MH asks of a media receiver that supports the ACK-frequency extension
# (``TransportLimits.peer_ack_delay_s``, docs/architecture.md §5.1): the max_ack_delay it
# advertises. The MH that asks knows the delay its estimate reads through; a qh3 MH does not
# ask (its core cannot write the frame, and its RTT keeps the delay; docs/decisions.md).
MEDIA_PEER_ACK_DELAY_S = 0.025
# The longest send delay a connection takes (``delay_sends``): below the MH's age bound for
# audio (docs/protocol.md §13).
MAX_SEND_DELAY_S = 0.15
# Packet size a server uses towards a peer on the loopback interface (its MTU is 64 KiB and
# nothing on the path fragments or drops by size) that advertised a max_udp_payload_size at
# least this large (``receive_packet_size``): a media processor on the MH's machine then
# receives a video frame in one packet instead of five or six. Other peers get PACKET_SIZE.
# Not more: aioquic writes a STREAM frame's length as a two-byte varint (< 16,384), so a larger
# packet would carry frames it cannot encode (tried: nothing gets through at 32 KiB).
LOOPBACK_PACKET_SIZE = 16_384
# Advertised max_datagram_frame_size; the browser drops datagrams silently without it.
MAX_DATAGRAM_FRAME_SIZE = 65_536
# WebTransport sessions per QUIC connection; a CONNECT beyond it is answered 429.
MAX_SESSIONS_PER_CONNECTION = 16

# --- CONNECT --------------------------------------------------------------------------------
# An extended CONNECT is checked before anything uses it; one that fails a check is answered
# 400 (counted as "bad_connect") and the connection goes on. :path must start with "/", be
# printable ASCII and at most this many bytes (query included).
MAX_CONNECT_PATH = 8 * 1024
# :authority must be a host[:port] of at most this many bytes (a DNS name is at most 253).
MAX_CONNECT_AUTHORITY = 300

# --- Session --------------------------------------------------------------------------------
# Open streams (both kinds, both directions) per session. A peer stream beyond it is rejected
# (STOP_SENDING/RESET_STREAM with WEBTRANSPORT_BUFFERED_STREAM_REJECTED); opening one locally
# beyond it raises StreamLimitExceeded.
MAX_STREAMS_PER_SESSION = 256
# Incoming streams not yet taken by accept_stream(); a stream arriving when it is full is
# rejected as above (the peer sees a reset, nothing is buffered).
ACCEPT_QUEUE_SIZE = 32
# Datagrams queued per direction. Full on receive: the oldest is dropped and counted (fresh
# media matters more than old). Full on send: the oldest unsent is dropped and counted.
DATAGRAM_QUEUE_SIZE = 64
# Bytes of datagrams queued on receive per session (a DATAGRAM frame may be up to
# MAX_DATAGRAM_FRAME_SIZE, so the count alone would let a peer park 64 x 64 KiB in a session
# nobody reads). Full: the oldest are dropped (counted) until the new one fits; one larger than
# the whole bound is dropped itself. Far above 64 data messages (docs/protocol.md §18.4) or
# 64 packets of padding.
DATAGRAM_QUEUE_BYTES = 256 * 1024

# --- Stream ---------------------------------------------------------------------------------
# send_all() waits while this many bytes of the stream are written but not yet acknowledged
# (QUIC flow control blocked by a peer that does not read shows up here too).
STREAM_SEND_HIGH_WATER = 256 * 1024
# Bytes the peer may send beyond what the application has read. Credit is granted as the
# application reads, never as data merely arrives, so a stream buffers at most this much.
STREAM_RECEIVE_WINDOW = 256 * 1024
# Largest chunk handed to QUIC by one send_all() step.
SEND_CHUNK = 64 * 1024
# receive_some() without max_bytes returns at most this much.
DEFAULT_RECEIVE_SIZE = 64 * 1024
# The QUIC library under the trio driver (_core.py): "aioquic" (the project's core),
# "qh3" (the optional extra, ``pip install darktower[qh3]``) or "auto" (qh3 when installed).
# The default can be moved by DARKTOWER_QUIC_CORE (the MC's and MH's --quic-core reads the
# same variable), so a test suite runs on either core unchanged.
QUIC_CORES = ("aioquic", "qh3", "auto")
QUIC_CORE = os.environ.get("DARKTOWER_QUIC_CORE") or "aioquic"


@attrs.frozen
class TransportLimits:
    """Every transport bound in one place (policies in the module constants above)."""

    max_connections: int = MAX_CONNECTIONS
    max_handshakes_in_progress: int = MAX_HANDSHAKES_IN_PROGRESS
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS
    retry_threshold: int | None = RETRY_THRESHOLD
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    no_session_timeout_s: float | None = NO_SESSION_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    keepalive_interval_s: float | None = KEEPALIVE_INTERVAL_S
    silence_probe_s: float | None = SILENCE_PROBE_S
    packet_size: int = PACKET_SIZE
    ack_delay_s: float | None = ACK_DELAY_S
    # An ACK as soon as this many ack-eliciting packets are unacknowledged, or one arrives
    # out of order (None: aioquic's one ACK per ack delay); aioquic core only.
    ack_eliciting_threshold: int | None = None
    # The ACK delay asked of a peer that supports the ACK-frequency extension, with an ACK
    # every MEDIA_ACK_THRESHOLD packets (None: nothing asked); aioquic core only.
    peer_ack_delay_s: float | None = None
    receive_packet_size: int | None = None  # advertised max_udp_payload_size (None: none)
    max_datagram_frame_size: int = MAX_DATAGRAM_FRAME_SIZE
    max_sessions_per_connection: int = MAX_SESSIONS_PER_CONNECTION
    max_streams_per_session: int = MAX_STREAMS_PER_SESSION
    accept_queue_size: int = ACCEPT_QUEUE_SIZE
    datagram_queue_size: int = DATAGRAM_QUEUE_SIZE
    datagram_queue_bytes: int = DATAGRAM_QUEUE_BYTES
    stream_send_high_water: int = STREAM_SEND_HIGH_WATER
    stream_receive_window: int = STREAM_RECEIVE_WINDOW
    udp_receive_buffer: int = UDP_RECEIVE_BUFFER
    udp_send_buffer: int = UDP_SEND_BUFFER
    quic_core: str = attrs.field(default=QUIC_CORE, validator=attrs.validators.in_(QUIC_CORES))

    def for_media(self) -> TransportLimits:
        """These limits with a media receiver's ACK policy (MEDIA_ACK_DELAY_S,
        MEDIA_ACK_THRESHOLD), unless an ACK policy is set already."""
        if self.ack_delay_s is not None or self.ack_eliciting_threshold is not None:
            return self
        return attrs.evolve(
            self, ack_delay_s=MEDIA_ACK_DELAY_S, ack_eliciting_threshold=MEDIA_ACK_THRESHOLD
        )


def _origins(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def parse_origins(text: str) -> frozenset[str] | None:
    """``"https://a.example, http://127.0.0.1:8080"`` → the set; an empty text → ``None``
    (any origin). Origins are compared exactly as browsers send them: scheme://host[:port]."""
    origins = frozenset(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    return origins or None


@attrs.frozen
class ServerConfig:
    """A WebTransport server: where it listens, its certificate, who may connect.

    ``allowed_origins=None`` accepts any origin (and a missing one); otherwise a CONNECT whose
    ``origin`` header is not listed gets 403, and so does one without an ``origin`` header
    (browsers always send one; other clients must then send an allowed origin too: the client
    library sends its GC's). ``origin_required=False`` admits a CONNECT without one.
    """

    tls: TlsCredentials
    host: str = "127.0.0.1"
    port: int = 0
    allowed_origins: frozenset[str] | None = attrs.field(default=None, converter=_origins)
    origin_required: bool = True
    limits: TransportLimits = TransportLimits()
