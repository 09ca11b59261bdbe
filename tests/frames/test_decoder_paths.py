"""FrameDecoder's fast paths: a frame within one chunk, spanning 2 or many chunks, a header split
across chunks, memoryview input, and the bound on what it holds between calls."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.frames import HEADER_SIZE, Frame, FrameDecoder, FrameType
from tests.frames._wire import as_expected, cut, feed, make, stream_of


def assert_own_buffer(frame: Frame, wire: bytes) -> None:
    """A spanning frame: exactly its bytes, in one immutable buffer of its own."""
    assert bytes(frame.raw) == wire
    assert isinstance(frame.raw.obj, bytes)
    assert len(frame.raw.obj) == len(wire)
    assert frame.payload.obj is frame.raw.obj
    assert frame.raw.readonly
    assert frame.payload.readonly
    assert bytes(frame.payload) == wire[HEADER_SIZE:]


def test_frame_spanning_two_chunks_split_in_the_payload() -> None:
    _, wire = make(1, bytes(range(200)))
    for at in (HEADER_SIZE, HEADER_SIZE + 1, len(wire) - 1):
        decoder = FrameDecoder()
        decoder.receive_data(wire[:at])
        assert list(decoder) == []
        assert decoder.buffered == at
        decoder.receive_data(wire[at:])
        (frame,) = list(decoder)
        assert_own_buffer(frame, wire)
        assert decoder.buffered == 0


def test_frame_spanning_two_chunks_split_in_the_header() -> None:
    _, wire = make(1, b"p" * 80)
    for at in range(1, HEADER_SIZE):
        decoder = FrameDecoder()
        (frame,) = feed(decoder, [wire[:at], wire[at:]])
        assert_own_buffer(frame, wire)


def test_frame_spanning_many_chunks_mixed_types() -> None:
    # Middle chunks of every accepted type, some of them wholly inside the payload.
    _, wire = make(1, bytes(range(256)) * 40, FrameType.VIDEO_KEY)
    pieces = cut(wire, range(30, len(wire), 700))
    chunks: list[bytes | bytearray | memoryview] = []
    for i, piece in enumerate(pieces):
        kinds: list[bytes | bytearray | memoryview] = [piece, bytearray(piece), memoryview(piece)]
        chunks.append(kinds[i % 3])
    decoder = FrameDecoder()
    (frame,) = feed(decoder, chunks)
    assert_own_buffer(frame, wire)


def test_header_split_then_empty_payload_then_more_frames_in_the_same_chunk() -> None:
    expected, wire = stream_of(b"", b"", b"abc", b"")
    for at in range(1, HEADER_SIZE):
        decoder = FrameDecoder()
        assert as_expected(feed(decoder, [wire[:at], wire[at:]])) == expected
        assert decoder.buffered == 0


def test_whole_frames_after_a_spanning_one_are_views_of_their_chunk() -> None:
    (_, a), wire_a = make(1, b"a" * 300)
    (_, b), wire_b = make(2, b"b" * 50)
    (_, c), wire_c = make(3, b"c" * 400)
    wire = wire_a + wire_b + wire_c
    first, second = wire[:200], wire[200 : len(wire_a) + len(wire_b) + 10]
    decoder = FrameDecoder()
    frames = feed(decoder, [first, second, wire[len(second) + 200 :]])
    assert [bytes(f.payload) for f in frames] == [a, b, c]
    assert frames[1].raw.obj is second  # zero copy: B lies inside the second chunk
    assert frames[1].payload.obj is second
    assert_own_buffer(frames[0], wire_a)
    assert_own_buffer(frames[2], wire_c)


def test_memoryview_of_bytes_in_any_format_is_not_copied() -> None:
    expected, wire = stream_of(b"xy" * 30, b"z" * 10)  # even length, so it casts to 'H'
    chunk = bytes(wire)
    decoder = FrameDecoder()
    decoder.receive_data(memoryview(chunk).cast("H"))
    frames = list(decoder)
    assert as_expected(frames) == expected
    assert all(f.raw.obj is chunk and f.raw.format == "B" for f in frames)


def test_non_contiguous_memoryview_is_copied_in_order() -> None:
    expected, wire = stream_of(b"q" * 33, b"r" * 7)
    doubled = bytes(b for byte in wire for b in (byte, 0))
    decoder = FrameDecoder()
    decoder.receive_data(memoryview(doubled)[::2])
    assert as_expected(list(decoder)) == expected


def test_leaving_the_loop_early_keeps_the_rest_queued() -> None:
    expected, wire = stream_of(b"1", b"2", b"3")
    decoder = FrameDecoder()
    decoder.receive_data(wire)
    for frame in decoder:
        assert bytes(frame.payload) == b"1"
        break
    assert as_expected(list(decoder)) == expected[1:]


def test_a_partial_frame_does_not_pin_the_rest_of_its_chunk() -> None:
    # The chunk ends frame A and starts B: once A is pulled and dropped, nothing the decoder
    # keeps for B refers to the chunk (its piece of B was sliced out).
    _, wire_a = make(1, b"a" * 100)
    _, wire_b = make(2, b"b" * 100)
    wire = wire_a + wire_b
    chunk = wire[50:200]
    before = sys.getrefcount(chunk)
    decoder = FrameDecoder()
    decoder.receive_data(wire[:50])
    decoder.receive_data(chunk)
    assert len(list(decoder)) == 1
    assert sys.getrefcount(chunk) == before
    assert decoder.buffered == 200 - len(wire_a)


@given(
    st.lists(st.binary(max_size=200), min_size=1, max_size=10),
    st.lists(st.integers(0, 2_100), max_size=30),
    st.sampled_from(["bytes", "memoryview"]),
)
def test_holds_at_most_one_partial_frame_of_what_was_fed(
    payloads: list[bytes], cuts: list[int], kind: str
) -> None:
    expected, wire = stream_of(*payloads)
    sizes = [HEADER_SIZE + len(p) for p in payloads]
    decoder = FrameDecoder(max_payload=200)
    fed = pulled = 0
    frames: list[Frame] = []
    for chunk in cut(wire, (c for c in cuts if c <= len(wire))):
        decoder.receive_data(chunk if kind == "bytes" else memoryview(chunk))
        fed += len(chunk)
        new = list(decoder)
        frames += new
        pulled += sum(f.raw.nbytes for f in new)
        # Exactly the bytes fed since the last complete frame, and less than one frame: the
        # frame in progress is at most one header plus its payload (itself under the limit).
        assert decoder.buffered == fed - pulled
        if decoder.buffered:
            in_progress = sizes[len(frames)]
            assert decoder.buffered < in_progress <= HEADER_SIZE + decoder.max_payload
    decoder.end_of_stream()
    assert as_expected(frames) == expected
    assert decoder.buffered == 0


@pytest.mark.parametrize("step", [1, 7, 46, 1200])
def test_realistic_mix_in_fixed_chunks(step: int) -> None:
    # The benchmark's shape: audio, deltas and a key frame that spans many chunks.
    payloads = [bytes([i]) * size for i, size in enumerate([1000, 1200, 30_000, 1000, 1200])]
    expected, wire = stream_of(*payloads)
    decoder = FrameDecoder()
    assert as_expected(feed(decoder, cut(wire, range(step, len(wire), step)))) == expected
    decoder.end_of_stream()
