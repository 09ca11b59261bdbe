"""When one QUIC connection's task must wake besides aioquic's own timer, and what is due then.

Four deadlines of our own: the handshake timeout, the keepalive PING, on a client the silence
probe (a PING soon after a flow of received packets stops, then backing off to the keepalive)
and, on the server, the no-session timeout (a connection that carries no live WebTransport session is closed; armed
at the handshake and whenever the last session ends, keepalives do not move it). Sans-IO:
every time is a parameter; the connection's task sleeps until :meth:`next` and asks what is
due (the limits: docs/architecture.md §5.1).
"""

from __future__ import annotations

import math

from ._config import UNREACHABLE_CONFIRM_S, TransportLimits


class ConnectionDeadlines:
    """The handshake, keepalive and no-session deadlines of one connection."""

    __slots__ = (
        "_handshake_at",
        "_keepalive_s",
        "_last_ping",
        "_last_rx",
        "_no_session_at",
        "_no_session_timeout_s",
        "_probe_base_s",
        "_probe_s",
        "_unreachable_at",
        "handshake_done",
        "live_sessions",
    )

    def __init__(self, now: float, limits: TransportLimits, *, is_client: bool) -> None:
        self._keepalive_s = limits.keepalive_interval_s
        # Only a client probes a silence (a server's packets go to the address the client's
        # last packet came from: it cannot fix a path by probing).
        self._probe_base_s = limits.silence_probe_s if is_client else None
        self._probe_s = math.inf  # armed by a flow of received packets
        self._unreachable_at = math.inf  # armed by an ICMP port unreachable (a client's)
        # Only a server closes a connection for carrying no session.
        self._no_session_timeout_s = None if is_client else limits.no_session_timeout_s
        self._last_rx = now
        self._last_ping = now
        self._handshake_at = now + limits.handshake_timeout_s
        self._no_session_at = math.inf
        self.handshake_done = False
        self.live_sessions = 0

    @property
    def no_session_at(self) -> float:
        """When the connection is closed for carrying no session (``inf``: not armed)."""
        return self._no_session_at

    def next(self, quic_timer: float | None) -> float:
        """The earliest of aioquic's timer and ours."""
        deadline = math.inf if quic_timer is None else quic_timer
        if not self.handshake_done:
            return min(deadline, self._handshake_at, self._unreachable_at)
        return min(deadline, self._keepalive_at(), self._no_session_at, self._unreachable_at)

    # --- inputs ---------------------------------------------------------------------------
    def received(self, now: float) -> None:
        """A datagram arrived: the keepalive counts from here; two within the silence probe's
        interval are a flow, whose stop is probed after that interval."""
        base = self._probe_base_s
        if base is not None and now - self._last_rx < base:
            self._probe_s = base
        self._last_rx = now
        self._unreachable_at = math.inf  # the peer answers after all

    def handshake_completed(self, now: float) -> None:
        self.handshake_done = True
        self._arm_no_session(now)

    def session_started(self) -> None:
        self.live_sessions += 1
        self._no_session_at = math.inf

    def session_ended(self, now: float) -> None:
        self.live_sessions -= 1
        if self.live_sessions == 0 and self.handshake_done:
            self._arm_no_session(now)

    # --- what is due (each is reported once) ----------------------------------------------
    def handshake_expired(self, now: float) -> bool:
        """The handshake did not complete in time: close the connection."""
        if self.handshake_done or now < self._handshake_at:
            return False
        self._handshake_at = math.inf
        return True

    def unreachable(self, now: float) -> None:
        """The kernel reported the peer's port unreachable (nobody listens there): the
        connection is over unless a packet from the peer arrives within UNREACHABLE_CONFIRM_S
        (an ICMP message is not authenticated; a stray one costs nothing)."""
        self._unreachable_at = min(self._unreachable_at, now + UNREACHABLE_CONFIRM_S)

    @property
    def unreachable_armed(self) -> bool:
        return self._unreachable_at != math.inf

    def unreachable_expired(self, now: float) -> bool:
        """The peer stayed unreachable: close the connection (reported once)."""
        if now < self._unreachable_at:
            return False
        self._unreachable_at = math.inf
        return True

    def no_session_expired(self, now: float) -> bool:
        """No session for ``no_session_timeout_s``: close the connection."""
        if not self.handshake_done or now < self._no_session_at:
            return False
        self._no_session_at = math.inf
        return True

    def ping_due(self, now: float) -> bool:
        """Nothing received or pinged for ``keepalive_interval_s``, or a flow stopped for the
        silence probe's interval: send a PING (counted as sent from ``now``; the next silence
        probe waits twice as long, until a flow arms it again)."""
        if not self.handshake_done or self._keepalive_at() > now:
            return False
        self._last_ping = now
        if self._probe_s != math.inf:
            self._probe_s *= 2
            if self._keepalive_s is None or self._probe_s >= self._keepalive_s:
                self._probe_s = math.inf  # the keepalive takes over
        return True

    def _keepalive_at(self) -> float:
        if self._keepalive_s is None:
            return math.inf  # no keepalive, no silence probe either
        return max(self._last_rx, self._last_ping) + min(self._keepalive_s, self._probe_s)

    def _arm_no_session(self, now: float) -> None:
        timeout = self._no_session_timeout_s
        if timeout is not None and not self.live_sessions:
            self._no_session_at = now + timeout
