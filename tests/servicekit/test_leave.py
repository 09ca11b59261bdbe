"""One reading of a WebTransport session's typed end for the MC and the MH."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.model import LeaveReason
from darktower.servicekit import leave_reason_of
from darktower.servicekit._leave import GAVE_UP_CODES
from darktower.transport import ClosedByPeer, ClosedLocally, ConnectionLost, IdleTimeout, SessionEnd
from tests._fuzz import fuzz_settings


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
        (ConnectionLost(0, "25", by_peer=True), LeaveReason.VOLUNTARY),
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


# A reason phrase: any text, or one that starts like a browser's (a code and a colon).
REASONS = st.text(max_size=300) | st.builds(
    "{}:{}".format, st.sampled_from([*sorted(GAVE_UP_CODES), "0", "70", "250"]), st.text()
)


@fuzz_settings()
@given(code=st.integers(0, 2**62 - 1), reason=REASONS, by_peer=st.booleans())
def test_any_close_a_peer_sends_reads_as_one_reason(code: int, reason: str, by_peer: bool) -> None:
    """The code and the reason phrase are the peer's bytes: any of them is read without an
    error, and only a NO_ERROR close from the peer that does not name a browser timeout is a
    leave."""
    got = leave_reason_of(ConnectionLost(code, reason, by_peer=by_peer))
    gave_up = ":" in reason and reason.split(":", 1)[0] in GAVE_UP_CODES
    voluntary = by_peer and code == 0 and not gave_up
    assert got is (LeaveReason.VOLUNTARY if voluntary else LeaveReason.CONNECTION_LOST)
