"""Conversions between :mod:`darktower.model` / :mod:`darktower.errors` enums and protobuf's.

The numeric values are equal by construction (``tests/protocol`` checks it); these helpers
exist for the types, and to refuse protobuf values this version does not know (proto3 enums
are open: a newer peer can send any number).
"""

from __future__ import annotations

from darktower.errors import ErrorCode, InvalidRequest
from darktower.model import LeaveReason, StreamType
from darktower.protocol.pb import common_pb2


def leave_reason_to_pb(reason: LeaveReason) -> common_pb2.LeaveReason.ValueType:
    return common_pb2.LeaveReason.ValueType(int(reason))


def leave_reason_from_pb(value: int) -> LeaveReason:
    """Raises :class:`InvalidRequest` for a value this version does not know."""
    try:
        return LeaveReason(value)
    except ValueError:
        raise InvalidRequest(f"unknown LeaveReason {value}", details={"field": "reason"}) from None


def stream_type_to_pb(stream_type: StreamType) -> common_pb2.StreamType.ValueType:
    return common_pb2.StreamType.ValueType(int(stream_type))


def stream_type_from_pb(value: int) -> StreamType:
    """Raises :class:`InvalidRequest` for a value this version does not know."""
    try:
        return StreamType(value)
    except ValueError:
        raise InvalidRequest(
            f"unknown StreamType {value}", details={"field": "stream_type"}
        ) from None


def error_code_to_pb(code: ErrorCode) -> common_pb2.ErrorCode.ValueType:
    return common_pb2.ErrorCode.ValueType(int(code))


def error_code_from_pb(value: int) -> ErrorCode:
    """A protobuf ``ErrorCode`` value; ``UNKNOWN`` for a value this version does not know.

    Unlike the other enums this never raises: an error from a newer peer must still be read.
    """
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.UNKNOWN
