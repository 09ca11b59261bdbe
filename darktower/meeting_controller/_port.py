"""The signaling port of one session: its stream and how to close the session.

A seam (docs/architecture.md §7) between the controller and the transport: over QUIC it wraps a
WebTransport session; tests can use ``trio.testing.memory_stream_pair`` without QUIC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from darktower.model import LeaveReason
from darktower.servicekit import leave_reason_of as session_leave_reason
from darktower.transport import (
    SessionEnd,
    StreamReset,
    WebTransportSession,
    WebTransportStream,
)


async def _no_wait() -> None:
    await trio.lowlevel.checkpoint()


@attrs.frozen(eq=False)
class SignalPort:
    stream: trio.abc.HalfCloseableStream
    close: Callable[[int, str], None] = lambda code, reason: None
    # Why the session went away, given the error a read or write saw (None: the owner was
    # cancelled): a clean close by the peer is VOLUNTARY, a lost connection CONNECTION_LOST.
    leave_reason: Callable[[BaseException | None], LeaveReason] = lambda exc: (
        LeaveReason.CONNECTION_LOST
    )
    # Waits until the peer closed the session (bounded by the caller).
    wait_closed: Callable[[], Awaitable[None]] = _no_wait


def leave_reason_of(end: SessionEnd | None, exc: BaseException | None) -> LeaveReason:
    """The LeaveReason of a session that ended ``end`` (None: still open), given the error a
    read or write saw: the client resetting its signaling stream on purpose is VOLUNTARY too;
    otherwise as every service reads a session's end (``servicekit.leave_reason_of``)."""
    if isinstance(exc, StreamReset):
        return LeaveReason.VOLUNTARY
    return session_leave_reason(end)


def webtransport_port(session: WebTransportSession, stream: WebTransportStream) -> SignalPort:
    def leave_reason(exc: BaseException | None) -> LeaveReason:
        return leave_reason_of(session.end, exc)

    return SignalPort(
        stream=stream,
        close=session.close_nowait,
        leave_reason=leave_reason,
        wait_closed=session.wait_closed,
    )
