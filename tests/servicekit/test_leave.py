"""One reading of a WebTransport session's typed end for the MC and the MH."""

from __future__ import annotations

import pytest

from darktower.model import LeaveReason
from darktower.servicekit import leave_reason_of
from darktower.transport import ClosedByPeer, ClosedLocally, ConnectionLost, IdleTimeout, SessionEnd


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (ClosedByPeer(0, ""), LeaveReason.VOLUNTARY),
        (ClosedByPeer(0x4D01, "KICKED"), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "", by_peer=True), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "0:closed", by_peer=True), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "70:page gone", by_peer=True), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "255:", by_peer=True), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "25 no colon", by_peer=True), LeaveReason.VOLUNTARY),
        # Chromium's own timeouts, closed with NO_ERROR: a lost connection (a browser's words)
        (
            ConnectionLost(
                0,
                "25:No recent network activity after 2002010us. Timeout:2s, num_active_streams: 2",
                by_peer=True,
            ),
            LeaveReason.CONNECTION_LOST,
        ),
        (ConnectionLost(0, "67:handshake timeout", by_peer=True), LeaveReason.CONNECTION_LOST),
        (ConnectionLost(0, "85:", by_peer=True), LeaveReason.CONNECTION_LOST),
        (ConnectionLost(0, "168:silent", by_peer=True), LeaveReason.CONNECTION_LOST),
        (ConnectionLost(0x0A, "protocol violation", by_peer=True), LeaveReason.CONNECTION_LOST),
        (ConnectionLost(0, "", by_peer=False), LeaveReason.CONNECTION_LOST),
        (IdleTimeout(), LeaveReason.CONNECTION_LOST),
        (ClosedLocally(0, ""), LeaveReason.CONNECTION_LOST),
        (None, LeaveReason.CONNECTION_LOST),
    ],
)
def test_leave_reason_of_a_session_end(end: SessionEnd | None, expected: LeaveReason) -> None:
    assert leave_reason_of(end) is expected
