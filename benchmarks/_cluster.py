"""The cluster certificates a benchmark's service processes and its driver share: internal gRPC
is mutual TLS with a cluster CA (docs/architecture.md §8). One CA per run, written once by the
driver beside the run's TLS certificate; each process reads its role's certificate from there."""

from __future__ import annotations

import pathlib

from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole

IDS = {
    ServiceRole.GC: "gc-bench",
    ServiceRole.MC: "mc-bench",
    ServiceRole.MH: "mh-bench",
    ServiceRole.MP: "mp-bench",
}


def _files(directory: str | pathlib.Path, role: ServiceRole) -> tuple[pathlib.Path, ...]:
    base = pathlib.Path(directory)
    stem = f"{role}-{IDS[role]}"
    return base / ClusterCa.CERT_FILE, base / f"{stem}.pem", base / f"{stem}-key.pem"


def write_cluster(directory: str | pathlib.Path) -> None:
    """A new CA and one certificate per role in ``directory`` (the CA's key is not kept)."""
    ca = ClusterCa.create("Dark Tower benchmark cluster CA")
    (pathlib.Path(directory) / ClusterCa.CERT_FILE).write_bytes(ca.cert_pem)
    for role, ident in IDS.items():
        ca.issue(ServiceIdentity(role, ident)).write(directory)


def cluster_tls(directory: str | pathlib.Path, role: ServiceRole) -> ClusterTls:
    return ClusterTls.from_files(*_files(directory, role))


def cluster_options(directory: str | pathlib.Path, role: ServiceRole) -> dict[str, str]:
    """The service settings (``cluster_ca``, ``cluster_cert``, ``cluster_key``) of ``role``."""
    ca, cert, key = _files(directory, role)
    return {"cluster_ca": str(ca), "cluster_cert": str(cert), "cluster_key": str(key)}
