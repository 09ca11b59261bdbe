"""Fuzz properties of the media frame parsers the network reaches: the header parser and the
incremental decoder, fed random bytes, mutated valid frames and random chunk splits. Nothing
but the documented ``FrameError`` ever comes out, and the decoder never holds more than its
bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.frames import (
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    FrameError,
    FrameHeader,
    FrameType,
    audio_level_of,
)
from tests._fuzz import fuzz_settings

from ._wire import cut, stream_of

pytestmark = pytest.mark.fuzz

MAX_PAYLOAD = 512  # small, so that random lengths often exceed it


def _decode(
    wire: bytes, cuts: list[int], max_payload: int = MAX_PAYLOAD
) -> tuple[list[bytes], type[FrameError] | None]:
    """Feed ``wire`` cut at ``cuts``, then end the stream; the frames' raw bytes and the error
    class (None if the stream was well formed). Checks the decoder's bounds after each chunk."""
    decoder = FrameDecoder(max_payload)
    frames: list[bytes] = []
    since_frame = 0  # bytes fed since the last complete frame ended
    try:
        for chunk in cut(wire, cuts):
            decoder.receive_data(chunk)
            since_frame += len(chunk)
            pulled: list[Frame] = []
            try:
                for frame in decoder:
                    pulled.append(frame)
            finally:
                frames.extend(bytes(f.raw) for f in pulled)
            buffered = decoder.buffered
            assert buffered == sum(map(len, decoder._parts))  # the O(1) count is exact
            assert buffered <= HEADER_SIZE + max_payload
            if pulled:
                since_frame = buffered
            assert buffered <= since_frame
        decoder.end_of_stream()
    except FrameError as exc:
        assert decoder.buffered == 0  # terminal: nothing held
        with pytest.raises(type(exc)):
            decoder.next_frame()
        return frames, type(exc)
    return frames, None


cuts_of = st.lists(st.integers(min_value=0, max_value=4096), max_size=12)


@fuzz_settings()
@given(st.binary(max_size=HEADER_SIZE * 3))
def test_header_parser_raises_only_frame_errors(data: bytes) -> None:
    try:
        header = FrameHeader.decode(data)
    except FrameError:
        return
    assert header.encode()[:2] == data[:2]  # version 1 and a known type round-trip
    assert header.payload_length == int.from_bytes(data[34:38], "big")
    _check_level(data, header)


def _check_level(data: bytes, header: FrameHeader) -> None:
    """The audio level byte (docs/protocol.md §17.1) reads the same every way, within range."""
    level = audio_level_of(data)
    assert level == header.audio_level
    assert level is None or 0 <= level <= 127
    assert (level is not None) == bool(data[40] & 0x80 and data[1] == FrameType.AUDIO)
    assert FrameHeader.decode(header.encode()) == header


@fuzz_settings()
@given(
    st.integers(min_value=0, max_value=255),
    st.sampled_from(FrameType),
    st.binary(min_size=HEADER_SIZE - 2, max_size=HEADER_SIZE - 2),
    st.binary(max_size=64),
)
def test_level_byte_any_value_is_safe(
    byte: int, frame_type: FrameType, rest: bytes, payload: bytes
) -> None:
    """Any value of the level byte, on any frame type, through every parser."""
    head = bytearray(bytes([1, frame_type]) + rest)
    head[34:38] = len(payload).to_bytes(4, "big")
    head[40] = byte
    wire = bytes(head) + payload
    header = FrameHeader.decode(wire)
    _check_level(wire, header)
    decoder = FrameDecoder(MAX_PAYLOAD)
    decoder.receive_data(wire)
    (frame,) = list(decoder)
    assert frame.audio_level == header.audio_level == frame.header.audio_level
    assert frame.header == header


def test_level_byte_every_value_exhaustively() -> None:
    _, wire = stream_of(b"xyz")
    for frame_type in FrameType:
        for byte in range(256):
            data = wire[:1] + bytes([frame_type]) + wire[2:40] + bytes([byte]) + wire[41:]
            _check_level(data, FrameHeader.decode(data))
            assert Frame.from_wire(data).audio_level == audio_level_of(data)


@fuzz_settings()
@given(st.binary(max_size=2048), cuts_of)
def test_decoder_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    frames, _ = _decode(data, [c % (len(data) + 1) for c in cuts])
    # Whatever came out is the stream's own bytes, whole frames from its start.
    assert data.startswith(b"".join(frames))
    for raw in frames:
        assert Frame.from_wire(raw).header.payload_length <= MAX_PAYLOAD


@st.composite
def mutated_stream(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a valid stream of frames, that stream mutated: bytes flipped, cut, inserted, removed)."""
    payloads = draw(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
    _, wire = stream_of(*payloads)
    mutated = bytearray(wire)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=max(len(mutated) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not mutated:
            break
        if kind == "flip":
            mutated[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set":
            mutated[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            mutated[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del mutated[at : at + draw(st.integers(min_value=1, max_value=8))]
        else:
            del mutated[at:]
    return wire, bytes(mutated)


@fuzz_settings()
@given(mutated_stream(), cuts_of, cuts_of)
def test_decoder_on_mutated_frames_in_any_chunks(
    streams: tuple[bytes, bytes], cuts_a: list[int], cuts_b: list[int]
) -> None:
    valid, mutated = streams
    frames, error = _decode(valid, [c % (len(valid) + 1) for c in cuts_a])
    assert error is None and b"".join(frames) == valid
    # The same mutated bytes in two different splits decode the same way.
    one = _decode(mutated, [c % (len(mutated) + 1) for c in cuts_a])
    other = _decode(mutated, [c % (len(mutated) + 1) for c in cuts_b])
    whole = _decode(mutated, [])
    assert one == other == whole
    frames, error = whole
    assert mutated.startswith(b"".join(frames))
    if error is None:
        assert b"".join(frames) == mutated


@fuzz_settings()
@given(
    st.integers(min_value=0, max_value=0xFFFF_FFFF),
    st.integers(min_value=0, max_value=1 << 16),
    st.lists(st.integers(min_value=1, max_value=64 * 1024), max_size=8),
)
def test_decoder_never_holds_more_than_its_bound(
    announced: int, max_payload: int, chunks: list[int]
) -> None:
    """A header announcing any length, then chunks of filler: held bytes stay within
    ``HEADER_SIZE + max_payload`` and an announcement over the limit fails at once."""
    _, wire = stream_of(b"")
    header = wire[:34] + announced.to_bytes(4, "big") + wire[38:HEADER_SIZE]
    decoder = FrameDecoder(max_payload)
    try:
        decoder.receive_data(header)
        # Over the limit: refused from the header, before any of the payload is kept.
        assert decoder.buffered == (HEADER_SIZE if 0 < announced <= max_payload else 0)
        list(decoder)
        for size in chunks:
            decoder.receive_data(bytes(size))
            list(decoder)
            assert decoder.buffered <= HEADER_SIZE + max_payload
    except FrameError:
        assert announced > max_payload or decoder.buffered == 0
    else:
        assert announced <= max_payload
