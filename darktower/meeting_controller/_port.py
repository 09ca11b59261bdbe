"""The signaling port of one session: its stream and how to close the session.

A seam (docs/architecture.md §7) between the controller and the transport: over QUIC it wraps a
WebTransport session; tests can use ``trio.testing.memory_stream_pair`` without QUIC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from darktower.model import LeaveReason
from darktower.transport import (
    SessionClosed,
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


IDLE_TIMEOUT_PHRASE = "Idle timeout"


def webtransport_port(session: WebTransportSession, stream: WebTransportStream) -> SignalPort:
    def leave_reason(exc: BaseException | None) -> LeaveReason:
        if session.peer_close_code is not None or isinstance(exc, StreamReset):
            return LeaveReason.VOLUNTARY  # the client closed or reset on purpose
        if isinstance(exc, SessionClosed) and "by peer" in str(exc):
            return LeaveReason.VOLUNTARY
        # A client that closes its QUIC connection right after the session may never get the
        # close capsule to us: a peer CONNECTION_CLOSE with NO_ERROR is a clean leave too.
        # aioquic reports its idle timeout as NO_ERROR with this phrase. (The connection is
        # reached through a private attribute: the transport has no public accessor yet.)
        conn = session._conn
        if conn.terminated.is_set() and conn.close_error_code == 0:
            if conn.close_reason != IDLE_TIMEOUT_PHRASE:
                return LeaveReason.VOLUNTARY
        return LeaveReason.CONNECTION_LOST  # idle timeout, network gone, connection dropped

    return SignalPort(
        stream=stream,
        close=session.close_nowait,
        leave_reason=leave_reason,
        wait_closed=session.wait_closed,
    )
