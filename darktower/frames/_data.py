"""Data messages (docs/protocol.md §18.4): lossy application data in WebTransport datagrams on
the media session, relayed by the MH. Sans-IO.

Layout, one datagram::

    offset size field
         0    1 version            (1)
         1    1 kind               (1 data)
         2    1 flags              (bit 0: to one participant; the other bits zero)
         3    1 reserved           (zero)
         4   16 participant id     (UUID bytes) sent: the recipient, zeros without bit 0;
                                   received: the sender
        20      payload            (at most 1,000 bytes)

The other flag bits and the reserved byte are written as zero and ignored on receive (as the
media frame's reserved bits, docs/protocol.md §7). A datagram whose first byte is 0 is not a
data message but the MH's padding (docs/protocol.md §17.2): :func:`is_padding`.
"""

from __future__ import annotations

import struct
import uuid
from typing import ClassVar, Final

import attrs

DATA_VERSION: Final = 1
DATA_KIND: Final = 1
DATA_HEADER_SIZE: Final = 20
# Limit: the largest payload of one data message. Policy: a larger one is refused by
# encode_data (ValueError) and, received, dropped by the MH as "too_large" (DataPayloadTooLarge).
# A whole data message (1,020 bytes) then fits one QUIC packet on any path WebTransport runs on.
MAX_DATA_PAYLOAD: Final = 1000
DATA_PRIVATE: Final = 0x01  # flags bit 0: to one participant

_HEADER: Final = struct.Struct(">BBBx16s")
assert _HEADER.size == DATA_HEADER_SIZE
_NO_PARTICIPANT: Final = bytes(16)


class DataMessageError(ValueError):
    """A datagram that is not a well-formed data message; ``reason`` is the label the MH
    counts its drop under (``darktower_mh_data_dropped_total{reason}``)."""

    reason: ClassVar[str] = "malformed"


class TruncatedDataMessage(DataMessageError):
    """Shorter than the 20-byte header."""

    reason = "short"


class UnsupportedDataVersion(DataMessageError):
    """The version byte is not 1."""

    reason = "version"


class UnknownDataKind(DataMessageError):
    """The kind byte is not 1 (data)."""

    reason = "kind"


class DataPayloadTooLarge(DataMessageError):
    """A payload over MAX_DATA_PAYLOAD bytes."""

    reason = "too_large"


def _participant_bytes(participant: str | bytes | uuid.UUID) -> bytes:
    if isinstance(participant, uuid.UUID):
        return participant.bytes
    if isinstance(participant, bytes):
        if len(participant) != 16:
            raise ValueError(f"a participant id is 16 bytes, not {len(participant)}")
        return participant
    try:
        return uuid.UUID(participant).bytes
    except ValueError:
        raise ValueError(f"participant id {participant!r} is not a UUID") from None


@attrs.frozen
class DataMessage:
    """One data message. ``participant_id`` (a UUID's string form) is, in a message to send,
    the recipient (the nil UUID for everyone) and, in a message received, its sender;
    ``private`` says it is (was sent) to one participant only."""

    participant_id: str
    private: bool
    payload: bytes

    @property
    def participant_id_bytes(self) -> bytes:
        return uuid.UUID(self.participant_id).bytes

    def encode(self) -> bytes:
        return encode_data(self.payload, self.participant_id, private=self.private)


def encode_data(
    payload: bytes,
    participant: str | bytes | uuid.UUID | None = None,
    *,
    private: bool | None = None,
) -> bytes:
    """The datagram of a data message carrying ``payload``. A client sends it to everyone
    (``participant`` None) or to the one ``participant`` (then ``private`` by default); the MH
    relays it with ``participant`` the sender and ``private`` as it came. Raises
    DataPayloadTooLarge over MAX_DATA_PAYLOAD bytes, ValueError for a participant id that is not
    a UUID (its string form, 16 bytes or a ``uuid.UUID``) or ``private`` without one."""
    if len(payload) > MAX_DATA_PAYLOAD:
        raise DataPayloadTooLarge(
            f"a data message's payload is at most {MAX_DATA_PAYLOAD} bytes, not {len(payload)}"
        )
    if private is None:
        private = participant is not None
    if participant is None:
        if private:
            raise ValueError("a private data message needs its recipient")
        who = _NO_PARTICIPANT
    else:
        who = _participant_bytes(participant)
    flags = DATA_PRIVATE if private else 0
    return _HEADER.pack(DATA_VERSION, DATA_KIND, flags, who) + bytes(payload)


def decode_data(datagram: bytes | bytearray | memoryview) -> DataMessage:
    """The data message in ``datagram``. Raises TruncatedDataMessage (shorter than the
    header), UnsupportedDataVersion, UnknownDataKind or DataPayloadTooLarge, and nothing else,
    whatever the bytes; padding (:func:`is_padding`) is an UnsupportedDataVersion."""
    if len(datagram) < DATA_HEADER_SIZE:
        raise TruncatedDataMessage(
            f"a data message has a {DATA_HEADER_SIZE}-byte header; got {len(datagram)} bytes"
        )
    version, kind, flags, who = _HEADER.unpack_from(datagram)
    if version != DATA_VERSION:
        raise UnsupportedDataVersion(f"data message version {version} (expected {DATA_VERSION})")
    if kind != DATA_KIND:
        raise UnknownDataKind(f"data message kind {kind} (expected {DATA_KIND})")
    size = len(datagram) - DATA_HEADER_SIZE
    if size > MAX_DATA_PAYLOAD:
        raise DataPayloadTooLarge(
            f"a data message's payload is at most {MAX_DATA_PAYLOAD} bytes, not {size}"
        )
    return DataMessage(
        participant_id=str(uuid.UUID(bytes=who)),
        private=bool(flags & DATA_PRIVATE),
        payload=bytes(datagram[DATA_HEADER_SIZE:]),
    )


def is_padding(datagram: bytes | bytearray | memoryview) -> bool:
    """The MH's padding (docs/protocol.md §17.2) or a client's: a datagram whose first byte
    is 0. Neither a data message nor malformed: ignored."""
    return len(datagram) > 0 and datagram[0] == 0
