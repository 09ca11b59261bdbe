"""What the three services share, so that each ``serve()`` only wires its own parts.

* :func:`tls_credentials`: the configured certificate and key, else a generated development
  certificate whose SHA-256 is logged (clients pin it).
* :func:`serve_ops`: the operations listener (``/metrics``, ``/healthz``, ``/readyz``,
  ``/debug/tree``) on 127.0.0.1, reporting its URL.
* :class:`KeepRegistered`: register with a peer (the MC with the GC, the MH with the MC),
  heartbeat at the interval the peer asks for, register again when the peer forgets us, back
  off on failure; ``fresh(now)`` says whether the peer heard from us recently (readiness).
* :func:`leave_reason_of`: the ``LeaveReason`` of a participant whose WebTransport session
  ended the way ``WebTransportSession.end`` says (the MC and the MH read it alike).

``HOST:PORT`` text is written and read by ``darktower.protocol.addresses`` (``netloc``,
``split_host_port``); heartbeat timing is ``darktower.protocol.heartbeats``. The layer sits
beside the task tree (docs/architecture.md §2): it uses the transport, never a service.
"""

from ._leave import leave_reason_of
from ._ops import OPS_HOST, serve_ops
from ._registration import READY_FLOOR_S, KeepRegistered, Peer
from ._tls import tls_credentials

__all__ = [
    "OPS_HOST",
    "READY_FLOOR_S",
    "KeepRegistered",
    "Peer",
    "leave_reason_of",
    "serve_ops",
    "tls_credentials",
]
