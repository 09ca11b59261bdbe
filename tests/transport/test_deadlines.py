"""A connection's own deadlines on explicit times (a private sans-IO unit, tested on purpose):
handshake timeout, keepalive PING, a client's silence probe, and the server's no-session
timeout."""

from __future__ import annotations

import math

import pytest

from darktower.transport import TransportLimits
from darktower.transport._config import UNREACHABLE_CONFIRM_S
from darktower.transport._deadlines import ConnectionDeadlines

LIMITS = TransportLimits(
    handshake_timeout_s=10.0, no_session_timeout_s=5.0, keepalive_interval_s=2.0
)


def test_the_handshake_deadline_is_due_once_and_only_before_the_handshake() -> None:
    d = ConnectionDeadlines(100.0, LIMITS, is_client=False)
    assert d.next(None) == 110.0
    assert d.next(104.0) == 104.0  # aioquic's timer comes first
    assert not d.handshake_expired(109.9)
    assert not d.ping_due(109.9)  # no keepalive before the handshake
    assert d.handshake_expired(110.0)
    assert not d.handshake_expired(111.0)  # reported once
    assert d.next(None) == math.inf

    done = ConnectionDeadlines(100.0, LIMITS, is_client=False)
    done.handshake_completed(101.0)
    assert not done.handshake_expired(200.0)


def test_a_server_without_a_session_is_due_to_close_despite_keepalives() -> None:
    d = ConnectionDeadlines(0.0, LIMITS, is_client=False)
    d.handshake_completed(1.0)
    assert d.no_session_at == 6.0
    assert d.next(None) == 2.0  # the keepalive (from the last datagram, at 0) comes first
    assert d.ping_due(2.0)
    assert not d.ping_due(2.5)
    d.received(3.0)
    assert d.next(None) == 5.0  # keepalive from the datagram at 3
    assert not d.no_session_expired(5.9)
    assert d.no_session_expired(6.0)  # keepalives did not move it
    assert not d.no_session_expired(7.0)  # reported once


def test_a_live_session_disarms_the_timeout_and_the_last_one_ending_rearms_it() -> None:
    d = ConnectionDeadlines(0.0, LIMITS, is_client=False)
    d.handshake_completed(1.0)
    d.session_started()
    d.session_started()
    assert d.live_sessions == 2
    assert d.no_session_at == math.inf
    d.session_ended(20.0)
    assert d.no_session_at == math.inf  # one session still lives
    d.session_ended(30.0)
    assert d.no_session_at == 35.0
    assert d.no_session_expired(35.0)


def test_a_client_never_closes_for_want_of_a_session() -> None:
    d = ConnectionDeadlines(0.0, LIMITS, is_client=True)
    d.handshake_completed(1.0)
    d.session_started()
    d.session_ended(2.0)
    assert d.no_session_at == math.inf
    assert not d.no_session_expired(1e9)


def test_no_keepalive_when_the_interval_is_none() -> None:
    d = ConnectionDeadlines(
        0.0, TransportLimits(keepalive_interval_s=None, no_session_timeout_s=None), is_client=False
    )
    d.handshake_completed(1.0)
    assert d.next(None) == math.inf
    assert not d.ping_due(1e9)


def test_a_client_probes_a_stopped_flow_soon_then_backs_off_to_the_keepalive() -> None:
    d = ConnectionDeadlines(0.0, LIMITS, is_client=True)
    d.handshake_completed(0.0)
    for t in (1.0, 1.05, 1.1):  # a flow: packets closer together than the probe interval
        d.received(t)
    assert d.next(None) == 1.25  # 0.15 s of silence
    assert not d.ping_due(1.24)
    assert d.ping_due(1.25)
    d.received(1.26)  # the PING's acknowledgement alone is not a flow
    at = 1.26
    for pause in (0.3, 0.6, 1.2, 2.0):  # doubling; 2.4 would pass the keepalive, which takes over
        assert d.next(None) == pytest.approx(at + pause)
        at = d.next(None)
        assert d.ping_due(at)
    assert d.next(None) == pytest.approx(at + 2.0)
    d.received(8.0)
    d.received(8.1)  # a flow again: probed 0.15 s after it stops
    assert d.next(None) == 8.25


def test_an_idle_client_and_any_server_only_keep_alive() -> None:
    idle = ConnectionDeadlines(0.0, LIMITS, is_client=True)
    idle.handshake_completed(0.0)
    idle.received(1.0)
    idle.received(3.0)  # further apart than the probe interval: no flow
    assert idle.next(None) == 5.0
    server = ConnectionDeadlines(0.0, LIMITS, is_client=False)
    server.handshake_completed(0.0)
    server.session_started()
    server.received(1.0)
    server.received(1.01)  # a server never probes a silence
    assert server.next(None) == 3.01
    off = ConnectionDeadlines(0.0, TransportLimits(silence_probe_s=None), is_client=True)
    off.handshake_completed(0.0)
    off.received(1.0)
    off.received(1.01)
    assert off.next(None) == 1.01 + 13.0 / 3  # the default keepalive only (a third of 14 s - 1 s)


def test_no_silence_probe_without_keepalives() -> None:
    d = ConnectionDeadlines(0.0, TransportLimits(keepalive_interval_s=None), is_client=True)
    d.handshake_completed(0.0)
    d.received(1.0)
    d.received(1.01)
    assert d.next(None) == math.inf
    assert not d.ping_due(1e9)


def test_an_unreachable_peer_ends_unless_it_answers_within_the_confirmation() -> None:
    d = ConnectionDeadlines(0.0, LIMITS, is_client=True)
    d.handshake_completed(0.0)
    d.unreachable(1.0)
    d.unreachable(1.5)  # a second report does not move the deadline
    assert d.next(None) == 1.0 + UNREACHABLE_CONFIRM_S
    assert not d.unreachable_expired(1.9)
    assert d.unreachable_expired(1.0 + UNREACHABLE_CONFIRM_S)
    assert not d.unreachable_expired(5.0)  # reported once
    answered = ConnectionDeadlines(0.0, LIMITS, is_client=True)
    answered.handshake_completed(0.0)
    answered.unreachable(1.0)
    answered.received(1.2)  # a packet from the peer: it is there after all
    assert not answered.unreachable_expired(10.0)
