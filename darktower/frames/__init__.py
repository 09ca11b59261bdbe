"""Media frames (docs/protocol.md §7): the 46-byte header and an incremental decoder. Sans-IO.

``FrameHeader`` encodes and decodes the header; ``encode_frame`` joins a header and a payload;
``FrameDecoder`` turns a stream's bytes, in chunks of any size, into ``Frame`` objects whose
``raw`` bytes a router forwards unchanged; ``audio_level_of`` reads an audio frame's level
(docs/protocol.md §17.1) from those bytes. Malformed input raises a ``FrameError`` (a
``StreamError``, so ``ErrorCode.STREAM_ERROR``).

Data messages (docs/protocol.md §18.4), datagrams of a 20-byte header and a payload:
``encode_data`` / ``decode_data`` and ``DataMessage``; a malformed one raises a
``DataMessageError`` whose ``reason`` names the way it is malformed; ``is_padding`` tells the
MH's padding apart.
"""

from darktower.frames._data import (
    DATA_HEADER_SIZE,
    DATA_KIND,
    DATA_PRIVATE,
    DATA_VERSION,
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
    "DATA_HEADER_SIZE",
    "DATA_KIND",
    "DATA_PRIVATE",
    "DATA_VERSION",
    "DEFAULT_MAX_PAYLOAD",
    "HEADER_SIZE",
    "MAX_AUDIO_LEVEL",
    "MAX_DATA_PAYLOAD",
    "MAX_PAYLOAD_LENGTH",
    "VERSION",
    "DataMessage",
    "DataMessageError",
    "DataPayloadTooLarge",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameFlags",
    "FrameHeader",
    "FramePayloadTooLarge",
    "FrameType",
    "TruncatedDataMessage",
    "TruncatedFrame",
    "UnknownDataKind",
    "UnknownFrameType",
    "UnsupportedDataVersion",
    "UnsupportedFrameVersion",
    "audio_level_of",
    "decode_data",
    "encode_data",
    "encode_frame",
    "is_padding",
]
