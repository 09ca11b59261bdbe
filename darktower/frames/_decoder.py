"""An incremental media frame decoder in the sans-IO style of aioquic: feed bytes, pull frames."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final

from darktower.frames._errors import FrameError, TruncatedFrame
from darktower.frames._frame import BytesLike, Frame
from darktower.frames._header import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAX_FRAME_TYPE,
    MAX_PAYLOAD_LENGTH,
    VERSION,
    HeaderFields,
    check_fields,
)

_unpack_from: Final = HEADER_STRUCT.unpack_from
# The decoder builds each Frame field by field from object.__new__ (what Frame.__init__ does,
# inlined): in CPython 3.11 a class call with a Python __init__ costs more than the stores.
_new: Final = object.__new__

# A piece of the partial frame: a chunk the caller fed or a slice of one (``bytes``, or a byte
# view of ``bytes``), or the joined header.
_Piece = bytes | memoryview


def _header_error(fields: HeaderFields, max_payload: int) -> FrameError:
    try:
        check_fields(fields, max_payload)
    except FrameError as exc:
        return exc
    raise AssertionError(f"header {fields!r} was rejected but is valid")  # pragma: no cover


def _immutable(data: BytesLike) -> bytes | memoryview:
    """``data`` as something no one can change under a frame: a byte-format view of ``bytes``
    as it is, anything else copied once."""
    if type(data) is memoryview and type(data.obj) is bytes and data.c_contiguous:
        return data.cast("B")
    return bytes(data)


class FrameDecoder:
    """Turns a media stream's bytes, in chunks of any size, into :class:`Frame` objects.

    Use::

        decoder.receive_data(chunk)      # as often as data arrives
        for frame in decoder:            # or decoder.next_frame() until None
            route(frame.raw)
        ...
        decoder.end_of_stream()          # when the peer finished the stream

    **Zero copy where it is free, and views that stay valid.** A frame that arrives within one
    chunk is a ``memoryview`` into that chunk (``frame.raw.obj is chunk``). A frame that spans
    chunks is joined once, when its last byte arrives, into its own ``bytes`` object: the chunks
    wholly inside it are kept as they are, its first and last pieces are sliced out of their
    chunks (a slice of ``bytes`` is a copy, which CPython makes faster than a view, and it pins
    nothing else of the chunk), and no buffer ever grows and is re-copied, so a 4 MiB frame in
    1-byte chunks is linear, not quadratic. Every view handed out is over an immutable ``bytes``
    object that the decoder never touches again, so it stays valid, unchanged, for as long as the
    caller holds it, whatever is fed later. A chunk that is not ``bytes`` (or a view of ``bytes``)
    is copied once on entry, because the caller could otherwise change it under a frame already
    handed out. The price of zero-copy: a small frame kept alive keeps its whole chunk alive;
    copy ``bytes(frame.raw)`` to keep a frame for long.

    **Bounds.** Beyond the complete frames not yet pulled, the decoder holds one partial frame:
    at most ``HEADER_SIZE + max_payload`` bytes and never more than was fed since the last
    complete frame (:attr:`buffered`; pieces fed as views of ``bytes`` also keep their
    underlying object alive). A header that announces more than ``max_payload`` is an error
    before any of its payload is kept. Policy when over the limit: :class:`FramePayloadTooLarge`,
    i.e. the stream is reset with STREAM_ERROR. Complete frames wait in a queue until pulled; it
    holds only data the caller has fed, so a caller that drains it after each
    :meth:`receive_data` holds at most one chunk's worth of frames.

    **Errors** (all :class:`~darktower.frames.FrameError`, a ``StreamError``): an unsupported
    version, an unknown frame type, a payload over ``max_payload``, and a stream that ends inside
    a frame. Frames completed before the bad byte are still delivered; then :meth:`next_frame`
    raises the error. From then on the decoder is terminal: every :meth:`next_frame`,
    :meth:`receive_data` and :meth:`end_of_stream` raises an error of the same class. It never
    yields a frame built from bytes at or after the fault.
    """

    __slots__ = (
        "_closed",
        "_error",
        "_fields",
        "_frames",
        "_max_payload",
        "_missing",
        "_parts",
    )

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD_LENGTH:
            raise ValueError(f"max_payload must be in [0, {MAX_PAYLOAD_LENGTH}], got {max_payload}")
        self._max_payload = max_payload
        # Bounded by what the caller fed and has not pulled (see the class docstring).
        self._frames: deque[Frame] = deque()
        # The partial frame, in three fields so that the hot path tests one integer:
        # ``_missing`` bytes are still needed to complete its header (``_fields`` is None) or its
        # payload (``_fields`` is the parsed header); 0 means there is no partial frame and
        # ``_parts`` is empty. ``_parts`` holds the pieces received so far, joined once at the end.
        self._missing = 0
        self._fields: HeaderFields | None = None
        self._parts: list[_Piece] = []
        self._error: FrameError | None = None
        # Set by an error or by end_of_stream: one flag for receive_data's fast path to test.
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame held so far (0 between frames). O(1): a caller may ask
        after every chunk (the Media Handler counts it against a per-participant cap)."""
        missing = self._missing
        if not missing:
            return 0
        fields = self._fields
        return (HEADER_SIZE if fields is None else HEADER_SIZE + fields[5]) - missing

    def receive_data(self, data: BytesLike) -> None:
        """Feed the next bytes of the stream. Malformed data does not raise here: the error
        comes out of :meth:`next_frame` after the good frames. Raises the stored error if the
        decoder is already terminal, ``RuntimeError`` after :meth:`end_of_stream`."""
        if self._closed:
            if self._error is not None:
                raise self._error.again()
            raise RuntimeError("receive_data() after end_of_stream()")
        if type(data) is not bytes:
            data = _immutable(data)
        end = len(data)
        missing = self._missing
        if missing:
            if missing > end:
                # Inside the partial frame (a key frame's middle chunks): keep the chunk whole.
                self._parts.append(data)
                self._missing = missing - end
                return
            fields = self._fields
            if fields is None:
                # Rare: a chunk boundary fell inside the 46 header bytes.
                pos = self._finish_header(data, missing)
                if pos < 0:
                    return
            else:
                parts = self._parts
                parts.append(data[:missing])
                # Joined once, now that it is complete, into a buffer of its own.
                frame = _new(Frame)
                frame.raw = raw = memoryview(b"".join(parts))
                frame.payload = raw[HEADER_SIZE:]
                frame._fields = fields
                self._frames.append(frame)
                pos = missing
            view = None  # made only if a whole frame follows in this chunk
        else:
            pos = 0
            view = memoryview(data)

        # Whole frames inside this chunk, zero-copy. Every exit sets the partial frame state
        # afresh: at 1.2 KB chunks this runs once or twice per frame, and each bytecode counts.
        last_header = end - HEADER_SIZE
        while pos <= last_header:
            fields = _unpack_from(data, pos)
            if fields[0] != VERSION or fields[1] > MAX_FRAME_TYPE or fields[5] > self._max_payload:
                self._fail(_header_error(fields, self._max_payload))
                return
            frame_end = pos + HEADER_SIZE + fields[5]
            if frame_end > end:
                # Header known, payload incomplete: keep what we have and wait.
                self._parts = [data[pos:]]
                self._missing = frame_end - end
                self._fields = fields
                return
            if view is None:
                view = memoryview(data)
            frame = _new(Frame)
            frame.raw = view[pos:frame_end]
            frame.payload = view[pos + HEADER_SIZE : frame_end]
            frame._fields = fields
            self._frames.append(frame)
            pos = frame_end
        if pos < end:
            self._parts = [data[pos:]]
            self._missing = pos - last_header
            self._fields = None
        else:
            self._parts = []
            self._missing = 0

    def _finish_header(self, data: bytes | memoryview, missing: int) -> int:
        """Complete the partial header with the chunk's first ``missing`` bytes, check it, and
        complete the frame too if the chunk holds the rest. Returns where whole frames may
        start in the chunk, or -1 if the chunk ended first (state kept) or after an error."""
        parts = self._parts
        parts.append(data[:missing])
        head = b"".join(parts)
        fields: HeaderFields = _unpack_from(head)
        if fields[0] != VERSION or fields[1] > MAX_FRAME_TYPE or fields[5] > self._max_payload:
            self._fail(_header_error(fields, self._max_payload))
            return -1
        pos = missing
        frame_end = pos + fields[5]
        end = len(data)
        if frame_end > end:
            self._parts = [head, data[pos:]] if pos < end else [head]
            self._missing = frame_end - end
            self._fields = fields
            return -1
        raw = memoryview(b"".join((head, data[pos:frame_end])))
        self._frames.append(Frame(raw, raw[HEADER_SIZE:], fields))
        return frame_end

    def _fail(self, error: FrameError) -> None:
        self._error = error
        self._closed = True
        self._parts = []
        self._missing = 0
        self._fields = None

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more data is needed. Raises the decoder's
        error once the frames completed before it have been pulled."""
        if self._frames:
            return self._frames.popleft()
        if self._error is not None:
            raise self._error.again()
        return None

    def __iter__(self) -> Iterator[Frame]:
        """Pull frames until more data is needed (raises like :meth:`next_frame`). Frames not
        pulled when the loop is left early stay queued."""
        frames = self._frames
        while frames:
            yield frames.popleft()
        if self._error is not None:
            raise self._error.again()

    def end_of_stream(self) -> None:
        """The peer finished the stream. Raises :class:`TruncatedFrame` if it ended inside a
        frame (the decoder becomes terminal), or the stored error. Frames already completed
        can still be pulled. Calling it again is harmless."""
        if self._error is not None:
            raise self._error.again()
        self._closed = True
        missing = self._missing
        if missing:
            fields = self._fields
            if fields is None:
                message = (
                    f"stream ended inside a frame header ({HEADER_SIZE - missing} of "
                    f"{HEADER_SIZE} bytes)"
                )
            else:
                need = HEADER_SIZE + fields[5]
                message = f"stream ended {missing} bytes short of a {need}-byte frame"
            error = TruncatedFrame(message, details={"buffered": str(self.buffered)})
            self._fail(error)
            raise error.again()
