"""Echo on every stream kind, both directions, and datagrams, trio client <-> trio server."""

from __future__ import annotations

from typing import Any

import trio

from darktower.transport import (
    Route,
    TlsCredentials,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
)

from .conftest import start_server


async def _read_all(stream: Any) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def echo_handler(session: WebTransportSession, context: object) -> None:
    """Echoes client-opened streams and datagrams; on request opens streams of its own."""

    async def serve_stream(stream: Any) -> None:
        data = await _read_all(stream)
        if isinstance(stream, WebTransportStream):
            if data == b"open-bidi":
                other = await session.open_bidirectional_stream()
                await other.send_all(b"from server")
                await other.send_eof()
                reply = await _read_all(other)
                await stream.send_all(b"client said " + reply)
            elif data == b"open-uni":
                uni = await session.open_unidirectional_stream()
                await uni.send_all(b"server uni data")
                await uni.aclose()
            else:
                await stream.send_all(data)
            await stream.send_eof()
        else:
            uni = await session.open_unidirectional_stream()
            await uni.send_all(b"echo:" + data)
            await uni.aclose()

    async def datagrams() -> None:
        while True:
            session.send_datagram(await session.receive_datagram())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(datagrams)
        while True:
            nursery.start_soon(serve_stream, await session.accept_stream())


async def test_echo_every_stream_kind_and_datagrams(dev_cert: TlsCredentials) -> None:
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/echo": Route(echo_handler)})
        async with connect_webtransport(
            base + "/echo?x=1", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            # client-opened bidirectional
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"hello")
            await stream.send_eof()
            assert await _read_all(stream) == b"hello"

            # client uni -> server, server answers on a server-opened uni stream
            uni = await session.open_unidirectional_stream()
            await uni.send_all(b"uni hello")
            await uni.aclose()
            incoming = await session.accept_stream()
            assert isinstance(incoming, WebTransportReceiveStream)
            assert await _read_all(incoming) == b"echo:uni hello"

            # server-opened bidirectional, echoed by the client
            ask = await session.open_bidirectional_stream()
            await ask.send_all(b"open-bidi")
            await ask.send_eof()
            server_bidi = await session.accept_stream()
            assert isinstance(server_bidi, WebTransportStream)
            assert await _read_all(server_bidi) == b"from server"
            await server_bidi.send_all(b"pong")
            await server_bidi.send_eof()
            assert await _read_all(ask) == b"client said pong"

            # server-opened unidirectional on request
            ask = await session.open_bidirectional_stream()
            await ask.send_all(b"open-uni")
            await ask.send_eof()
            server_uni = await session.accept_stream()
            assert await _read_all(server_uni) == b"server uni data"
            assert await _read_all(ask) == b""

            # datagrams
            session.send_datagram(b"dgram-1")
            with trio.fail_after(5):
                assert await session.receive_datagram() == b"dgram-1"
            biggest = b"x" * session.max_datagram_size
            session.send_datagram(biggest)
            with trio.fail_after(5):
                assert await session.receive_datagram() == biggest
        nursery.cancel_scope.cancel()
