"""Why a WebTransport session ended, as data (``WebTransportSession.end``).

Set by the transport where it learns it: a CLOSE_WEBTRANSPORT_SESSION capsule or the end of
the CONNECT stream (``ClosedByPeer``), ``session.close`` (``ClosedLocally``), the QUIC
connection's end (``ConnectionLost``, or ``IdleTimeout`` when QUIC's idle timer ended it).
Services map it to their own reasons without reading messages.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ClosedByPeer:
    """The peer closed the session: its capsule's code and reason (0 and "" when it ended or
    reset the CONNECT stream without one, or refused the CONNECT)."""

    code: int
    reason: str


@attrs.frozen
class ClosedLocally:
    """This side closed the session (``session.close``, or the server refused the CONNECT)."""

    code: int
    reason: str


@attrs.frozen
class ConnectionLost:
    """The QUIC connection under the session ended: its CONNECTION_CLOSE error code and reason
    phrase, and whether the peer sent it (False: this side closed it, on shutdown, an error or
    a timeout of its own)."""

    code: int
    reason: str
    by_peer: bool


@attrs.frozen
class IdleTimeout:
    """Nothing was received for the QUIC idle timeout (``TransportLimits.idle_timeout_s``)."""


SessionEnd = ClosedByPeer | ClosedLocally | ConnectionLost | IdleTimeout
