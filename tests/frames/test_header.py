"""The 46-byte header against vectors laid out by hand from the layout in docs/protocol.md §7."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.errors import ErrorCode, StreamError
from darktower.frames import (
    HEADER_SIZE,
    Frame,
    FrameError,
    FrameFlags,
    FrameHeader,
    FrameType,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedFrameVersion,
    audio_level_of,
    encode_frame,
)

SID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
U64_MAX = 2**64 - 1


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)  # whitespace between fields is ignored


# (header, payload, wire bytes written field by field: version, type, stream id, timestamp,
#  sequence, payload length, flags, reserved, payload)
GOLDEN = [
    pytest.param(
        FrameHeader(
            frame_type=FrameType.AUDIO,
            stream_id=SID,
            timestamp_us=0x0102030405060708,
            sequence=0x1112131415161718,
            payload_length=3,
        ),
        b"abc",
        "01 00 00112233445566778899aabbccddeeff 0102030405060708 1112131415161718"
        " 00000003 0000 000000000000 616263",
        id="audio-no-flags",
    ),
    pytest.param(
        FrameHeader(
            frame_type=FrameType.VIDEO_KEY,
            stream_id=SID,
            timestamp_us=1_700_000_000_000_000,  # 0x00060A24181E4000
            sequence=0,
            payload_length=0,
            flags=FrameFlags.END_OF_FRAME,
        ),
        b"",
        "01 01 00112233445566778899aabbccddeeff 00060a24181e4000 0000000000000000"
        " 00000000 0001 000000000000",
        id="video-key-end-of-frame-empty",
    ),
    pytest.param(
        FrameHeader(
            frame_type=FrameType.VIDEO_DELTA,
            stream_id=SID,
            timestamp_us=1,
            sequence=2,
            payload_length=2,
            flags=FrameFlags.DISCARDABLE,
        ),
        b"\xff\x00",
        "01 02 00112233445566778899aabbccddeeff 0000000000000001 0000000000000002"
        " 00000002 0002 000000000000 ff00",
        id="video-delta-discardable",
    ),
    pytest.param(
        FrameHeader(
            frame_type=FrameType.VIDEO_DELTA,
            stream_id=uuid.UUID(int=0),
            timestamp_us=U64_MAX,
            sequence=U64_MAX,
            payload_length=1,
            flags=FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE,
        ),
        b"Z",
        "01 02 00000000000000000000000000000000 ffffffffffffffff ffffffffffffffff"
        " 00000001 0003 000000000000 5a",
        id="video-delta-both-flags-max-values",
    ),
    pytest.param(
        FrameHeader(
            frame_type=FrameType.VIDEO_KEY,
            stream_id=uuid.UUID(int=U64_MAX << 64 | 1),
            timestamp_us=256,
            sequence=65536,
            payload_length=0x0100,
            flags=FrameFlags(0),
        ),
        bytes(range(256)),
        "01 01 ffffffffffffffff0000000000000001 0000000000000100 0000000000010000"
        " 00000100 0000 000000000000" + bytes(range(256)).hex(),
        id="video-key-256-byte-payload",
    ),
]


@pytest.mark.parametrize(("header", "payload", "wire"), GOLDEN)
def test_golden_encode(header: FrameHeader, payload: bytes, wire: str) -> None:
    expected = hexbytes(wire)
    assert len(header.encode()) == HEADER_SIZE == 46
    assert header.encode() == expected[:HEADER_SIZE]
    assert encode_frame(header, payload) == expected


@pytest.mark.parametrize(("header", "payload", "wire"), GOLDEN)
def test_golden_decode(header: FrameHeader, payload: bytes, wire: str) -> None:
    data = hexbytes(wire)
    assert FrameHeader.decode(data) == header
    frame = Frame.from_wire(data)
    assert frame.header == header
    assert bytes(frame.payload) == payload
    assert bytes(frame.raw) == data


# The same audio frame as the first vector, but with every reserved flag bit and every reserved
# byte set, as a careless or future peer might send it, and the level bits set without the
# "present" bit 7 (docs/protocol.md §17.1: no level).
RESERVED_SET = hexbytes(
    "01 00 00112233445566778899aabbccddeeff 0102030405060708 1112131415161718"
    " 00000003 fffc 7fffffffffff 616263"
)
CANONICAL = hexbytes(
    "01 00 00112233445566778899aabbccddeeff 0102030405060708 1112131415161718"
    " 00000003 0000 000000000000 616263"
)


def test_reserved_bits_and_bytes_are_ignored_on_receive() -> None:
    header = FrameHeader.decode(RESERVED_SET)
    assert header.flags == FrameFlags(0)
    assert header == FrameHeader.decode(CANONICAL)
    # ...and written as zero on send.
    assert header.encode() == CANONICAL[:HEADER_SIZE]


def test_reserved_bits_masked_but_defined_flags_kept() -> None:
    data = bytearray(CANONICAL)
    data[38:40] = b"\xff\xff"
    header = FrameHeader.decode(data)
    assert header.flags == FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE
    assert header.encode()[38:46] == hexbytes("0003 000000000000")


def test_decode_reads_only_the_first_46_bytes() -> None:
    assert FrameHeader.decode(CANONICAL + b"trailing junk") == FrameHeader.decode(CANONICAL)
    assert FrameHeader.decode(memoryview(CANONICAL)) == FrameHeader.decode(CANONICAL)


@pytest.mark.parametrize("length", [0, 1, 45])
def test_decode_short_buffer_is_truncated(length: int) -> None:
    with pytest.raises(TruncatedFrame, match="46 bytes"):
        FrameHeader.decode(CANONICAL[:length])


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_decode_unknown_version(version: int) -> None:
    data = bytes([version]) + CANONICAL[1:]
    with pytest.raises(UnsupportedFrameVersion, match=f"version {version}"):
        FrameHeader.decode(data)


@pytest.mark.parametrize("frame_type", [3, 0x7F, 0xFF])
def test_decode_unknown_frame_type(frame_type: int) -> None:
    data = CANONICAL[:1] + bytes([frame_type]) + CANONICAL[2:]
    with pytest.raises(UnknownFrameType, match="frame type"):
        FrameHeader.decode(data)


def test_frame_errors_are_stream_errors() -> None:
    for cls in (UnsupportedFrameVersion, UnknownFrameType, TruncatedFrame):
        assert issubclass(cls, FrameError)
        assert issubclass(cls, StreamError)
        assert cls.code is ErrorCode.STREAM_ERROR


def test_enum_values_match_the_contract() -> None:
    assert [(t.name, t.value) for t in FrameType] == [
        ("AUDIO", 0),
        ("VIDEO_KEY", 1),
        ("VIDEO_DELTA", 2),
    ]
    assert FrameFlags.END_OF_FRAME == 1
    assert FrameFlags.DISCARDABLE == 2


def test_header_defaults_and_conversions() -> None:
    header = FrameHeader(frame_type=2, stream_id=SID, timestamp_us=0, sequence=0, flags=1)
    assert header.version == 1
    assert header.payload_length == 0
    assert header.frame_type is FrameType.VIDEO_DELTA
    assert header.flags is FrameFlags.END_OF_FRAME


@pytest.mark.parametrize(
    "changes",
    [
        {"timestamp_us": -1},
        {"timestamp_us": 2**64},
        {"sequence": 2**64},
        {"payload_length": 2**32},
        {"version": 256},
        {"flags": 4},
        {"frame_type": 3},
    ],
)
def test_header_rejects_values_the_wire_cannot_carry(changes: dict[str, int]) -> None:
    fields: dict[str, object] = {
        "frame_type": FrameType.AUDIO,
        "stream_id": SID,
        "timestamp_us": 0,
        "sequence": 0,
    }
    fields.update(changes)
    with pytest.raises(ValueError):
        FrameHeader(**fields)  # type: ignore[arg-type]


def test_header_is_frozen() -> None:
    header = FrameHeader(frame_type=FrameType.AUDIO, stream_id=SID, timestamp_us=0, sequence=0)
    with pytest.raises(AttributeError):
        header.sequence = 1  # type: ignore[misc]


def test_encode_frame_fills_payload_length() -> None:
    header = FrameHeader(
        frame_type=FrameType.AUDIO, stream_id=SID, timestamp_us=5, sequence=6, payload_length=99
    )
    wire = encode_frame(header, memoryview(b"hello"))
    assert wire[34:38] == (5).to_bytes(4, "big")
    assert wire[HEADER_SIZE:] == b"hello"
    assert FrameHeader.decode(wire).payload_length == 5


def test_frame_build_and_fields() -> None:
    header = FrameHeader(
        frame_type=FrameType.VIDEO_KEY,
        stream_id=SID,
        timestamp_us=7,
        sequence=8,
        flags=FrameFlags.DISCARDABLE,
    )
    frame = Frame.build(header, b"xyz")
    assert frame.frame_type is FrameType.VIDEO_KEY
    assert frame.flags is FrameFlags.DISCARDABLE
    assert frame.stream_id == SID
    assert frame.stream_id_bytes == SID.bytes
    assert (frame.timestamp_us, frame.sequence, frame.payload_length) == (7, 8, 3)
    assert frame.header.payload_length == 3
    assert frame.header is frame.header  # built once
    assert bytes(frame.payload) == b"xyz"
    assert "payload=<3 bytes>" in repr(frame)


def test_frame_flags_property_masks_reserved_bits() -> None:
    frame = Frame.from_wire(RESERVED_SET)
    assert frame.flags == FrameFlags(0)
    assert bytes(frame.raw) == RESERVED_SET  # forwarded byte-identical, reserved bits and all


def test_frames_compare_by_meaning() -> None:
    assert Frame.from_wire(RESERVED_SET) == Frame.from_wire(CANONICAL)
    assert Frame.from_wire(CANONICAL) != Frame.from_wire(CANONICAL[:-1] + b"d")
    assert Frame.from_wire(CANONICAL) != CANONICAL


@pytest.mark.parametrize("extra", [-1, 1])
def test_frame_from_wire_needs_exactly_one_frame(extra: int) -> None:
    data = CANONICAL + b"!" if extra > 0 else CANONICAL[:-1]
    with pytest.raises(TruncatedFrame, match="announces 3 payload bytes"):
        Frame.from_wire(data)


def test_frame_from_wire_copies_mutable_input() -> None:
    data = bytearray(CANONICAL)
    frame = Frame.from_wire(data)
    data[HEADER_SIZE] = ord("X")
    assert bytes(frame.payload) == b"abc"


@st.composite
def headers(draw: st.DrawFn) -> FrameHeader:
    frame_type = draw(st.sampled_from(FrameType))
    levels = st.none() | st.integers(0, 127) if frame_type == FrameType.AUDIO else st.none()
    return FrameHeader(
        frame_type=frame_type,
        stream_id=draw(st.uuids()),
        timestamp_us=draw(st.integers(0, U64_MAX)),
        sequence=draw(st.integers(0, U64_MAX)),
        payload_length=draw(st.integers(0, 2**32 - 1)),
        flags=FrameFlags(draw(st.integers(0, 3))),
        audio_level=draw(levels),
    )


@given(headers())
def test_header_round_trip(header: FrameHeader) -> None:
    wire = header.encode()
    assert len(wire) == HEADER_SIZE
    level = header.audio_level
    assert wire[40] == (0 if level is None else 0x80 | level)
    assert wire[41:46] == bytes(5)
    assert FrameHeader.decode(wire) == header
    frame = Frame.build(header, b"")
    assert frame.audio_level == level == audio_level_of(frame.raw) == frame.header.audio_level


@given(
    st.sampled_from(FrameType),
    st.binary(min_size=HEADER_SIZE - 2, max_size=HEADER_SIZE - 2),
)
def test_any_readable_header_reencodes_canonically(frame_type: FrameType, rest: bytes) -> None:
    wire = bytes([1, frame_type]) + rest
    header = FrameHeader.decode(wire)
    again = header.encode()
    # Everything but the reserved bits and bytes survives; those come back as zero, and so does
    # a level byte without its bit 7 or on a video frame.
    assert again[:38] == wire[:38]
    assert again[38:40] == bytes([0, wire[39] & 3])
    level = wire[40] if wire[40] & 0x80 and frame_type == FrameType.AUDIO else 0
    assert again[40:] == bytes([level]) + bytes(5)
    assert header.audio_level == (level & 0x7F if level else None) == audio_level_of(wire)


# The audio level byte (docs/protocol.md §17.1): bit 7 present, bits 0-6 the level in -dBov.
@pytest.mark.parametrize(
    ("byte", "level"),
    [(0x00, None), (0x80, 0), (0x81, 1), (0xBF, 63), (0xFF, 127), (0x7F, None), (0x01, None)],
)
def test_audio_level_byte(byte: int, level: int | None) -> None:
    wire = CANONICAL[:40] + bytes([byte]) + CANONICAL[41:]
    header = FrameHeader.decode(wire)
    assert header.audio_level == level
    assert audio_level_of(wire) == level
    assert audio_level_of(memoryview(wire)) == level
    frame = Frame.from_wire(wire)
    assert frame.audio_level == level and frame.header.audio_level == level
    assert bytes(frame.raw) == wire  # forwarded byte-identical
    # Written back canonically: the byte if it says a level, else zero.
    assert header.encode()[40] == (byte if level is not None else 0)


def test_audio_level_golden_encode() -> None:
    header = FrameHeader(
        frame_type=FrameType.AUDIO,
        stream_id=SID,
        timestamp_us=0x0102030405060708,
        sequence=0x1112131415161718,
        payload_length=3,
        audio_level=42,
    )
    assert encode_frame(header, b"abc") == hexbytes(
        "01 00 00112233445566778899aabbccddeeff 0102030405060708 1112131415161718"
        " 00000003 0000 aa0000000000 616263"
    )


@pytest.mark.parametrize("frame_type", [FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA])
def test_audio_level_on_a_video_frame_is_ignored(frame_type: FrameType) -> None:
    wire = bytearray(CANONICAL)
    wire[1] = frame_type
    wire[40] = 0x8A
    header = FrameHeader.decode(wire)
    assert header.audio_level is None
    assert audio_level_of(wire) is None
    assert Frame.from_wire(wire).audio_level is None
    assert header.encode()[40] == 0
    # ...and a video header cannot be given one.
    with pytest.raises(ValueError, match="audio frames only"):
        FrameHeader(frame_type=frame_type, stream_id=SID, timestamp_us=0, sequence=0, audio_level=3)


@pytest.mark.parametrize("level", [-1, 128, 255, True, 1.0])
def test_audio_level_out_of_range(level: object) -> None:
    with pytest.raises(ValueError, match="audio_level"):
        FrameHeader(
            frame_type=FrameType.AUDIO,
            stream_id=SID,
            timestamp_us=0,
            sequence=0,
            audio_level=level,  # type: ignore[arg-type]
        )


def test_frames_differing_only_in_level_differ() -> None:
    loud = CANONICAL[:40] + b"\x80" + CANONICAL[41:]
    assert Frame.from_wire(loud) != Frame.from_wire(CANONICAL)
