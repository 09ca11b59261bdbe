"""One table from :class:`ErrorCode` to every wire form of an error, and the conversions.

A :class:`~darktower.errors.DarkTowerError` leaves the process in one of three forms, and
comes back from a peer the same way (docs/architecture.md §6.4):

* signaling: a protobuf ``ErrorMessage`` (``code``, ``message``, ``details``);
* HTTP: a status and the contract's body ``{"error": {"code", "message", "details"}}``;
* internal gRPC: a status code (:class:`GrpcStatus`, whose values are grpclib's ``Status``
  values; this layer never imports grpclib) and the message. The transport raises
  ``GRPCError(Status(grpc_status(code)), message)`` and maps a received status back with
  ``code_from_grpc_status(error.status.value)``.

:class:`RateLimited` carries ``retry_after_s`` across every form in
``details["retry_after_s"]``.
"""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Mapping
from typing import Any, Final

import attrs

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    ErrorCode,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
    StreamError,
    Unauthorized,
)
from darktower.protocol._enums import error_code_from_pb, error_code_to_pb
from darktower.protocol.pb import common_pb2

RETRY_AFTER_DETAIL: Final = "retry_after_s"
# Where a code this version does not know is kept when it is read as UNKNOWN.
PEER_CODE_DETAIL: Final = "peer_code"
# What a peer sees of an exception that is not a DarkTowerError: nothing of its text, which
# could leak internals (docs/architecture.md §6.4).
INTERNAL_ERROR_MESSAGE: Final = "internal error"


class UnknownError(DarkTowerError):
    """An error whose code is ``UNKNOWN`` or a number this version does not know.

    Only received, never raised by our own code: a newer peer may send a code we lack.
    """

    code = ErrorCode.UNKNOWN


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (google.rpc.Code), equal to ``grpclib.const.Status``'s values.

    Mirrored here because this layer never imports grpclib; ``tests/protocol`` checks that
    the names and values agree.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@attrs.frozen
class ErrorSpec:
    """Every wire form of one :class:`ErrorCode`."""

    code: ErrorCode
    name: str  # the contract's JSON ``error.code`` string
    http_status: int
    grpc_status: GrpcStatus
    exception: type[DarkTowerError]


_G = GrpcStatus
# The contract's HTTP list names INVALID_REQUEST ... INTERNAL_ERROR; CAPACITY_EXCEEDED and
# STREAM_ERROR come from its protobuf enum, under the same names. gRPC statuses are distinct
# so that a status maps back to exactly one code.
# fmt: off
_SPECS: Final = (
    ErrorSpec(ErrorCode.UNKNOWN, "UNKNOWN", 500, _G.UNKNOWN, UnknownError),
    ErrorSpec(ErrorCode.INVALID_REQUEST, "INVALID_REQUEST", 400, _G.INVALID_ARGUMENT, InvalidRequest),
    ErrorSpec(ErrorCode.UNAUTHORIZED, "UNAUTHORIZED", 401, _G.UNAUTHENTICATED, Unauthorized),
    ErrorSpec(ErrorCode.FORBIDDEN, "FORBIDDEN", 403, _G.PERMISSION_DENIED, Forbidden),
    ErrorSpec(ErrorCode.NOT_FOUND, "NOT_FOUND", 404, _G.NOT_FOUND, NotFound),
    ErrorSpec(ErrorCode.CONFLICT, "CONFLICT", 409, _G.ALREADY_EXISTS, Conflict),
    ErrorSpec(ErrorCode.INTERNAL_ERROR, "INTERNAL_ERROR", 500, _G.INTERNAL, InternalError),
    # The service is full: the caller should try another instance, hence 503 / UNAVAILABLE.
    ErrorSpec(ErrorCode.CAPACITY_EXCEEDED, "CAPACITY_EXCEEDED", 503, _G.UNAVAILABLE, CapacityExceeded),
    # A media stream failed: never the fault of an HTTP request, so a server error.
    ErrorSpec(ErrorCode.STREAM_ERROR, "STREAM_ERROR", 500, _G.ABORTED, StreamError),
    ErrorSpec(ErrorCode.RATE_LIMITED, "RATE_LIMITED", 429, _G.RESOURCE_EXHAUSTED, RateLimited),
)
# fmt: on

ERROR_TABLE: Final[Mapping[ErrorCode, ErrorSpec]] = types.MappingProxyType(
    {spec.code: spec for spec in _SPECS}
)
_BY_NAME: Final[Mapping[str, ErrorSpec]] = types.MappingProxyType(
    {spec.name: spec for spec in _SPECS}
)
_BY_GRPC: Final[Mapping[int, ErrorSpec]] = types.MappingProxyType(
    {spec.grpc_status: spec for spec in _SPECS}
)


def http_status(code: ErrorCode) -> int:
    """The HTTP status a response carrying ``code`` has."""
    return ERROR_TABLE[code].http_status


def grpc_status(code: ErrorCode) -> GrpcStatus:
    """The gRPC status code (``grpclib.const.Status(...)``) for ``code``."""
    return ERROR_TABLE[code].grpc_status


def error_name(code: ErrorCode) -> str:
    """The contract's JSON error code string for ``code``."""
    return ERROR_TABLE[code].name


def code_from_name(name: str) -> ErrorCode:
    """The code a JSON error code string names; ``UNKNOWN`` for names this version lacks."""
    spec = _BY_NAME.get(name)
    return spec.code if spec is not None else ErrorCode.UNKNOWN


def code_from_grpc_status(status: int) -> ErrorCode:
    """The code a gRPC status (an int: a grpclib ``Status``'s ``.value``) maps back to.

    ``UNKNOWN`` for statuses outside the table (``OK`` included).
    """
    spec = _BY_GRPC.get(int(status))
    return spec.code if spec is not None else ErrorCode.UNKNOWN


def wire_error(exc: BaseException) -> DarkTowerError:
    """``exc`` if it is a :class:`DarkTowerError`, else an :class:`InternalError` hiding it."""
    if isinstance(exc, DarkTowerError):
        return exc
    return InternalError(INTERNAL_ERROR_MESSAGE)


def wire_details(error: DarkTowerError) -> dict[str, str]:
    """The details that travel with ``error`` (``retry_after_s`` added for RateLimited)."""
    details = dict(error.details)
    if isinstance(error, RateLimited):
        details.setdefault(RETRY_AFTER_DETAIL, repr(float(error.retry_after_s)))
    return details


def error_body(error: DarkTowerError) -> dict[str, Any]:
    """The contract's HTTP error body for ``error``; its status is ``http_status(error.code)``."""
    return {
        "error": {
            "code": error_name(error.code),
            "message": error.message,
            "details": wire_details(error),
        }
    }


def error_message(error: DarkTowerError) -> common_pb2.ErrorMessage:
    """The protobuf ``ErrorMessage`` for ``error`` (the caller sets the envelope's request_id)."""
    return common_pb2.ErrorMessage(
        code=error_code_to_pb(error.code),
        message=error.message,
        details=wire_details(error),
    )


def make_error(code: ErrorCode, message: str, details: Mapping[str, str]) -> DarkTowerError:
    """The :class:`DarkTowerError` subclass for ``code`` carrying ``message`` and ``details``."""
    exception = ERROR_TABLE[code].exception
    if exception is RateLimited:
        return RateLimited(
            message, retry_after_s=_retry_after(details.get(RETRY_AFTER_DETAIL)), details=details
        )
    return exception(message, details=details)


def error_from_message(message: common_pb2.ErrorMessage) -> DarkTowerError:
    """The :class:`DarkTowerError` a peer's ``ErrorMessage`` stands for (the right subclass)."""
    code, details = error_code_from_pb(message.code), dict(message.details)
    if code is ErrorCode.UNKNOWN and int(message.code) != ErrorCode.UNKNOWN.value:
        details.setdefault(PEER_CODE_DETAIL, str(message.code))
    return make_error(code, message.message, details)


def error_from_body(body: Mapping[str, Any]) -> DarkTowerError:
    """The :class:`DarkTowerError` an HTTP error body stands for.

    Raises :class:`InvalidRequest` when ``body`` does not have the contract's shape.
    """
    error = body.get("error")
    if not isinstance(error, Mapping):
        raise InvalidRequest("HTTP error body has no 'error' object")
    name, text, details = error.get("code"), error.get("message", ""), error.get("details", {})
    if not isinstance(name, str) or not isinstance(text, str) or not isinstance(details, Mapping):
        raise InvalidRequest("HTTP error body is malformed")
    code, wire = code_from_name(name), {str(k): str(v) for k, v in details.items()}
    if code is ErrorCode.UNKNOWN and name != error_name(ErrorCode.UNKNOWN):
        wire.setdefault(PEER_CODE_DETAIL, name)
    return make_error(code, text, wire)


def _retry_after(text: str | None) -> float:
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0.0 else 0.0
