"""FrameDecoder: any chunking gives the same frames; malformed input gives its own error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.errors import ErrorCode
from darktower.frames import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    FrameError,
    FrameFlags,
    FrameHeader,
    FramePayloadTooLarge,
    FrameType,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedFrameVersion,
)
from tests.frames._wire import SID, as_expected, feed, make, stream_of

EXPECTED, WIRE = stream_of(b"", b"a" * 5, bytes(range(100)), b"\x00" * 47, b"last")
BOUNDARIES = {0}
for _h, _p in EXPECTED:
    BOUNDARIES.add(max(BOUNDARIES) + HEADER_SIZE + len(_p))


def test_whole_stream_in_one_chunk() -> None:
    decoder = FrameDecoder()
    assert as_expected(feed(decoder, [WIRE])) == EXPECTED
    decoder.end_of_stream()
    assert decoder.buffered == 0


def test_split_at_every_byte() -> None:
    for cut in range(len(WIRE) + 1):
        decoder = FrameDecoder()
        frames = feed(decoder, [WIRE[:cut], WIRE[cut:]])
        assert as_expected(frames) == EXPECTED, cut
        decoder.end_of_stream()


def test_single_bytes() -> None:
    decoder = FrameDecoder()
    frames = feed(decoder, [WIRE[i : i + 1] for i in range(len(WIRE))])
    assert as_expected(frames) == EXPECTED
    decoder.end_of_stream()


def test_frames_come_out_as_soon_as_their_last_byte_arrives() -> None:
    decoder = FrameDecoder()
    seen = 0
    for i in range(len(WIRE)):
        decoder.receive_data(WIRE[i : i + 1])
        seen += len(list(decoder))
        assert seen == sum(1 for b in BOUNDARIES if 0 < b <= i + 1)
        assert decoder.buffered == (i + 1) - max(b for b in BOUNDARIES if b <= i + 1)


payload_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=8)


@given(payload_lists, st.data())
def test_any_chunking_gives_the_same_frames(payloads: list[bytes], data: st.DataObject) -> None:
    expected, wire = stream_of(*payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    decoder = FrameDecoder()
    assert as_expected(feed(decoder, chunks)) == expected
    decoder.end_of_stream()


def test_next_frame_and_iteration() -> None:
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.receive_data(WIRE)
    first = decoder.next_frame()
    assert first is not None
    assert (first.header, bytes(first.payload)) == EXPECTED[0]
    assert as_expected(list(decoder)) == EXPECTED[1:]
    assert decoder.next_frame() is None
    assert list(decoder) == []


def test_empty_chunk_is_harmless() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    decoder.receive_data(WIRE[:10])
    decoder.receive_data(memoryview(b""))
    decoder.receive_data(WIRE[10:])
    assert as_expected(list(decoder)) == EXPECTED


# Zero copy and lifetimes


def test_frame_within_one_chunk_is_a_view_of_that_chunk() -> None:
    chunk = WIRE
    decoder = FrameDecoder()
    decoder.receive_data(chunk)
    for frame in decoder:
        assert isinstance(frame.payload, memoryview)
        assert frame.payload.obj is chunk
        assert frame.raw.obj is chunk
        assert frame.payload.readonly


def test_view_of_bytes_is_not_copied() -> None:
    chunk = b"junk" + WIRE
    decoder = FrameDecoder()
    decoder.receive_data(memoryview(chunk)[4:])
    frames = list(decoder)
    assert as_expected(frames) == EXPECTED
    assert all(f.raw.obj is chunk for f in frames)


def test_mutable_chunk_is_copied_so_frames_cannot_change() -> None:
    chunk = bytearray(WIRE)
    decoder = FrameDecoder()
    decoder.receive_data(chunk)
    decoder.receive_data(memoryview(chunk))  # a view of a mutable buffer is copied too
    frames = list(decoder)
    chunk[:] = bytes(len(chunk))
    assert as_expected(frames) == EXPECTED * 2
    assert all(f.raw.obj is not chunk for f in frames)


def test_frame_spanning_chunks_gets_one_buffer_of_its_own() -> None:
    (_, payload), wire = make(1, bytes(range(256)) * 4)
    decoder = FrameDecoder()
    chunks = [wire[i : i + 100] for i in range(0, len(wire), 100)]
    frames = feed(decoder, chunks)
    assert len(frames) == 1
    raw = frames[0].raw
    assert isinstance(raw.obj, bytes)
    assert len(raw.obj) == len(wire)  # assembled once, exactly the frame
    assert all(raw.obj is not c for c in chunks)
    assert frames[0].payload.obj is raw.obj
    assert bytes(frames[0].payload) == payload


def test_frames_stay_valid_after_more_data_arrives() -> None:
    (_, payload1), wire1 = make(1, b"first-frame-payload" * 10)
    (_, payload2), wire2 = make(2, b"second" * 30)
    wire = wire1 + wire2 + wire1
    decoder = FrameDecoder()
    kept: list[Frame] = []
    for i in range(0, len(wire), 7):
        decoder.receive_data(bytearray(wire[i : i + 7]))  # the caller may reuse its buffer
        kept.extend(decoder)
        # Every frame handed out so far still reads the same, whatever came after it.
        assert [bytes(f.payload) for f in kept] == [payload1, payload2, payload1][: len(kept)]
    assert len(kept) == 3


def test_raw_is_the_frame_byte_for_byte_reserved_bits_included() -> None:
    _, wire = make(3, b"forward me")
    odd = bytearray(wire)
    odd[39] |= 0xFC  # reserved flag bits
    odd[40:46] = b"\xaa" * 6  # reserved bytes
    for chunks in ([bytes(odd)], [bytes(odd[:20]), bytes(odd[20:])]):
        decoder = FrameDecoder()
        (frame,) = feed(decoder, chunks)
        assert bytes(frame.raw) == bytes(odd)
        assert frame.flags == FrameFlags.END_OF_FRAME


# Malformed input


def replaced(wire: bytes, offset: int, value: bytes) -> bytes:
    return wire[:offset] + value + wire[offset + len(value) :]


GOOD = WIRE[: min(b for b in BOUNDARIES if b)]  # the first frame alone
_, BIG = make(9, b"x" * 100)
BAD = [
    pytest.param(replaced(BIG, 0, b"\x02"), UnsupportedFrameVersion, id="version-2"),
    pytest.param(replaced(BIG, 0, b"\x00"), UnsupportedFrameVersion, id="version-0"),
    pytest.param(replaced(BIG, 1, b"\x03"), UnknownFrameType, id="type-3"),
    pytest.param(replaced(BIG, 1, b"\xff"), UnknownFrameType, id="type-ff"),
    pytest.param(replaced(BIG, 34, (65).to_bytes(4, "big")), FramePayloadTooLarge, id="oversize"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3, UnsupportedFrameVersion, id="garbage"),
]


@pytest.mark.parametrize(("bad", "error"), BAD)
def test_bad_frame_after_a_good_one_at_every_split(bad: bytes, error: type[FrameError]) -> None:
    stream = GOOD + bad
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder(max_payload=64 if error is FramePayloadTooLarge else 1000)
        good: list[Frame] = []
        with pytest.raises(error) as info:
            for chunk in (stream[:cut], stream[cut:]):
                decoder.receive_data(chunk)
                good.extend(decoder)
            decoder.end_of_stream()
        # The good frame came out, nothing else did.
        assert as_expected(good) == EXPECTED[:1], cut
        assert info.value.code is ErrorCode.STREAM_ERROR
        assert decoder.buffered == 0


@pytest.mark.parametrize(("bad", "error"), BAD)
def test_after_an_error_the_decoder_is_terminal(bad: bytes, error: type[FrameError]) -> None:
    decoder = FrameDecoder(max_payload=64)
    decoder.receive_data(bad)
    with pytest.raises(error) as info:
        list(decoder)
    first = info.value
    for call in (
        lambda: decoder.next_frame(),
        lambda: decoder.receive_data(GOOD),
        lambda: decoder.end_of_stream(),
        lambda: list(decoder),
    ):
        with pytest.raises(error) as again:
            call()
        assert again.value is not first
        assert again.value.message == first.message


def test_error_messages_say_what_was_wrong() -> None:
    cases = [
        (replaced(BIG, 0, b"\x07"), "unsupported media frame version 7"),
        (replaced(BIG, 1, b"\x09"), "unknown media frame type 0x09"),
        (replaced(BIG, 34, (65).to_bytes(4, "big")), "65 bytes exceeds the limit of 64"),
    ]
    for wire, message in cases:
        decoder = FrameDecoder(max_payload=64)
        decoder.receive_data(wire)
        with pytest.raises(FrameError, match=message):
            decoder.next_frame()


def test_oversize_is_detected_from_the_header_before_buffering() -> None:
    header = FrameHeader(
        frame_type=FrameType.VIDEO_KEY,
        stream_id=SID,
        timestamp_us=0,
        sequence=0,
        payload_length=DEFAULT_MAX_PAYLOAD + 1,
    )
    decoder = FrameDecoder()
    decoder.receive_data(header.encode())  # the header alone, no payload yet
    assert decoder.buffered == 0
    with pytest.raises(FramePayloadTooLarge) as info:
        decoder.next_frame()
    assert info.value.details == {
        "payload_length": str(DEFAULT_MAX_PAYLOAD + 1),
        "max_payload": str(DEFAULT_MAX_PAYLOAD),
    }


def test_payload_at_the_limit_is_accepted() -> None:
    (_, payload), wire = make(1, b"y" * 64)
    decoder = FrameDecoder(max_payload=64)
    assert [bytes(f.payload) for f in feed(decoder, [wire[:50], wire[50:]])] == [payload]
    decoder = FrameDecoder(max_payload=0)
    assert len(feed(decoder, [make(1, b"")[1]])) == 1


def test_default_limit_is_4_mib() -> None:
    assert DEFAULT_MAX_PAYLOAD == 4 * 1024 * 1024
    assert FrameDecoder().max_payload == DEFAULT_MAX_PAYLOAD


@pytest.mark.parametrize("limit", [-1, 2**32])
def test_limit_must_fit_the_length_field(limit: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_payload=limit)


def test_truncated_at_every_point_inside_a_frame() -> None:
    for cut in range(len(WIRE) + 1):
        decoder = FrameDecoder()
        decoder.receive_data(WIRE[:cut])
        complete = sum(1 for b in BOUNDARIES if 0 < b <= cut)
        if cut in BOUNDARIES:
            decoder.end_of_stream()
            assert len(list(decoder)) == complete
            continue
        with pytest.raises(TruncatedFrame, match="stream ended"):
            decoder.end_of_stream()
        # Frames completed before the truncation still come out; then the error again.
        frames: list[Frame] = []
        with pytest.raises(TruncatedFrame):
            frames.extend(decoder)
        assert as_expected(frames) == EXPECTED[:complete]


def test_truncation_messages() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(GOOD[:10])
    with pytest.raises(TruncatedFrame, match=r"inside a frame header \(10 of 46 bytes\)"):
        decoder.end_of_stream()
    (_, wire) = make(1, b"z" * 10)
    decoder = FrameDecoder()
    decoder.receive_data(wire[:50])
    with pytest.raises(TruncatedFrame, match="6 bytes short of a 56-byte frame"):
        decoder.end_of_stream()


@given(st.binary(min_size=1, max_size=200).filter(lambda b: b[0] != 1), st.integers(1, 50))
def test_garbage_never_yields_a_frame(garbage: bytes, step: int) -> None:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    with pytest.raises(FrameError):
        for i in range(0, len(garbage), step):
            decoder.receive_data(garbage[i : i + step])
            frames.extend(decoder)
        decoder.end_of_stream()
    assert frames == []


def test_end_of_stream_is_idempotent_and_final() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(WIRE)
    decoder.end_of_stream()
    decoder.end_of_stream()
    assert as_expected(list(decoder)) == EXPECTED  # still pullable after the end
    with pytest.raises(RuntimeError, match="after end_of_stream"):
        decoder.receive_data(b"\x01")


def test_large_frame_in_single_bytes() -> None:
    # Assembly is linear: 64 KiB in 1-byte chunks completes promptly and exactly.
    (_, payload), wire = make(1, bytes(range(256)) * 256, FrameType.VIDEO_KEY)
    decoder = FrameDecoder()
    frames = feed(decoder, (wire[i : i + 1] for i in range(len(wire))))
    assert [bytes(f.payload) for f in frames] == [payload]
