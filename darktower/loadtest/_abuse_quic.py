"""Abuse of the QUIC ports: malformed datagrams, spoofed Initial floods, malformed
WebTransport CONNECTs and raw HTTP/3 frames, streams, capsules and datagrams.

A malformed-request case runs on its own QUIC connection (the server may rightly close it),
then asks a well-formed question on the same connection (a CONNECT to an unknown path, or
``GET /healthz`` on the GC) to see whether the connection, or only the request, was refused.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio
from aioquic.buffer import encode_uint_var
from aioquic.h3 import events as h3e

from darktower.transport import Connection, open_quic_connection, open_session

from ._flood import FloodResult, InitialForge, SpoofedSources, flood, fuzz_datagrams
from ._tally import Tally

# How long a case waits for the answer to its malformed request, and to the follow-up.
CASE_ANSWER_S = 1.0
FOLLOW_UP_S = 3.0
# After raw bytes, how long before the follow-up (which shows what the bytes did).
SETTLE_S = 0.2
# QUIC connections (one per case) open at once.
CONCURRENCY = 8
# Datagrams sent before the fuzz yields to let the (maybe in-process) server read them.
FUZZ_BATCH = 32
FUZZ_PAUSE_S = 0.002
PROBE_PATH = "/hostile-checker-probe"  # a path no service serves: a live one answers 404


@attrs.frozen
class QuicTarget:
    name: str
    host: str
    port: int
    path: str  # the WebTransport route ("" for the GC, which serves plain HTTP/3)
    pins: tuple[bytes, ...] = ()
    # Sent by the CONNECTs meant to be well-formed: the services refuse one without an allowed
    # origin (the client library sends its GC's, as here).
    origin: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# --- datagrams -----------------------------------------------------------------------------
async def fuzz_udp(
    targets: Sequence[QuicTarget],
    rng: random.Random,
    tally: Tally,
    *,
    cases: int,
    seconds: float,
    sources: int = 16,
) -> None:
    """Random and mutated QUIC datagrams from spoofed sources, round-robin over ``targets``."""
    forge = InitialForge()
    spoofed = SpoofedSources(sources)
    datagrams = fuzz_datagrams(rng, forge)
    try:
        with trio.move_on_after(seconds):
            for i in range(cases):
                target = targets[i % len(targets)]
                kind, data = next(datagrams)
                if spoofed.send(data, target.address):
                    tally.record(f"{target.name} {kind}")
                else:
                    tally.failed(f"{target.name} {kind}", "send buffer full")
                if i % FUZZ_BATCH == FUZZ_BATCH - 1:
                    await trio.sleep(FUZZ_PAUSE_S)
    finally:
        spoofed.close()


async def spoofed_flood(
    targets: Sequence[QuicTarget],
    tally: Tally,
    *,
    rate: float,
    seconds: float,
    sources: int = 32,
    during: Callable[[], Awaitable[None]] | None = None,
) -> FloodResult:
    """Spoofed Initials at ``rate`` per second for ``seconds`` (in a worker thread), while
    ``during()`` runs (e.g. a legitimate join); stops early if ``during`` returns early."""
    stop = threading.Event()
    forge = await trio.to_thread.run_sync(InitialForge)
    result: FloodResult | None = None

    async def run() -> None:
        nonlocal result
        result = await trio.to_thread.run_sync(
            lambda: flood(
                [t.address for t in targets],
                rate,
                sources=sources,
                stop=stop,
                max_s=seconds,
                forge=forge,
            )
        )

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            if during is not None:
                await during()
            else:
                await trio.sleep(seconds)
            stop.set()
    finally:
        stop.set()
    assert result is not None
    for _ in range(result.sent):
        tally.record("spoofed initial", "unanswered by design")
    return result


# --- malformed requests ----------------------------------------------------------------------
def _connect_headers(target: QuicTarget, path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", target.authority.encode()),
        (b":path", path),
        (b":protocol", b"webtransport"),
        (b"sec-webtransport-http3-draft02", b"1"),
        *([(b"origin", target.origin.encode())] if target.origin else []),
    ]


def connect_cases(target: QuicTarget) -> list[tuple[str, list[tuple[bytes, bytes]], bool]]:
    """(kind, header list, end_stream) of malformed extended CONNECTs."""
    path = (target.path or "/").encode()

    def replaced(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
        out = []
        for k, v in _connect_headers(target, path):
            if k == name:
                if value is None:
                    continue
                v = value
            out.append((k, v))
        return out

    return [
        ("connect-path-//[x", replaced(b":path", b"//[x"), False),
        ("connect-path-/[x", replaced(b":path", b"/[x"), False),
        ("connect-path-//[::1]:99999", replaced(b":path", b"//[::1]:99999/x"), False),
        ("connect-path-9kib", replaced(b":path", path + b"?" + b"a" * 9216), False),
        ("connect-path-60kib", replaced(b":path", b"/" + b"a" * 60000), False),
        ("connect-path-relative", replaced(b":path", path.lstrip(b"/")), False),
        ("connect-path-absolute-url", replaced(b":path", b"https://evil.example" + path), False),
        ("connect-path-asterisk", replaced(b":path", b"*"), False),
        ("connect-path-empty", replaced(b":path", b""), False),
        ("connect-path-non-utf8", replaced(b":path", path + b"\xff\xfe?\xc0=\x80"), False),
        ("connect-path-bad-query", replaced(b":path", path + b"?token=%zz%00&&=&%"), False),
        ("connect-no-path", replaced(b":path", None), False),
        ("connect-no-authority", replaced(b":authority", None), False),
        ("connect-no-protocol", replaced(b":protocol", None), False),
        ("connect-no-scheme", replaced(b":scheme", None), False),
        ("connect-no-method", replaced(b":method", None), False),
        ("connect-protocol-websocket", replaced(b":protocol", b"websocket"), False),
        ("connect-scheme-http", replaced(b":scheme", b"http"), False),
        ("connect-authority-9kib", replaced(b":authority", b"a" * 9216), False),
        ("connect-authority-bad", replaced(b":authority", b"[x:1"), False),
        ("connect-method-get", replaced(b":method", b"GET"), False),
        (
            "connect-duplicate-path",
            [*_connect_headers(target, path), (b":path", b"//[x")],
            False,
        ),
        (
            "connect-pseudo-after-regular",
            [(b"origin", b"https://x"), *_connect_headers(target, path)],
            False,
        ),
        ("connect-uppercase-header", [*_connect_headers(target, path), (b"Origin", b"x")], False),
        (
            "connect-bad-origin",
            [*_connect_headers(target, path), (b"origin", b"\xff\x00\r\n[x")],
            False,
        ),
        (
            "connect-many-headers",
            _connect_headers(target, path) + [(b"x-h%d" % i, b"v" * 50) for i in range(500)],
            False,
        ),
        ("connect-ended-at-once", _connect_headers(target, path), True),
    ]


def raw_cases(rng: random.Random) -> list[tuple[str, bool, bytes]]:
    """(kind, unidirectional, bytes) sent raw on a new stream, below HTTP/3."""
    v = encode_uint_var
    junk = rng.randbytes
    return [
        ("h3-random-request-stream", False, junk(rng.randint(1, 2000))),
        ("h3-data-before-headers", False, b"\x00\x05hello"),
        ("h3-garbage-qpack", False, b"\x01" + v(200) + junk(200)),
        ("h3-huge-frame-length", False, b"\x01" + v(2**62 - 1) + junk(100)),
        ("h3-truncated-frame", False, b"\x01" + v(1000) + junk(10)),
        ("h3-settings-on-request", False, b"\x04\x00"),
        ("h3-http2-frame-type", False, b"\x06\x00"),
        ("h3-reserved-frame-type", False, v(0x21 + 0x1F * rng.randint(0, 1000)) + v(4) + b"abcd"),
        ("h3-stream-fin-empty", False, b""),
        ("h3-second-control-stream", True, b"\x00\x04\x00"),
        ("h3-qpack-encoder-garbage", True, b"\x02" + junk(300)),
        ("h3-qpack-decoder-garbage", True, b"\x03" + junk(300)),
        ("h3-push-stream-from-client", True, b"\x01" + junk(50)),
        ("h3-unknown-uni-stream", True, v(rng.randint(0x60, 2**30)) + junk(300)),
        ("wt-uni-unknown-session", True, v(0x54) + v(rng.randrange(2**20) * 4) + junk(300)),
        ("wt-bidi-unknown-session", False, v(0x41) + v(rng.randrange(2**20) * 4) + junk(300)),
        ("wt-bidi-bad-session-id", False, v(0x41) + v(3) + junk(300)),
        ("wt-bidi-cut-prefix", False, b"\x40"),
        ("wt-uni-cut-prefix", True, b"\x40"),
    ]


async def _ask(
    conn: Connection, headers: list[tuple[bytes, bytes]], end: bool, wait_s: float
) -> str:
    """Send a request's headers on a new stream; its answer, or what became of it."""
    stream_id = conn.quic.get_next_available_stream_id()
    answered = trio.Event()
    result = "no answer"

    def on_event(event: h3e.H3Event | None) -> None:
        nonlocal result
        if event is None:
            result = "connection lost"
            answered.set()
        elif isinstance(event, h3e.HeadersReceived):
            status = dict(event.headers).get(b":status", b"?").decode("latin-1")
            result = f"status {status}"
            conn.request_handlers.pop(stream_id, None)
            answered.set()

    conn.request_handlers[stream_id] = on_event
    try:
        conn.send_headers(stream_id, headers, end)
    except Exception as exc:  # our own H3 layer refusing what we asked it to send
        conn.request_handlers.pop(stream_id, None)
        return f"not sent ({type(exc).__name__})"
    with trio.move_on_after(wait_s):
        await answered.wait()
    if conn.terminated.is_set():
        return f"connection closed {conn.close_error_code:#x}"
    return result


async def _follow_up(conn: Connection, target: QuicTarget) -> str:
    if conn.terminated.is_set():
        return f"connection closed {conn.close_error_code:#x}"
    if target.path:
        headers = _connect_headers(target, PROBE_PATH.encode())
        return await _ask(conn, headers, False, FOLLOW_UP_S)
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", target.authority.encode()),
        (b":path", b"/healthz"),
    ]
    return await _ask(conn, headers, True, FOLLOW_UP_S)


Deliver = Callable[[Connection], Awaitable[str]]


async def _run_case(target: QuicTarget, kind: str, deliver: Deliver, tally: Tally) -> None:
    name = f"{target.name} {kind}"
    try:
        async with open_quic_connection(
            target.host,
            target.port,
            server_certificate_hashes=list(target.pins) or None,
            verify=bool(target.pins),
        ) as conn:
            reaction = await deliver(conn)
            after = await _follow_up(conn, target)
            tally.record(name, f"{reaction}; then {after}")
    except Exception as exc:  # the connection could not even be made: not delivered
        tally.failed(name, exc)


def _deliver_headers(headers: list[tuple[bytes, bytes]], end: bool) -> Deliver:
    async def deliver(conn: Connection) -> str:
        return await _ask(conn, headers, end, CASE_ANSWER_S)

    return deliver


def _deliver_raw(unidirectional: bool, data: bytes) -> Deliver:
    async def deliver(conn: Connection) -> str:
        stream_id = conn.quic.get_next_available_stream_id(is_unidirectional=unidirectional)
        conn.send_stream_data(stream_id, data, True)
        with trio.move_on_after(SETTLE_S):
            await conn.terminated.wait()
        return (
            f"closed {conn.close_error_code:#x}" if conn.terminated.is_set() else "connection kept"
        )

    return deliver


def _deliver_misc(rng: random.Random, target: QuicTarget) -> list[tuple[str, Deliver]]:
    """Garbage on our own control stream, QUIC datagrams, capsules, stream floods."""

    async def settle(conn: Connection) -> str:
        with trio.move_on_after(SETTLE_S):
            await conn.terminated.wait()
        return (
            f"closed {conn.close_error_code:#x}" if conn.terminated.is_set() else "connection kept"
        )

    def on_control(data: bytes) -> Deliver:
        async def deliver(conn: Connection) -> str:
            control = getattr(conn.h3, "_local_control_stream_id", None)
            if control is None:
                return "no control stream"
            conn.send_stream_data(control, data, False)
            return await settle(conn)

        return deliver

    async def datagrams(conn: Connection) -> str:
        for _ in range(50):
            try:
                conn.quic.send_datagram_frame(rng.randbytes(rng.randint(1, 1000)))
            except Exception:  # the server did not offer datagrams, or the frame is too big
                break
        conn.schedule_flush()
        return await settle(conn)

    async def stream_flood(conn: Connection) -> str:
        for _ in range(300):
            stream_id = conn.quic.get_next_available_stream_id()
            conn.send_stream_data(
                stream_id, b"\x01" + encode_uint_var(4000) + rng.randbytes(500), False
            )
        return await settle(conn)

    async def capsules(conn: Connection) -> str:
        session = await open_session(conn, target.authority, target.path, origin=target.origin)
        data = (
            encode_uint_var(0x2843) + encode_uint_var(2**30) + rng.randbytes(100)  # CLOSE, lies
            if rng.random() < 0.5
            else encode_uint_var(rng.randint(0x100, 2**30))
            + encode_uint_var(9000)
            + rng.randbytes(9000)
        )
        conn.send_data(session.session_id, data, False)
        return await settle(conn)

    cases: list[tuple[str, Deliver]] = [
        ("h3-control-garbage", on_control(rng.randbytes(200))),
        ("h3-control-second-settings", on_control(b"\x04\x00")),
        ("h3-control-goaway-garbage", on_control(b"\x07\x08" + rng.randbytes(8))),
        ("h3-control-data-frame", on_control(b"\x00\x03abc")),
        ("quic-datagram-garbage", datagrams),
        ("h3-stream-flood-300", stream_flood),
    ]
    if target.path == "/v1/signal":  # a session is accepted before any credential
        cases.append(("wt-capsule-garbage", capsules))
    return cases


async def abuse_requests(
    targets: Sequence[QuicTarget], rng: random.Random, tally: Tally, *, cases: int, seconds: float
) -> None:
    """Malformed CONNECTs and raw HTTP/3 on every target, one QUIC connection each: every
    kind once, then repeats up to ``cases``, within ``seconds``."""
    # Every kind once: malformed CONNECTs first, in their list's order (the likeliest to be
    # fatal lead it) on every target in turn; the rest in a random order; then repeats.
    connects: list[tuple[QuicTarget, str, Deliver]] = []
    others: list[tuple[QuicTarget, str, Deliver]] = []
    per_target = [connect_cases(target) for target in targets]
    for row in zip(*per_target, strict=True):
        for target, (kind, headers, end) in zip(targets, row, strict=True):
            connects.append((target, kind, _deliver_headers(headers, end)))
    for target in targets:
        for kind, unidirectional, data in raw_cases(rng):
            others.append((target, kind, _deliver_raw(unidirectional, data)))
        for kind, deliver in _deliver_misc(rng, target):
            others.append((target, kind, deliver))
    rng.shuffle(others)
    plan = connects + others
    while len(plan) < cases:
        plan.append(rng.choice(plan))
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(target: QuicTarget, kind: str, deliver: Deliver, token: object) -> None:
        try:
            await _run_case(target, kind, deliver, tally)
        finally:
            limiter.release_on_behalf_of(token)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for target, kind, deliver in plan[: max(cases, len(connects) + len(others))]:
                # Taken here, in plan order (trio starts tasks in no promised order).
                token = object()
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(one, target, kind, deliver, token)
