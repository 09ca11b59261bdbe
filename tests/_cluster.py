"""The test process's cluster (docs/architecture.md §8): one CA, the certificates it issues to
the services and stand-ins of tests/_stack.py, as files for settings and launchers, and gRPC
channels made with them."""

from __future__ import annotations

import atexit
import pathlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole, expect_peer
from darktower.transport.rpc import open_rpc_channel

GC_ID = "gc-test"


class TestCluster:
    """The test process's cluster CA (docs/architecture.md §8) and the certificates it issued,
    in memory (:meth:`tls`) and as files (:meth:`options`, for settings and launchers)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.ca = ClusterCa.create("Dark Tower test cluster CA")
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="darktower-test-cluster-"))
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        (self.directory / ClusterCa.CERT_FILE).write_bytes(self.ca.cert_pem)
        self._issued: dict[tuple[str, str], ClusterTls] = {}

    @property
    def ca_file(self) -> pathlib.Path:
        return self.directory / ClusterCa.CERT_FILE

    def tls(self, role: str, ident: str) -> ClusterTls:
        """The certificate of ``role``/``ident`` (issued once)."""
        key = (role, ident)
        if key not in self._issued:
            self._issued[key] = self.ca.issue(ServiceIdentity(ServiceRole(role), ident))
        return self._issued[key]

    def options(self, role: str, ident: str) -> dict[str, str]:
        """``cluster_ca``, ``cluster_cert``, ``cluster_key`` settings for ``role``/``ident``."""
        certfile, keyfile = (
            self.directory / f"{role}-{ident}.pem",
            self.directory / f"{role}-{ident}-key.pem",
        )
        if not certfile.exists():
            self.tls(role, ident).write(self.directory)
        return {
            "cluster_ca": str(self.ca_file),
            "cluster_cert": str(certfile),
            "cluster_key": str(keyfile),
        }

    def argv(self, role: str, ident: str) -> list[str]:
        """The same as launcher flags."""
        return [f"--{k.replace('_', '-')}={v}" for k, v in self.options(role, ident).items()]


_cluster: TestCluster | None = None


def stack_cluster() -> TestCluster:
    """The one cluster of this test process (made at first use)."""
    global _cluster
    if _cluster is None:
        _cluster = TestCluster()
    return _cluster


@asynccontextmanager
async def open_cluster_channel(
    address: tuple[str, int], role: str, ident: str, *, server: str | None = None
) -> AsyncIterator[Any]:
    """A gRPC channel to ``address`` as ``role``/``ident`` of the test cluster (checking the
    server is a ``server`` when given)."""
    check = expect_peer(ServiceRole(server)) if server is not None else None
    tls = stack_cluster().tls(role, ident).client_context()
    async with open_rpc_channel(*address, tls=tls, check_peer=check) as channel:
        yield channel
