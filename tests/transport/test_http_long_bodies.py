"""Long response bodies on the GC's listeners (a recording's download, docs/protocol.md §1.4):
over TCP a response that takes longer than the read timeout to send is not cut (the timeout
counts from the last byte either way), and a client that stops reading is closed after the
read timeout instead of holding the response's task; over HTTP/3 the body waits for the
client (the QUIC send buffer holds at most ``H3_STREAM_SEND_BUFFER`` of it) instead of being
buffered whole."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from aioquic.h3.events import DataReceived, HeadersReceived

from darktower.transport import _http_streams
from darktower.transport._http_limits import H3_STREAM_SEND_BUFFER
from darktower.transport.http_server import HttpLimits, serve_http
from tests.transport._http3_peer import WAIT_S, Http3Peer

CHUNK = 64 * 1024


def _chunk(index: int) -> bytes:
    return index.to_bytes(4, "big") * (CHUNK // 4)


class _BodyApp:
    """``GET /body/N`` answers N chunks of 64 KiB, each naming its index; ``gated``: each
    chunk waits for the test's ``go`` (a response that lasts). Counts what it handed over.
    Stops answering when the server says the client is gone (``http.disconnect``), as the
    GC's app (quart-trio) does."""

    def __init__(self, *, gated: bool = False) -> None:
        self.gated = gated
        self.go: trio.MemorySendChannel[None]
        self.go, self._gate = trio.open_memory_channel[None](1000)
        self.produced = 0
        self.done = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await self._answer(int(scope["path"].rsplit("/", 1)[1]), send)
                nursery.cancel_scope.cancel()
        finally:
            self.done.set()

    async def _answer(self, count: int, send: Any) -> None:
        headers = [(b"content-length", str(count * CHUNK).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(count):
            if self.gated:
                await self._gate.receive()
            await send({"type": "http.response.body", "body": _chunk(index), "more_body": True})
            self.produced += CHUNK
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@asynccontextmanager
async def _serving(
    cert_files: tuple[str, str], app: _BodyApp, limits: HttpLimits
) -> AsyncIterator[int]:
    certfile, keyfile = cert_files
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_http(
                app,
                host="127.0.0.1",
                port=0,
                certfile=certfile,
                keyfile=keyfile,
                shutdown=shutdown,
                graceful_timeout_s=2,
                limits=limits,
                counters=Counter(),
                task_status=task_status,
            )
        )
        try:
            yield port
        finally:
            shutdown.set()


async def _tls_get(port: int, path: str) -> trio.SSLStream[trio.SocketStream]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return stream


async def _receive(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    received = b""
    with trio.fail_after(WAIT_S):
        while len(received) < size:
            data = await stream.receive_some()
            assert data, "closed by the server"
            received += data
    return received


# Both on a clock that moves only when the test says: the read timeout's 0.3 s pass, in
# steps, whatever the machine's load (and, should the server hang, after 5 s idle, to the
# next deadline: a failure rather than a hang).
IDLE_JUMP_S = 5.0


async def test_a_response_longer_than_the_read_timeout_is_sent_whole(
    cert_files: tuple[str, str], mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = IDLE_JUMP_S
    app = _BodyApp(gated=True)
    async with _serving(cert_files, app, HttpLimits(read_timeout_s=0.3)) as port:
        stream = await _tls_get(port, "/body/20")
        head = b""
        while b"\r\n\r\n" not in head:
            head += await _receive(stream, 1)
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        for index in range(20):  # 4 s in all, a chunk every 0.2 s; the client sends nothing
            mock_clock.jump(0.2)
            app.go.send_nowait(None)
            body += await _receive(stream, (index + 1) * CHUNK - len(body))
        assert body == b"".join(_chunk(i) for i in range(20))
        with trio.fail_after(WAIT_S):
            await app.done.wait()
        await stream.aclose()


async def test_a_tcp_client_that_stops_reading_is_closed_after_the_read_timeout(
    cert_files: tuple[str, str], mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = IDLE_JUMP_S
    app = _BodyApp()
    async with _serving(cert_files, app, HttpLimits(read_timeout_s=0.3)) as port:
        stream = await _tls_get(port, "/body/2048")  # 128 MiB, far more than socket buffers
        try:
            await trio.testing.wait_all_tasks_blocked()  # the app's send waits for the client
            assert not app.done.is_set()
            mock_clock.jump(0.31)
            with trio.fail_after(WAIT_S):
                await app.done.wait()  # the response's task ended, the client never read
                received = 0
                try:
                    while data := await stream.receive_some():
                        received += len(data)
                except trio.BrokenResourceError:
                    pass
            assert received < 2048 * CHUNK  # the connection was closed
        finally:  # (also on a failure: the server's send is released, it can shut down)
            await trio.aclose_forcefully(stream)


class _CollectingPeer(Http3Peer):
    """Keeps a response's data as a list (the base peer joins it at every packet)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.answered = False
        self.ended = False
        self.data: list[bytes] = []

    def _record(self, event: object) -> None:
        if isinstance(event, HeadersReceived):
            self.answered = True
        elif isinstance(event, DataReceived):
            self.data.append(event.data)
            self.ended = event.stream_ended


async def test_an_http3_body_waits_for_the_client(
    cert_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 256 * 1024  # a smaller bound than the listener's, for a shorter test
    assert bound < H3_STREAM_SEND_BUFFER
    monkeypatch.setattr(_http_streams, "H3_STREAM_SEND_BUFFER", bound)
    app = _BodyApp()
    count = 16  # 1 MiB: four times what the server may hold
    async with _serving(cert_files, app, HttpLimits()) as port:
        peer = _CollectingPeer("127.0.0.1", port)
        try:
            assert await peer.connect()
            stream_id = peer.quic.get_next_available_stream_id()
            peer.h3.send_headers(
                stream_id,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", f"127.0.0.1:{port}".encode()),
                    (b":path", f"/body/{count}".encode()),
                ],
                end_stream=True,
            )
            await peer.run_until(lambda: peer.answered)
            # The client reads nothing more: the app gets as far as the buffer lets it.
            await trio.testing.wait_all_tasks_blocked(cushion=0.3)
            assert not app.done.is_set()
            received = peer.quic._streams[stream_id].receiver.highest_offset
            assert app.produced <= received + bound + 2 * CHUNK, (
                app.produced,
                received,
            )
            await peer.run_until(lambda: peer.ended, wait_s=WAIT_S * 3)
            assert peer.ended, (sum(map(len, peer.data)), app.produced)
            assert app.done.is_set()
            assert b"".join(peer.data) == b"".join(_chunk(i) for i in range(count))
        finally:
            peer.close()
