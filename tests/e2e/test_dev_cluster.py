"""``python -m darktower`` makes its own cluster CA (docs/architecture.md §8): its three services
trust each other through it, and a plaintext HTTP/2 connection to any of its internal gRPC ports
is refused before any HTTP/2 is spoken."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import trio

from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.servicekit import ServiceRole
from darktower.transport import rpc
from tests._stack import dev_stack

from ._flow import WAIT_S

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty SETTINGS frame


async def _raw_http2(port: int) -> bytes:
    """What the server sends to a plaintext HTTP/2 client until it closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        with trio.fail_after(WAIT_S):
            await stream.send_all(PREFACE + SETTINGS)
            while True:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:  # reset
                    break
                if not chunk:
                    break
                received += chunk
    return received


async def _plaintext_call(port: int) -> Exception:
    async with rpc.open_rpc_channel("127.0.0.1", port) as channel:
        try:
            with trio.fail_after(WAIT_S):
                await rpc.call(
                    ControllerRegistryStub(channel).Heartbeat,
                    reg_pb.Heartbeat(controller_id="x"),
                )
        except Exception as exc:
            return exc
    raise AssertionError("a plaintext call was answered")


async def test_internal_grpc_refuses_plaintext(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        # It runs (the MH registered with the MC over mutual TLS) with certificates it made.
        assert stack.mc.controller_id.startswith("mc-") and stack.mh.handler_id.startswith("mh-")
        ports = {
            "gc": stack.gc.grpc_port,
            "mc": stack.mc.grpc_address[1],
            "mh": stack.mh.grpc_address[1],
        }
        for name, port in ports.items():
            received = await _raw_http2(port)
            # No HTTP/2 frame (a SETTINGS frame would start with a 3-byte length, then 4):
            # nothing, or a TLS alert record (0x15).
            assert received[:1] in (b"", b"\x15"), (name, received[:32])
            assert isinstance(await _plaintext_call(port), rpc.RpcUnavailable), name
        # Nothing was written for the cluster: its CA lives in memory only.
        assert not [p for p in (tmp_path / "data").iterdir() if "ca" in p.name.split(".")[0]]


@pytest.mark.parametrize("role", list(ServiceRole))
def test_a_service_without_cluster_credentials_does_not_start(
    role: ServiceRole, tmp_path: pathlib.Path
) -> None:
    module = {
        "gc": "darktower.global",
        "mc": "darktower.meeting",
        "mh": "darktower.media",
        "mp": "darktower.processor",
    }[role]
    ports = ["--grpc-port", "0"] if role is ServiceRole.MP else ["--port", "0", "--grpc-port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", module, *ports],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--cluster-ca, --cluster-cert and --cluster-key are required" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
