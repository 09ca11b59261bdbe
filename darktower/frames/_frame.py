"""A decoded media frame: its wire bytes, with the header parsed once and typed on demand."""

from __future__ import annotations

import uuid

import attrs

from darktower.frames._errors import TruncatedFrame
from darktower.frames._header import (
    AUDIO_LEVEL_OFFSET,
    FLAGS,
    FLAGS_MASK,
    FRAME_TYPES,
    HEADER_SIZE,
    HEADER_STRUCT,
    FrameFlags,
    FrameHeader,
    FrameType,
    HeaderFields,
    audio_level_of,
    header_from_fields,
)

BytesLike = bytes | bytearray | memoryview


class Frame:
    """One media frame: ``raw`` is the frame exactly as received (header + payload), ``payload``
    the bytes after the header; both are read-only views, never copies.

    A router forwards ``raw`` unchanged; the SFU never re-encodes. The routing fields
    (``frame_type``, ``flags``, ``stream_id_bytes``, ``sequence``, ``timestamp_us``,
    ``audio_level``) are cheap;
    ``header`` builds the typed :class:`FrameHeader` (with its ``uuid.UUID``) on first use.

    Equal frames have the same typed header and payload (reserved bits and bytes do not count).

    Not an attrs class on purpose: the decoder makes one per frame on its hot path, and a plain
    slotted class with a bare ``__init__`` costs a third of a frozen attrs class's. It is
    immutable by convention; build one with :meth:`build` or :meth:`from_wire`.
    """

    __slots__ = ("_fields", "_header", "payload", "raw")

    raw: memoryview
    payload: memoryview
    _fields: HeaderFields
    _header: FrameHeader

    def __init__(self, raw: memoryview, payload: memoryview, fields: HeaderFields) -> None:
        # Internal: ``payload`` is ``raw[HEADER_SIZE:]`` and ``fields`` is
        # ``HEADER_STRUCT.unpack_from(raw)``, already checked. Both views are made by the caller,
        # which slices them straight from its buffer (cheaper than slicing ``raw`` again).
        # FrameDecoder inlines these stores on its hot path: keep the two in step.
        self.raw = raw
        self.payload = payload
        self._fields = fields
        # ``_header`` stays unset until first asked for: one store less per frame.

    @classmethod
    def build(cls, header: FrameHeader, payload: BytesLike) -> Frame:
        """A frame of ``header`` (its ``payload_length`` replaced) and a copy of ``payload``."""
        raw = memoryview(encode_frame(header, payload))
        return cls(raw, raw[HEADER_SIZE:], HEADER_STRUCT.unpack_from(raw))

    @classmethod
    def from_wire(cls, data: BytesLike) -> Frame:
        """Exactly one whole frame from ``data`` (copied if mutable), checked like the decoder
        checks it, except that no payload limit applies. Raises :class:`TruncatedFrame` if
        ``data`` is not exactly one frame long, or the header's own error."""
        raw = data if type(data) is bytes else bytes(data)
        header = FrameHeader.decode(raw)  # raises on a short or unreadable header
        if len(raw) != HEADER_SIZE + header.payload_length:
            raise TruncatedFrame(
                f"frame announces {header.payload_length} payload bytes, "
                f"buffer holds {len(raw) - HEADER_SIZE}",
                details={"payload_length": str(header.payload_length)},
            )
        fields: HeaderFields = HEADER_STRUCT.unpack_from(raw)
        view = memoryview(raw)
        frame = cls(view, view[HEADER_SIZE:], fields)
        frame._header = header
        return frame

    @property
    def header(self) -> FrameHeader:
        """The typed header (built on first access; reserved flag bits masked off)."""
        try:
            return self._header
        except AttributeError:
            header = self._header = header_from_fields(self._fields, self.raw[AUDIO_LEVEL_OFFSET])
            return header

    @property
    def frame_type(self) -> FrameType:
        return FRAME_TYPES[self._fields[1]]

    @property
    def stream_id_bytes(self) -> bytes:
        """The 16 stream id bytes: a cheap dictionary key for routing."""
        return self._fields[2]

    @property
    def stream_id(self) -> uuid.UUID:
        return self.header.stream_id

    @property
    def timestamp_us(self) -> int:
        return self._fields[3]

    @property
    def sequence(self) -> int:
        return self._fields[4]

    @property
    def payload_length(self) -> int:
        return self._fields[5]

    @property
    def flags(self) -> FrameFlags:
        return FLAGS[self._fields[6] & FLAGS_MASK]

    @property
    def audio_level(self) -> int | None:
        """0..127 in -dBov, None if not given or not audio (docs/protocol.md §17.1)."""
        return audio_level_of(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self.header == other.header and self.payload == other.payload

    __hash__ = None  # type: ignore[assignment]  # equal frames may sit on different buffers

    def __repr__(self) -> str:
        return f"Frame({self.header!r}, payload=<{self.payload_length} bytes>)"


def encode_frame(header: FrameHeader, payload: BytesLike) -> bytes:
    """The wire bytes of one frame: ``header`` with ``payload_length = len(payload)``, then
    ``payload``. Raises ``ValueError`` if the payload is longer than a u32 can say."""
    length = len(payload) if type(payload) is not memoryview else payload.nbytes
    if length != header.payload_length:
        header = attrs.evolve(header, payload_length=length)
    return header.encode() + payload
