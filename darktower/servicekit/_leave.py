"""Why a participant left, from why its WebTransport session ended (docs/architecture.md §6.2).

The MC (signaling session) and the MH (media session) read the same typed end
(``WebTransportSession.end``) the same way, so one function says it.
"""

from __future__ import annotations

from darktower.model import LeaveReason
from darktower.transport import ClosedByPeer, ConnectionLost, SessionEnd


def leave_reason_of(end: SessionEnd | None) -> LeaveReason:
    """The client closing on purpose is VOLUNTARY: its session close capsule, or, when it closed
    its QUIC connection right after the session and the capsule never reached us, its
    CONNECTION_CLOSE with NO_ERROR. Anything else (idle timeout, a network gone, a protocol
    error, our own close, still open: None) is CONNECTION_LOST."""
    if isinstance(end, ClosedByPeer):
        return LeaveReason.VOLUNTARY
    if isinstance(end, ConnectionLost) and end.by_peer and end.code == 0:
        return LeaveReason.VOLUNTARY
    return LeaveReason.CONNECTION_LOST
