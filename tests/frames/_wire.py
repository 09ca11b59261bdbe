"""Helpers shared by the frame decoder tests: build frames and streams, feed a decoder."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from darktower.frames import Frame, FrameDecoder, FrameFlags, FrameHeader, FrameType, encode_frame

SID = uuid.UUID("6f1d2c3b-4a59-4867-9786-a5b4c3d2e1f0")

Expected = tuple[FrameHeader, bytes]


def make(
    sequence: int,
    payload: bytes,
    frame_type: FrameType = FrameType.AUDIO,
    flags: FrameFlags = FrameFlags.END_OF_FRAME,
    audio_level: int | None = None,
) -> tuple[Expected, bytes]:
    header = FrameHeader(
        frame_type=frame_type,
        stream_id=SID,
        timestamp_us=1_000 * sequence,
        sequence=sequence,
        payload_length=len(payload),
        flags=flags,
        audio_level=audio_level,
    )
    return (header, payload), encode_frame(header, payload)


def stream_of(*payloads: bytes) -> tuple[list[Expected], bytes]:
    """Frames of each type in turn; every other audio frame carries an audio level."""
    types = [FrameType.AUDIO, FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA]
    expected, wire = [], b""
    for i, payload in enumerate(payloads):
        level = (i * 37) % 128 if i % 6 == 3 else None  # i % 3 == 0: audio
        e, w = make(i, payload, types[i % 3], FrameFlags(i % 4), level)
        expected.append(e)
        wire += w
    return expected, wire


def feed(decoder: FrameDecoder, chunks: Iterable[bytes | bytearray | memoryview]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(decoder)
    return out


def as_expected(frames: list[Frame]) -> list[Expected]:
    return [(f.header, bytes(f.payload)) for f in frames]


def cut(wire: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``wire`` split at the given offsets (sorted, duplicates give empty chunks)."""
    points = sorted(cuts)
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
