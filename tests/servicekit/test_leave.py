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
        (ConnectionLost(0x0A, "protocol violation", by_peer=True), LeaveReason.CONNECTION_LOST),
        (ConnectionLost(0, "", by_peer=False), LeaveReason.CONNECTION_LOST),
        (IdleTimeout(), LeaveReason.CONNECTION_LOST),
        (ClosedLocally(0, ""), LeaveReason.CONNECTION_LOST),
        (None, LeaveReason.CONNECTION_LOST),
    ],
)
def test_leave_reason_of_a_session_end(end: SessionEnd | None, expected: LeaveReason) -> None:
    assert leave_reason_of(end) is expected
