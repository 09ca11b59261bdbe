"""The signaling connection PINGs its MC at least every SIGNALING_KEEPALIVE_S, so a client
learns of a dead MC from the ICMP its next packet gets (docs/protocol.md §13, Liveness); the
media connection keeps the limits it was given."""

from __future__ import annotations

from darktower.client import Dialer
from darktower.client._join import SIGNALING_KEEPALIVE_S
from darktower.transport import TransportLimits


def test_signaling_pings_more_often_than_the_default_keepalive() -> None:
    dialer = Dialer("https://127.0.0.1:1/v1/signal", "m")
    assert dialer.signaling_limits.keepalive_interval_s == SIGNALING_KEEPALIVE_S
    assert SIGNALING_KEEPALIVE_S < (TransportLimits().keepalive_interval_s or 0)


def test_given_limits_are_kept_when_they_ping_as_often_or_never() -> None:
    often = TransportLimits(idle_timeout_s=1.0, keepalive_interval_s=0.3)
    assert Dialer("u", "m", limits=often).signaling_limits is often
    never = TransportLimits(keepalive_interval_s=None)
    assert Dialer("u", "m", limits=never).signaling_limits is never
    slow = TransportLimits(idle_timeout_s=30.0, keepalive_interval_s=10.0)
    tightened = Dialer("u", "m", limits=slow).signaling_limits
    assert tightened.keepalive_interval_s == SIGNALING_KEEPALIVE_S
    assert tightened.idle_timeout_s == 30.0
