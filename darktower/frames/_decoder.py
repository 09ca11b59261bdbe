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


def _header_error(fields: HeaderFields, max_payload: int) -> FrameError:
    try:
        check_fields(fields, max_payload)
    except FrameError as exc:
        return exc
    raise AssertionError(f"header {fields!r} was rejected but is valid")  # pragma: no cover


class FrameDecoder:
    """Turns a media stream's bytes, in chunks of any size, into :class:`Frame` objects.

    Use::

        decoder.receive_data(chunk)      # as often as data arrives
        for frame in decoder:            # or decoder.next_frame() until None
            route(frame.raw)
        ...
        decoder.end_of_stream()          # when the peer finished the stream

    **No copies, and views that stay valid.** A frame that arrives within one chunk is a
    ``memoryview`` into that chunk (``frame.raw.obj is chunk``). A frame that spans chunks is
    joined once, when its last byte arrives, into its own ``bytes`` object; no buffer ever grows
    and is re-copied. Every view handed out is over an immutable ``bytes`` object that the
    decoder never touches again, so it stays valid, unchanged, for as long as the caller holds
    it, whatever is fed later. A chunk that is not ``bytes`` (or a view of ``bytes``) is copied
    once on entry, because the caller could otherwise change it under a frame already handed out.
    The price of zero-copy: a small frame kept alive keeps its whole chunk alive; copy
    ``bytes(frame.raw)`` to keep a frame for long.

    **Bounds.** The partial frame is at most ``HEADER_SIZE + max_payload`` bytes (its pieces are
    views, so they also keep alive the rest of the first and last chunk they came from); a
    header that announces more is an error before any of its payload is kept. Policy when over
    the limit: :class:`FramePayloadTooLarge`, i.e. the stream is reset with STREAM_ERROR.
    Complete frames wait in a queue until pulled; it holds only data the caller has fed, so a
    caller that drains it after each :meth:`receive_data` holds at most one chunk's worth.

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
        "_have",
        "_max_payload",
        "_need",
        "_parts",
    )

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD_LENGTH:
            raise ValueError(f"max_payload must be in [0, {MAX_PAYLOAD_LENGTH}], got {max_payload}")
        self._max_payload = max_payload
        # Bounded by what the caller fed and has not pulled (see the class docstring).
        self._frames: deque[Frame] = deque()
        # The partial frame: views of the chunks it came in, their total length, the length of
        # the whole frame once its header is known (HEADER_SIZE until then), the parsed header.
        self._parts: list[memoryview] = []
        self._have = 0
        self._need = HEADER_SIZE
        self._fields: HeaderFields | None = None
        self._error: FrameError | None = None
        # Set by an error or by end_of_stream: one flag for receive_data's fast path to test.
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame held so far (0 between frames)."""
        return self._have

    def receive_data(self, data: BytesLike) -> None:
        """Feed the next bytes of the stream. Malformed data does not raise here: the error
        comes out of :meth:`next_frame` after the good frames. Raises the stored error if the
        decoder is already terminal, ``RuntimeError`` after :meth:`end_of_stream`."""
        if self._closed:
            if self._error is not None:
                raise self._error.again()
            raise RuntimeError("receive_data() after end_of_stream()")
        if type(data) is bytes:
            view = memoryview(data)
        elif type(data) is memoryview and type(data.obj) is bytes and data.c_contiguous:
            view = data.cast("B")
        else:
            # Mutable (or strided): copy once, so no frame can change under its holder.
            view = memoryview(bytes(data))
        end = len(view)
        pos = 0
        have = self._have
        if have:
            # Continue the partial frame. Its header may be incomplete too (rare: only when a
            # chunk boundary falls inside the 46 header bytes).
            parts = self._parts
            fields = self._fields
            if fields is None:
                pos = HEADER_SIZE - have
                if pos > end:
                    parts.append(view)
                    self._have = have + end
                    return
                parts.append(view[:pos])
                head = b"".join(parts)
                fields = _unpack_from(head)
                if (
                    fields[0] != VERSION
                    or fields[1] > MAX_FRAME_TYPE
                    or fields[5] > self._max_payload
                ):
                    self._fail(_header_error(fields, self._max_payload))
                    return
                parts = self._parts = [memoryview(head)]
                have = HEADER_SIZE
                self._need = HEADER_SIZE + fields[5]
                self._fields = fields
            missing = self._need - have
            if pos + missing > end:
                parts.append(view[pos:] if pos else view)
                self._have = have + end - pos
                return
            if missing:
                parts.append(view[pos : pos + missing])
                pos += missing
            # Joined once, now that it is complete: one copy, into a buffer of its own.
            raw = memoryview(b"".join(parts))
            self._frames.append(Frame(raw, raw[HEADER_SIZE:], fields))
            self._have = 0
            self._fields = None

        # Hot path: whole frames inside this chunk, zero-copy. Locals, not attribute lookups.
        unpack_from = _unpack_from
        append = self._frames.append
        max_payload = self._max_payload
        version = VERSION
        max_type = MAX_FRAME_TYPE
        last_header = end - HEADER_SIZE
        while pos <= last_header:
            fields = unpack_from(view, pos)
            if fields[0] != version or fields[1] > max_type or fields[5] > max_payload:
                self._fail(_header_error(fields, max_payload))
                return
            frame_end = pos + HEADER_SIZE + fields[5]
            if frame_end > end:
                # Header known, payload incomplete: keep what we have and wait.
                self._parts = [view[pos:]]
                self._have = end - pos
                self._need = frame_end - pos
                self._fields = fields
                return
            append(Frame(view[pos:frame_end], view[pos + HEADER_SIZE : frame_end], fields))
            pos = frame_end
        if pos < end:
            self._parts = [view[pos:]]
            self._have = end - pos

    def _fail(self, error: FrameError) -> None:
        self._error = error
        self._closed = True
        self._parts = []
        self._have = 0
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
        """Pull frames until more data is needed (raises like :meth:`next_frame`)."""
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
        if self._have:
            have, need = self._have, self._need
            known = self._fields is not None
            error = TruncatedFrame(
                f"stream ended {need - have} bytes short of a {need}-byte frame"
                if known
                else f"stream ended inside a frame header ({have} of {HEADER_SIZE} bytes)",
                details={"buffered": str(have)},
            )
            self._fail(error)
            raise error.again()
