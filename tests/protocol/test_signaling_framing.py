"""The signaling stream codec: varint-length-delimited protobuf envelopes (docs/protocol.md §2)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from darktower.errors import InternalError, InvalidRequest
from darktower.protocol import (
    MAX_MESSAGE_SIZE,
    REASON_BAD_VARINT,
    REASON_TOO_LARGE,
    REASON_TRUNCATED,
    REASON_UNDECODABLE,
    ClientMessage,
    MessageDecoder,
    ServerMessage,
    encode_message,
    encode_varint,
    pb,
)

from ._framing_cases import (
    client_messages,
    feed_chunks,
    reason_of,
    same_messages,
    server_messages,
    split_at,
    uint64s,
    wire_of,
)

common, signaling = pb.common_pb2, pb.signaling_pb2


# --- round trips -------------------------------------------------------------------------------
@given(st.lists(client_messages, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_client_messages_round_trip_in_random_chunks(
    messages: list[Message], cuts: list[int]
) -> None:
    decoder = MessageDecoder(ClientMessage)
    decoded = feed_chunks(decoder, split_at(wire_of(messages), cuts))
    decoder.end_of_stream()
    assert decoded == messages
    assert decoder.buffered == 0


@given(st.lists(server_messages, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_server_messages_round_trip_in_random_chunks(
    messages: list[Message], cuts: list[int]
) -> None:
    decoder = MessageDecoder(ServerMessage)
    decoded = feed_chunks(decoder, split_at(wire_of(messages), cuts))
    decoder.end_of_stream()
    assert decoded == messages


@given(st.lists(st.one_of(client_messages), min_size=1, max_size=4))
def test_round_trip_split_at_every_byte(messages: list[Message]) -> None:
    data = wire_of(messages)
    for cut in range(len(data) + 1):
        decoder = MessageDecoder(ClientMessage)
        assert feed_chunks(decoder, [data[:cut], data[cut:]]) == messages
        decoder.end_of_stream()


@given(st.lists(server_messages, min_size=1, max_size=4))
def test_round_trip_one_byte_at_a_time(messages: list[Message]) -> None:
    data = wire_of(messages)
    decoder = MessageDecoder(ServerMessage)
    seen: list[Message] = []
    for i in range(len(data)):
        decoder.receive_data(data[i : i + 1])
        seen.extend(decoder)
        # Never more buffered than the unfinished message.
        assert decoder.buffered <= len(data) - sum(len(encode_message(m)) for m in seen)
    decoder.end_of_stream()
    assert seen == messages


def test_empty_envelope_is_one_zero_byte() -> None:
    assert encode_message(ClientMessage()) == b"\x00"
    decoder = MessageDecoder(ClientMessage)
    decoder.receive_data(b"\x00\x00")
    assert list(decoder) == [ClientMessage(), ClientMessage()]
    assert decoder.next_message() is None


def test_message_of_exactly_the_limit_is_accepted() -> None:
    message = ServerMessage(key_share=signaling.E2EEKeyShare())
    size = MAX_MESSAGE_SIZE - 16
    while len(message.SerializeToString()) < MAX_MESSAGE_SIZE:
        size += 1
        message.key_share.ciphertext = b"x" * size
    assert len(message.SerializeToString()) == MAX_MESSAGE_SIZE
    decoder = MessageDecoder(ServerMessage)
    decoder.receive_data(encode_message(message))
    assert list(decoder) == [message]
    message.key_share.ciphertext += b"x"
    decoder.receive_data(encode_message(message, max_message_size=MAX_MESSAGE_SIZE + 1))
    with pytest.raises(InvalidRequest):
        decoder.next_message()


@given(uint64s)
def test_encode_varint_agrees_with_protobuf(value: int) -> None:
    # request_id is field 1, a uint64: its wire form is tag 0x08 then the varint.
    assert ClientMessage(request_id=value).SerializeToString() == (
        b"\x08" + encode_varint(value) if value else b""
    )


def test_encode_varint_range() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(300) == b"\xac\x02"
    assert len(encode_varint(2**64 - 1)) == 10
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(ValueError):
        encode_varint(-1)


def test_encoding_an_oversize_message_is_our_fault() -> None:
    message = ServerMessage(key_share=signaling.E2EEKeyShare(ciphertext=b"x" * MAX_MESSAGE_SIZE))
    with pytest.raises(InternalError) as excinfo:
        encode_message(message)
    assert excinfo.value.details["reason"] == REASON_TOO_LARGE
    assert encode_message(message, max_message_size=2 * MAX_MESSAGE_SIZE)


# --- faults: each has its own reason, and no wrong message is ever yielded ----------------------
GOOD = [ClientMessage(request_id=1, ping=signaling.Ping(timestamp=7)), ClientMessage(request_id=2)]


def _fails_after_good(
    tail: bytes, reason: str, *, max_message_size: int = MAX_MESSAGE_SIZE
) -> None:
    """GOOD then ``tail``, fed whole and byte by byte: GOOD comes out, then the fault."""
    data = wire_of(GOOD) + tail
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = MessageDecoder(ClientMessage, max_message_size=max_message_size)
        seen: list[Message] = []
        with pytest.raises(InvalidRequest) as excinfo:
            for chunk in chunks:
                decoder.receive_data(chunk)
                while (m := decoder.next_message()) is not None:
                    seen.append(m)
            decoder.end_of_stream()
        assert seen == GOOD
        assert reason_of(excinfo) == reason
        _assert_terminal(decoder, reason)


def _assert_terminal(decoder: MessageDecoder[Message], reason: str) -> None:
    assert decoder.failed
    assert decoder.buffered == 0
    for call in (
        lambda: decoder.receive_data(wire_of(GOOD)),
        decoder.next_message,
        decoder.end_of_stream,
    ):
        with pytest.raises(InvalidRequest) as again:
            call()
        assert reason_of(again) == reason


def test_declared_length_over_the_limit() -> None:
    _fails_after_good(encode_varint(MAX_MESSAGE_SIZE + 1), REASON_TOO_LARGE)


def test_oversize_is_refused_from_the_varint_alone() -> None:
    # Only the length prefix arrives: the decoder fails without waiting for any body byte.
    decoder = MessageDecoder(ClientMessage, max_message_size=10)
    decoder.receive_data(encode_varint(11))
    with pytest.raises(InvalidRequest) as excinfo:
        decoder.next_message()
    assert reason_of(excinfo) == REASON_TOO_LARGE
    assert excinfo.value.details["limit"] == "10"
    assert decoder.buffered == 0


@given(client_messages.filter(lambda m: m.ByteSize() > 8))
def test_a_real_message_over_a_small_limit(message: Message) -> None:
    assert all(m.ByteSize() <= 8 for m in GOOD)
    _fails_after_good(
        encode_message(message), REASON_TOO_LARGE, max_message_size=message.ByteSize() - 1
    )


def test_varint_longer_than_ten_bytes() -> None:
    _fails_after_good(b"\xff" * 10 + b"\x01", REASON_BAD_VARINT)


def test_varint_over_64_bits() -> None:
    _fails_after_good(b"\xff" * 9 + b"\x02", REASON_BAD_VARINT)


def test_incomplete_varint_waits_and_buffers_at_most_ten_bytes() -> None:
    decoder = MessageDecoder(ClientMessage)
    decoder.receive_data(b"\x80" * 9)
    assert decoder.next_message() is None
    assert decoder.buffered == 9


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00", id="field-number-0"),
        pytest.param(b"\x0f", id="wire-type-7"),
        pytest.param(b"\x12\x05ab", id="length-past-end"),
        pytest.param(b"\x12\x04\x0a\x02\xff\xfe", id="bad-utf8-in-string"),
        pytest.param(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", id="bad-varint-in-body"),
    ],
)
def test_undecodable_body(body: bytes) -> None:
    with pytest.raises(DecodeError):
        ClientMessage.FromString(body)  # the premise: protobuf itself refuses it
    _fails_after_good(encode_varint(len(body)) + body, REASON_UNDECODABLE)


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_truncated_message(cut: int) -> None:
    last = encode_message(
        ClientMessage(request_id=3, kick=signaling.KickParticipant(participant_id="p"))
    )
    _fails_after_good(last[:-cut], REASON_TRUNCATED)


def test_truncated_inside_the_length_prefix() -> None:
    _fails_after_good(b"\x80", REASON_TRUNCATED)


def test_end_of_stream_between_messages_is_clean() -> None:
    decoder = MessageDecoder(ClientMessage)
    decoder.receive_data(wire_of(GOOD))
    assert list(decoder) == GOOD
    decoder.end_of_stream()
    assert not decoder.failed
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"\x00")


def test_messages_before_a_fault_are_pulled_before_it_is_raised() -> None:
    decoder = MessageDecoder(ClientMessage)
    # After GOOD: an empty (valid) envelope, then a length of 15 whose body comes later.
    decoder.receive_data(wire_of(GOOD) + b"\x00\x0f")
    assert decoder.next_message() == GOOD[0]
    decoder.receive_data(b"\xff" * 15)  # a tag varint of 15 bytes: not a ClientMessage
    assert decoder.next_message() == GOOD[1]
    assert decoder.next_message() == ClientMessage()
    with pytest.raises(InvalidRequest) as excinfo:
        decoder.next_message()
    assert reason_of(excinfo) == REASON_UNDECODABLE


def _reference_decode(data: bytes, limit: int) -> tuple[list[bytes], bool]:
    """A plain, whole-buffer parser: the bodies of the valid prefix and whether it all parsed."""
    bodies: list[bytes] = []
    pos = 0
    while pos < len(data):
        value, shift, i = 0, 0, pos
        while True:
            if i >= len(data) or i - pos >= 10:
                return bodies, False
            byte = data[i]
            value |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if value >= 2**64 or value > limit or i + value > len(data):
            return bodies, False
        body = data[i : i + value]
        try:
            ClientMessage.FromString(body)
        except DecodeError:
            return bodies, False
        bodies.append(body)
        pos = i + value
    return bodies, True


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=6), st.integers(0, 40))
def test_garbage_never_yields_a_wrong_message(data: bytes, cuts: list[int], limit: int) -> None:
    expected, clean = _reference_decode(data, limit)
    decoder = MessageDecoder(ClientMessage, max_message_size=limit)
    seen: list[Message] = []
    try:
        for chunk in split_at(data, cuts):
            decoder.receive_data(chunk)
            seen.extend(decoder)
        decoder.end_of_stream()
    except InvalidRequest:
        assert not clean
    else:
        assert clean
    assert same_messages(seen, [ClientMessage.FromString(b) for b in expected])


def test_decoder_rejects_a_negative_limit() -> None:
    with pytest.raises(ValueError):
        MessageDecoder(ClientMessage, max_message_size=-1)


def test_decoder_is_typed_by_its_message_class() -> None:
    decoder: MessageDecoder[ServerMessage] = MessageDecoder(ServerMessage)
    assert decoder.message_type is ServerMessage
    assert decoder.max_message_size == MAX_MESSAGE_SIZE
    decoder.receive_data(
        encode_message(ServerMessage(request_id=9, pong=signaling.Pong(timestamp=1)))
    )
    message = decoder.next_message()
    assert message is not None and message.pong.timestamp == 1
