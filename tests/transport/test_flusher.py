"""The endpoint's flusher (docs/architecture.md §5.1): writes made for several connections in
one tick wake one task, which sends each connection's data in that tick; a flush that raises
closes its own connection only. Real QUIC on 127.0.0.1, trio's autojump clock."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
import trio.testing

from darktower.transport import (
    Route,
    TlsCredentials,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    connect_webtransport,
)

from .conftest import start_server

CLIENTS = 4


class Writers:
    """The server side: each session opens a stream; ``go`` makes every one write at once."""

    def __init__(self) -> None:
        self.streams: list[WebTransportSendStream] = []
        self.opened = trio.Event()
        self.go = trio.Event()
        self.written_at = 0.0

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        stream = await session.open_unidirectional_stream()
        await stream.send_all(b"o")
        self.streams.append(stream)
        if len(self.streams) == CLIENTS:
            self.opened.set()
        await self.go.wait()
        self.written_at = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            assert stream.try_send(b"m" * 500)
        await trio.sleep_forever()


async def _clients(
    base: str, cert: TlsCredentials, stack: contextlib.AsyncExitStack
) -> list[WebTransportReceiveStream]:
    streams = []
    for _ in range(CLIENTS):
        session = await stack.enter_async_context(
            connect_webtransport(base + "/w", server_certificate_hashes=[cert.sha256])
        )
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportReceiveStream)
        assert await stream.receive_some(1) == b"o"
        streams.append(stream)
    return streams


async def _arrivals(streams: list[WebTransportReceiveStream]) -> list[float | None]:
    """When each stream's 500 bytes arrived (None: the stream ended or broke first)."""
    out: list[float | None] = [None] * len(streams)

    async def one(i: int) -> None:
        got = 0
        with contextlib.suppress(Exception):
            while got < 500:
                data = await streams[i].receive_some()
                if not data:
                    return
                got += len(data)
            out[i] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for i in range(len(streams)):
            nursery.start_soon(one, i)
    return out


async def test_writes_for_many_connections_in_one_tick_wake_the_flusher_once(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    writers = Writers()
    async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
        server, base = await start_server(nursery, dev_cert, {"/w": Route(writers)})
        streams = await _clients(base, dev_cert, stack)
        await writers.opened.wait()
        await trio.sleep(0.1)  # the openings' ACKs settle
        assert server.endpoint is not None
        flusher = server.endpoint.flusher
        wakes = flusher.wakes
        writers.go.set()
        arrivals = await _arrivals(streams)
        woken = flusher.wakes - wakes
        nursery.cancel_scope.cancel()
    assert arrivals == [writers.written_at] * CLIENTS  # each sent in the tick written
    assert woken == 1


async def test_a_flush_that_raises_closes_its_connection_only(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    writers = Writers()
    async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
        server, base = await start_server(nursery, dev_cert, {"/w": Route(writers)})
        streams = await _clients(base, dev_cert, stack)
        await writers.opened.wait()
        await trio.sleep(0.1)
        # The first session's connection breaks at its next flush.
        broken = writers.streams[0]._state.conn

        def explode(now: float) -> Any:
            raise RuntimeError("a broken QUIC state")

        broken.quic.datagrams_to_send = explode  # type: ignore[method-assign]
        writers.go.set()
        arrivals = await _arrivals(streams)
        nursery.cancel_scope.cancel()
    assert server.endpoint is not None
    assert broken.terminated.is_set()
    assert server.endpoint.counters["peer_error:RuntimeError"] == 1
    assert arrivals[0] is None
    assert arrivals[1:] == [writers.written_at] * (CLIENTS - 1)


async def test_a_stopped_flusher_keeps_no_connection() -> None:
    """Once the endpoint stops, what is asked is left to each connection's own last flush:
    the flusher holds nothing (a stopped server object keeps no connection alive)."""
    from darktower.transport._flusher import Flusher

    flusher = Flusher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    flusher.schedule(object())  # type: ignore[arg-type]
    assert flusher._due == []
