"""The GC's HTTP listeners under hostile traffic, over real sockets on 127.0.0.x: QUIC admission
(caps per peer, in total and on handshakes; stateless Retry under a flood), TCP caps and
timeouts (the error boundaries: test_http_listener_boundaries.py)."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from darktower.transport import _http_quic
from darktower.transport._admission import CAUSES
from darktower.transport._http_quic import COUNTER_NAMES
from darktower.transport.http_server import HttpLimits
from tests.transport._http3_peer import (
    WAIT_S,
    Http3Peer,
    initial_datagram,
    server_connections,
    udp_socket,
)
from tests.transport._http_listener import h3_get, serving


def _long_header(version: bytes, source_cid: bytes = b"s" * 8) -> bytes:
    return bytes([0xC0]) + version + b"\x08" + b"d" * 8 + b"\x08" + source_cid


# A datagram the server answers with Version Negotiation (to this source cid), creating nothing.
PROBE_CID = b"probe-id"
VN_PROBE = _long_header(b"\x0a\x0a\x0a\x0a", PROBE_CID).ljust(1200, b"\0")


def _answers_probe(data: bytes) -> bool:
    # Version Negotiation (version 0) sent to the probe's source connection id.
    return data[0] & 0x80 != 0 and data[1:5] == b"\0\0\0\0" and data[6:14] == PROBE_CID


async def _answers(sock: trio.socket.SocketType, port: int) -> list[bytes]:
    """What the server sent to ``sock`` for everything sent before: the server handles one
    socket's datagrams in order, so once the answer to a probe sent last arrives, the answers
    to all earlier datagrams have arrived before it."""
    await sock.sendto(VN_PROBE, ("127.0.0.1", port))
    received = []
    with trio.fail_after(WAIT_S):
        while not received or not _answers_probe(received[-1]):
            received.append(await sock.recv(65_536))
    return received[:-1]


async def _flood(port: int, hosts: list[str], per_host: int) -> list[set[bytes]]:
    """Real Initials from each of ``hosts``, never answered; the server connections that
    answered each host."""
    socks = [trio.socket.from_stdlib_socket(udp_socket(host)) for host in hosts]
    try:
        for _ in range(per_host):
            for sock in socks:
                await sock.sendto(initial_datagram(port), ("127.0.0.1", port))
                await trio.lowlevel.checkpoint()  # let the server read as we go
        return [server_connections(await _answers(sock, port))[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --- QUIC ------------------------------------------------------------------------------------


def test_admission_causes_keep_the_listeners_counter_names() -> None:
    """The GC's HTTP/3 listener takes its decisions from the WebTransport endpoint's
    ``Admission``; its /metrics keys stay those it had, each cause under a name of its own."""
    assert set(COUNTER_NAMES) == set(CAUSES)
    assert all(name.startswith("quic_") for name in COUNTER_NAMES.values())
    assert len(set(COUNTER_NAMES.values())) == len(CAUSES)
    assert {
        COUNTER_NAMES[cause]
        for cause in (
            "retry_sent",
            "retry_invalid",
            "refused_connections",
            "refused_per_address",
            "refused_handshakes",
        )
    } == {
        "quic_retry",
        "quic_invalid_token",
        "quic_refused_total",
        "quic_refused_address",
        "quic_refused_handshakes",
    }
    limits = HttpLimits(quic_max_handshakes=7, quic_retry_threshold=0).quic_admission
    assert (limits.max_handshakes_in_progress, limits.retry_threshold) == (7, 0)


async def test_an_initial_flood_from_several_addresses_leaves_a_client_able_to_get(
    cert_files: tuple[str, str],
) -> None:
    """Spoofed-looking Initials from 127.0.0.2-5 (never answered) beyond the Retry threshold
    get a stateless Retry and create nothing; a real client answers its Retry and gets in."""
    counters: Counter[str] = Counter()
    limits = HttpLimits(quic_retry_threshold=8, quic_max_handshakes=32)
    async with serving(cert_files, limits, counters) as port:
        answered = await _flood(port, [f"127.0.0.{i}" for i in range(2, 6)], per_host=30)
        assert sum(len(cids) for cids in answered) <= 8  # before: one connection per Initial
        assert counters["quic_retry"] == 4 * 30 - 8
        assert await h3_get(port) == 200


async def test_quic_connections_are_capped_per_address_and_in_total(
    cert_files: tuple[str, str],
) -> None:
    counters: Counter[str] = Counter()
    limits = HttpLimits(
        quic_max_connections=12,
        quic_max_connections_per_address=5,
        quic_retry_threshold=1000,
        quic_max_handshakes=1000,
    )
    async with serving(cert_files, limits, counters) as port:
        # 127.0.0.2 at its cap does not keep 127.0.0.1 out.
        (first,) = await _flood(port, ["127.0.0.2"], per_host=10)
        assert len(first) == 5
        peer = Http3Peer("127.0.0.1", port)
        try:
            assert await peer.connect()
            assert await peer.get("/healthz") == 200
            (second,) = await _flood(port, ["127.0.0.3"], per_host=10)
            (third,) = await _flood(port, ["127.0.0.4"], per_host=10)
            assert (len(second), len(third)) == (5, 1)  # 5 + 1 (peer) + 5 + 1 = 12
            assert counters["quic_refused_address"] == 10
            assert counters["quic_refused_total"] == 9
            assert await peer.get("/healthz") == 200  # admitted connections are unaffected
        finally:
            peer.close()


@pytest.mark.parametrize(
    ("limits", "admitted", "cause"),
    [
        # handshakes in progress at once: beyond, dropped
        (
            HttpLimits(quic_max_handshakes=6, quic_retry_threshold=1000),
            6,
            "quic_refused_handshakes",
        ),
        # unvalidated handshakes of one address: beyond, a Retry
        (HttpLimits(quic_max_handshakes_per_address=3, quic_retry_threshold=1000), 3, "quic_retry"),
        (HttpLimits(quic_retry_threshold=0), 0, "quic_retry"),  # Retry always
    ],
)
async def test_handshakes_are_capped_or_retried(
    cert_files: tuple[str, str], limits: HttpLimits, admitted: int, cause: str
) -> None:
    counters: Counter[str] = Counter()
    async with serving(cert_files, limits, counters) as port:
        (answered,) = await _flood(port, ["127.0.0.2"], per_host=8)
        assert len(answered) == admitted
        assert counters[cause] == 8 - admitted
        if cause == "quic_retry":  # (all slots full, a new client waits for a timeout)
            assert await h3_get(port) == 200  # another address is not affected


async def test_an_initial_with_a_token_not_ours_is_dropped(cert_files: tuple[str, str]) -> None:
    counters: Counter[str] = Counter()
    async with serving(cert_files, HttpLimits(), counters) as port:
        sock = trio.socket.from_stdlib_socket(udp_socket("127.0.0.2"))
        with sock:
            await sock.sendto(initial_datagram(port, token=b"\x01" * 40), ("127.0.0.1", port))
            assert server_connections(await _answers(sock, port)) == (set(), 0)
        assert counters["quic_invalid_token"] == 1


async def test_a_stalled_handshake_is_closed_at_its_timeout(cert_files: tuple[str, str]) -> None:
    """A client that sends its first Initial and nothing more is closed once its handshake is
    older than the timeout, with no other Initial needed to notice it; its slot is free again."""
    counters: Counter[str] = Counter()
    limits = HttpLimits(
        quic_handshake_timeout_s=0.5, quic_max_handshakes=1, quic_retry_threshold=1000
    )
    async with serving(cert_files, limits, counters) as port:
        stalled = Http3Peer("127.0.0.2", port)
        try:
            stalled.quic.connect(stalled.address, now=trio.current_time())
            await stalled.flush()  # the Initial; the server's answers are read, never acked
            with trio.fail_after(WAIT_S):
                while stalled.quic._close_event is None:
                    data, addr = await stalled.sock.recvfrom(65_536)
                    stalled.quic.receive_datagram(data, addr, now=trio.current_time())
            assert stalled.quic._close_event.error_code == 0x2  # CONNECTION_REFUSED
            assert stalled.quic._close_event.reason_phrase == "handshake timeout"
            assert counters["quic_handshake_timeout"] == 1
            assert await h3_get(port) == 200
        finally:
            stalled.close()


async def test_version_negotiation_only_for_full_size_datagrams(
    cert_files: tuple[str, str],
) -> None:
    async with serving(cert_files, HttpLimits(), Counter()) as port:
        sock = trio.socket.from_stdlib_socket(udp_socket("127.0.0.2"))
        with sock:
            # An unknown version in 100 bytes, and a Version Negotiation packet (version 0,
            # never answered: two servers would answer each other forever).
            short = _long_header(b"\x0a\x0a\x0a\x0a").ljust(100, b"\0")
            await sock.sendto(short, ("127.0.0.1", port))
            await sock.sendto(_long_header(b"\0\0\0\0").ljust(1200, b"\0"), ("127.0.0.1", port))
            assert await _answers(sock, port) == []


# --- TCP -------------------------------------------------------------------------------------


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _tcp(port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((host, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _tls(port: int, host: str = "127.0.0.1") -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(
        await _tcp(port, host), _client_tls(), server_hostname="x", https_compatible=True
    )
    with trio.fail_after(WAIT_S):
        await stream.do_handshake()
    return stream


async def _until_closed(stream: trio.abc.ReceiveStream) -> None:
    """Read until the server closes the connection (EOF or reset)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


def _h1_get(port: int) -> int:
    with httpx.Client(verify=False) as client:
        return client.get(f"https://127.0.0.1:{port}/healthz").status_code


def test_default_tcp_timeouts() -> None:
    limits = HttpLimits()
    assert limits.tls_handshake_timeout_s <= 5  # hypercorn's default: 60 s
    assert limits.read_timeout_s is not None


async def test_a_tcp_client_that_never_finishes_its_tls_handshake_is_closed(
    cert_files: tuple[str, str],
) -> None:
    counters: Counter[str] = Counter()
    async with serving(cert_files, HttpLimits(tls_handshake_timeout_s=0.3), counters) as port:
        silent = await _tcp(port)
        partial_hello = await _tcp(port)
        await partial_hello.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        with trio.fail_after(WAIT_S):
            await _until_closed(silent)
            await _until_closed(partial_hello)
        assert counters["tcp_tls_handshake_timeout"] == 2
        assert await trio.to_thread.run_sync(_h1_get, port) == 200


@pytest.mark.parametrize(
    "half",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never end
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",  # body never ends
    ],
)
async def test_a_tcp_client_that_sends_half_a_request_is_closed_after_the_read_timeout(
    cert_files: tuple[str, str], half: bytes
) -> None:
    # keep_alive_timeout (5 s) is longer than the wait: only the read timeout can close it.
    limits = HttpLimits(read_timeout_s=0.3)
    async with serving(cert_files, limits, Counter()) as port:
        stream = await _tls(port)
        await stream.send_all(half)
        with trio.fail_after(3):
            await _until_closed(stream)
        assert await trio.to_thread.run_sync(_h1_get, port) == 200


async def test_idle_tcp_connections_from_one_address_do_not_keep_another_out(
    cert_files: tuple[str, str],
) -> None:
    counters: Counter[str] = Counter()
    limits = HttpLimits(tcp_max_connections=8, tcp_max_connections_per_address=5)
    async with serving(cert_files, limits, counters) as port:
        admitted, refused = [], 0
        for _ in range(10):
            try:
                admitted.append(await _tls(port, "127.0.0.2"))
            except trio.BrokenResourceError:
                refused += 1
        assert (len(admitted), refused) == (5, 5)
        assert counters["tcp_refused_address"] == 5
        # 127.0.0.1 still gets in (3 places left in total), over TLS and HTTP/3.
        assert await trio.to_thread.run_sync(_h1_get, port) == 200
        assert await h3_get(port) == 200
        for stream in admitted:
            await stream.aclose()


async def test_a_plain_tcp_request_still_works_with_caps(cert_files: tuple[str, str]) -> None:
    async with serving(cert_files, HttpLimits(), Counter()) as port:
        stream = await _tls(port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(WAIT_S):
            while chunk := await stream.receive_some():
                data += chunk
        assert data.startswith(b"HTTP/1.1 200")


# --- admission slots are released ------------------------------------------------------------
@pytest.fixture
def listeners(monkeypatch: pytest.MonkeyPatch) -> list[_http_quic._TrackingQuicProtocol]:
    """Every QUIC protocol ``serve_http`` creates in this test."""
    created: list[_http_quic._TrackingQuicProtocol] = []

    class Recorded(_http_quic._TrackingQuicProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(_http_quic, "_TrackingQuicProtocol", Recorded)
    return created


def _slots_held(protocol: _http_quic._TrackingQuicProtocol) -> tuple[int, ...]:
    admission = protocol.admission
    return (
        protocol.live_connections,
        protocol.handshakes,
        len(admission.connections),
        len(admission.validated_handshakes),
        len(admission.unvalidated_handshakes),
    )


async def _until(predicate: Callable[[], bool]) -> None:
    # No event says "the connection's timer fired": polled, bounded (end-of-life checks only).
    with trio.fail_after(WAIT_S):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_timed_out_handshakes_of_a_flood_release_every_slot(
    cert_files: tuple[str, str], listeners: list[_http_quic._TrackingQuicProtocol]
) -> None:
    counters: Counter[str] = Counter()
    limits = HttpLimits(quic_handshake_timeout_s=0.3)
    async with serving(cert_files, limits, counters) as port:
        (protocol,) = listeners
        answered = await _flood(port, [f"127.0.0.{i}" for i in range(2, 5)], per_host=4)
        assert sum(len(cids) for cids in answered) == 12
        await _until(lambda: protocol.live_connections == 0)
        assert counters["quic_handshake_timeout"] == 12
        assert _slots_held(protocol) == (0, 0, 0, 0, 0)
        assert await h3_get(port) == 200


async def test_a_connection_that_cannot_be_built_releases_its_slots(
    cert_files: tuple[str, str],
    listeners: list[_http_quic._TrackingQuicProtocol],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _http_quic.QuicConnection
    failures = [1]

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise ValueError("cannot build it")
        return real(*args, **kwargs)

    monkeypatch.setattr(_http_quic, "QuicConnection", failing_once)
    counters: Counter[str] = Counter()
    async with serving(cert_files, HttpLimits(), counters) as port:
        (protocol,) = listeners
        (answered,) = await _flood(port, ["127.0.0.2"], per_host=1)
        assert answered == set()  # dropped
        assert counters["quic_error:ValueError"] == 1
        assert _slots_held(protocol) == (0, 0, 0, 0, 0)
        assert await h3_get(port) == 200
