"""Media frames (docs/protocol.md §7): the 46-byte header and an incremental decoder. Sans-IO.

``FrameHeader`` encodes and decodes the header; ``encode_frame`` joins a header and a payload;
``FrameDecoder`` turns a stream's bytes, in chunks of any size, into ``Frame`` objects whose
``raw`` bytes a router forwards unchanged; ``audio_level_of`` reads an audio frame's level
(docs/protocol.md §17.1) from those bytes. Malformed input raises a ``FrameError`` (a
``StreamError``, so ``ErrorCode.STREAM_ERROR``).
"""

from darktower.frames._decoder import FrameDecoder
from darktower.frames._errors import (
    FrameError,
    FramePayloadTooLarge,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedFrameVersion,
)
from darktower.frames._frame import Frame, encode_frame
from darktower.frames._header import (
    AUDIO_LEVEL_OFFSET,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_AUDIO_LEVEL,
    MAX_PAYLOAD_LENGTH,
    VERSION,
    FrameFlags,
    FrameHeader,
    FrameType,
    audio_level_of,
)

__all__ = [
    "AUDIO_LEVEL_OFFSET",
    "DEFAULT_MAX_PAYLOAD",
    "HEADER_SIZE",
    "MAX_AUDIO_LEVEL",
    "MAX_PAYLOAD_LENGTH",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameFlags",
    "FrameHeader",
    "FramePayloadTooLarge",
    "FrameType",
    "TruncatedFrame",
    "UnknownFrameType",
    "UnsupportedFrameVersion",
    "audio_level_of",
    "encode_frame",
]
