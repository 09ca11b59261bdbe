"""Garbage and half-finished TLS, HTTP/1.1 and HTTP/2 on the TCP ports.

Each case opens its own connection, sends its bytes, reads what comes back for a moment and
closes; a "hold" case keeps its half-finished connection open until the phase ends (slowloris:
a server must time these out or cap them, not wait forever).
"""

from __future__ import annotations

import random
import ssl
import struct
from collections.abc import Callable, Iterator

import attrs
import trio

from ._tally import Tally

# How long a case waits to connect, to send and for an answer to read.
CONNECT_S = 3.0
SEND_S = 3.0
READ_S = 0.5
# Bytes of an answer read (and discarded) per case.
READ_LIMIT = 64 * 1024
# Cases run at once, and half-finished connections held at once, per phase.
CONCURRENCY = 8
MAX_HELD = 64
# How long half-finished connections stay open after the last other case of the phase.
HOLD_S = 1.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@attrs.frozen
class TcpTarget:
    name: str
    host: str
    port: int
    kind: str  # "https" (TLS: HTTP/1.1 and h2), "http" (plain HTTP/1.1), "h2c" (gRPC)


@attrs.frozen
class TcpCase:
    kind: str
    payload: bytes
    tls: bool = False  # complete a TLS handshake first, then send ``payload`` inside it
    alpn: str = "http/1.1"
    hold: bool = False  # keep the connection open until the phase ends


def tls_context(alpn: str) -> ssl.SSLContext:
    """A client context that accepts any certificate: the checker attacks, it trusts nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([alpn])
    return context


def client_hello(alpn: str = "http/1.1") -> bytes:
    """The bytes of a real TLS ClientHello (from Python's ssl, never sent by it)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_context(alpn).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def h2_frame(frame_type: int, flags: int, stream: int, payload: bytes, length: int = -1) -> bytes:
    size = len(payload) if length < 0 else length
    return (
        struct.pack(">I", size)[1:]
        + bytes([frame_type, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _http_cases(rng: random.Random) -> list[tuple[str, Callable[[], bytes], bool]]:
    """(kind, payload, hold) of malformed HTTP/1.1 requests."""

    def big(n: int) -> bytes:
        return b"a" * n

    return [
        ("http-garbage-line", lambda: b"GARBAGE\r\n\r\n", False),
        ("http-random", lambda: rng.randbytes(rng.randint(1, 4096)), False),
        ("http-bad-version", lambda: b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", False),
        (
            "http-huge-path",
            lambda: b"GET /" + big(64 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            False,
        ),
        (
            "http-huge-header",
            lambda: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + big(100 * 1024) + b"\r\n\r\n",
            False,
        ),
        (
            "http-many-headers",
            lambda: b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
            False,
        ),
        ("http-header-no-colon", lambda: b"GET / HTTP/1.1\r\nHost x\r\nzzz\r\n\r\n", False),
        ("http-nul", lambda: b"GET /\x00 HTTP/1.1\r\nHost: \x00\xff\r\n\r\n", False),
        ("http-bare-lf", lambda: b"GET / HTTP/1.1\nHost: x\n\n", False),
        (
            "http-absolute-form",
            lambda: b"GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
            False,
        ),
        ("http-connect", lambda: b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (
            "http-bad-chunked",
            lambda: (
                b"POST /api/v1/meetings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"\r\nzz\r\n" + rng.randbytes(100)
            ),
            False,
        ),
        (
            "http-cl-and-te",
            lambda: (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n"
            ),
            False,
        ),
        (
            "http-negative-length",
            lambda: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabc",
            False,
        ),
        (
            "http-bad-json",
            lambda: (
                b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b'\r\nContent-Length: 9\r\n\r\n{"a":[[['
            ),
            False,
        ),
        (
            "http-pipelined",
            lambda: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200,
            False,
        ),
        (
            "http-h2c-upgrade-garbage",
            lambda: (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: !!!\r\n\r\n" + rng.randbytes(64)
            ),
            False,
        ),
        ("http-h2-preface-garbage", lambda: H2_PREFACE + rng.randbytes(200), False),
        ("hold-partial-line", lambda: b"GET /", True),
        ("hold-partial-headers", lambda: b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b", True),
        (
            "hold-short-body",
            lambda: (
                b"POST /api/v1/meetings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{"
            ),
            True,
        ),
        ("hold-nothing", lambda: b"", True),
    ]


def _h2_cases(rng: random.Random) -> list[tuple[str, Callable[[], bytes], bool]]:
    """(kind, payload, hold) of malformed HTTP/2 (after the client preface)."""
    settings = h2_frame(0x4, 0, 0, b"")
    return [
        ("h2-random", lambda: H2_PREFACE + rng.randbytes(rng.randint(1, 2048)), False),
        ("h2-bad-settings-length", lambda: H2_PREFACE + h2_frame(0x4, 0, 0, b"1234567"), False),
        (
            "h2-garbage-headers",
            lambda: H2_PREFACE + settings + h2_frame(0x1, 0x5, 1, rng.randbytes(200)),
            False,
        ),
        ("h2-even-stream", lambda: H2_PREFACE + settings + h2_frame(0x1, 0x5, 2, b"\x82"), False),
        (
            "h2-zero-window-update",
            lambda: H2_PREFACE + settings + h2_frame(0x8, 0, 0, b"\0\0\0\0"),
            False,
        ),
        (
            "h2-continuation-alone",
            lambda: H2_PREFACE + settings + h2_frame(0x9, 0x4, 1, b"\x82"),
            False,
        ),
        (
            "h2-ping-flood",
            lambda: H2_PREFACE + settings + h2_frame(0x6, 0, 0, b"p" * 8) * 2000,
            False,
        ),
        ("h2-settings-flood", lambda: H2_PREFACE + settings * 2000, False),
        (
            "h2-rapid-reset",  # HEADERS then RST_STREAM, 500 streams
            lambda: (
                H2_PREFACE
                + settings
                + b"".join(
                    h2_frame(0x1, 0x4, s, b"\x83\x86\x84") + h2_frame(0x3, 0, s, b"\0\0\0\x08")
                    for s in range(1, 1001, 2)
                )
            ),
            False,
        ),
        (
            "h2-huge-frame",
            lambda: H2_PREFACE + settings + h2_frame(0x0, 0, 1, b"x" * 100, length=0xFFFFFF),
            True,
        ),
        ("h2-http1-request", lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        ("hold-partial-preface", lambda: H2_PREFACE[:10], True),
    ]


def cases_for(target: TcpTarget, rng: random.Random) -> Iterator[TcpCase]:
    """Endless cases for ``target``, drawn at random from what its protocol allows."""
    # (kind, payload maker, hold, tls, alpn)
    specs: list[tuple[str, Callable[[], bytes], bool, bool, str]] = [
        ("random", lambda: rng.randbytes(rng.randint(1, 8192)), False, False, ""),
        ("connect-close", lambda: b"", False, False, ""),
        ("random-1mib", lambda: rng.randbytes(1024 * 1024), False, False, ""),
    ]
    if target.kind == "https":
        hello = client_hello()
        specs += [
            ("tls-hello-then-close", lambda: hello, False, False, ""),
            ("tls-hello-cut", lambda: hello[: rng.randint(1, len(hello) - 1)], True, False, ""),
            ("tls-record-huge", lambda: b"\x16\x03\x01\xff\xff" + hello[5:], True, False, ""),
            (
                "tls-random-record",
                lambda: b"\x16\x03\x01\x02\x00" + rng.randbytes(512),
                False,
                False,
                "",
            ),
            ("tls-alert-first", lambda: b"\x15\x03\x03\x00\x02\x02\x28", False, False, ""),
            (
                "tls-http1-plaintext",
                lambda: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                False,
                False,
                "",
            ),
        ]
        specs += [("tls-" + k, m, h, True, "http/1.1") for k, m, h in _http_cases(rng)]
        specs += [("tls-" + k, m, h, True, "h2") for k, m, h in _h2_cases(rng)]
    elif target.kind == "http":
        specs += [(k, m, h, False, "") for k, m, h in _http_cases(rng)]
    else:
        specs += [(k, m, h, False, "") for k, m, h in _h2_cases(rng)]
    while True:
        kind, make, hold, tls, alpn = rng.choice(specs)
        yield TcpCase(kind, make(), tls=tls, alpn=alpn or "http/1.1", hold=hold)


async def _open(target: TcpTarget, case: TcpCase) -> trio.abc.Stream:
    with trio.fail_after(CONNECT_S):
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
        if case.tls:
            tls = trio.SSLStream(
                stream, tls_context(case.alpn), server_hostname="localhost", https_compatible=True
            )
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = tls
    return stream


async def _read_answer(stream: trio.abc.Stream) -> str:
    """'answered', 'closed' (EOF or reset without a byte) or 'silent' (nothing within READ_S)."""
    got = 0
    with trio.move_on_after(READ_S):
        try:
            while got < READ_LIMIT:
                data = await stream.receive_some(READ_LIMIT)
                if not data:
                    break
                got += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        return "answered" if got else "closed"
    return "answered" if got else "silent"


async def run_case(target: TcpTarget, case: TcpCase, tally: Tally, held: trio.Event) -> None:
    """Deliver one case; a hold case waits for ``held`` (the phase's end) before closing."""
    try:
        stream = await _open(target, case)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
        tally.failed(f"{target.name} {case.kind}", exc)
        return
    try:
        outcome = "sent"
        try:
            if case.payload:
                with trio.fail_after(SEND_S):
                    await stream.send_all(case.payload)
        except trio.TooSlowError:
            outcome = "send-stalled"  # the server stopped reading: its own backpressure
        except (trio.BrokenResourceError, OSError):
            outcome = "closed-while-sending"
        if outcome == "sent":
            outcome = "held" if case.hold else await _read_answer(stream)
        tally.record(f"{target.name} {case.kind}", f"{target.name} {outcome}")
        if case.hold:
            await held.wait()
    finally:
        await trio.aclose_forcefully(stream)


async def abuse_tcp(
    targets: list[TcpTarget], rng: random.Random, tally: Tally, *, cases: int, seconds: float
) -> None:
    """``cases`` cases spread over ``targets`` within ``seconds`` (whichever ends first);
    half-finished connections are held open for HOLD_S after the last other case."""
    generators = {t: cases_for(t, rng) for t in targets}
    held = trio.Event()
    limiter = trio.CapacityLimiter(CONCURRENCY)
    holding = 0

    async def one(target: TcpTarget, case: TcpCase, token: object) -> None:
        try:
            await run_case(target, case, tally, held)
        finally:
            limiter.release_on_behalf_of(token)

    async def hold(target: TcpTarget, case: TcpCase) -> None:
        nonlocal holding
        try:
            await run_case(target, case, tally, held)
        finally:
            holding -= 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as holders:
            async with trio.open_nursery() as nursery:
                for i in range(cases):
                    target = targets[i % len(targets)]
                    case = next(generators[target])
                    if case.hold:
                        if holding < MAX_HELD:
                            holding += 1
                            holders.start_soon(hold, target, case)
                        continue
                    token = object()
                    await limiter.acquire_on_behalf_of(token)
                    nursery.start_soon(one, target, case, token)
            await trio.sleep(HOLD_S)  # the half-finished connections sit open this long
            held.set()
    held.set()
