"""The audio level of a frame (docs/protocol.md §17.1): the header's byte 40, in the manner of
RFC 6464. Bit 7 set means a level is given, bits 0-6 are the level in -dBov (0 the loudest,
127 silence); 0 (the byte unset) means no level. The byte is in the header, outside the
encrypted payload, and part of what an end-to-end encrypted frame authenticates (§16.1), so it
is set on the header before the frame is encoded or encrypted.

:func:`with_audio_level` is the one place that puts it on a header: it uses
``FrameHeader.audio_level`` when ``darktower.frames`` has it, else a header that writes the
byte itself when encoded.
"""

from __future__ import annotations

from typing import Final

import attrs

from darktower.frames import Frame, FrameHeader

LEVEL_OFFSET: Final = 40  # the first reserved header byte (docs/protocol.md §7)
LEVEL_PRESENT: Final = 0x80
MAX_LEVEL: Final = 127  # silence, in -dBov

_NATIVE: Final = "audio_level" in attrs.fields_dict(FrameHeader)


def check_level(level: int) -> int:
    """``level`` if it is one (0..127, -dBov); raises ValueError otherwise."""
    if type(level) is not int or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"an audio level is 0..{MAX_LEVEL} (-dBov), not {level!r}")
    return level


@attrs.frozen(slots=True, kw_only=True)
class _LeveledHeader(FrameHeader):
    """A header whose encoding carries an audio level in byte 40."""

    level: int = 0

    def encode(self) -> bytes:
        data = bytearray(super().encode())
        data[LEVEL_OFFSET] = LEVEL_PRESENT | self.level
        return bytes(data)


def with_audio_level(header: FrameHeader, level: int) -> FrameHeader:
    """``header`` with the audio level ``level`` (0..127, checked by :func:`check_level`)."""
    check_level(level)
    if _NATIVE:
        return attrs.evolve(header, audio_level=level)
    fields = {a.name: getattr(header, a.name) for a in attrs.fields(FrameHeader)}
    return _LeveledHeader(**fields, level=level)


def audio_level(frame: Frame) -> int | None:
    """The audio level ``frame`` carries (0..127, -dBov), or None if it says none."""
    byte = frame.raw[LEVEL_OFFSET]
    return byte & MAX_LEVEL if byte & LEVEL_PRESENT else None


__all__ = ["LEVEL_OFFSET", "MAX_LEVEL", "audio_level", "check_level", "with_audio_level"]
