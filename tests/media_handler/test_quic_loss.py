"""QUIC loss as telemetry sees it: the transport's packet counters under real packet loss, and
the MH's per-stream ``packet_loss`` and /metrics counters fed from them.

Loss is made by a shim on one client's UDP path (every ``DROP_EVERY``-th datagram sent and
received is discarded), on real sockets; the tests synchronise on the data arriving, which QUIC
only achieves by detecting the losses and retransmitting.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import trio

from darktower.frames import FrameType
from darktower.media_handler import MediaMetrics
from darktower.media_handler._telemetry import ConnectionLoss
from darktower.metrics import Registry
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import (
    MEDIA_PEER_ACK_DELAY_S,
    Connection,
    Route,
    ServerConfig,
    TlsCredentials,
    TransportLimits,
    TransportStats,
    WebTransportServer,
    WebTransportSession,
    WebTransportStream,
    generate_dev_certificate,
    open_quic_connection,
    open_session,
)
from darktower.transport._config import MEDIA_ACK_DELAY_S, MEDIA_ACK_THRESHOLD
from darktower.transport.rpc import open_stream_call

from ._harness import NO_AGE_BOUND, WAIT_S, audio, new_id, open_harness, receive_n, video

DROP_EVERY = 5
ECHO_BYTES = 200_000


class Dropper:
    """Discards every ``every``-th datagram while ``active``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0
        self.dropped = 0
        self.active = True

    def keep(self) -> bool:
        self.seen += 1
        if self.active and self.seen % self.every == 0:
            self.dropped += 1
            return False
        return True


def make_lossy(conn: Connection, every: int = DROP_EVERY) -> tuple[Dropper, Dropper]:
    """Drop datagrams on ``conn``'s UDP path, both ways; returns (outgoing, incoming)."""
    out, inc = Dropper(every), Dropper(every)
    send, receive = conn.endpoint.send, conn.receive

    def lossy_send(data: bytes, addr: Any) -> None:
        if out.keep():
            send(data, addr)

    def lossy_receive(data: bytes, addr: Any, now: float) -> None:
        if inc.keep():
            receive(data, addr, now)

    conn.endpoint.send = lossy_send  # type: ignore[method-assign]
    conn.receive = lossy_receive  # type: ignore[method-assign]
    return out, inc


@pytest.fixture(scope="module")
def cert() -> TlsCredentials:
    return generate_dev_certificate()


async def _echo(session: WebTransportSession, context: object) -> None:
    stream = await session.accept_stream()
    assert isinstance(stream, WebTransportStream)
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()
    await session.wait_closed()  # returning would close the session under the echo


async def _echo_through(
    cert: TlsCredentials, *, lossy: bool
) -> tuple[TransportStats, TransportStats, TransportStats, tuple[int, int]]:
    """Echo ECHO_BYTES over a real connection; return the client's stats, the server's stats
    before and after the transfer, and how many datagrams the shim dropped (out, in)."""
    sessions: list[WebTransportSession] = []

    async def handler(session: WebTransportSession, context: object) -> None:
        sessions.append(session)
        await _echo(session, context)

    server = WebTransportServer(
        ServerConfig(tls=cert, host="127.0.0.1", port=0), {"/echo": Route(handler)}
    )
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.run)
        async with open_quic_connection(
            host, port, server_certificate_hashes=[cert.sha256]
        ) as conn:
            session = await open_session(conn, f"{host}:{port}", "/echo")
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"x")  # the server's session exists once this is echoed
            with trio.fail_after(WAIT_S):
                assert await stream.receive_some() == b"x"
            (server_session,) = sessions
            server_before = server_session.transport_stats()
            out, inc = make_lossy(conn) if lossy else (Dropper(1), Dropper(1))
            payload = bytes(range(256)) * (ECHO_BYTES // 256)
            got = bytearray()
            with trio.fail_after(WAIT_S):
                async with trio.open_nursery() as io:

                    async def send() -> None:
                        await stream.send_all(payload)
                        await stream.send_eof()

                    io.start_soon(send)
                    while data := await stream.receive_some():
                        got += data
            assert got == payload
            out.active = inc.active = False  # a clean close
            client_stats = session.transport_stats()
            server_after = server_session.transport_stats()
        nursery.cancel_scope.cancel()
    return client_stats, server_before, server_after, (out.dropped, inc.dropped)


async def test_packets_lost_both_ways_are_counted(cert: TlsCredentials) -> None:
    client, before, after, (dropped_out, dropped_in) = await _echo_through(cert, lossy=True)
    assert dropped_out > 0 and dropped_in > 0
    # The client's own packets dropped on its way out: its QUIC declared (some of) them lost.
    assert client.packets_sent > 0
    assert 0 < client.packets_lost <= dropped_out
    # The server's packets dropped on the client's way in: the server's QUIC saw them lost.
    assert 0 < after.packets_lost - before.packets_lost <= dropped_in
    # And the server misses the client's dropped packets in its incoming estimate.
    expected = after.peer_packets_expected - before.peer_packets_expected
    received = after.datagrams_received - before.datagrams_received
    # (the last datagrams dropped may be beyond the largest number the server saw)
    assert 0 < expected - received <= dropped_out
    assert after.loss_since(before) > 0.05  # about 1 in DROP_EVERY, both ways
    assert after.rtt_ms > 0


async def test_no_loss_counts_nothing(cert: TlsCredentials) -> None:
    client, before, after, _ = await _echo_through(cert, lossy=False)
    assert client.packets_sent > 100
    assert client.packets_lost == 0
    assert after.packets_lost == before.packets_lost
    assert after.loss_since(before) == 0.0
    assert after.peer_packets_expected - before.peer_packets_expected == (
        after.datagrams_received - before.datagrams_received
    )


def test_loss_since_arithmetic() -> None:
    before = TransportStats(
        packets_sent=100, packets_lost=1, datagrams_received=50, peer_packets_expected=52
    )
    after = TransportStats(
        packets_sent=200, packets_lost=6, datagrams_received=140, peer_packets_expected=152
    )
    # ours: 5 lost of 100 sent; theirs: 100 expected, 90 received -> 10 missing
    assert after.loss_since(before) == pytest.approx(15 / 200)
    assert before.loss_since(before) == 0.0
    # more datagrams than packet numbers (stray or coalesced): never a negative loss
    stray = attrs_evolve(after, datagrams_received=300)
    assert stray.loss_since(before) == pytest.approx(5 / 200)


def attrs_evolve(stats: TransportStats, **changes: int) -> TransportStats:
    import attrs

    return attrs.evolve(stats, **changes)


class _FakeSession:
    def __init__(self, *samples: TransportStats) -> None:
        self.samples = list(samples)

    def transport_stats(self) -> TransportStats:
        return self.samples.pop(0)


def test_connection_loss_baseline_dedup_and_metrics() -> None:
    metrics = MediaMetrics(Registry())
    meter = ConnectionLoss(metrics)
    zero = TransportStats()
    later = TransportStats(
        packets_sent=100, packets_lost=10, datagrams_received=80, peer_packets_expected=100
    )
    a, b = _FakeSession(later, later), _FakeSession(zero, later)
    # First sight is the baseline, whatever it holds (the handshake stays out).
    assert meter.measure([a, b, b]) == {a: 0.0, b: 0.0}  # type: ignore[list-item]
    assert metrics.quic_packets.value("out") == 0
    losses = meter.measure([a, b])  # type: ignore[list-item]
    assert losses == {a: 0.0, b: pytest.approx(30 / 200)}
    assert metrics.quic_packets.value("out") == 100
    assert metrics.quic_packets_lost.value("out") == 10
    assert metrics.quic_packets.value("in") == 100
    assert metrics.quic_packets_lost.value("in") == 20
    assert metrics.quic_loss.value() == pytest.approx(30 / 200)
    # A session not listed any more is forgotten (the table is bounded by live sessions).
    assert meter.measure([]) == {}
    assert meter._last == {}


async def _loss_reports(events: Any, count: int) -> dict[str, float]:
    """{stream id: packet_loss} of the next ``count`` MediaTelemetry events (key frame
    requests, which the routes cause, are skipped)."""
    loss: dict[str, float] = {}
    with trio.fail_after(WAIT_S):
        while len(loss) < count:
            event = await events.__anext__()
            if event.WhichOneof("event") == "telemetry":
                loss[event.telemetry.stream_id] = event.telemetry.packet_loss
    return loss


async def test_mh_telemetry_reports_the_publishers_quic_loss() -> None:
    meeting, cam, mic = new_id(), new_id(), new_id()
    # The service's own reports would interleave with ours: push them out of the test.
    # Every frame must arrive through 20% loss: retransmissions may take longer than the age
    # bounds, which test_stale_quic.py checks.
    async with open_harness(
        telemetry_interval_s=3600.0,
        queue_max_frames=1000,
        queue_max_bytes=4_000_000,
        **NO_AGE_BOUND,
    ) as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s", [audio(mic)])
        await h.route(meeting, cam, ["s"])
        await h.route(meeting, mic, ["p"])
        split = urllib.parse.urlsplit(h.running.media_url)
        assert split.hostname is not None and split.port is not None

        def report() -> None:
            h.handler.report_once()  # what the MH's telemetry loop does every second

        async with (
            open_stream_call(
                h.stub.Telemetry, mc_pb.TelemetryRequest(meeting_id=meeting)
            ) as events,
            open_quic_connection(
                split.hostname, split.port, server_certificate_hashes=[h.running.certificate_sha256]
            ) as conn,
            h.client(url_p, connection=conn) as p,
            h.client(url_s) as s,
        ):
            with trio.fail_after(WAIT_S):
                await h.handler.telemetry_hub.wait_listeners(1)
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            report()  # the baseline: every stream reports no loss yet
            assert await _loss_reports(events, 2) == {cam: 0.0, mic: 0.0}
            out, inc = make_lossy(conn)
            pub_cam, pub_mic = await p.publish(cam), await s.publish(mic)
            count = 150
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    for i in range(count):
                        kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
                        await pub_cam.send_frame(kind, bytes(1000))
                        await pub_mic.send_frame(FrameType.AUDIO, bytes(1000))

                nursery.start_soon(publish)
                got_s = await receive_n(s, count)  # cam, through p's lossy uplink
                got_p = await receive_n(p, count)  # mic, through p's lossy downlink
            assert [f.sequence for f in got_s] == list(range(count))
            assert [f.sequence for f in got_p] == list(range(count))
            assert out.dropped > 0 and inc.dropped > 0
            report()
            loss = await _loss_reports(events, 2)
            assert 0.02 < loss[cam] < 0.5  # about 1 in DROP_EVERY, both ways
            assert loss[mic] == 0.0  # s's connection lost nothing
            metrics = h.handler.metrics
            assert metrics.quic_packets_lost.value("in") > 0  # p's packets the MH missed
            assert metrics.quic_packets_lost.value("out") > 0  # the MH's packets p never got
            assert metrics.quic_loss.value() > 0
            rendered = metrics.registry.render()
            assert 'darktower_mh_quic_packets_lost_total{direction="in"}' in rendered
            out.active = inc.active = False


# The MH's own choice of ACK policy for its receivers (docs/architecture.md §5.1): an aioquic
# MH asks an aioquic media client, which speaks the ACK-frequency extension, for 25 ms; a qh3
# MH asks nothing, and the client keeps its own media policy.
@pytest.mark.parametrize("mh_core", ["aioquic", "qh3"])
async def test_an_aioquic_mh_asks_its_media_receivers_for_their_ack_delay(mh_core: str) -> None:
    if mh_core == "qh3":
        pytest.importorskip("qh3")
    meeting = new_id()
    async with open_harness(quic_core=mh_core) as h:
        url = await h.register(meeting, "s")
        async with h.client(url, limits=TransportLimits(quic_core="aioquic")) as s:
            await h.connected(meeting, "s")  # after the MH's first 1-RTT packet reached s
            quic: Any = s.session._conn.quic  # type: ignore[attr-defined]
            asked = mh_core == "aioquic"
            assert quic._ack_delay == (MEDIA_PEER_ACK_DELAY_S if asked else MEDIA_ACK_DELAY_S)
            assert quic._dt_ack_threshold == MEDIA_ACK_THRESHOLD


async def test_an_aioquic_mh_acks_its_publishers_as_a_media_receiver() -> None:
    """The MH's end of each media connection takes the media ACK policy (an ACK per 10
    packets, else 10 ms after the first): most of its ACKs to a publisher ride on the media it
    sends back (docs/decisions.md). qh3 2.1 has no ACK policy to set."""
    meeting = new_id()
    async with open_harness(quic_core="aioquic") as h:
        url = await h.register(meeting, "p")
        async with h.client(url, limits=TransportLimits(quic_core="aioquic")):
            await h.connected(meeting, "p")
            member = h.handler.rooms[meeting].members["p"]  # type: ignore[index]
            quic: Any = member.session._conn.quic
            assert quic._ack_delay == MEDIA_ACK_DELAY_S
            assert quic._dt_ack_threshold == MEDIA_ACK_THRESHOLD
