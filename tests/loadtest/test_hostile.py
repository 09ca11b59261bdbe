"""The hostile-traffic checker (``python -m darktower.loadtest.hostile``): it reaches loopback
only, its spoofed Initials are real ones, and every service of ``python -m darktower``'s stack
still answers after a short run of it (in process, real QUIC, TCP and UDP on 127.0.0.x)."""

from __future__ import annotations

import pathlib
import time

import pytest
import trio
from aioquic._buffer import Buffer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from darktower.loadtest._flood import InitialForge, check_targets
from darktower.loadtest._loopback import NotLoopback, ensure_loopback, spoofed_sources
from darktower.loadtest.hostile import Options, Targets, parse_args, run_hostile
from darktower.transport import generate_dev_certificate
from tests._fuzz import fuzz_cases, fuzz_rng
from tests._stack import dev_stack

# The checker's phases get this long in all; its final checks come on top (PROBE_S each).
BUDGET_S = 8.0
WAIT_S = 120  # a bound on the whole run on a shared machine; a healthy one takes ~10 s


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.45.6.7", "127.45.6.7"),
        ("localhost", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
    ],
)
def test_loopback_targets_are_accepted(host: str, expected: str) -> None:
    assert ensure_loopback(host) == expected


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "192.168.1.1", "8.8.8.8", "0.0.0.0", "::", "2001:db8::1", "::ffff:10.0.0.1",
     "example.com", "127.0.0.1.example.com", "", "128.0.0.1"],
)  # fmt: skip
def test_everything_else_is_refused_without_resolving(host: str) -> None:
    with pytest.raises(NotLoopback):
        ensure_loopback(host)


def test_no_target_outside_loopback_gets_through() -> None:
    with pytest.raises(NotLoopback):
        Targets.on("10.1.2.3", 8443, 8080, 4433, 4434, (50051,), (9102,))
    with pytest.raises(NotLoopback):
        check_targets([("127.0.0.1", 4433), ("192.0.2.1", 4433)])
    for argv in (
        ["--gc", "https://192.0.2.1:8443"],
        ["--signal", "https://example.com:4433/v1/signal"],
        ["--grpc", "127.0.0.1:50051,10.0.0.1:50052"],
        ["--page", "http://[2001:db8::1]:8080"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
    targets, _, _ = parse_args([])  # the dev stack's defaults are all loopback
    assert {e.host for e in targets.endpoints()} == {"127.0.0.1"}


def test_spoofed_sources_are_loopback_and_never_the_clients_address() -> None:
    sources = spoofed_sources(250)
    assert len(set(sources)) == 250
    assert "127.0.0.1" not in sources
    assert all(ensure_loopback(s) == s for s in sources)
    with pytest.raises(ValueError):
        spoofed_sources(251)


def test_forged_initials_are_real_connection_attempts(tmp_path: pathlib.Path) -> None:
    """Each forged datagram is a 1,200-byte client Initial under a new connection ID that an
    aioquic server decrypts and answers with its handshake."""
    certfile, keyfile = generate_dev_certificate().write(str(tmp_path))
    server_config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    server_config.load_cert_chain(str(certfile), str(keyfile))
    forge = InitialForge()
    seen = set()
    for _ in range(5):
        datagram = forge.initial()
        assert len(datagram) == 1200
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
        assert header.packet_type == QuicPacketType.INITIAL
        seen.add(header.destination_cid)
        server = QuicConnection(
            configuration=server_config, original_destination_connection_id=header.destination_cid
        )
        now = time.monotonic()
        server.receive_datagram(datagram, ("127.0.0.2", 40000), now=now)
        answer = server.datagrams_to_send(now=now)
        assert answer and len(answer[0][0]) >= 1200  # ServerHello and the handshake flight
        assert server._close_event is None
    assert len(seen) == 5


@pytest.mark.fuzz
async def test_every_service_answers_after_hostile_traffic(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        options = Options(
            budget_s=BUDGET_S,
            cases=fuzz_cases(40),
            seed=fuzz_rng("hostile checker").randrange(2**32),
            flood_rate=200,
            sources=16,
        )
        with trio.fail_after(WAIT_S):
            report = await run_hostile(Targets.from_running(stack), options)
    print(report.text())
    delivered = {t.phase: t.cases for t in report.tallies}
    assert all(delivered[p] > 0 for p in ("udp", "flood", "tcp", "signaling", "requests")), (
        delivered
    )
    assert report.flood is not None and report.flood.sent > 0
    requests = next(t for t in report.tallies if t.phase == "requests")
    assert {"MC connect-path-//[x", "MH connect-path-//[x"} <= set(requests.kinds), requests.line()
    assert report.dead == [], report.text()
    assert report.ok
