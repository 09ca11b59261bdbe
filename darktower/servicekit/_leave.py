"""Why a participant left, from why its WebTransport session ended (docs/architecture.md §6.2).

The MC (signaling session) and the MH (media session) read the same typed end
(``WebTransportSession.end``) the same way, so one function says it.
"""

from __future__ import annotations

from darktower.model import LeaveReason
from darktower.transport import ClosedByPeer, ConnectionLost, SessionEnd

# Chromium's QUIC stack closes a connection it gave up on with NO_ERROR all the same, its own
# error code in front of the reason phrase ("25:No recent network activity after 2002010us.
# Timeout:2s ..."): 25 its idle timeout, 67 its handshake timeout, 85 too many retransmission
# timeouts, 168 its silent idle timeout. Such a close is a lost connection, never a leave
# (docs/decisions.md, "A browser's idle close is a lost connection").
GAVE_UP_CODES = frozenset({"25", "67", "85", "168"})


def leave_reason_of(end: SessionEnd | None) -> LeaveReason:
    """The client closing on purpose is VOLUNTARY: its session close capsule, or, when it closed
    its QUIC connection right after the session and the capsule never reached us, its
    CONNECTION_CLOSE with NO_ERROR, unless its reason phrase says the client gave up on the
    connection (a browser's idle timeout: ``GAVE_UP_CODES``). Anything else (that, our idle
    timeout, a network gone, a protocol error, our own close, still open: None) is
    CONNECTION_LOST."""
    if isinstance(end, ClosedByPeer):
        return LeaveReason.VOLUNTARY
    if isinstance(end, ConnectionLost) and end.by_peer and end.code == 0:
        code, colon, _ = end.reason.partition(":")
        if not (colon and code in GAVE_UP_CODES):
            return LeaveReason.VOLUNTARY
    return LeaveReason.CONNECTION_LOST
