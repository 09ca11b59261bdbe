"""The 46-byte media frame header (docs/protocol.md §7).

Layout, all integers big-endian::

    offset size field
         0    1 version            (1)
         1    1 frame type         (0 audio, 1 video key, 2 video delta)
         2   16 stream id          (UUID bytes)
        18    8 timestamp          (microseconds since the epoch)
        26    8 sequence number
        34    4 payload length
        38    2 flags              (bit 0 end of frame, bit 1 discardable, bits 2-15 reserved)
        40    1 audio level        (audio frames: bit 7 present, bits 0-6 the level in -dBov)
        41    5 reserved
        46      payload

Reserved bits and bytes are written as zero and ignored on receive. The audio level
(docs/protocol.md §17.1) is an addition: 0 (the byte unset) means none; on a video frame the byte
is ignored.
"""

from __future__ import annotations

import enum
import struct
import uuid
from typing import Any, Final

import attrs

from darktower.frames._errors import (
    FramePayloadTooLarge,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedFrameVersion,
)

VERSION: Final = 1
HEADER_SIZE: Final = 46

# The layout as every reader unpacks it; the decoder's hot path uses it too. The audio level byte
# and the five reserved bytes are pad bytes ("6x"), skipped on unpack: the level is read from the
# wire bytes only by who wants it (AUDIO_LEVEL_OFFSET, audio_level_of), so the tuple unpacked for
# every frame does not grow. ENCODE_STRUCT is the same layout with the level byte spelled out
# ("B5x"), for writing.
HEADER_STRUCT: Final = struct.Struct(">BB16sQQIH6x")
ENCODE_STRUCT: Final = struct.Struct(">BB16sQQIHB5x")
assert HEADER_STRUCT.size == ENCODE_STRUCT.size == HEADER_SIZE

# The audio level byte (docs/protocol.md §17.1), in the manner of RFC 6464: bit 7 says a level
# is given, bits 0-6 are the level in -dBov (0 the loudest, 127 silence); 0 means no level.
AUDIO_LEVEL_OFFSET: Final = 40
AUDIO_LEVEL_PRESENT: Final = 0x80
MAX_AUDIO_LEVEL: Final = 0x7F  # also the mask of the level bits

# Limit: the largest payload a decoder accepts by default. Policy when exceeded: the stream is
# reset with STREAM_ERROR (FramePayloadTooLarge), decided from the header before any of the
# payload is buffered. 4 MiB is far above any real key frame and bounds memory per stream.
DEFAULT_MAX_PAYLOAD: Final = 4 * 1024 * 1024

MAX_PAYLOAD_LENGTH: Final = 0xFFFF_FFFF  # what the u32 length field can say
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

# (version, frame type, stream id bytes, timestamp, sequence, payload length, raw flags)
HeaderFields = tuple[int, int, bytes, int, int, int, int]


class FrameType(enum.IntEnum):
    """Contract frame type byte."""

    AUDIO = 0x00
    VIDEO_KEY = 0x01
    VIDEO_DELTA = 0x02


class FrameFlags(enum.IntFlag):
    """Contract flags; bits 2-15 are reserved."""

    END_OF_FRAME = 0x0001
    DISCARDABLE = 0x0002


FLAGS_MASK: Final = int(FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE)
MAX_FRAME_TYPE: Final = int(max(FrameType))

# Indexed by the wire byte: cheaper than calling the enum on the hot path.
FRAME_TYPES: Final[tuple[FrameType, ...]] = tuple(FrameType)
FLAGS: Final[tuple[FrameFlags, ...]] = tuple(FrameFlags(i) for i in range(FLAGS_MASK + 1))


def _in_range(low: int, high: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{attribute.name} must be in [{low}, {high}], got {value}")

    return check


def _to_frame_type(value: int) -> FrameType:
    return value if type(value) is FrameType else FrameType(value)


def _to_flags(value: int) -> FrameFlags:
    return value if type(value) is FrameFlags else FrameFlags(value)


def _valid_audio_level(
    instance: FrameHeader, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is None:
        return
    if type(value) is not int or not 0 <= value <= MAX_AUDIO_LEVEL:
        raise ValueError(f"audio_level must be None or in [0, {MAX_AUDIO_LEVEL}], got {value!r}")
    if instance.frame_type != FrameType.AUDIO:
        raise ValueError("audio_level is for audio frames only")


def audio_level_of(raw: bytes | bytearray | memoryview) -> int | None:
    """The audio level of one frame's wire bytes (at least its header; the decoder's
    ``Frame.raw`` is): 0..127 in -dBov, or None when the frame gives none or is not audio
    (docs/protocol.md §17.1). Two byte reads, for the Media Handler's per-frame path; never
    raises on a whole header, whatever its bytes."""
    level = raw[AUDIO_LEVEL_OFFSET]
    if level & AUDIO_LEVEL_PRESENT and raw[1] == 0:  # 0: FrameType.AUDIO
        return level & MAX_AUDIO_LEVEL
    return None


def _no_reserved_flags(
    instance: object, attribute: attrs.Attribute[FrameFlags], value: int
) -> None:
    if value & ~FLAGS_MASK:
        raise ValueError(f"flags has reserved bits set: {value:#06x}")


@attrs.frozen(slots=True, kw_only=True)
class FrameHeader:
    """One media frame header. Build it with keywords; ``version`` defaults to 1.

    ``version`` may be any byte so that tests can produce frames a peer must reject; ``decode``
    only accepts version 1. ``audio_level`` (0..127 in -dBov, None: not given) is allowed on
    audio frames only; decoding ignores the level byte of a video frame.
    """

    version: int = attrs.field(default=VERSION, validator=_in_range(0, 0xFF))
    frame_type: FrameType = attrs.field(converter=_to_frame_type)
    stream_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    timestamp_us: int = attrs.field(validator=_in_range(0, _U64_MAX))
    sequence: int = attrs.field(validator=_in_range(0, _U64_MAX))
    payload_length: int = attrs.field(default=0, validator=_in_range(0, MAX_PAYLOAD_LENGTH))
    flags: FrameFlags = attrs.field(
        default=FrameFlags(0), converter=_to_flags, validator=_no_reserved_flags
    )
    audio_level: int | None = attrs.field(default=None, validator=_valid_audio_level)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> FrameHeader:
        """Decode the first :data:`HEADER_SIZE` bytes of ``data``; the rest is ignored.

        Reserved flag bits and reserved bytes are ignored, and so is the audio level byte of a
        video frame. Raises :class:`TruncatedFrame` if
        ``data`` is shorter than a header, :class:`UnsupportedFrameVersion` or
        :class:`UnknownFrameType` for bytes this version cannot read. The payload length is not
        checked against any limit here; :class:`FrameDecoder` does that.
        """
        if len(data) < HEADER_SIZE:
            raise TruncatedFrame(
                f"a frame header is {HEADER_SIZE} bytes, got {len(data)}",
                details={"length": str(len(data))},
            )
        return header_from_fields(HEADER_STRUCT.unpack_from(data), data[AUDIO_LEVEL_OFFSET])

    def encode(self) -> bytes:
        """The 46 header bytes, reserved bits and bytes zero (the level byte too if no level)."""
        level = self.audio_level
        return ENCODE_STRUCT.pack(
            self.version,
            self.frame_type,
            self.stream_id.bytes,
            self.timestamp_us,
            self.sequence,
            self.payload_length,
            self.flags,
            0 if level is None else AUDIO_LEVEL_PRESENT | level,
        )


def check_fields(fields: HeaderFields, max_payload: int = MAX_PAYLOAD_LENGTH) -> None:
    """Raise the error that unpacked header ``fields`` deserve, if any (version checked first,
    since a different version may mean a different layout)."""
    version, frame_type, _, _, _, length, _ = fields
    if version != VERSION:
        raise UnsupportedFrameVersion(
            f"unsupported media frame version {version} (this server speaks {VERSION})",
            details={"version": str(version)},
        )
    if frame_type > MAX_FRAME_TYPE:
        raise UnknownFrameType(
            f"unknown media frame type {frame_type:#04x}",
            details={"frame_type": str(frame_type)},
        )
    if length > max_payload:
        raise FramePayloadTooLarge(
            f"media frame payload of {length} bytes exceeds the limit of {max_payload}",
            details={"payload_length": str(length), "max_payload": str(max_payload)},
        )


_set = object.__setattr__


def header_from_fields(fields: HeaderFields, level_byte: int = 0) -> FrameHeader:
    """A typed header from unpacked fields, after :func:`check_fields`; reserved flags masked.
    ``level_byte`` is the wire byte at :data:`AUDIO_LEVEL_OFFSET` (ignored unless audio)."""
    check_fields(fields)
    version, frame_type, stream_id, timestamp_us, sequence, length, flags = fields
    # Skips attrs' validators and converters (they cost more than the rest of decoding): the
    # values come out of HEADER_STRUCT, so they fit their fields, and the enums are looked up.
    header = object.__new__(FrameHeader)
    _set(header, "version", version)
    _set(header, "frame_type", FRAME_TYPES[frame_type])
    _set(header, "stream_id", uuid.UUID(bytes=stream_id))
    _set(header, "timestamp_us", timestamp_us)
    _set(header, "sequence", sequence)
    _set(header, "payload_length", length)
    _set(header, "flags", FLAGS[flags & FLAGS_MASK])
    present = level_byte & AUDIO_LEVEL_PRESENT and frame_type == 0  # 0: FrameType.AUDIO
    _set(header, "audio_level", level_byte & MAX_AUDIO_LEVEL if present else None)
    return header
