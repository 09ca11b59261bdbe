"""The optional qh3 QUIC core behind the same trio driver, against the default aioquic core:
every pairing opens a WebTransport session over 127.0.0.1 and echoes each stream kind and
datagrams (skipped when qh3 is not installed)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.transport import (
    Route,
    StreamLimitExceeded,
    StreamReset,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
)
from darktower.transport._config import PTO_BACKOFF_CAP_S
from darktower.transport._core import load_core

from .conftest import EndRecorder, start_server, wait_until
from .test_echo import _read_all, echo_handler
from .test_probe_backoff import BLACKOUT_S, RTT_S, Blackout, _gaps, _open_pair

pytest.importorskip("qh3")

ENABLE_CONNECT_PROTOCOL = 0x8
PAIRINGS = [("qh3", "aioquic"), ("aioquic", "qh3"), ("qh3", "qh3")]


@pytest.mark.parametrize(("server_core", "client_core"), PAIRINGS)
async def test_session_across_cores(
    dev_cert: TlsCredentials, server_core: str, client_core: str
) -> None:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(
            nursery,
            dev_cert,
            {"/echo": Route(echo_handler)},
            limits=TransportLimits(quic_core=server_core),
        )
        with trio.fail_after(10):
            async with connect_webtransport(
                base + "/echo",
                server_certificate_hashes=[dev_cert.sha256],  # pinning on both cores
                limits=TransportLimits(quic_core=client_core),
            ) as session:
                conn = session._conn
                assert conn.core.name == client_core
                # A WebTransport server announces extended CONNECT (qh3 alone would not).
                assert conn.h3.received_settings[ENABLE_CONNECT_PROTOCOL] == 1

                stream = await session.open_bidirectional_stream()
                await stream.send_all(b"hello" * 1000)
                await stream.send_eof()
                assert await _read_all(stream) == b"hello" * 1000

                uni = await session.open_unidirectional_stream()
                await uni.send_all(b"uni hello")
                await uni.aclose()
                incoming = await session.accept_stream()
                assert isinstance(incoming, WebTransportReceiveStream)
                assert await _read_all(incoming) == b"echo:uni hello"

                ask = await session.open_bidirectional_stream()
                await ask.send_all(b"open-bidi")
                await ask.send_eof()
                server_bidi = await session.accept_stream()
                assert isinstance(server_bidi, WebTransportStream)
                assert await _read_all(server_bidi) == b"from server"
                await server_bidi.send_all(b"pong")
                await server_bidi.send_eof()
                assert await _read_all(ask) == b"client said pong"

                biggest = b"x" * session.max_datagram_size
                session.send_datagram(biggest)
                assert await session.receive_datagram() == biggest

                stats = conn.transport_stats()
                assert stats.packets_sent > 0
                assert stats.rtt_ms > 0
        # No connection ended in the error boundary (a handshake failure would land there).
        assert not [k for k in server.counters if k.startswith("peer_error")]
        nursery.cancel_scope.cancel()


def test_core_selection() -> None:
    assert load_core("aioquic").name == "aioquic"
    assert load_core("qh3").name == "qh3"
    assert load_core("auto").name == "qh3"  # installed here
    with pytest.raises(ValueError, match="unknown QUIC core"):
        load_core("quiche")
    with pytest.raises(ValueError):
        TransportLimits(quic_core="quiche")


async def test_unread_stream_is_bounded_on_qh3(dev_cert: TlsCredentials) -> None:
    # qh3 grants stream credit as data arrives: a stream nobody reads stops receiving at the
    # window (_streams.py) instead of buffering what the peer sends.
    window = 64 * 1024
    held = trio.Event()
    done = trio.Event()

    async def never_reads(session: WebTransportSession, context: object) -> None:
        await session.accept_stream()
        held.set()
        await done.wait()

    async with trio.open_nursery() as nursery:
        server, base = await start_server(
            nursery,
            dev_cert,
            {"/sink": Route(never_reads)},
            limits=TransportLimits(quic_core="qh3", stream_receive_window=window),
        )
        with trio.fail_after(10):
            async with connect_webtransport(
                base + "/sink", server_certificate_hashes=[dev_cert.sha256]
            ) as session:
                stream = await session.open_unidirectional_stream()
                with pytest.raises(StreamReset) as caught:
                    for _ in range(64):
                        await stream.send_all(b"x" * window)
                assert caught.value.stop_sending
                done.set()
        assert server.counters["receive_window_overrun"] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("prober", ["server", "client"])
async def test_qh3_probes_a_blackout_within_the_backoff_cap(
    dev_cert: TlsCredentials, autojump_clock: Any, prober: str
) -> None:
    # qh3's backoff doubles without bound; _quic_qh3.py PINGs once per cap while it backs off.
    limits = TransportLimits(quic_core="qh3")
    peer = EndRecorder()
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(peer)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as client:
            await peer.started.wait()
            assert peer.session is not None and server.endpoint is not None
            if prober == "server":
                sender, receiver, endpoint = peer.session, client, server.endpoint
            else:
                sender, receiver, endpoint = client, peer.session, client._conn.endpoint
            out, incoming = await _open_pair(sender, receiver)
            await trio.sleep(1.0)
            blackout = Blackout(endpoint)
            blackout.on = True
            started_at = trio.current_time()
            await out.send_all(b"during")
            await trio.sleep(BLACKOUT_S)
            blackout.on = False
            back_at = trio.current_time()
            with trio.fail_after(PTO_BACKOFF_CAP_S + RTT_S):
                assert await incoming.receive_some() == b"during"
            sent = [started_at, *blackout.sent_at, back_at]
            assert max(_gaps(sent)) <= PTO_BACKOFF_CAP_S + 0.01, _gaps(sent)
            assert len(blackout.sent_at) <= 2 * BLACKOUT_S / PTO_BACKOFF_CAP_S + 10
        nursery.cancel_scope.cancel()


async def test_qh3_handshake_retransmits_at_its_own_pace_without_pings(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    # qh3 sends a PING in 1-RTT packets only, so before the handshake completes the backoff
    # cap cannot be kept with PINGs and none is asked for (docs/decisions.md, qh3 item 3):
    # the client's own retransmissions of its Initials, at qh3's doubling pace, finish the
    # handshake once the server reads again.
    limits = TransportLimits(quic_core="qh3")
    async with trio.open_nursery() as nursery:
        server, base = await start_server(
            nursery, dev_cert, {"/s": Route(EndRecorder())}, limits=limits
        )
        assert server.endpoint is not None
        blackout = Blackout(server.endpoint)
        blackout.on = True

        async def lift() -> None:
            await trio.sleep(3.0)
            blackout.on = False

        nursery.start_soon(lift)
        started_at = trio.current_time()
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as client:
            assert trio.current_time() - started_at > 3.0
            assert client._conn.quic.dt_probes == 0
        nursery.cancel_scope.cancel()


async def test_qh3_refuses_a_stream_beyond_the_peers_limit_until_credit_comes(
    dev_cert: TlsCredentials,
) -> None:
    # aioquic holds a stream beyond the peer's MAX_STREAMS until credit comes; qh3 cannot, so
    # opening one raises StreamLimitExceeded (the MH retries later), never a raw ValueError.
    accepted: list[object] = []

    async def sink(session: WebTransportSession, context: object) -> None:
        while True:
            accepted.append(await session.accept_stream())

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/s": Route(sink)})
        with trio.fail_after(10):
            async with connect_webtransport(
                base + "/s",
                server_certificate_hashes=[dev_cert.sha256],
                limits=TransportLimits(quic_core="qh3"),
            ) as session:
                opened = []
                with pytest.raises(StreamLimitExceeded):
                    for _ in range(200):
                        stream = await session.open_unidirectional_stream()
                        await stream.send_all(b"x")
                        opened.append(stream)
                assert len(opened) >= 100
                assert session.unidirectional_stream_credit == 0
                for stream in opened[:10]:
                    await stream.aclose()
                await wait_until(lambda: session.unidirectional_stream_credit > 0, "credit")
                await (await session.open_unidirectional_stream()).aclose()
        nursery.cancel_scope.cancel()


def test_qh3_server_accepts_a_client_with_an_empty_connection_id(dev_cert: TlsCredentials) -> None:
    # Chromium's Source Connection ID is empty; qh3 2.1's facade does not learn an empty one,
    # and its transport-parameter check then refused the handshake (_quic_qh3.py). An aioquic
    # client with zero-length IDs, in memory. (qh3's core still addresses such a client by its
    # original Destination Connection ID when that is not empty: docs/decisions.md, qh3.)
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from darktower.transport._quic_qh3 import Qh3Connection, qh3_configuration

    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], connection_id_length=0, verify_mode=0
        )
    )
    server_config = qh3_configuration(
        TransportLimits(quic_core="qh3"), is_client=False, tls=dev_cert
    )
    server: Qh3Connection | None = None
    client.connect(("127.0.0.1", 4433), now=0.0)
    now = 0.0
    for _ in range(4):
        for data, _addr in client.datagrams_to_send(now):
            if server is None:
                server = Qh3Connection(
                    configuration=server_config,
                    original_destination_connection_id=data[6 : 6 + data[5]],
                    consumed=lambda _sid: None,
                    window=65536,
                )
            server.receive_datagram(data, ("127.0.0.1", 5555), now)
        assert server is not None
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, ("127.0.0.1", 4433), now)
        now += 0.001
    assert server is not None and server._handshake_complete
    assert client._handshake_complete
