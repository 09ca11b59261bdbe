"""Frames for the E2EE tests: a header factory and a sender that encrypts into ``Frame``s."""

from __future__ import annotations

import uuid
from typing import Any

from darktower.e2ee import SenderKey
from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType

AUDIO = uuid.UUID("11111111-2222-4333-8444-555555555555")
VIDEO = uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa")


def header(
    sequence: int = 0,
    *,
    stream_id: uuid.UUID = AUDIO,
    frame_type: FrameType = FrameType.AUDIO,
    flags: FrameFlags = FrameFlags.END_OF_FRAME,
) -> FrameHeader:
    return FrameHeader(
        frame_type=frame_type,
        stream_id=stream_id,
        timestamp_us=1_000_000 + sequence * 20_000,
        sequence=sequence,
        flags=flags,
    )


def send(key: SenderKey, payload: bytes, sequence: int = 0, **kwargs: Any) -> Frame:
    """``payload`` encrypted by ``key`` as the frame a receiver decodes."""
    return Frame.from_wire(key.encrypt(header(sequence, **kwargs), payload))


def flip(frame: Frame, offset: int, mask: int = 0x01) -> Frame:
    """``frame`` with one bit of its wire byte at ``offset`` flipped (re-parsed, so a header
    byte changed keeps the frame readable)."""
    wire = bytearray(frame.raw)
    wire[offset] ^= mask
    return Frame.from_wire(bytes(wire))
