"""The admission policy, sans-IO (darktower/transport/_admission.py): each rule on real
Initial packets made by aioquic clients."""

from __future__ import annotations

from collections import Counter

from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicHeader, pull_quic_header

from darktower.transport import TransportLimits
from darktower.transport._admission import AddressCounter, Admission, Admit

from ._initials import client_initial

V1 = [1]
ADDR = ("127.0.0.2", 5000)
OTHER = ("127.0.0.3", 5000)


def _header(data: bytes) -> QuicHeader:
    return pull_quic_header(Buffer(data=data), host_cid_length=8)


def _decide(
    admission: Admission,
    data: bytes,
    addr: tuple[str, int] = ADDR,
    *,
    connections: int = 0,
    handshakes: int = 0,
    now: float = 100.0,
) -> Admit | bytes | None:
    return admission.decide(
        _header(data), len(data), addr, now, connections=connections, handshakes=handshakes
    )


def _admission(**limits: object) -> tuple[Admission, Counter[str]]:
    counters: Counter[str] = Counter()
    return Admission(TransportLimits(**limits), V1, counters), counters  # type: ignore[arg-type]


INITIAL = client_initial(4433)


def test_address_counter_caps_and_forgets() -> None:
    counter = AddressCounter(2)
    assert counter.try_acquire("a") and counter.try_acquire("a")
    assert not counter.try_acquire("a")
    assert counter.try_acquire("b")
    counter.release("a")
    assert counter["a"] == 1 and counter.try_acquire("a")
    for key in ("a", "a", "b", "b"):  # one release too many is harmless
        counter.release(key)
    assert len(counter) == 0 and counter["a"] == 0


def test_plain_initial_admitted_and_slots_released() -> None:
    admission, counters = _admission()
    admit = _decide(admission, INITIAL)
    assert isinstance(admit, Admit) and not admit.validated
    assert (
        admit.key == "127.0.0.2"
        and admit.original_destination_cid == _header(INITIAL).destination_cid
    )
    assert admission.connections["127.0.0.2"] == 1
    assert admission.unvalidated_handshakes["127.0.0.2"] == 1
    admission.handshake_ended(admit)
    admission.connection_ended(admit)
    assert len(admission.connections) == len(admission.unvalidated_handshakes) == 0
    assert not counters


def test_retry_over_threshold_then_the_token_is_honoured() -> None:
    admission, counters = _admission(retry_threshold=5)
    retry = _decide(admission, INITIAL, handshakes=5)
    assert isinstance(retry, bytes) and counters["retry_sent"] == 1
    retry_header = _header(retry)
    assert retry_header.packet_type.name == "RETRY" and retry_header.token
    # the client's second Initial: to the Retry's source CID, with the token
    again = client_initial(4433, token=retry_header.token)
    header = _header(again)
    header.destination_cid = retry_header.source_cid
    admit = admission.decide(header, len(again), ADDR, 101.0, connections=0, handshakes=50)
    assert isinstance(admit, Admit) and admit.validated
    assert admit.original_destination_cid == _header(INITIAL).destination_cid
    assert admit.retry_source_cid == retry_header.source_cid
    assert admission.validated_handshakes["127.0.0.2"] == 1
    # the token is bound to the address, and expires
    assert admission.decide(header, len(again), OTHER, 101.0, connections=0, handshakes=0) is None
    assert admission.decide(header, len(again), ADDR, 200.0, connections=0, handshakes=0) is None
    assert counters["retry_invalid"] == 2


def test_retry_always_and_never() -> None:
    always, _ = _admission(retry_threshold=0)
    assert isinstance(_decide(always, INITIAL), bytes)
    never, counters = _admission(retry_threshold=None, max_handshakes_in_progress=3)
    assert isinstance(_decide(never, INITIAL, handshakes=2), Admit)
    assert _decide(never, INITIAL, handshakes=3) is None
    assert counters["refused_handshakes"] == 1


def test_forged_token_dropped() -> None:
    admission, counters = _admission()
    forged = client_initial(4433, token=b"\x01" * 40)
    assert _decide(admission, forged) is None
    assert counters["retry_invalid"] == 1


def test_unvalidated_handshakes_per_address_get_retry() -> None:
    admission, counters = _admission(max_handshakes_per_address=3, retry_threshold=None)
    for _ in range(3):
        assert isinstance(_decide(admission, client_initial(4433)), Admit)
    assert isinstance(_decide(admission, client_initial(4433)), bytes)  # must prove itself
    assert isinstance(_decide(admission, client_initial(4433), OTHER), Admit)  # others unaffected
    assert counters["retry_sent"] == 1


def _retried(admission: Admission, addr: tuple[str, int] = ADDR) -> Admit | bytes | None:
    """A client that answers the Retry it gets: its second Initial's verdict."""
    retry = _decide(admission, client_initial(4433), addr)
    assert isinstance(retry, bytes)
    retry_header = _header(retry)
    again = client_initial(4433, token=retry_header.token)
    header = _header(again)
    header.destination_cid = retry_header.source_cid
    return admission.decide(header, len(again), addr, 100.0, connections=0, handshakes=0)


def test_validated_handshakes_per_address_capped_apart() -> None:
    admission, counters = _admission(max_handshakes_per_address=2, retry_threshold=None)
    # Initials spoofed with the victim's address use up its unvalidated slots only...
    assert all(isinstance(_decide(admission, client_initial(4433)), Admit) for _ in range(2))
    # ... the victim gets a Retry, answers it, and is admitted
    assert isinstance(_retried(admission), Admit)
    assert isinstance(_retried(admission), Admit)
    # a validated address is capped too
    assert _retried(admission) is None
    assert counters["refused_handshakes_per_address"] == 1


def test_connections_per_address_capped() -> None:
    admission, counters = _admission(max_connections_per_address=2, retry_threshold=None)
    first = _decide(admission, client_initial(4433))
    assert isinstance(first, Admit)
    admission.handshake_ended(first)  # established: still holds its connection slot
    assert isinstance(_decide(admission, client_initial(4433)), Admit)
    assert _decide(admission, client_initial(4433)) is None
    assert counters["refused_per_address"] == 1
    assert isinstance(_decide(admission, client_initial(4433), OTHER), Admit)
    admission.connection_ended(first)
    assert isinstance(_decide(admission, client_initial(4433)), Admit)


def test_total_connections_capped() -> None:
    admission, counters = _admission(max_connections=10, retry_threshold=None)
    assert _decide(admission, INITIAL, connections=10) is None
    assert counters["refused_connections"] == 1
    assert len(admission.connections) == 0  # nothing held for a refusal


def test_ipv6_counted_by_64() -> None:
    admission, counters = _admission(max_connections_per_address=1, retry_threshold=None)
    assert isinstance(_decide(admission, client_initial(4433), ("2001:db8::1", 5, 0, 0)), Admit)  # type: ignore[arg-type]
    assert _decide(admission, client_initial(4433), ("2001:db8::2", 5, 0, 0)) is None  # type: ignore[arg-type]
    assert isinstance(_decide(admission, client_initial(4433), ("2001:db8:1::1", 5, 0, 0)), Admit)  # type: ignore[arg-type]
    assert counters["refused_per_address"] == 1


def test_version_negotiation_only_for_full_size_datagrams() -> None:
    admission, counters = _admission()
    unknown = bytearray(INITIAL)
    unknown[1:5] = (0x1A2A3A4A).to_bytes(4, "big")
    reply = _decide(admission, bytes(unknown))
    assert isinstance(reply, bytes) and reply[1:5] == b"\0\0\0\0"
    small = bytes(unknown[:1199])
    header = _header(bytes(unknown))
    assert admission.decide(header, len(small), ADDR, 0.0, connections=0, handshakes=0) is None
    assert counters["version_negotiation"] == 1
    assert counters["dropped_small_unknown_version"] == 1
    # a Version Negotiation packet is never answered
    assert _decide(admission, reply) is None
    assert counters["dropped_version_negotiation"] == 1


def test_small_or_short_cid_initial_dropped() -> None:
    admission, counters = _admission()
    header = _header(INITIAL)
    assert admission.decide(header, 1199, ADDR, 0.0, connections=0, handshakes=0) is None
    header.destination_cid = b"1234567"
    assert admission.decide(header, 1200, ADDR, 0.0, connections=0, handshakes=0) is None
    assert counters["dropped_bad_initial"] == 2


def test_a_listener_can_name_the_counters_its_own_way() -> None:
    counters: Counter[str] = Counter()
    admission = Admission(
        TransportLimits(retry_threshold=0), V1, counters, {"retry_sent": "quic_retry"}
    )
    assert isinstance(_decide(admission, INITIAL), bytes)
    unknown = bytearray(INITIAL)
    unknown[1:5] = (0x1A2A3A4A).to_bytes(4, "big")
    assert isinstance(_decide(admission, bytes(unknown)), bytes)
    assert counters == {"quic_retry": 1, "version_negotiation": 1}
