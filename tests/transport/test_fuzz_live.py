"""Live fuzz loops against a real WebTransport server endpoint on 127.0.0.1: random and mutated
QUIC datagrams (mutations of real Initial and 1-RTT packets), then random HTTP/3 frames,
headers, stream prefixes and capsules on real connections. Afterwards a well-formed session
still opens, and nothing but the connections involved was closed."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from aioquic.buffer import encode_uint_var

from darktower.transport import (
    Connection,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportServer,
    WebTransportSession,
    connect_webtransport,
    open_quic_connection,
    open_session,
)
from tests._fuzz import fuzz_cases, fuzz_rng

from ._initials import client_initial, udp_socket
from .conftest import record_sent, start_server

pytestmark = pytest.mark.fuzz


async def _echo(session: WebTransportSession, context: object) -> None:
    while True:
        stream = await session.accept_stream()
        data = await stream.receive_some()  # type: ignore[union-attr]
        if hasattr(stream, "send_all"):
            await stream.send_all(data)
            await stream.send_eof()


@asynccontextmanager
async def _server(cert: TlsCredentials) -> AsyncIterator[tuple[WebTransportServer, int]]:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, cert, {"/echo": Route(_echo)})
        yield server, int(base.rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def _still_serves(cert: TlsCredentials, port: int) -> None:
    with trio.fail_after(10):
        async with connect_webtransport(
            f"https://127.0.0.1:{port}/echo", server_certificate_hashes=[cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"well-formed")
            assert await stream.receive_some() == b"well-formed"


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:  # flip bits
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:  # overwrite a header byte (type, version, lengths)
            buf[rng.randrange(min(len(buf), 24))] = rng.randrange(256)
        else:  # pad to the Initial minimum
            buf.extend(bytes(max(0, 1200 - len(buf))))
    return bytes(buf)


async def _recorded_packets(cert: TlsCredentials, port: int) -> list[bytes]:
    """Datagrams a real client sends during a session (Initial, Handshake, 1-RTT)."""
    async with open_quic_connection(
        "127.0.0.1", port, server_certificate_hashes=[cert.sha256]
    ) as conn:
        sent = record_sent(conn)
        session = await open_session(conn, f"127.0.0.1:{port}", "/echo")
        stream = await session.open_bidirectional_stream()
        await stream.send_all(b"x" * 3000)
        await stream.receive_some()
        session.send_datagram(b"datagram")
        await session.close()
    return sent


async def test_fuzz_datagrams_into_server_endpoint(dev_cert: TlsCredentials) -> None:
    rng = fuzz_rng("transport datagrams")
    async with _server(dev_cert) as (server, port):
        seeds = [client_initial(port) for _ in range(4)] + await _recorded_packets(dev_cert, port)
        async with (
            open_quic_connection(
                "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256]
            ) as bystander,
        ):
            bystander_session = await open_session(bystander, f"127.0.0.1:{port}", "/echo")
            with await udp_socket("127.0.0.2") as sock:
                for case in range(fuzz_cases()):
                    if rng.random() < 0.2:
                        data = rng.randbytes(rng.randint(0, 1500))
                    else:
                        data = _mutate(rng, rng.choice(seeds))
                    await sock.sendto(data, ("127.0.0.1", port))
                    if case % 16 == 0:
                        await trio.testing.wait_all_tasks_blocked(0.01)
            assert not bystander.terminated.is_set()
            stream = await bystander_session.open_bidirectional_stream()
            await stream.send_all(b"bystander")
            with trio.fail_after(5):
                assert await stream.receive_some() == b"bystander"
        await _still_serves(dev_cert, port)
        print("counters:", dict(server.counters))


def _random_headers(rng: random.Random, port: int) -> list[tuple[bytes, bytes]]:
    good = [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b":path", b"/echo"),
        (b":protocol", b"webtransport"),
    ]
    headers = [h for h in good if rng.random() < 0.85]
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(
            [b":path", b":authority", b":x", b"origin", rng.randbytes(4).hex().encode()]
        )
        value = rng.choice(
            [rng.randbytes(rng.randint(0, 20)), b"//[x", b"/" + b"a" * 9000, b"http"]
        )
        headers.insert(rng.randint(0, len(headers)), (name, value))
    return headers


def _random_frames(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 4)):
        frame_type = rng.choice([0x0, 0x1, 0x4, 0x7, 0xD, 0x41, 0x21, rng.randrange(2**16)])
        payload = rng.randbytes(rng.randint(0, 40))
        length = len(payload) if rng.random() < 0.8 else rng.randrange(2**20)
        out += encode_uint_var(frame_type) + encode_uint_var(length) + payload
    return out


async def _fuzz_one(rng: random.Random, conn: Connection, port: int) -> None:
    quic = conn.quic
    kind = rng.randrange(5)
    if kind == 0:  # random request headers
        stream_id = quic.get_next_available_stream_id()
        conn.send_headers(stream_id, _random_headers(rng, port), rng.random() < 0.5)
    elif kind == 1:  # random HTTP/3 frames on a new request stream
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, _random_frames(rng), rng.random() < 0.5)
    elif kind == 2:  # a new unidirectional stream: random type, random frames
        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
        stream_type = rng.choice([0x0, 0x2, 0x3, 0x54, rng.randrange(2**14)])
        quic.send_stream_data(stream_id, encode_uint_var(stream_type) + _random_frames(rng))
    elif kind == 3:  # a WebTransport stream prefix for a random (or no) session
        stream_id = quic.get_next_available_stream_id()
        session_id = rng.choice([0, 4, rng.randrange(2**30)])
        quic.send_stream_data(
            stream_id, encode_uint_var(0x41) + encode_uint_var(session_id) + rng.randbytes(8)
        )
    else:  # random capsules on a live session's CONNECT stream
        session = await open_session(conn, f"127.0.0.1:{port}", "/echo")
        conn.send_data(session.session_id, _random_frames(rng), rng.random() < 0.3)
    conn.schedule_flush()


async def test_fuzz_http3_on_real_connections(dev_cert: TlsCredentials) -> None:
    rng = fuzz_rng("transport http3")
    reconnects = 0
    async with _server(dev_cert) as (server, port):
        cases = fuzz_cases(100)
        done = 0
        while done < cases:
            async with open_quic_connection(
                "127.0.0.1",
                port,
                server_certificate_hashes=[dev_cert.sha256],
                # aioquic writes the garbage whatever the server's core: qh3 2.1's QPACK
                # encoder panics on some of it, and it is the server that is under test.
                limits=TransportLimits(quic_core="aioquic"),
            ) as conn:
                while done < cases and not conn.terminated.is_set():
                    done += 1
                    try:
                        with trio.move_on_after(2):
                            await _fuzz_one(rng, conn, port)
                    except (
                        trio.BrokenResourceError,
                        trio.ClosedResourceError,
                        *conn.core.stream_errors,
                    ):
                        pass  # the server refused or closed: expected for garbage
                    await trio.testing.wait_all_tasks_blocked(0.01)
                reconnects += 1
        await _still_serves(dev_cert, port)
        print(f"{cases} cases over {reconnects} connections; counters:", dict(server.counters))
