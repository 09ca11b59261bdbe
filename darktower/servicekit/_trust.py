"""Who may call what over the internal gRPC, by the identity in the peer's certificate
(docs/architecture.md §8), and a service's own cluster credentials from its settings.

A served method learns its caller from the transport (``rpc_peer_certificate``); the rules:
the GC calls ``AssignMeeting``, ``EndMeeting`` and ``KickParticipant`` on an MC; an MC
registers and heartbeats with the GC under its own controller id and calls every method of an
MH; an MH registers and heartbeats with an MC under its own handler id.
"""

from __future__ import annotations

from collections.abc import Mapping

from darktower.config import ConfigError
from darktower.errors import Forbidden
from darktower.transport.rpc import Authorize, PeerCertificate, PeerCheck, rpc_peer_certificate

from ._cluster import ClusterTls, ServiceIdentity, ServiceRole, identity_of_certificate


def peer_identity() -> ServiceIdentity | None:
    """The identity of the caller of the RPC being served (None: no service certificate)."""
    return identity_of_certificate(rpc_peer_certificate())


def require_peer(role: ServiceRole, ident: str | None = None) -> ServiceIdentity:
    """The caller of the RPC being served, when its certificate names ``role`` (and ``ident``
    if given: the id it registers as); ``Forbidden`` otherwise."""
    peer = peer_identity()
    if peer is None or peer.role is not role:
        who = "a caller without a service certificate" if peer is None else f"{peer}"
        raise Forbidden(f"only the {role.name} may make this call, not {who}")
    if ident is not None and peer.id != ident:
        raise Forbidden(f"the certificate of {peer} cannot act as {role}/{ident}")
    return peer


def callers(roles: Mapping[str, ServiceRole]) -> Authorize:
    """``rpc_service``'s ``authorize``: method ``name`` may be called only by a peer whose
    certificate names ``roles[name]``; a method not listed is refused to everyone."""

    def authorize(name: str, cert: PeerCertificate | None) -> None:
        role = roles.get(name)
        if role is None:
            raise Forbidden(f"{name} is not open to any caller")
        peer = identity_of_certificate(cert)
        if peer is None or peer.role is not role:
            who = "a caller without a service certificate" if peer is None else f"{peer}"
            raise Forbidden(f"only the {role.name} may call {name}, not {who}")

    return authorize


def expect_peer(role: ServiceRole, ident: str | None = None) -> PeerCheck:
    """A channel's ``check_peer``: the server must hold a certificate naming ``role`` (and
    ``ident`` when given), else ``ValueError`` (the call fails with ``RpcWrongPeer``)."""

    def check(cert: PeerCertificate | None) -> None:
        peer = identity_of_certificate(cert)
        if peer is None or peer.role is not role or (ident is not None and peer.id != ident):
            want = f"{role}/{ident}" if ident is not None else f"a {role.name}"
            raise ValueError(f"the server is {peer or 'not a cluster service'}, not {want}")

    return check


def load_cluster_tls(
    ca: str, cert: str, key: str, *, role: ServiceRole, given: ClusterTls | None = None
) -> ClusterTls:
    """A service's cluster credentials: ``given`` (made in memory, e.g. by ``python -m
    darktower``), else read from its ``--cluster-ca``, ``--cluster-cert`` and
    ``--cluster-key`` settings. ``ConfigError`` (naming the options) when one is missing,
    unreadable, not the cluster CA's, or names another role: internal gRPC is mutual TLS
    only, there is no plaintext fallback."""
    if given is not None:
        tls = given
    elif not (ca and cert and key):
        raise ConfigError(
            "--cluster-ca, --cluster-cert and --cluster-key are required: internal gRPC is "
            "mutual TLS (make them with 'python -m darktower.global ca init' and "
            f"'ca issue --role {role} --id ID')"
        )
    else:
        try:
            tls = ClusterTls.from_files(ca, cert, key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--cluster-ca/--cluster-cert/--cluster-key: {exc}") from exc
    if tls.identity.role is not role:
        raise ConfigError(f"--cluster-cert names {tls.identity}, but this service is a {role.name}")
    return tls


def own_id(tls: ClusterTls, configured: str, option: str) -> str:
    """The id a service registers with: its certificate's; ``ConfigError`` if ``option``
    configures another one."""
    if configured and configured != tls.identity.id:
        raise ConfigError(f"{option} {configured!r} differs from the certificate's {tls.identity}")
    return tls.identity.id


WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def dialable_host(grpc_host: str, public_host: str) -> str:
    """The host a peer is told to dial for our gRPC listener bound to ``grpc_host``: that
    address, or ``public_host`` when it is a wildcard."""
    return public_host if grpc_host in WILDCARD_HOSTS else grpc_host
