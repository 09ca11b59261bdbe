"""Limits of the GC's HTTP listeners (TCP: HTTP/1.1 and HTTP/2 over TLS; UDP: HTTP/3).

Every bound is named here with what happens when it is reached. A peer is counted under
:func:`darktower.protocol.addresses.address_key` (an IPv4 address, an IPv6 /64). No I/O here.
"""

from __future__ import annotations

import attrs

# --- QUIC (HTTP/3) ---------------------------------------------------------------------------
# Admission of new QUIC connections follows the WebTransport endpoint's rules and their order
# (``Admission`` in _admission.py) with these numbers. A refused Initial is dropped (the client
# retransmits it, then times out) and counted under the name given with each bound.
# QUIC connections at once (``quic_refused_total``).
QUIC_MAX_CONNECTIONS = 1000
# QUIC connections per peer, address_key (``quic_refused_address``).
QUIC_MAX_CONNECTIONS_PER_ADDRESS = 64
# Handshakes in progress at once (``quic_refused_handshakes``). Bounds the TLS work and the
# state a flood of Initials (spoofed or not) can create.
QUIC_MAX_HANDSHAKES = 100
# Handshakes in progress per peer, counted apart for validated (Retry) and unvalidated
# addresses: an unvalidated address beyond it gets a Retry, a validated one is refused
# (``quic_refused_handshakes_address``), so Initials spoofed with a victim's address cannot
# use up the victim's slots.
QUIC_MAX_HANDSHAKES_PER_ADDRESS = 10
# Once this many handshakes are in progress, an Initial without a valid token gets a stateless
# Retry (RFC 9000 §8.1, ``quic_retry``) and creates nothing: a spoofed source never sees the
# token, so it can hold no handshake slot. 0 means always send Retry (one more round trip per
# connection). An Initial with a token that is not a valid Retry token of ours is dropped
# (``quic_invalid_token``).
QUIC_RETRY_THRESHOLD = 20
# A handshake not completed this long after its first Initial is closed
# (``quic_handshake_timeout``), which frees its slots.
QUIC_HANDSHAKE_TIMEOUT_S = 10.0

# The HTTP/3 socket's kernel buffers, bytes (asked: Linux caps them at net.core.rmem_max /
# wmem_max). The default (~208 KiB) drops datagrams in a burst of Initials or of request
# bodies; what it drops is counted (``udp_receive_overflows``, on /metrics).
QUIC_UDP_RECEIVE_BUFFER = 1024 * 1024
QUIC_UDP_SEND_BUFFER = 1024 * 1024

# An HTTP/3 response body waits while its stream holds more than this in the QUIC send buffer
# (sent and not yet acknowledged, or not sent yet): a long body (a recording's download) costs
# the server this much per stream at most, as the socket buffer bounds it over TCP.
H3_STREAM_SEND_BUFFER = 1024 * 1024

# --- TCP (HTTP/1.1, HTTP/2 over TLS) ---------------------------------------------------------
# TCP connections at once. A connection beyond it is closed as soon as it is accepted, counted
# under ``tcp_refused_total``.
TCP_MAX_CONNECTIONS = 1000
# TCP connections per peer (address_key). Beyond it: closed, ``tcp_refused_address``.
TCP_MAX_CONNECTIONS_PER_ADDRESS = 64
# A TLS handshake not completed by then closes the connection (``tcp_tls_handshake_timeout``).
TLS_HANDSHAKE_TIMEOUT_S = 5.0
# A connection on which nothing moves for this long while a request is incomplete (half a
# request line, headers or body) or in flight is closed (hypercorn's ``read_timeout``, counted
# from the last byte received or the last send the peer took: ``_http_tcp._TcpConnection``).
# GC requests take at most a few seconds (one gRPC call to an MC, ≤ 5 s), and a long response
# (a recording's download) keeps moving, so this never ends a legitimate one; a client that
# stops reading a response is closed after it.
READ_TIMEOUT_S = 30.0
# An idle keep-alive connection (no request in progress) is closed after this long (hypercorn's
# ``keep_alive_timeout``); this also bounds the wait for the first request's headers.
KEEP_ALIVE_TIMEOUT_S = 5.0
# Bytes of an HTTP/1.1 request line and headers buffered before the request is refused with
# 431/400 (hypercorn's ``h11_max_incomplete_size``, h11's own default).
H11_MAX_INCOMPLETE_SIZE = 16 * 1024
# Bytes of an HTTP/2 header list (hypercorn's ``h2_max_header_list_size``); beyond it the
# stream is refused. Same as HTTP/1.1 above (hypercorn's default is 64 KiB).
H2_MAX_HEADER_LIST_SIZE = 16 * 1024
# Concurrent HTTP/2 streams per connection (hypercorn's default).
H2_MAX_CONCURRENT_STREAMS = 100


@attrs.frozen
class HttpLimits:
    """Every bound of the GC's HTTP listeners (policies in the module constants above)."""

    quic_max_connections: int = QUIC_MAX_CONNECTIONS
    quic_max_connections_per_address: int = QUIC_MAX_CONNECTIONS_PER_ADDRESS
    quic_max_handshakes: int = QUIC_MAX_HANDSHAKES
    quic_max_handshakes_per_address: int = QUIC_MAX_HANDSHAKES_PER_ADDRESS
    quic_retry_threshold: int = QUIC_RETRY_THRESHOLD
    quic_handshake_timeout_s: float = QUIC_HANDSHAKE_TIMEOUT_S
    quic_udp_receive_buffer: int = QUIC_UDP_RECEIVE_BUFFER
    quic_udp_send_buffer: int = QUIC_UDP_SEND_BUFFER
    tcp_max_connections: int = TCP_MAX_CONNECTIONS
    tcp_max_connections_per_address: int = TCP_MAX_CONNECTIONS_PER_ADDRESS
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    keep_alive_timeout_s: float = KEEP_ALIVE_TIMEOUT_S
    h11_max_incomplete_size: int = H11_MAX_INCOMPLETE_SIZE
    h2_max_header_list_size: int = H2_MAX_HEADER_LIST_SIZE
    h2_max_concurrent_streams: int = H2_MAX_CONCURRENT_STREAMS

    @property
    def quic_admission(self) -> QuicAdmissionLimits:
        """The QUIC bounds under the names ``Admission`` reads."""
        return QuicAdmissionLimits(
            max_connections=self.quic_max_connections,
            max_connections_per_address=self.quic_max_connections_per_address,
            max_handshakes_in_progress=self.quic_max_handshakes,
            max_handshakes_per_address=self.quic_max_handshakes_per_address,
            retry_threshold=self.quic_retry_threshold,
        )


@attrs.frozen
class QuicAdmissionLimits:
    """The GC's numbers for ``Admission`` (``_admission.AdmissionLimits``)."""

    max_connections: int
    max_connections_per_address: int
    max_handshakes_in_progress: int
    max_handshakes_per_address: int
    retry_threshold: int
