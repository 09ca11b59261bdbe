"""WebTransportSendStream.when_sent (the MH's frame residence, docs/architecture.md §5.1): the
callback runs at the end of the flush that hands the last byte written so far to the socket —
not before, while the peer's flow-control credit holds the bytes back, and never for a stream
reset first. Real QUIC on 127.0.0.1, trio's autojump clock (the times are the virtual clock)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.transport import (
    QUIC_CORE,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    connect_webtransport,
)
from darktower.transport._sent import MAX_WATCHES, SentWatch

from .conftest import start_server

# The client's credit per stream; the server writes more than that before the client reads.
WINDOW = 16 * 1024
aioquic_only = pytest.mark.skipif(
    QUIC_CORE == "qh3", reason="qh3 2.1 does not say what of a stream has been sent"
)


class Writer:
    """The server side: writes what the test asks on one uni stream and records when each
    write's watch fires: (written at, sent at)."""

    def __init__(self) -> None:
        self.stream: WebTransportSendStream | None = None
        self.opened = trio.Event()
        self.fired: list[tuple[float, float]] = []
        self.fired_event = trio.Event()
        self.refused = 0
        self.requests: trio.MemorySendChannel[bytes]
        self._requests: trio.MemoryReceiveChannel[bytes]
        self.requests, self._requests = trio.open_memory_channel(1)

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        self.stream = stream = await session.open_unidirectional_stream()
        await stream.send_all(b"o")
        self.opened.set()
        async for data in self._requests:
            if data == b"reset":
                stream.reset(0)
                continue
            if data == b"flood":  # watches until the connection's bound refuses one
                while stream.when_sent(self._fired(trio.current_time())):
                    pass
                self.refused += 1
                continue
            written = trio.current_time()
            await stream.send_all(data)
            assert stream.when_sent(self._fired(written))
        await trio.sleep_forever()

    def _fired(self, written: float) -> Any:
        def fired(now: float) -> None:
            self.fired.append((written, now))
            self.fired_event.set()

        return fired


async def _client(session: WebTransportSession, writer: Writer) -> WebTransportReceiveStream:
    stream = await session.accept_stream()
    assert isinstance(stream, WebTransportReceiveStream)
    assert await stream.receive_some(1) == b"o"
    await writer.opened.wait()
    return stream


async def _read(stream: WebTransportReceiveStream, count: int) -> None:
    got = 0
    while got < count:
        got += len(await stream.receive_some(count - got))


async def test_a_write_fires_at_the_flush_that_sends_its_last_byte(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    """Three packets' worth, paced out by QUIC: the watch fires when the last byte leaves
    (on loopback, the virtual time it arrives), not when the write returns (aioquic; qh3
    fires at the first flush after the write, which undercounts, _sent.py)."""
    writer = Writer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)})
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await _client(session, writer)
            await writer.requests.send(b"x" * 3000)
            await _read(stream, 3000)
            last_byte_at = trio.current_time()
            await writer.fired_event.wait()
        nursery.cancel_scope.cancel()
    [(written, sent)] = writer.fired
    if QUIC_CORE == "qh3":  # qh3 does not say what of a stream has left: the flush after it
        assert written <= sent <= last_byte_at
    else:
        assert sent == last_byte_at > written


@aioquic_only
async def test_bytes_held_by_the_peers_credit_fire_only_once_they_leave(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    writer = Writer()
    limits = TransportLimits(stream_receive_window=WINDOW)
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)})
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            stream = await _client(session, writer)
            await writer.requests.send(b"x" * (3 * WINDOW))
            await trio.sleep(1.0)  # virtual: a second of nothing read
            assert writer.fired == []  # two windows wait for the client's credit
            read_at = trio.current_time()
            await _read(stream, 3 * WINDOW)
            await writer.fired_event.wait()
        nursery.cancel_scope.cancel()
    [(written, sent)] = writer.fired
    assert sent >= read_at >= written + 1.0


@aioquic_only
async def test_a_reset_stream_never_fires_and_forgets_its_watches(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    writer = Writer()
    limits = TransportLimits(stream_receive_window=WINDOW)
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)})
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await _client(session, writer)
            await writer.requests.send(b"x" * (3 * WINDOW))
            await writer.requests.send(b"flood")  # the bound: refused once full
            await writer.requests.send(b"reset")
            await trio.testing.wait_all_tasks_blocked()
            assert writer.stream is not None
            conn = writer.stream._state.conn
            await trio.sleep(0.1)  # virtual: flushes after the reset
            watching = bool(conn.sent_watch)
        nursery.cancel_scope.cancel()
    assert writer.refused == 1
    assert writer.fired == []
    assert not watching
    del server


class _Quic:
    """A core whose stream 3 has 100 bytes written and 10 sent (then, once ``sent``, all)."""

    def __init__(self) -> None:
        self.sent = 10

    def dt_write_offset(self, stream_id: int) -> int:
        return 100

    def dt_sent_offset(self, stream_id: int) -> int:
        return self.sent


class _State:
    stream_id = 3
    send_reset = False
    send_error: BaseException | None = None


def test_the_watches_of_a_connection_are_bounded() -> None:
    watch, calls = SentWatch(), []
    quic, state = _Quic(), _State()
    added = [watch.add(quic, state, calls.append, 0.0, False) for _ in range(MAX_WATCHES + 1)]  # type: ignore[arg-type]
    assert added == [True] * MAX_WATCHES + [False]
    watch.resolve(quic, 1.0)
    assert calls == [] and watch


def test_a_callback_that_raises_harms_nothing_and_one_added_waits() -> None:
    """A callback's exception is logged, not raised into the flush (the connection's error
    boundary would close it); each other watch fires once; one added by a callback waits
    for the next flush."""
    watch, calls = SentWatch(), []
    quic, state = _Quic(), _State()

    def boom(now: float) -> None:
        raise ZeroDivisionError

    def adds(now: float) -> None:
        calls.append(("adds", now))
        quic.sent = 10  # what the new watch covers has not left yet
        watch.add(quic, state, lambda t: calls.append(("added", t)), now, False)  # type: ignore[arg-type]

    for callback in (lambda t: calls.append(("first", t)), boom, adds):
        assert watch.add(quic, state, callback, 0.0, False)  # type: ignore[arg-type]
    quic.sent = 100
    watch.resolve(quic, 1.0)
    assert calls == [("first", 1.0), ("adds", 1.0)]
    quic.sent = 100
    watch.resolve(quic, 2.0)
    assert calls == [("first", 1.0), ("adds", 1.0), ("added", 2.0)]
    assert not watch


def test_a_reset_streams_watch_is_dropped_on_either_core() -> None:
    """qh3 does not say what of a stream left (None): the stream's own state does."""

    class Qh3Like:
        def dt_write_offset(self, stream_id: int) -> None:
            return None

        def dt_sent_offset(self, stream_id: int) -> None:
            return None

    watch, calls = SentWatch(), []
    state = _State()
    assert watch.add(Qh3Like(), state, calls.append, 0.0, True)  # type: ignore[arg-type]
    state.send_reset = True
    watch.resolve(Qh3Like(), 1.0)
    assert calls == [] and not watch
