"""Length-delimited protobuf messages on a byte stream (the signaling stream, docs/protocol.md §2).

Each message is preceded by its length as an unsigned varint, which is protobuf's delimited
format (``writeDelimitedTo`` / ``parseDelimitedFrom`` in other runtimes). Sans-IO in aioquic's
style (docs/architecture.md §2): feed bytes with :meth:`MessageDecoder.receive_data`, pull
messages with :meth:`MessageDecoder.next_message`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from darktower.errors import InternalError, InvalidRequest

# --- limits ------------------------------------------------------------------------------------
# Largest message body either side accepts (docs/protocol.md §3.1). A larger declared length fails
# the stream with INVALID_REQUEST as soon as its varint is read: the body is never buffered.
MAX_MESSAGE_SIZE: Final = 64 * 1024
# A varint encodes at most 64 bits in 7-bit groups; an eleventh byte is malformed input.
MAX_VARINT_LEN: Final = 10

# Error reasons, carried in ``InvalidRequest.details["reason"]`` (and so in the peer's
# ErrorMessage.details) so that each failure is told apart without parsing messages.
REASON_TOO_LARGE: Final = "message_too_large"
REASON_BAD_VARINT: Final = "bad_length_prefix"
REASON_UNDECODABLE: Final = "undecodable_message"
REASON_TRUNCATED: Final = "truncated_message"

M = TypeVar("M", bound=Message)


def encode_varint(value: int) -> bytes:
    """``value`` (0 ≤ value < 2**64) as an unsigned protobuf varint."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_message(message: Message, *, max_message_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """``message`` serialized and preceded by its length as a varint.

    Raises :class:`~darktower.errors.InternalError` when the body exceeds
    ``max_message_size``: the peer would refuse it and close the stream, so building one is
    the sender's fault, never the peer's.
    """
    body = message.SerializeToString()
    if len(body) > max_message_size:
        raise InternalError(
            f"{type(message).__name__} of {len(body)} bytes exceeds the "
            f"{max_message_size}-byte message limit",
            details={"reason": REASON_TOO_LARGE, "limit": str(max_message_size)},
        )
    return encode_varint(len(body)) + body


class MessageDecoder(Generic[M]):
    """Incremental decoder of length-delimited ``message_type`` messages from a byte stream.

    ``receive_data(data)`` feeds bytes in any split; ``next_message()`` (or iterating the
    decoder) returns the messages completed so far, in order, then ``None``. On malformed
    input (declared length over ``max_message_size``, a varint longer than 10 bytes, a body
    that does not parse as ``message_type``, or ``end_of_stream()`` inside a message) the
    decoder fails: the messages completed before the fault are still returned, then
    ``next_message()`` raises :class:`~darktower.errors.InvalidRequest` (``details["reason"]``
    names the fault), and so do ``receive_data`` and ``end_of_stream`` from then on.

    Unknown fields (tags ``message_type`` does not define) are dropped from every message
    before it is returned unless ``discard_unknown_fields`` is False: whatever a peer sent
    beyond the schema is never kept or relayed (docs/protocol.md, "Signaling limits").

    Buffering: the unfinished message at the tail is at most ``MAX_VARINT_LEN +
    max_message_size`` bytes (an oversize length is refused before its body arrives).
    Completed messages wait until pulled; the caller bounds them by draining after every
    ``receive_data`` before reading more from the stream, as a single reader task does.
    """

    def __init__(
        self,
        message_type: type[M],
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        discard_unknown_fields: bool = True,
    ) -> None:
        if max_message_size < 0:
            raise ValueError(f"max_message_size must be ≥ 0, not {max_message_size}")
        self._message_type = message_type
        self._discard_unknown = discard_unknown_fields
        self._max_message_size = max_message_size
        self._buffer = bytearray()  # the unfinished tail only, see the class docstring
        self._messages: deque[M] = deque()  # completed, not yet pulled
        self._error: InvalidRequest | None = None
        self._ended = False

    @property
    def message_type(self) -> type[M]:
        return self._message_type

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished message held (the length prefix included)."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the stream; raises ``InvalidRequest`` if the decoder failed."""
        self._raise_if_failed()
        if self._ended:
            raise RuntimeError("receive_data() after end_of_stream()")
        self._buffer += data
        self._parse()

    def next_message(self) -> M | None:
        """The next completed message, or ``None`` until more data arrives.

        Raises ``InvalidRequest`` once the messages completed before a fault are pulled.
        """
        if self._messages:
            return self._messages.popleft()
        self._raise_if_failed()
        return None

    def __iter__(self) -> Iterator[M]:
        """Yield every completed message (then stop, or raise as :meth:`next_message` does)."""
        while (message := self.next_message()) is not None:
            yield message

    def end_of_stream(self) -> None:
        """The peer finished the stream; raises ``InvalidRequest`` if it did so mid-message."""
        self._raise_if_failed()
        if self._buffer:
            self._error = _error(
                f"stream ended inside a message ({len(self._buffer)} bytes buffered)",
                REASON_TRUNCATED,
            )
            self._buffer.clear()
            self._raise_if_failed()
        self._ended = True

    # --- internals -----------------------------------------------------------------------------
    def _parse(self) -> None:
        offset = 0
        with memoryview(self._buffer) as view:
            while offset < len(view):
                try:
                    header = _read_varint(view, offset)
                except _BadVarint:
                    self._error = _error(
                        f"message length prefix is not a valid varint (over {MAX_VARINT_LEN} "
                        "bytes or over 64 bits)",
                        REASON_BAD_VARINT,
                    )
                    break
                if header is None:
                    break
                length, body_start = header
                if length > self._max_message_size:
                    self._error = _error(
                        f"declared message length {length} exceeds the "
                        f"{self._max_message_size}-byte limit",
                        REASON_TOO_LARGE,
                        limit=str(self._max_message_size),
                    )
                    break
                body_end = body_start + length
                if body_end > len(view):
                    break
                try:
                    # bytes(): the parsed message must not alias a buffer we mutate below.
                    message = self._message_type.FromString(bytes(view[body_start:body_end]))
                except DecodeError as exc:
                    self._error = _error(
                        f"message is not a valid {self._message_type.__name__}: {exc}",
                        REASON_UNDECODABLE,
                    )
                    break
                if self._discard_unknown:
                    message.DiscardUnknownFields()
                self._messages.append(message)
                offset = body_end
        if self._error is not None:
            self._buffer.clear()
        elif offset:
            del self._buffer[:offset]

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            # A fresh exception each time, so tracebacks do not pile up on one object.
            raise InvalidRequest(self._error.message, details=self._error.details)


class _BadVarint(Exception):
    pass


def _read_varint(view: memoryview, offset: int) -> tuple[int, int] | None:
    """(value, offset after it) of the varint at ``offset``, or ``None`` if it is incomplete.

    Raises ``_BadVarint`` for an eleventh byte or a value over 64 bits. Non-minimal encodings
    (``0x80 0x00``) are accepted, as every protobuf runtime does.
    """
    value = 0
    for i in range(MAX_VARINT_LEN):
        if offset + i >= len(view):
            return None
        byte = view[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise _BadVarint
            return value, offset + i + 1
    raise _BadVarint


def _error(message: str, reason: str, **details: str) -> InvalidRequest:
    return InvalidRequest(message, details={"reason": reason, **details})
