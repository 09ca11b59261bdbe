"""A channel checks its server's certificate after sending a request; if the connection went
meanwhile (the peer process died), reading the certificate fails inside grpclib. That is the
peer being unavailable, never an unexpected error: an MC's telemetry loop to an MH that died at
that instant treats it as a lost MH instead of crashing (seen in a full test run)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from darktower.transport import rpc


class _GonePeer:
    def cert(self) -> Any:
        raise AttributeError("'NoneType' object has no attribute '_get_extra_info'")


def test_a_peer_whose_connection_went_is_unavailable() -> None:
    checked: list[object] = []
    method = SimpleNamespace(channel=SimpleNamespace(check_peer=checked.append), name="/x/Y")
    stream = SimpleNamespace(peer=_GonePeer())
    with pytest.raises(rpc.RpcUnavailable):
        rpc._verify_peer(method, stream)  # type: ignore[arg-type]
    assert checked == []  # never checked against a certificate it could not read
