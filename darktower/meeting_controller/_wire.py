"""The MC's side of the signaling codec (docs/protocol.md): every ``ServerMessage`` it sends is
encoded by :func:`encode`, every ``ClientMessage`` it acts on is checked by :func:`check`."""

from __future__ import annotations

from darktower.errors import DarkTowerError
from darktower.protocol import check_bounds, encode_message, error_message
from darktower.protocol.pb.v1 import signaling_pb2 as sig


def encode(message: sig.ServerMessage) -> bytes:
    """``message`` framed for the signaling stream; InternalError past the 64 KiB limit."""
    return encode_message(message)


def check(message: sig.ClientMessage) -> None:
    """InvalidRequest unless every field of ``message`` is within the signaling bounds."""
    check_bounds(message)


def error_reply(request_id: int, exc: DarkTowerError) -> sig.ServerMessage:
    return sig.ServerMessage(request_id=request_id, error=error_message(exc))
