"""The contract's error codes and the exception hierarchy that carries them.

Every error that can reach a peer carries its :class:`ErrorCode` as the class attribute
``code``; the boundary (signaling session, HTTP handler, media stream) converts it to an
``ErrorMessage``, an HTTP error body or a stream reset. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ErrorCode(enum.IntEnum):
    """``ErrorCode`` of the contract (docs/protocol.md §1.2).

    The values equal the protobuf enum's; ``tests/protocol`` checks that they agree.
    """

    UNKNOWN = 0
    INVALID_REQUEST = 1
    UNAUTHORIZED = 2
    FORBIDDEN = 3
    NOT_FOUND = 4
    CONFLICT = 5
    INTERNAL_ERROR = 6
    CAPACITY_EXCEEDED = 7
    STREAM_ERROR = 8
    # HTTP-only in the contract's list; given a number so one table serves both worlds.
    RATE_LIMITED = 9


class DarkTowerError(Exception):
    """Base of every error that maps to a wire error code."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, details: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = dict(details or {})


class InvalidRequest(DarkTowerError):
    code = ErrorCode.INVALID_REQUEST


class Unauthorized(DarkTowerError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(DarkTowerError):
    code = ErrorCode.FORBIDDEN


class NotFound(DarkTowerError):
    code = ErrorCode.NOT_FOUND


class Conflict(DarkTowerError):
    code = ErrorCode.CONFLICT


class InternalError(DarkTowerError):
    code = ErrorCode.INTERNAL_ERROR


class CapacityExceeded(DarkTowerError):
    code = ErrorCode.CAPACITY_EXCEEDED


class StreamError(DarkTowerError):
    code = ErrorCode.STREAM_ERROR


class RateLimited(DarkTowerError):
    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 0.0,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


def sole_error(exc: BaseException) -> BaseException:
    """The error a group of exactly one error wraps (recursively); anything else unchanged.

    Nurseries wrap what their tasks raise in exception groups; where a caller expects the one
    error a single task raised, this unwraps it. A group of several errors stays a group.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
