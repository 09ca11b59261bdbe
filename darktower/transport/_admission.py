"""QUIC admission: what a datagram for no known connection gets (docs/decisions.md, "QUIC
admission on the WebTransport servers").

Sans-IO: ``Admission.decide`` looks at the packet's header, its size, the source address and
the endpoint's totals, and returns an ``Admit`` (create a connection), the bytes of a stateless
reply to send (Version Negotiation or Retry), or None (dropped). Every outcome but a plain
admission is counted in ``counters`` under its cause. The caller reports each admitted
connection's end of handshake and end of life, which release its per-address slots.

The rules, in order:

1. An unsupported version gets Version Negotiation, but only for a datagram of at least 1,200
   bytes (a smaller one would make us an amplifier); Version Negotiation is never answered.
2. Only an Initial of at least 1,200 bytes with a destination connection ID of at least 8 bytes
   may create a connection (RFC 9000 sections 14.1 and 7.2).
3. An address that already holds ``max_connections_per_address`` connections is refused.
4. Address validation: an Initial carrying a token must carry a valid Retry token (issued by
   this endpoint for this address, within 30 s), or it is dropped. An Initial without one gets
   a stateless Retry when ``retry_threshold`` handshakes are in progress (0: always) or when its
   address already has ``max_handshakes_per_address`` unvalidated handshakes in progress; a
   spoofed source address never answers a Retry, so spoofed Initials hold at most
   ``retry_threshold`` handshake slots, and none of a validated peer's.
5. Totals: ``max_connections`` and ``max_handshakes_in_progress``.
6. A validated address holds at most ``max_handshakes_per_address`` handshakes in progress,
   counted apart from unvalidated ones, so Initials spoofed with a victim's address cannot use
   up the victim's slots.

Peers are counted by ``darktower.protocol.addresses.address_key`` (IPv6 by /64). A connection
stays counted under the address it was admitted from for its whole life, also after its client
migrates (docs/protocol.md §13): the caps bound what one address can *create*, and a migration
creates nothing; moving the count would let a migration be refused only by dropping a live
connection's packets, and would let slots be pushed onto an address that never asked for them.

One policy for every QUIC listener: the MC's and MH's WebTransport endpoint (numbers from
``TransportLimits``) and the GC's HTTP/3 listener (``HttpLimits.quic_admission``), which also
names its counters its own way (``counter_names``). Each admitted connection's handshake ends
at its handshake timeout at the latest (the listener's timer closes it), so a stalled
handshake never holds its slots longer than that.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

import attrs
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from darktower.protocol.addresses import address_key

# RFC 9000 section 7.2: a client's first Destination Connection ID is at least 8 bytes.
MIN_INITIAL_DCID = 8
# Length of the connection ID a Retry asks the client to use (our connection IDs' length).
RETRY_CID_LENGTH = 8


# Every cause ``Admission`` counts, under these names unless the listener renames it.
CAUSES = (
    "dropped_version_negotiation",
    "dropped_small_unknown_version",
    "version_negotiation",
    "dropped_unknown_connection",
    "dropped_bad_initial",
    "refused_per_address",
    "retry_invalid",
    "retry_sent",
    "refused_connections",
    "refused_handshakes",
    "refused_handshakes_per_address",
)


class AdmissionLimits(Protocol):
    """The numbers ``Admission`` applies (rules in the module docstring). ``TransportLimits``
    has them (the MC and MH); ``HttpLimits.quic_admission`` makes them for the GC."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_address(self) -> int: ...
    @property
    def max_handshakes_in_progress(self) -> int: ...
    @property
    def max_handshakes_per_address(self) -> int: ...
    @property
    def retry_threshold(self) -> int | None: ...


class AddressCounter:
    """How many of something each address key holds, at most ``cap`` each.

    Only keys with a non-zero count are stored, so its size follows what is live.
    """

    __slots__ = ("_counts", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._counts: dict[str, int] = {}

    def try_acquire(self, key: str) -> bool:
        """Count one more for ``key`` unless it is at its cap; say whether it was counted."""
        count = self._counts.get(key, 0)
        if count >= self.cap:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count - 1

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


@attrs.frozen
class Admit:
    """Create a connection for this Initial (see ``Admission.decide``)."""

    key: str
    original_destination_cid: bytes
    # Set when the client came back with a valid Retry token: the connection must announce it
    # (aioquic's retry_source_connection_id), and the address is validated.
    retry_source_cid: bytes | None

    @property
    def validated(self) -> bool:
        return self.retry_source_cid is not None


class Admission:
    """The admission policy of one QUIC listener (module docstring). Holds the Retry token
    key (random per process) and the per-address counts of live connections.

    Each outcome but a plain admission adds one to ``counters`` under its cause (``CAUSES``),
    or under ``counter_names[cause]`` where the listener names it otherwise.
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        supported_versions: list[int],
        counters: Counter[str],
        counter_names: Mapping[str, str] | None = None,
    ) -> None:
        self.limits = limits
        self.supported_versions = supported_versions
        self.counters = counters
        names = counter_names or {}
        self._names = {cause: names.get(cause, cause) for cause in CAUSES}
        self.connections = AddressCounter(limits.max_connections_per_address)
        self.unvalidated_handshakes = AddressCounter(limits.max_handshakes_per_address)
        self.validated_handshakes = AddressCounter(limits.max_handshakes_per_address)
        self._tokens = QuicRetryTokenHandler()

    def decide(
        self,
        header: QuicHeader,
        size: int,
        addr: NetworkAddress,
        now: float,
        *,
        connections: int,
        handshakes: int,
    ) -> Admit | bytes | None:
        """What a datagram of ``size`` bytes from ``addr`` whose first packet has ``header``
        and matches no connection gets, given the endpoint's totals. An ``Admit`` holds the
        per-address slots until ``handshake_ended`` / ``connection_ended``."""
        packet_type = header.packet_type
        version = header.version
        if version is not None and version not in self.supported_versions:
            if packet_type == QuicPacketType.VERSION_NEGOTIATION:
                self._count("dropped_version_negotiation")  # never answered (loops)
                return None
            if size < SMALLEST_MAX_DATAGRAM_SIZE:
                self._count("dropped_small_unknown_version")
                return None
            self._count("version_negotiation")
            return encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=self.supported_versions,
            )
        if packet_type != QuicPacketType.INITIAL:
            self._count("dropped_unknown_connection")
            return None
        if size < SMALLEST_MAX_DATAGRAM_SIZE or len(header.destination_cid) < MIN_INITIAL_DCID:
            self._count("dropped_bad_initial")
            return None
        limits = self.limits
        key = address_key(addr[0])
        if self.connections[key] >= limits.max_connections_per_address:
            self._count("refused_per_address")
            return None
        retry_source_cid: bytes | None = None
        if header.token:
            try:
                original_dcid = self._tokens.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                # Forged, expired, or for another address: the client retransmits or times out.
                self._count("retry_invalid")
                return None
            retry_source_cid = header.destination_cid
        else:
            threshold = limits.retry_threshold
            if (threshold is not None and handshakes >= threshold) or (
                self.unvalidated_handshakes[key] >= limits.max_handshakes_per_address
            ):
                self._count("retry_sent")
                return self._retry(header, addr, now)
            original_dcid = header.destination_cid
        if connections >= limits.max_connections:
            self._count("refused_connections")
            return None
        if handshakes >= limits.max_handshakes_in_progress:
            self._count("refused_handshakes")
            return None
        handshaking = self.validated_handshakes if retry_source_cid else self.unvalidated_handshakes
        if not handshaking.try_acquire(key):
            self._count("refused_handshakes_per_address")
            return None
        self.connections.try_acquire(key)  # below its cap: checked above
        return Admit(key, original_dcid, retry_source_cid)

    def _count(self, cause: str) -> None:
        self.counters[self._names[cause]] += 1

    def handshake_ended(self, admit: Admit) -> None:
        if admit.validated:
            self.validated_handshakes.release(admit.key)
        else:
            self.unvalidated_handshakes.release(admit.key)

    def connection_ended(self, admit: Admit) -> None:
        self.connections.release(admit.key)

    def _retry(self, header: QuicHeader, addr: NetworkAddress, now: float) -> bytes:
        source_cid = os.urandom(RETRY_CID_LENGTH)
        assert header.version is not None  # an Initial is a long-header packet
        return encode_quic_retry(
            version=header.version,
            source_cid=source_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=self._tokens.create_token(
                address=addr,
                original_destination_connection_id=header.destination_cid,
                retry_source_connection_id=source_cid,
                now=now,
            ),
        )
