"""Fuzz the GC's listeners over real sockets on 127.0.0.1: random and mutated QUIC datagrams,
random HTTP/3 frames and header sets on a real HTTP/3 connection, random and mutated HTTP/1.1
requests over TLS. After each run the GC still answers GET /healthz over HTTP/3 and TLS, and
no connection needed its error boundary in a way that ended a listener."""

from __future__ import annotations

import pathlib
import random
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.lowlevel
from aioquic.buffer import encode_uint_var
from aioquic.quic.events import StreamReset

from darktower.transport import open_http3_client
from tests._fuzz import fuzz_cases, fuzz_rng
from tests.global_controller._harness import Stack, gc_stack
from tests.transport._http3_peer import WAIT_S, Http3Peer, initial_datagram, udp_socket

pytestmark = pytest.mark.fuzz


@pytest.fixture
async def stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    # Incomplete fuzzed requests are closed after 0.5 s of silence instead of 30 s.
    async with gc_stack(tmp_path / "data", http_read_timeout_s=0.5) as s:
        yield s


async def _still_answers(stack: Stack) -> None:
    with trio.fail_after(WAIT_S):
        async with open_http3_client(stack.url, verify=False) as h3:
            assert (await h3.request("GET", "/healthz")).status == 200

    def h1() -> int:
        with httpx.Client(verify=False) as client:
            return client.get(f"{stack.url}/healthz").status_code

    assert await trio.to_thread.run_sync(h1) == 200


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.5 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.7 and out:
            del out[rng.randrange(len(out)) :]
        elif choice < 0.85:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        elif out:
            at = rng.randrange(len(out))
            del out[at : at + rng.randint(1, 16)]
    return bytes(out)


async def test_random_and_mutated_quic_datagrams(stack: Stack) -> None:
    rng = fuzz_rng("gc quic datagrams")
    port = stack.running.port
    sock = trio.socket.from_stdlib_socket(udp_socket("127.0.0.2"))
    with sock:
        initials = [initial_datagram(port) for _ in range(8)]
        for _ in range(fuzz_cases()):
            if rng.random() < 0.3:
                data = rng.randbytes(rng.choice([1, 20, 100, 1200, 1500]))
            else:
                data = _mutate(rng, rng.choice(initials))
            await sock.sendto(data, ("127.0.0.1", port))
            await trio.lowlevel.checkpoint()
    await _still_answers(stack)
    counters = stack.running.listener_counters
    assert not [k for k in counters if k.startswith("quic_error")], counters


def _frame(rng: random.Random) -> bytes:
    kind = rng.choice([0x0, 0x1, 0x3, 0x4, 0x5, 0x7, 0xD, 0x21, rng.randrange(2**30)])
    payload = rng.randbytes(rng.choice([0, 1, 7, 100]))
    length = len(payload) if rng.random() < 0.8 else rng.randrange(2**14)
    return encode_uint_var(kind) + encode_uint_var(length) + payload


_PSEUDO = [b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b":x"]
_VALUES = [b"GET", b"POST", b"CONNECT", b"https", b"/healthz", b"//[x", b"", b"\xff\xfe", b"\0"]


def _headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    names = [*_PSEUDO, b"content-length", b"x-a", b"Upper", b"te", b"connection"]
    return [
        (rng.choice(names), rng.choice([*_VALUES, rng.randbytes(rng.randint(0, 20))]))
        for _ in range(rng.randint(0, 7))
    ]


async def test_random_http3_frames_and_headers_on_a_real_connection(stack: Stack) -> None:
    rng = fuzz_rng("gc http3 frames")
    port = stack.running.port
    peer: Http3Peer | None = None
    stalled = 0
    try:
        for _ in range(fuzz_cases(60)):
            if peer is None:
                peer = Http3Peer("127.0.0.2", port)
                assert await peer.connect(), stack.running.listener_counters
            stream_id = peer.quic.get_next_available_stream_id(is_unidirectional=rng.random() < 0.2)
            if rng.random() < 0.5:
                try:
                    peer.h3.send_headers(stream_id, _headers(rng), end_stream=rng.random() < 0.5)
                except Exception:
                    continue  # aioquic's own client refused to encode it
            else:
                data = b"".join(_frame(rng) for _ in range(rng.randint(1, 4)))
                peer.quic.send_stream_data(stream_id, data, end_stream=rng.random() < 0.5)
            # A well-formed request on the same connection: answered, or the server closed
            # the connection (a protocol error in the fuzzed input), or the fuzzed input
            # stalled it (e.g. a QPACK stream waiting for more): we open another.
            if await peer.get("/healthz", wait_s=1.0) != 200:
                stalled += peer.terminated is None
                peer.close()
                peer = None
    finally:
        if peer is not None:
            peer.close()
    print(f"connections stalled by fuzzed input: {stalled}")
    await _still_answers(stack)
    counters = stack.running.listener_counters
    assert not [k for k in counters if k.startswith("quic_error")], counters


@pytest.mark.parametrize(
    "bad",
    [
        [(b":method", b"\xff"), (b":path", b"/healthz")],  # hypercorn decodes it as ASCII
        [(b":method", b"GET"), (b":path", b"/\xffhealthz")],
    ],
    ids=["method", "path"],
)
async def test_a_request_hypercorn_cannot_read_resets_its_stream_only(
    stack: Stack, bad: list[tuple[bytes, bytes]]
) -> None:
    # Found by the fuzz test above (seed 1887033835): a non-ASCII :method closed the whole
    # connection. Now that request's stream is reset and the connection goes on.
    peer = Http3Peer("127.0.0.2", stack.running.port)
    try:
        assert await peer.connect()
        stream_id = peer.quic.get_next_available_stream_id()
        authority = (b":authority", f"127.0.0.1:{stack.running.port}".encode())
        headers = [bad[0], (b":scheme", b"https"), authority, *bad[1:]]
        peer.h3.send_headers(stream_id, headers, end_stream=True)
        resets: list[int] = []

        def on_event(event: object) -> None:
            if isinstance(event, StreamReset):
                resets.append(event.stream_id)

        await peer.run_until(lambda: resets, on_event)
        assert resets == [stream_id]
        assert await peer.get("/healthz") == 200
        assert peer.terminated is None
    finally:
        peer.close()
    counters = stack.running.listener_counters
    assert counters["quic_stream_error:UnicodeDecodeError"] == 1, counters
    assert not [k for k in counters if k.startswith("quic_error")], counters


def _request(rng: random.Random) -> bytes:
    lines = [
        rng.choice([b"GET /healthz HTTP/1.1", b"POST /api/v1/meetings HTTP/1.1", b"GET  HTTP/9"]),
        b"Host: 127.0.0.1",
        rng.choice([b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Expect: 100-continue"]),
    ]
    request = b"\r\n".join(lines) + b"\r\n\r\nhello"
    return _mutate(rng, request) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 300))


async def test_random_and_mutated_http1_requests_over_tls(stack: Stack) -> None:
    rng = fuzz_rng("gc http1 requests")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def one(request: bytes) -> None:
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", stack.running.port),
            context,
            server_hostname="x",
            https_compatible=True,
        )
        try:
            with trio.fail_after(WAIT_S):
                await stream.send_all(request)
                # An answer, or a close (at once, or after the read timeout if incomplete).
                await stream.receive_some()
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    cases = [_request(rng) for _ in range(fuzz_cases(60))]
    for batch in range(0, len(cases), 30):  # under the per-address cap (64)
        async with trio.open_nursery() as nursery:
            for request in cases[batch : batch + 30]:
                nursery.start_soon(one, request)
    await _still_answers(stack)
    counters = stack.running.listener_counters
    assert not [k for k in counters if k.startswith("tcp_error")], counters
