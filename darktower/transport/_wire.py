"""WebTransport-over-HTTP/3 wire details aioquic does not handle: stream prefixes, capsules,
error-code mapping (draft-ietf-webtrans-http3). Pure functions, no I/O."""

from __future__ import annotations

import enum

import attrs
from aioquic._buffer import Buffer, BufferReadError
from aioquic.buffer import encode_uint_var

# Unidirectional stream type and bidirectional frame type that open a WebTransport stream.
UNI_STREAM_TYPE = 0x54
BIDI_FRAME_TYPE = 0x41
# A stream prefix is at most two varints of 8 bytes each.
MAX_PREFIX = 16

CAPSULE_CLOSE_SESSION = 0x2843
CAPSULE_DRAIN_SESSION = 0x78AE
# The reason in a CLOSE_WEBTRANSPORT_SESSION capsule is at most 1,024 bytes (draft section 5).
MAX_CLOSE_REASON = 1024
# A capsule larger than this on the CONNECT stream closes the session: nothing we understand is
# that big, and unknown capsules are skipped without being buffered whole.
MAX_CAPSULE_BUFFER = 64 * 1024

WT_ERROR_FIRST = 0x52E4A40FA8DB
WT_ERROR_LAST = 0x52E5AC983162
WT_SESSION_GONE = 0x170D7B68
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
H3_NO_ERROR = 0x100
# Closes a connection whose events raised (the error boundary, see _connection.py).
H3_GENERAL_PROTOCOL_ERROR = 0x101
H3_REQUEST_CANCELLED = 0x10C


def code_to_h3(code: int) -> int:
    """Map a WebTransport application error code (32 bits) into the HTTP/3 error space."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"WebTransport error code out of range: {code}")
    return WT_ERROR_FIRST + code + code // 0x1E


def code_from_h3(h3_code: int) -> int | None:
    """The WebTransport code carried by an HTTP/3 error code, or None if it carries none."""
    if not WT_ERROR_FIRST <= h3_code <= WT_ERROR_LAST:
        return None
    shifted = h3_code - WT_ERROR_FIRST
    if shifted % 0x1F == 0x1E:
        return None  # a reserved (GREASE) codepoint
    return shifted - shifted // 0x1F


class PrefixKind(enum.Enum):
    WEBTRANSPORT = enum.auto()
    OTHER = enum.auto()  # an HTTP/3 stream: control, QPACK, request
    INCOMPLETE = enum.auto()


def parse_prefix(data: bytes, unidirectional: bool) -> tuple[PrefixKind, int, int]:
    """Classify the first bytes of a peer stream: (kind, session_id, prefix length)."""
    buf = Buffer(data=data)
    try:
        kind = buf.pull_uint_var()
        if kind != (UNI_STREAM_TYPE if unidirectional else BIDI_FRAME_TYPE):
            return PrefixKind.OTHER, 0, 0
        session_id = buf.pull_uint_var()
    except BufferReadError:
        return PrefixKind.INCOMPLETE, 0, 0
    return PrefixKind.WEBTRANSPORT, session_id, buf.tell()


def stream_prefix(session_id: int, unidirectional: bool) -> bytes:
    kind = UNI_STREAM_TYPE if unidirectional else BIDI_FRAME_TYPE
    return encode_uint_var(kind) + encode_uint_var(session_id)


def encode_capsule(capsule_type: int, value: bytes) -> bytes:
    return encode_uint_var(capsule_type) + encode_uint_var(len(value)) + value


def encode_close(code: int, reason: str) -> bytes:
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON]
    return encode_capsule(CAPSULE_CLOSE_SESSION, code.to_bytes(4, "big") + raw)


@attrs.frozen
class Capsule:
    type: int
    value: bytes


class CapsuleError(Exception):
    """The capsule stream is malformed or a capsule is too large."""


class CapsuleParser:
    """Incremental capsule decoder for the data of a CONNECT stream.

    Buffers at most one capsule header plus MAX_CAPSULE_BUFFER bytes of a known capsule;
    the payload of unknown capsules (GREASE) is skipped as it arrives.
    """

    KNOWN = frozenset({CAPSULE_CLOSE_SESSION, CAPSULE_DRAIN_SESSION})

    def __init__(self) -> None:
        self._buffer = b""
        self._skip = 0

    def feed(self, data: bytes) -> list[Capsule]:
        out: list[Capsule] = []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buffer += data
        while self._buffer:
            buf = Buffer(data=self._buffer)
            try:
                ctype = buf.pull_uint_var()
                length = buf.pull_uint_var()
            except BufferReadError:
                break
            start = buf.tell()
            if ctype not in self.KNOWN:
                available = len(self._buffer) - start
                if available >= length:
                    self._buffer = self._buffer[start + length :]
                    continue
                self._skip = length - available
                self._buffer = b""
                break
            if length > MAX_CAPSULE_BUFFER:
                raise CapsuleError(f"capsule 0x{ctype:x} of {length} bytes")
            if len(self._buffer) - start < length:
                break
            out.append(Capsule(ctype, self._buffer[start : start + length]))
            self._buffer = self._buffer[start + length :]
        if len(self._buffer) > MAX_CAPSULE_BUFFER + MAX_PREFIX:
            raise CapsuleError("capsule buffer overflow")
        return out


def decode_close(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise CapsuleError("CLOSE_WEBTRANSPORT_SESSION shorter than its code")
    reason = value[4:].decode("utf-8", errors="replace")
    return int.from_bytes(value[:4], "big"), reason
