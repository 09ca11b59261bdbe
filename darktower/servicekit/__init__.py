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
* Trust between services (docs/architecture.md §8): :class:`ClusterCa` makes the cluster CA
  and issues :class:`ClusterTls` service certificates naming a :class:`ServiceIdentity`
  (``darktower://ROLE/ID``), whose ``server_context()`` / ``client_context()`` every internal
  gRPC server and channel uses; :func:`load_cluster_tls` reads a service's from its settings;
  :func:`callers`, :func:`require_peer` and :func:`expect_peer` say who may call what.

``HOST:PORT`` text is written and read by ``darktower.protocol.addresses`` (``netloc``,
``split_host_port``); heartbeat timing is ``darktower.protocol.heartbeats``. The layer sits
beside the task tree (docs/architecture.md §2): it uses the transport, never a service.
"""

from ._cluster import (
    ClusterCa,
    ClusterTls,
    ServiceIdentity,
    ServiceRole,
    identity_of_certificate,
)
from ._leave import leave_reason_of
from ._ops import OPS_HOST, serve_ops
from ._registration import READY_FLOOR_S, KeepRegistered, Peer
from ._tls import tls_credentials
from ._trust import (
    callers,
    dialable_host,
    expect_peer,
    load_cluster_tls,
    own_id,
    peer_identity,
    require_peer,
)

__all__ = [
    "OPS_HOST",
    "READY_FLOOR_S",
    "ClusterCa",
    "ClusterTls",
    "KeepRegistered",
    "Peer",
    "ServiceIdentity",
    "ServiceRole",
    "callers",
    "dialable_host",
    "expect_peer",
    "identity_of_certificate",
    "leave_reason_of",
    "load_cluster_tls",
    "own_id",
    "peer_identity",
    "require_peer",
    "serve_ops",
    "tls_credentials",
]
