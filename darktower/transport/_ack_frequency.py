"""The ACK-frequency extension (draft-ietf-quic-ack-frequency, the codepoints of draft 07 on):
the wire half, for the aioquic core (docs/architecture.md §5.1).

A receiver that advertises ``min_ack_delay`` lets its peer set how it acks: an ACK_FREQUENCY
frame carries how many ack-eliciting packets it may take unacknowledged, the ACK delay to keep
and how it treats reordering; an IMMEDIATE_ACK frame asks for an ACK at once. The MH, the sender
that owns the bandwidth estimate, asks its media receivers for a longer delay than they keep on
their own (docs/decisions.md). Everything here reads bytes from the network: a malformed field
raises ``BufferReadError`` (aioquic turns it into FRAME_ENCODING_ERROR) or ``AckFrequencyError``.
"""

from __future__ import annotations

import attrs
from aioquic._buffer import Buffer, BufferReadError

MIN_ACK_DELAY_PARAM = 0xFF04DE1B  # transport parameter, microseconds
ACK_FREQUENCY_FRAME = 0xAF
IMMEDIATE_ACK_FRAME = 0x1F
# The least ACK delay this side can keep, advertised (microseconds): aioquic's timer
# granularity (1 ms).
MIN_ACK_DELAY_US = 1000
# A Request Max Ack Delay of 2**14 ms or more is invalid, as is such a max_ack_delay.
MAX_REQUEST_US = (1 << 14) * 1000
# Bytes an ACK_FREQUENCY frame may take: its type (2) and four varints of at most 8.
ACK_FREQUENCY_CAPACITY = 2 + 4 * 8


class AckFrequencyError(ValueError):
    """A min_ack_delay or ACK_FREQUENCY value the extension forbids."""


@attrs.frozen
class AckFrequency:
    """An ACK_FREQUENCY frame's fields."""

    sequence: int
    threshold: int  # ack-eliciting packets the receiver may take without acking
    max_ack_delay_us: int  # the ACK delay it is to keep
    reordering: int  # 0: no ACK at once for a packet out of order; else at once (see _quic.py)


def encode_min_ack_delay(us: int) -> bytes:
    """The transport parameter, ready to append to the others."""
    value = Buffer(capacity=8)
    value.push_uint_var(us)
    out = Buffer(capacity=24)
    out.push_uint_var(MIN_ACK_DELAY_PARAM)
    out.push_uint_var(len(value.data))
    out.push_bytes(value.data)
    return out.data


def find_min_ack_delay(params: bytes, max_ack_delay_ms: int) -> int | None:
    """The peer's min_ack_delay among its transport parameters (None: not advertised).
    Raises AckFrequencyError for a malformed one or one above its max_ack_delay."""
    buf = Buffer(data=params)
    found: int | None = None
    try:
        while not buf.eof():
            param_id = buf.pull_uint_var()
            length = buf.pull_uint_var()
            start = buf.tell()
            if param_id == MIN_ACK_DELAY_PARAM:
                if found is not None:
                    raise AckFrequencyError("min_ack_delay twice")
                found = buf.pull_uint_var()
                if buf.tell() != start + length:
                    raise AckFrequencyError("min_ack_delay length does not match")
            else:
                buf.seek(start + length)
    except BufferReadError as exc:
        raise AckFrequencyError("truncated transport parameter") from exc
    if found is not None and found > max_ack_delay_ms * 1000:
        raise AckFrequencyError("min_ack_delay above max_ack_delay")
    return found


def pull_ack_frequency(buf: Buffer, min_ack_delay_us: int) -> AckFrequency:
    """An ACK_FREQUENCY frame's body (its type already read). Raises BufferReadError when
    truncated, AckFrequencyError for a delay below ``min_ack_delay_us`` or of 2**14 ms on."""
    frame = AckFrequency(
        sequence=buf.pull_uint_var(),
        threshold=buf.pull_uint_var(),
        max_ack_delay_us=buf.pull_uint_var(),
        reordering=buf.pull_uint_var(),
    )
    if not min_ack_delay_us <= frame.max_ack_delay_us < MAX_REQUEST_US:
        raise AckFrequencyError("Request Max Ack Delay out of range")
    return frame


def push_ack_frequency(buf: Buffer, frame: AckFrequency) -> None:
    """An ACK_FREQUENCY frame's body (the packet builder wrote its type)."""
    buf.push_uint_var(frame.sequence)
    buf.push_uint_var(frame.threshold)
    buf.push_uint_var(frame.max_ack_delay_us)
    buf.push_uint_var(frame.reordering)


def ack_request(
    sequence: int, delay_s: float, threshold: int, peer_min_us: int, peer_max_ms: int
) -> AckFrequency | None:
    """The ACK_FREQUENCY frame asking for ``delay_s`` and an ACK every ``threshold`` packets,
    held to the peer's advertised max_ack_delay (so the probe timeout, which already counts it,
    stays right); None when the peer cannot keep a delay that short."""
    delay_us = min(round(delay_s * 1e6), peer_max_ms * 1000)
    if delay_us < peer_min_us:
        return None
    return AckFrequency(sequence, max(threshold - 1, 0), delay_us, reordering=1)
