"""Transport exceptions. Closed = we closed it, Broken = the peer or the network did."""

from __future__ import annotations

import trio

from darktower.errors import CapacityExceeded, DarkTowerError, ErrorCode


class StreamReset(trio.BrokenResourceError):
    """The peer reset the stream (or asked us to stop sending on it).

    ``code`` is the WebTransport application error code, or None when the HTTP/3 error code
    carried none (``h3_code`` always holds the raw value).
    """

    def __init__(self, code: int | None, h3_code: int, *, stop_sending: bool = False) -> None:
        what = "stop-sending" if stop_sending else "reset"
        super().__init__(f"stream {what} by peer, code {code} (h3 0x{h3_code:x})")
        self.code = code
        self.h3_code = h3_code
        self.stop_sending = stop_sending


class SessionClosed(trio.BrokenResourceError):
    """The session ended (closed by the peer, or the connection died).

    ``code``/``reason`` are the peer's CLOSE_WEBTRANSPORT_SESSION values when it sent one.
    """

    def __init__(self, code: int, reason: str, *, message: str = "session closed") -> None:
        super().__init__(f"{message} (code {code}, reason {reason!r})")
        self.code = code
        self.reason = reason


class RejectSession(DarkTowerError):
    """Raised by a route's ``authorize`` hook: the CONNECT is answered with ``status``."""

    code = ErrorCode.UNAUTHORIZED

    def __init__(self, status: int = 401, message: str = "rejected") -> None:
        super().__init__(message)
        self.status = status


class SessionRefused(DarkTowerError):
    """The server answered the client's CONNECT with a non-2xx ``status``."""

    code = ErrorCode.STREAM_ERROR

    def __init__(self, status: int) -> None:
        super().__init__(f"WebTransport CONNECT refused with status {status}")
        self.status = status


class ConnectFailed(DarkTowerError):
    """The QUIC connection could not be established (timeout, TLS failure, closed)."""

    code = ErrorCode.STREAM_ERROR


class DatagramTooLarge(ValueError):
    """The datagram does not fit in one QUIC packet; it is refused, never queued."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"datagram of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


class StreamLimitExceeded(CapacityExceeded):
    """The session already has as many open streams as its limit allows."""
