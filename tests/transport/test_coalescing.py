"""Coalescing and its bound (docs/architecture.md §5.1): what is written for one connection
within one loop tick leaves in that tick and shares packets; with a send delay, nothing is held
longer than the delay; an ACK owed leaves with the next data at once rather than alone later.
Real QUIC on 127.0.0.1, trio's autojump clock: every time below is the virtual clock, so "held"
means held by the transport, not the host."""

from __future__ import annotations

import struct
from typing import Any

import trio
from aioquic.quic.congestion.base import K_GRANULARITY
from aioquic.tls import Epoch

from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    connect_webtransport,
)
from darktower.transport._config import MEDIA_ACK_DELAY_S, MEDIA_ACK_THRESHOLD

from ._cores import aioquic_only
from .conftest import start_server

STREAMS = 3
STAMP = struct.Struct("!d")  # the virtual time the message was written, then padding
MESSAGE = 200
EPSILON = 1e-9
PACE = 0.0005
AIOQUIC_ACK_DELAY_S = K_GRANULARITY  # how long aioquic holds an ACK (the limits' default)


class Writer:
    """The server side: opens STREAMS streams, then writes each batch the test hands it, one
    message per stream, each message stamped with the time it was written."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.streams: list[WebTransportSendStream] = []
        self.opened = trio.Event()
        self.batches: trio.MemorySendChannel[list[float]]
        self._batches: trio.MemoryReceiveChannel[list[float]]
        self.batches, self._batches = trio.open_memory_channel(1)

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        session.delay_sends(self.delay_s)
        for _ in range(STREAMS):
            stream = await session.open_unidirectional_stream()
            await stream.send_all(b"o")
            self.streams.append(stream)
        self.opened.set()
        async with trio.open_nursery() as nursery:
            async for offsets in self._batches:
                # One task per stream, as the MH's subscriptions write: offsets[i] after the
                # batch starts, stream i is written.
                start = trio.current_time()
                for stream, offset in zip(self.streams, offsets, strict=False):
                    nursery.start_soon(self._write_at, stream, start + offset)
        await trio.sleep_forever()

    async def _write_at(self, stream: WebTransportSendStream, at: float) -> None:
        await trio.sleep_until(at)
        now = trio.current_time()
        await stream.send_all(STAMP.pack(now) + b"m" * (MESSAGE - STAMP.size))


async def _read_batch(
    streams: list[WebTransportReceiveStream], count: int
) -> list[tuple[float, float]]:
    """(written at, arrived at) of one message from each of the first ``count`` streams."""
    out: list[tuple[float, float]] = []

    async def one(stream: WebTransportReceiveStream) -> None:
        data = b""
        while len(data) < MESSAGE:
            data += await stream.receive_some(MESSAGE - len(data))
        out.append((STAMP.unpack_from(data)[0], trio.current_time()))

    async with trio.open_nursery() as nursery:
        for stream in streams[:count]:
            nursery.start_soon(one, stream)
    return out


async def _open_client(
    session: WebTransportSession, writer: Writer
) -> list[WebTransportReceiveStream]:
    streams: list[WebTransportReceiveStream] = []
    for _ in range(STREAMS):
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportReceiveStream)
        assert await stream.receive_some(1) == b"o"
        streams.append(stream)
    await writer.opened.wait()
    await trio.sleep(0.1)  # ACKs of the opening settle: the batches below start afresh
    return streams


async def test_writes_in_one_tick_leave_in_that_tick_in_one_packet(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    writer = Writer()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)})
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            streams = await _open_client(session, writer)
            before = session.transport_stats().datagrams_received
            await writer.batches.send([0.0] * STREAMS)
            times = await _read_batch(streams, STREAMS)
            datagrams = session.transport_stats().datagrams_received - before
        nursery.cancel_scope.cancel()
    assert [arrived - written for written, arrived in times] == [0.0] * STREAMS
    assert datagrams == 1  # three messages of three tasks, one packet


async def test_a_send_delay_coalesces_and_holds_nothing_longer_than_the_delay(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    delay = 0.001
    writer = Writer(delay_s=delay)
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)})
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            streams = await _open_client(session, writer)
            held: list[float] = []
            counts: list[int] = []
            # Writes 0.4 ms apart share the first one's packet; ones 3 ms later wait for
            # their own delay; so does one written just as a held flush leaves.
            for offsets in ([0.0, 0.0004, 0.0008], [0.0, 0.003, 0.003], [0.0, 0.001, 0.0011]):
                before = session.transport_stats().datagrams_received
                await writer.batches.send(offsets)
                times = await _read_batch(streams, STREAMS)
                counts.append(session.transport_stats().datagrams_received - before)
                held.extend(arrived - written for written, arrived in times)
        nursery.cancel_scope.cancel()
    assert max(held) <= delay + EPSILON, held
    assert counts[0] == 1  # three writes within the delay: one packet


class AckLog:
    """Wraps a client connection's QUIC state: for each 1-RTT ACK it writes, how long after
    the datagram that made it owed, and how many datagrams it acknowledged since the last."""

    def __init__(self, session: WebTransportSession) -> None:
        self.quic = quic = session._conn.quic
        self.space = quic._spaces[Epoch.ONE_RTT]
        self.owed_since: float | None = None
        self.received = 0
        self.acks: list[tuple[float, int]] = []

        receive, write_ack = quic.receive_datagram, quic._write_ack_frame

        def receive_datagram(data: bytes, addr: Any, now: float) -> None:
            was_owed = self.space.ack_at is not None
            receive(data, addr, now)
            if self.space.ack_at is not None:
                self.received += 1
                if not was_owed:
                    self.owed_since = now

        def write_ack_frame(builder: Any, space: Any, now: float) -> None:
            write_ack(builder=builder, space=space, now=now)
            if space is self.space and self.owed_since is not None:
                self.acks.append((now - self.owed_since, self.received))
                self.owed_since, self.received = None, 0

        quic.receive_datagram = receive_datagram  # type: ignore[method-assign]
        quic._write_ack_frame = write_ack_frame  # type: ignore[method-assign]


@aioquic_only(
    "qh3 2.1 has no ACK policy to set: its ACK delay and when an owed ACK leaves are its core's own"
)
async def test_an_owed_ack_leaves_with_the_next_data_at_once(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    """Ping-pong, 0.5 ms between an answer and the next message: every ACK the client owes
    for an answer rides along with its next message instead of going alone once due (aioquic's
    1 ms); only the last one, with nothing to ride on, waits for that."""

    async def echo(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportReceiveStream)
        out = await session.open_unidirectional_stream()
        while data := await stream.receive_some():
            await out.send_all(data)
        await trio.sleep_forever()

    rounds = 10
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/e": Route(echo)})
        async with connect_webtransport(
            base + "/e", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            send = await session.open_unidirectional_stream()
            await send.send_all(b"hello")
            incoming = await session.accept_stream()
            assert isinstance(incoming, WebTransportReceiveStream)
            assert await incoming.receive_some() == b"hello"
            await trio.sleep(0.1)  # the opening's ACKs settle
            log = AckLog(session)
            for _ in range(rounds):
                await send.send_all(b"q" * 50)
                got = b""
                while len(got) < 50:
                    got += await incoming.receive_some()
                await trio.sleep(PACE)  # the pace of the exchange, in virtual time
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    delays = [delay for delay, _ in log.acks]
    assert len(delays) == rounds, log.acks
    assert all(abs(d - PACE) <= EPSILON for d in delays[:-1]), delays
    assert abs(delays[-1] - AIOQUIC_ACK_DELAY_S) <= EPSILON, delays


class PolicyLog:
    """Wraps a client connection's QUIC state below everything else: the virtual time of each
    1-RTT datagram it takes and of each 1-RTT ACK it writes, with the datagrams taken since the
    ACK before. Datagram ``hold`` (counted from 0) is kept back and handed in after the one
    two later."""

    def __init__(self, session: WebTransportSession, hold: int | None) -> None:
        quic = session._conn.quic
        one_rtt = quic._spaces[Epoch.ONE_RTT]
        self.arrivals: list[float] = []
        self.acks: list[tuple[float, int]] = []  # (time, datagrams since the last ACK)
        held: list[tuple[bytes, Any]] = []
        seen = since = 0
        receive, write_ack = quic.receive_datagram, quic._write_ack_frame

        def take(data: bytes, addr: Any, now: float) -> None:
            nonlocal since
            self.arrivals.append(now)
            since += 1
            receive(data, addr, now)

        def receive_datagram(data: bytes, addr: Any, now: float) -> None:
            nonlocal seen
            seen += 1
            if seen - 1 == hold:
                held.append((data, addr))
                return
            take(data, addr, now)
            if hold is not None and seen - 1 == hold + 2:
                take(*held.pop(), now)

        def write_ack_frame(builder: Any, space: Any, now: float) -> None:
            nonlocal since
            write_ack(builder=builder, space=space, now=now)
            if space is one_rtt:
                self.acks.append((now, since))
                since = 0

        quic.receive_datagram = receive_datagram  # type: ignore[method-assign]
        quic._write_ack_frame = write_ack_frame  # type: ignore[method-assign]


async def _paced_messages(
    dev_cert: TlsCredentials, pace: float, count: int, hold: int | None = None
) -> PolicyLog:
    """The server writes ``count`` messages, one per packet, ``pace`` apart, to a client with
    a media receiver's ACK policy; what the client's QUIC took and acknowledged."""

    async def paced(session: WebTransportSession, context: object) -> None:
        stream = await session.open_unidirectional_stream()
        await stream.send_all(b"o")
        await trio.sleep(0.1)  # the opening's ACKs settle
        for _ in range(count):
            await stream.send_all(b"m" * MESSAGE)
            await trio.sleep(pace)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/p": Route(paced)})
        async with connect_webtransport(
            base + "/p",
            server_certificate_hashes=[dev_cert.sha256],
            limits=TransportLimits().for_media(),
        ) as session:
            stream = await session.accept_stream()
            assert isinstance(stream, WebTransportReceiveStream)
            assert await stream.receive_some(1) == b"o"
            await trio.sleep(0.05)  # its ACK leaves; the server writes 0.1 s after it
            log = PolicyLog(session, hold)
            got = 0
            while got < count * MESSAGE:
                got += len(await stream.receive_some())
            await trio.sleep(0.1)  # the last ACK leaves
        nursery.cancel_scope.cancel()
    return log


def test_the_media_ack_policy_is_set_unless_limits_set_one() -> None:
    media = TransportLimits().for_media()
    assert (media.ack_delay_s, media.ack_eliciting_threshold) == (
        MEDIA_ACK_DELAY_S,
        MEDIA_ACK_THRESHOLD,
    )
    for own in (TransportLimits(ack_delay_s=0.0), TransportLimits(ack_eliciting_threshold=2)):
        assert own.for_media() is own


@aioquic_only("qh3 2.1 has no ACK policy to set: its ACK delay is its core's own")
async def test_a_media_receiver_acks_every_tenth_packet_or_after_the_delay(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    """Packets 1 ms apart: one ACK per MEDIA_ACK_THRESHOLD of them, written as the last one
    arrives; 0.4 x MEDIA_ACK_DELAY_S apart: one ACK MEDIA_ACK_DELAY_S after the first each
    acknowledges (three of them)."""
    fast = await _paced_messages(dev_cert, 0.001, 3 * MEDIA_ACK_THRESHOLD)
    assert [n for _, n in fast.acks] == [MEDIA_ACK_THRESHOLD] * 3, fast.acks
    tenths = fast.arrivals[MEDIA_ACK_THRESHOLD - 1 :: MEDIA_ACK_THRESHOLD]
    assert [t for t, _ in fast.acks] == tenths

    slow = await _paced_messages(dev_cert, 0.4 * MEDIA_ACK_DELAY_S, 9)
    assert [n for _, n in slow.acks] == [3, 3, 3], slow.acks
    firsts = slow.arrivals[::3]
    assert all(
        abs(t - (first + MEDIA_ACK_DELAY_S)) <= EPSILON
        for (t, _), first in zip(slow.acks, firsts, strict=True)
    ), (slow.acks, firsts)


@aioquic_only("qh3 2.1 has no ACK policy to set: its ACK delay is its core's own")
async def test_a_media_receiver_acks_a_gap_and_a_late_packet_at_once(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    """The second packet is held back and handed in after the fourth: the third (after a gap)
    and the second (out of order) are each acknowledged as they arrive, so the sender's loss
    detection waits for no ACK delay; the packets after them are acknowledged as before.
    0.25 ms apart, so that the second is handed in before the sender's loss detection, told of
    the gap, resends it (9/8 of the RTT, over a millisecond here)."""
    log = await _paced_messages(dev_cert, 0.00025, 2 * MEDIA_ACK_THRESHOLD, hold=1)
    # arrivals: the first, the third, the fourth, then the second with it (the same time).
    _first, third, fourth, second = log.arrivals[:4]
    assert second == fourth
    assert log.acks[:2] == [(third, 2), (second, 2)], (log.acks, log.arrivals)
    # Then every MEDIA_ACK_THRESHOLD packets again, and all were acknowledged.
    assert all(n == MEDIA_ACK_THRESHOLD for _, n in log.acks[2:-1]), log.acks
    assert sum(n for _, n in log.acks) == len(log.arrivals) == 2 * MEDIA_ACK_THRESHOLD, (
        log.acks,
        log.arrivals,
    )
