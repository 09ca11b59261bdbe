"""Limits of the GC's HTTP listeners (TCP: HTTP/1.1 and HTTP/2 over TLS; UDP: HTTP/3).

Every bound is named here with what happens when it is reached, and the admission counts the
QUIC and TCP listeners keep per peer. A peer is counted under
:func:`darktower.protocol.addresses.address_key` (an IPv4 address, an IPv6 /64). No I/O here.
"""

from __future__ import annotations

from collections import Counter

import attrs

from darktower.protocol.addresses import address_key

# --- QUIC (HTTP/3) ---------------------------------------------------------------------------
# QUIC connections at once. An Initial beyond it is dropped (the client retries, then times
# out) and counted under ``quic_refused_total``.
QUIC_MAX_CONNECTIONS = 1000
# QUIC connections per peer (address_key). Beyond it: dropped, ``quic_refused_address``.
QUIC_MAX_CONNECTIONS_PER_ADDRESS = 64
# Handshakes in progress at once. Beyond it: dropped, ``quic_refused_handshakes``. Bounds the
# TLS work and the state a flood of Initials (spoofed or not) can create.
QUIC_MAX_HANDSHAKES = 100
# Once this many handshakes are in progress, an Initial without a valid token gets a stateless
# Retry (RFC 9000 §8.1) and creates nothing: a spoofed source never sees the token, so it can
# hold no handshake slot. 0 means always send Retry (one more round trip per connection).
QUIC_RETRY_THRESHOLD = 20
# A handshake not completed by then is closed when its slot is needed (an Initial arrives);
# aioquic's idle timeout (60 s) closes the others.
QUIC_HANDSHAKE_TIMEOUT_S = 10.0
# An Initial, and anything answered with Version Negotiation, must fill at least this many
# bytes (RFC 9000 §14.1), so that no answer is larger than what provoked it.
QUIC_MIN_INITIAL_SIZE = 1200

# --- TCP (HTTP/1.1, HTTP/2 over TLS) ---------------------------------------------------------
# TCP connections at once. A connection beyond it is closed as soon as it is accepted, counted
# under ``tcp_refused_total``.
TCP_MAX_CONNECTIONS = 1000
# TCP connections per peer (address_key). Beyond it: closed, ``tcp_refused_address``.
TCP_MAX_CONNECTIONS_PER_ADDRESS = 64
# A TLS handshake not completed by then closes the connection (``tcp_tls_handshake_timeout``).
TLS_HANDSHAKE_TIMEOUT_S = 5.0
# A connection that sends nothing for this long while a request is incomplete (half a request
# line, headers or body) or in flight is closed (hypercorn's ``read_timeout``). GC requests take
# at most a few seconds (one gRPC call to an MC, ≤ 5 s), so this never ends a legitimate one.
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
    quic_retry_threshold: int = QUIC_RETRY_THRESHOLD
    quic_handshake_timeout_s: float = QUIC_HANDSHAKE_TIMEOUT_S
    tcp_max_connections: int = TCP_MAX_CONNECTIONS
    tcp_max_connections_per_address: int = TCP_MAX_CONNECTIONS_PER_ADDRESS
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    keep_alive_timeout_s: float = KEEP_ALIVE_TIMEOUT_S
    h11_max_incomplete_size: int = H11_MAX_INCOMPLETE_SIZE
    h2_max_header_list_size: int = H2_MAX_HEADER_LIST_SIZE
    h2_max_concurrent_streams: int = H2_MAX_CONCURRENT_STREAMS


class AddressCounter:
    """Live connections per peer (``address_key``), at most ``cap`` each."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._counts: Counter[str] = Counter()

    def try_acquire(self, host: str) -> bool:
        key = address_key(host)
        if self._counts[key] >= self.cap:
            return False
        self._counts[key] += 1
        return True

    def release(self, host: str) -> None:
        key = address_key(host)
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def count(self, host: str) -> int:
        return self._counts.get(address_key(host), 0)


class ConnectionAdmission:
    """Admission of one listener's connections: a total cap and a per-peer cap.

    ``refusal(host)`` names why a new connection from ``host`` would be refused (the cause is
    the counter's key, with the listener's prefix), or ``None``; ``admit`` / ``release`` keep
    the counts. For QUIC it also tracks handshakes in progress (``handshake_started`` /
    ``handshake_done``, oldest first, with their start times) for the Retry threshold, the
    handshake cap and the handshake timeout.
    """

    def __init__(self, prefix: str, max_total: int, max_per_address: int) -> None:
        self._prefix = prefix
        self._max_total = max_total
        self._addresses = AddressCounter(max_per_address)
        # Keyed by id(): connection objects need not be hashable; each is released before
        # it can be freed (and its id reused).
        self._hosts: dict[int, str] = {}
        self._handshakes: dict[int, tuple[object, float]] = {}

    @property
    def connections(self) -> int:
        return len(self._hosts)

    @property
    def handshakes(self) -> int:
        return len(self._handshakes)

    def refusal(self, host: str) -> str | None:
        if len(self._hosts) >= self._max_total:
            return f"{self._prefix}_refused_total"
        if self._addresses.count(host) >= self._addresses.cap:
            return f"{self._prefix}_refused_address"
        return None

    def admit(self, connection: object, host: str) -> bool:
        """Count ``connection`` under ``host``; False (nothing counted) if a cap is reached."""
        if self.refusal(host) is not None or not self._addresses.try_acquire(host):
            return False
        self._hosts[id(connection)] = host
        return True

    def release(self, connection: object) -> None:
        """Forget ``connection`` (idempotent)."""
        self._handshakes.pop(id(connection), None)
        host = self._hosts.pop(id(connection), None)
        if host is not None:
            self._addresses.release(host)

    def handshake_started(self, connection: object, now: float) -> None:
        self._handshakes[id(connection)] = (connection, now)

    def handshake_done(self, connection: object) -> None:
        self._handshakes.pop(id(connection), None)

    def expired_handshakes(self, now: float, timeout_s: float) -> list[object]:
        """Handshakes started more than ``timeout_s`` ago (no longer counted as in progress)."""
        expired = []
        for key, (connection, started) in self._handshakes.items():
            if now - started < timeout_s:
                break  # oldest first: the rest are younger
            expired.append((key, connection))
        for key, _ in expired:
            del self._handshakes[key]
        return [connection for _, connection in expired]
