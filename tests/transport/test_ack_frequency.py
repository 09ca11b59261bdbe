"""The ACK-frequency extension (darktower/transport/_ack_frequency.py, docs/architecture.md §5.1):
its parsers under fuzz, the receiver's and the sender's rules on a connection driven by hand, and
real QUIC on 127.0.0.1 where an aioquic MH's limits ask a media receiver for its ACK delay."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio
from aioquic._buffer import Buffer, BufferReadError
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnectionError, QuicReceiveContext
from aioquic.quic.packet import QuicErrorCode
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.tls import Epoch
from hypothesis import given
from hypothesis import strategies as st

from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    connect_webtransport,
    generate_dev_certificate,
)
from darktower.transport._ack_frequency import (
    MAX_REQUEST_US,
    MIN_ACK_DELAY_PARAM,
    MIN_ACK_DELAY_US,
    AckFrequency,
    AckFrequencyError,
    ack_request,
    encode_min_ack_delay,
    find_min_ack_delay,
    pull_ack_frequency,
    push_ack_frequency,
)
from darktower.transport._config import MEDIA_ACK_DELAY_S, MEDIA_ACK_THRESHOLD
from darktower.transport._quic import CreditedQuicConnection
from tests._fuzz import fuzz_settings

from .conftest import EndRecorder, start_server

VARINT_MAX = 2**62 - 1
varint = st.integers(0, VARINT_MAX)


def _param(param_id: int, value: bytes) -> bytes:
    buf = Buffer(capacity=32 + len(value))
    buf.push_uint_var(param_id)
    buf.push_uint_var(len(value))
    buf.push_bytes(value)
    return buf.data


def _frame(frame: AckFrequency) -> Buffer:
    buf = Buffer(capacity=64)
    push_ack_frequency(buf, frame)
    return Buffer(data=buf.data)


# --- the parsers the network reaches ----------------------------------------------------------
@pytest.mark.fuzz
@fuzz_settings()
@given(st.binary(max_size=60), st.integers(0, 2**14 - 1))
def test_find_min_ack_delay_is_total(data: bytes, max_ack_delay_ms: int) -> None:
    try:
        found = find_min_ack_delay(data, max_ack_delay_ms)
    except AckFrequencyError:
        return
    assert found is None or 0 <= found <= max_ack_delay_ms * 1000


@pytest.mark.fuzz
@fuzz_settings()
@given(st.integers(0, 25_000), st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=8))))
def test_min_ack_delay_is_found_among_other_parameters(
    us: int, others: list[tuple[int, bytes]]
) -> None:
    rest = b"".join(_param(pid, value) for pid, value in others)
    assert find_min_ack_delay(rest + encode_min_ack_delay(us) + rest, 25) == us
    assert find_min_ack_delay(rest, 25) is None


def test_bad_min_ack_delay_parameters_are_refused() -> None:
    with pytest.raises(AckFrequencyError, match="above max_ack_delay"):
        find_min_ack_delay(encode_min_ack_delay(25_001), 25)
    with pytest.raises(AckFrequencyError, match="twice"):
        find_min_ack_delay(encode_min_ack_delay(1) * 2, 25)
    with pytest.raises(AckFrequencyError, match="length"):
        find_min_ack_delay(_param(MIN_ACK_DELAY_PARAM, b"\x01\x02"), 25)
    with pytest.raises(AckFrequencyError, match="truncated"):
        find_min_ack_delay(encode_min_ack_delay(1)[:-1], 25)


@pytest.mark.fuzz
@fuzz_settings()
@given(st.binary(max_size=40))
def test_pull_ack_frequency_is_total(data: bytes) -> None:
    try:
        frame = pull_ack_frequency(Buffer(data=data), MIN_ACK_DELAY_US)
    except (BufferReadError, AckFrequencyError):
        return
    assert MIN_ACK_DELAY_US <= frame.max_ack_delay_us < MAX_REQUEST_US


@pytest.mark.fuzz
@fuzz_settings()
@given(varint, varint, st.integers(MIN_ACK_DELAY_US, MAX_REQUEST_US - 1), varint)
def test_ack_frequency_round_trip(seq: int, threshold: int, delay: int, reordering: int) -> None:
    frame = AckFrequency(seq, threshold, delay, reordering)
    buf = _frame(frame)
    assert pull_ack_frequency(buf, MIN_ACK_DELAY_US) == frame and buf.eof()


@pytest.mark.parametrize("delay", [0, MIN_ACK_DELAY_US - 1, MAX_REQUEST_US])
def test_a_delay_out_of_range_is_refused(delay: int) -> None:
    with pytest.raises(AckFrequencyError):
        pull_ack_frequency(_frame(AckFrequency(0, 1, delay, 1)), MIN_ACK_DELAY_US)


def test_what_is_asked_stays_within_what_the_peer_advertised() -> None:
    assert ack_request(0, 0.025, 10, 1000, 25) == AckFrequency(0, 9, 25_000, 1)
    assert ack_request(3, 0.040, 1, 1000, 25) == AckFrequency(3, 0, 25_000, 1)  # peer max
    assert ack_request(0, 0.025, 10, 30_000, 40) is None  # the peer cannot go that low


# --- the rules, on a connection driven by hand ------------------------------------------------
def _conn(limits: TransportLimits | None = None) -> CreditedQuicConnection:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    quic = CreditedQuicConnection(configuration=config, consumed=lambda _sid: None, window=1)
    quic.dt_apply_limits(limits or TransportLimits().for_media())
    quic.connect(("127.0.0.1", 4433), now=0.0)
    return quic


def _receive(quic: CreditedQuicConnection, frame: AckFrequency) -> None:
    context = QuicReceiveContext(Epoch.ONE_RTT, b"", quic._network_paths[0], None, 0.0, None)
    quic._dt_handle_ack_frequency(context, 0xAF, _frame(frame))


def test_a_receiver_keeps_the_newest_request_only() -> None:
    quic = _conn()
    assert (quic._ack_delay, quic._dt_ack_threshold) == (MEDIA_ACK_DELAY_S, MEDIA_ACK_THRESHOLD)
    _receive(quic, AckFrequency(1, 19, 20_000, 0))
    assert (quic._ack_delay, quic._dt_ack_threshold, quic._dt_ack_on_reorder) == (0.02, 20, False)
    _receive(quic, AckFrequency(0, 0, 5_000, 1))  # reordered: older than the one applied
    _receive(quic, AckFrequency(1, 0, 5_000, 1))  # repeated
    assert (quic._ack_delay, quic._dt_ack_threshold, quic._dt_ack_on_reorder) == (0.02, 20, False)
    _receive(quic, AckFrequency(2, 0, 5_000, 3))
    assert (quic._ack_delay, quic._dt_ack_threshold, quic._dt_ack_on_reorder) == (0.005, 1, True)


def test_a_request_below_min_ack_delay_closes_the_connection() -> None:
    quic = _conn()
    with pytest.raises(QuicConnectionError) as caught:
        _receive(quic, AckFrequency(0, 1, MIN_ACK_DELAY_US - 1, 1))
    assert caught.value.error_code == QuicErrorCode.PROTOCOL_VIOLATION
    assert quic._ack_delay == MEDIA_ACK_DELAY_S  # nothing applied


def test_immediate_ack_makes_the_ack_due() -> None:
    quic = _conn()
    space = quic._spaces[Epoch.ONE_RTT]
    context = QuicReceiveContext(Epoch.ONE_RTT, b"", quic._network_paths[0], None, 5.0, None)
    quic._dt_handle_immediate_ack(context, 0x1F, Buffer(data=b""))
    assert space.ack_at is not None and space.ack_at < 5.0


def test_a_lost_request_is_sent_again_unless_a_newer_one_went_out() -> None:
    quic = _conn()
    first, second = AckFrequency(0, 9, 25_000, 1), AckFrequency(1, 9, 20_000, 1)
    quic._dt_ack_frequency_sent = first
    quic._dt_on_ack_frequency_delivery(QuicDeliveryState.LOST, first)
    assert quic._dt_ack_frequency_pending is first
    quic._dt_ack_frequency_pending, quic._dt_ack_frequency_sent = None, second
    quic._dt_on_ack_frequency_delivery(QuicDeliveryState.LOST, first)
    quic._dt_on_ack_frequency_delivery(QuicDeliveryState.ACKED, second)
    assert quic._dt_ack_frequency_pending is None


class _BadParams(CreditedQuicConnection):
    """A client whose transport parameters end with ``extra`` (after its own min_ack_delay)."""

    extra = b""

    def _serialize_transport_parameters(self) -> bytes:
        return super()._serialize_transport_parameters() + self.extra


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (b"", None),  # the client's own parameters: the handshake completes
        (encode_min_ack_delay(MIN_ACK_DELAY_US), QuicErrorCode.TRANSPORT_PARAMETER_ERROR),  # twice
        (  # the value does not fill the parameter
            _param(MIN_ACK_DELAY_PARAM, b"\x01\x02"),
            QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
        ),
    ],
)
def test_a_bad_min_ack_delay_fails_the_handshake(
    tmp_path: pathlib.Path, extra: bytes, error: QuicErrorCode | None
) -> None:
    """Both ends in memory: the server closes with TRANSPORT_PARAMETER_ERROR."""
    certfile, keyfile = generate_dev_certificate().write(str(tmp_path))
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    server_config.load_cert_chain(str(certfile), str(keyfile))
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    client = _BadParams(configuration=client_config, consumed=lambda _sid: None, window=1)
    client.extra = extra
    client.connect(("127.0.0.1", 4433), now=0.0)
    server: CreditedQuicConnection | None = None
    for _ in range(6):  # Initial, the server's flight, the client's Finished
        for data, _addr in client.datagrams_to_send(now=0.0):
            if server is None:
                server = CreditedQuicConnection(
                    configuration=server_config,
                    original_destination_connection_id=client.original_destination_connection_id,
                    consumed=lambda _sid: None,
                    window=1,
                )
            server.receive_datagram(data, ("127.0.0.1", 50000), now=0.0)
        assert server is not None
        for data, _addr in server.datagrams_to_send(now=0.0):
            client.receive_datagram(data, ("127.0.0.1", 4433), now=0.0)
    assert server is not None
    if error is None:
        assert server._close_event is None and server._handshake_complete
        assert server.dt_peer_min_ack_delay_us == MIN_ACK_DELAY_US
    else:
        assert server._close_event is not None and server._close_event.error_code == error


# --- real QUIC on 127.0.0.1 -------------------------------------------------------------------
async def _receiver_after_handshake(
    dev_cert: TlsCredentials, server_limits: TransportLimits, client_core: str = "aioquic"
) -> tuple[Any, Any]:
    """Handshake, a round trip each way, then (server's QUIC, client's QUIC)."""
    recorder = EndRecorder()
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(
            nursery, dev_cert, {"/r": Route(recorder)}, limits=server_limits
        )
        async with connect_webtransport(
            base + "/r",
            server_certificate_hashes=[dev_cert.sha256],
            limits=TransportLimits(quic_core=client_core).for_media(),
        ) as client:
            with trio.fail_after(10):
                await recorder.started.wait()
                assert recorder.session is not None
                # A stream each way: every frame pending on either side has been sent and
                # processed once the second one is read (the first carries the server's
                # HANDSHAKE_DONE and whatever rides with it).
                for sender, receiver in ((recorder.session, client), (client, recorder.session)):
                    out = await sender.open_unidirectional_stream()
                    await out.send_all(b"x")
                    incoming = await receiver.accept_stream()
                    assert await incoming.receive_some(1) == b"x"  # type: ignore[union-attr]
            server_quic, client_quic = recorder.session._conn.quic, client._conn.quic
        nursery.cancel_scope.cancel()
    return server_quic, client_quic


ASKING = TransportLimits(quic_core="aioquic", peer_ack_delay_s=0.025)


async def test_an_aioquic_server_asks_an_aioquic_media_receiver(dev_cert: TlsCredentials) -> None:
    server, client = await _receiver_after_handshake(dev_cert, ASKING)
    assert server.dt_peer_min_ack_delay_us == MIN_ACK_DELAY_US
    assert client.dt_peer_min_ack_delay_us == MIN_ACK_DELAY_US
    assert client._dt_ack_frequency_seen == 0
    assert client._ack_delay == 0.025
    assert client._dt_ack_threshold == MEDIA_ACK_THRESHOLD
    assert server._ack_delay != 0.025  # nothing asked of it


async def test_a_server_that_does_not_ask_leaves_the_receivers_policy(
    dev_cert: TlsCredentials,
) -> None:
    _server, client = await _receiver_after_handshake(
        dev_cert, TransportLimits(quic_core="aioquic")
    )
    assert client._dt_ack_frequency_seen == -1
    assert client._ack_delay == MEDIA_ACK_DELAY_S


async def test_a_qh3_receiver_is_not_asked(dev_cert: TlsCredentials) -> None:
    pytest.importorskip("qh3")
    server, _client = await _receiver_after_handshake(dev_cert, ASKING, client_core="qh3")
    assert server.dt_peer_min_ack_delay_us is None
    assert server._dt_ack_frequency_sent is None
