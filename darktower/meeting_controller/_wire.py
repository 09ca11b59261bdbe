"""The MC's side of the signaling codec (docs/protocol.md §2, §3, §12): every ``ServerMessage``
it sends is encoded by :func:`encode`, which stamps the protocol version; every
``ClientMessage`` it acts on is checked by :func:`check`."""

from __future__ import annotations

from darktower.errors import DarkTowerError
from darktower.protocol import (
    PROTOCOL_VERSION,
    check_bounds,
    check_version,
    encode_message,
    error_message,
)
from darktower.protocol.pb.v1 import signaling_pb2 as sig


def encode(message: sig.ServerMessage) -> bytes:
    """``message``, stamped with the protocol version we speak, framed for the signaling
    stream; InternalError past the 64 KiB limit."""
    message.protocol_version = PROTOCOL_VERSION
    return encode_message(message)


def check(message: sig.ClientMessage) -> None:
    """InvalidRequest unless ``message`` speaks a version we support and every field of it is
    within the signaling bounds. Before the join the session ends; after it, only that
    message is refused (docs/protocol.md §12)."""
    check_version(message)
    check_bounds(message)


def error_reply(request_id: int, exc: DarkTowerError) -> sig.ServerMessage:
    return sig.ServerMessage(request_id=request_id, error=error_message(exc))
