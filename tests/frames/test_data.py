"""The data message codec (docs/protocol.md §18.4) against vectors laid out by hand from the
table there, and each malformed case with its own error and drop reason."""

from __future__ import annotations

import uuid

import pytest

from darktower.frames import (
    DATA_HEADER_SIZE,
    MAX_DATA_PAYLOAD,
    DataMessage,
    DataMessageError,
    DataPayloadTooLarge,
    TruncatedDataMessage,
    UnknownDataKind,
    UnsupportedDataVersion,
    decode_data,
    encode_data,
    is_padding,
)

PID = "00112233-4455-6677-8899-aabbccddeeff"
PID_HEX = "00112233445566778899aabbccddeeff"
NIL = "00000000-0000-0000-0000-000000000000"


def test_to_everyone_golden() -> None:
    wire = encode_data(b"hi")
    assert wire == bytes.fromhex("01 01 00 00" + "00" * 16 + "6869")
    assert decode_data(wire) == DataMessage(participant_id=NIL, private=False, payload=b"hi")


@pytest.mark.parametrize("who", [PID, PID.upper(), uuid.UUID(PID), bytes.fromhex(PID_HEX)])
def test_to_one_participant_golden(who: str | bytes | uuid.UUID) -> None:
    wire = encode_data(b"\x00\xff", who)
    assert wire == bytes.fromhex("01 01 01 00" + PID_HEX + "00ff")
    message = decode_data(wire)
    assert message == DataMessage(participant_id=PID, private=True, payload=b"\x00\xff")
    assert message.participant_id_bytes == bytes.fromhex(PID_HEX)
    assert message.encode() == wire


def test_relayed_by_the_mh_names_the_sender_and_keeps_the_private_flag() -> None:
    everyone = encode_data(b"x", PID, private=False)
    assert everyone[2] == 0 and everyone[4:20] == bytes.fromhex(PID_HEX)
    assert decode_data(everyone) == DataMessage(PID, False, b"x")


def test_empty_and_largest_payloads() -> None:
    assert decode_data(encode_data(b"")).payload == b""
    big = bytes(range(256)) * 3 + b"z" * (MAX_DATA_PAYLOAD - 768)
    wire = encode_data(big, PID)
    assert len(wire) == DATA_HEADER_SIZE + MAX_DATA_PAYLOAD
    assert decode_data(wire).payload == big
    assert decode_data(memoryview(wire)).payload == big
    assert decode_data(bytearray(wire)).payload == big


def test_reserved_bits_and_byte_are_ignored_on_receive() -> None:
    wire = bytearray(encode_data(b"p", PID))
    wire[2] |= 0xFE
    wire[3] = 0x7F
    assert decode_data(wire) == DataMessage(PID, True, b"p")
    wire[2] = 0xFE  # bit 0 clear: to everyone
    assert decode_data(wire) == DataMessage(PID, False, b"p")


@pytest.mark.parametrize(
    ("wire", "error", "reason"),
    [
        (b"", TruncatedDataMessage, "short"),
        (b"\x01\x01\x00", TruncatedDataMessage, "short"),
        (bytes.fromhex("01 01 00 00") + bytes(15), TruncatedDataMessage, "short"),
        (bytes.fromhex("02 01 00 00") + bytes(16), UnsupportedDataVersion, "version"),
        (bytes.fromhex("ff 01 00 00") + bytes(16) + b"x", UnsupportedDataVersion, "version"),
        (bytes(20), UnsupportedDataVersion, "version"),  # padding is not a data message
        (bytes.fromhex("01 00 00 00") + bytes(16), UnknownDataKind, "kind"),
        (bytes.fromhex("01 02 01 00") + bytes(16), UnknownDataKind, "kind"),
        (
            bytes.fromhex("01 01 00 00") + bytes(16) + bytes(MAX_DATA_PAYLOAD + 1),
            DataPayloadTooLarge,
            "too_large",
        ),
    ],
)
def test_each_malformed_case_has_its_error_and_reason(
    wire: bytes, error: type[DataMessageError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        decode_data(wire)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_encode_refuses_what_it_cannot_say() -> None:
    with pytest.raises(DataPayloadTooLarge):
        encode_data(bytes(MAX_DATA_PAYLOAD + 1))
    with pytest.raises(ValueError, match="not a UUID"):
        encode_data(b"", "bob")
    with pytest.raises(ValueError, match="16 bytes"):
        encode_data(b"", b"\x01" * 15)
    with pytest.raises(ValueError, match="recipient"):
        encode_data(b"", private=True)


def test_padding_is_told_apart_by_its_first_byte() -> None:
    assert is_padding(bytes(1200))
    assert is_padding(b"\x00")
    assert not is_padding(b"")
    assert not is_padding(encode_data(b"\x00"))
