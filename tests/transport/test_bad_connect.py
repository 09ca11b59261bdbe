"""A malformed extended CONNECT is answered 400 and harms nothing else: not the connection it
came on, not other connections, not the endpoint (docs/decisions.md, "An error boundary per
connection")."""

from __future__ import annotations

import pytest
import trio
from aioquic.h3 import events as h3e

from darktower.transport import (
    Connection,
    Route,
    SessionRefused,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
    open_quic_connection,
    open_session,
)

from .conftest import start_server

H3_MESSAGE_ERROR = 0x10E
# The raw requests are written by aioquic whatever the server's core: qh3 2.1's QPACK encoder
# refuses (panics on) some of them, and it is the server that is under test.
RAW_CLIENT = TransportLimits(quic_core="aioquic")

Headers = list[tuple[bytes, bytes]]


async def _echo(session: WebTransportSession, context: object) -> None:
    stream = await session.accept_stream()
    data = await stream.receive_some()  # type: ignore[union-attr]
    await stream.send_all(data)  # type: ignore[union-attr]
    await stream.send_eof()  # type: ignore[union-attr]
    await session.wait_closed()


async def raw_request(conn: Connection, headers: Headers, *, end_stream: bool = False) -> int:
    """Send ``headers`` as a request on a new stream of ``conn``; return the answer's status
    (0 if the connection ended first)."""
    stream_id = conn.quic.get_next_available_stream_id()
    answered = trio.Event()
    status = 0

    headers_received = conn.core.h3_events.HeadersReceived  # the chosen core's class

    def on_event(event: h3e.H3Event | None) -> None:
        nonlocal status
        if isinstance(event, headers_received):
            status = int(dict(event.headers).get(b":status", b"0"))
            answered.set()
        elif event is None:
            answered.set()

    conn.request_handlers[stream_id] = on_event
    conn.send_headers(stream_id, headers, end_stream)
    with trio.fail_after(5):
        await answered.wait()
    conn.request_handlers.pop(stream_id, None)
    return status


def connect_headers(port: int, path: bytes = b"/echo", **override: bytes | None) -> Headers:
    fields: dict[str, bytes | None] = {
        "method": b"CONNECT",
        "scheme": b"https",
        "authority": f"127.0.0.1:{port}".encode(),
        "path": path,
        "protocol": b"webtransport",
    }
    fields.update(override)
    return [(f":{k}".encode(), v) for k, v in fields.items() if v is not None]


async def _session_works(conn: Connection, port: int) -> None:
    session = await open_session(conn, f"127.0.0.1:{port}", "/echo")
    stream = await session.open_bidirectional_stream()
    await stream.send_all(b"still here")
    assert await stream.receive_some() == b"still here"
    await session.close()


BAD_CONNECTS: dict[str, dict[str, bytes | None]] = {
    "unparsable path": {"path": b"//[x"},
    "path without slash": {"path": b"echo"},
    "path of 8 KiB + 1": {"path": b"/" + b"a" * 8192},
    "path with a space": {"path": b"/echo x"},
    "path not ascii": {"path": "/\u00e9cho".encode()},
    "scheme http": {"scheme": b"http"},
    "scheme missing": {"scheme": None},
    "authority with userinfo": {"authority": b"user@127.0.0.1"},
    "authority bad port": {"authority": b"127.0.0.1:99999"},
    "authority with slash": {"authority": b"a/b"},
    "protocol other": {"protocol": b"websocket"},
    "protocol missing": {"protocol": None},
}


# Requests aioquic's HTTP/3 layer finds malformed before we see them: it closes the connection
# with H3_MESSAGE_ERROR (RFC 9114 allows a connection error there).
MALFORMED_HTTP3: dict[str, dict[str, bytes | None]] = {
    "path missing": {"path": None},
    "authority empty": {"authority": b""},
    "unknown pseudo-header": {"status": b"200"},
}


@pytest.mark.parametrize("override", BAD_CONNECTS.values(), ids=BAD_CONNECTS.keys())
async def test_bad_connect_400_then_sessions_still_open(
    dev_cert: TlsCredentials, override: dict[str, bytes | None]
) -> None:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)})
        port = int(base.rsplit(":", 1)[1])
        async with open_quic_connection(
            "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256], limits=RAW_CLIENT
        ) as conn:
            assert await raw_request(conn, connect_headers(port, **override)) == 400
            # the same connection goes on ...
            await _session_works(conn, port)
        # ... and so do new ones
        async with connect_webtransport(
            base + "/echo", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"new")
            assert await stream.receive_some() == b"new"
        assert server.counters["bad_connect"] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("override", MALFORMED_HTTP3.values(), ids=MALFORMED_HTTP3.keys())
async def test_malformed_request_closes_only_its_connection(
    dev_cert: TlsCredentials, override: dict[str, bytes | None]
) -> None:
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)})
        port = int(base.rsplit(":", 1)[1])
        async with open_quic_connection(
            "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256]
        ) as bystander:
            async with open_quic_connection(
                "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256]
            ) as conn:
                assert await raw_request(conn, connect_headers(port, **override)) == 0
                assert conn.close_error_code == H3_MESSAGE_ERROR
            await _session_works(bystander, port)
        nursery.cancel_scope.cancel()


async def test_many_bad_connects_on_one_connection(dev_cert: TlsCredentials) -> None:
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)})
        port = int(base.rsplit(":", 1)[1])
        async with open_quic_connection(
            "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256], limits=RAW_CLIENT
        ) as conn:
            for override in BAD_CONNECTS.values():
                assert await raw_request(conn, connect_headers(port, **override)) == 400
            # a plain request is not a WebTransport CONNECT: 404 as before
            get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")]
            assert await raw_request(conn, [*get, (b":path", b"/")]) == 404
            await _session_works(conn, port)
        assert server.counters["bad_connect"] == len(BAD_CONNECTS)
        nursery.cancel_scope.cancel()


async def test_good_connect_with_query_still_parsed(dev_cert: TlsCredentials) -> None:
    seen: list[dict[str, str]] = []

    async def handler(session: WebTransportSession, context: object) -> None:
        seen.append(dict(session.query))
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/q": Route(handler)})
        async with connect_webtransport(
            base + "/q?token=a%20b&x=1", server_certificate_hashes=[dev_cert.sha256]
        ):
            pass
        with pytest.raises(SessionRefused) as info:
            async with connect_webtransport(
                base + "/other", server_certificate_hashes=[dev_cert.sha256]
            ):
                pass
        assert info.value.status == 404
        assert seen == [{"token": "a b", "x": "1"}]
        nursery.cancel_scope.cancel()
