"""Mutual TLS between services (docs/architecture.md §8) on real sockets on 127.0.0.1: the
cluster CA, service certificates, who may call what, and every way in without the right
certificate refused (plaintext, another CA, no client certificate, the wrong server)."""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import AsyncIterator

import pytest
import trio
from google.protobuf.wrappers_pb2 import Int32Value, StringValue

from darktower.config import ConfigError
from darktower.errors import Forbidden
from darktower.servicekit import (
    ClusterCa,
    ClusterTls,
    ServiceIdentity,
    ServiceRole,
    callers,
    expect_peer,
    identity_of_certificate,
    load_cluster_tls,
    own_id,
    peer_identity,
    require_peer,
)
from darktower.transport import rpc
from tests.transport._echo_service import WAIT_S, Echo, EchoBase, EchoStub

MC = ServiceIdentity(ServiceRole.MC, "mc-1")
GC = ServiceIdentity(ServiceRole.GC, "gc-1")


class Seen(Echo):
    """Echo, recording who called (the identity the transport verified)."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[ServiceIdentity | None] = []

    async def Echo(self, request: StringValue) -> StringValue:
        self.callers.append(peer_identity())
        if request.value == "only-mc-1":
            require_peer(ServiceRole.MC, "mc-1")
        return await super().Echo(request)

    async def Count(self, request: Int32Value) -> AsyncIterator[Int32Value]:
        self.callers.append(peer_identity())
        async for reply in super().Count(request):
            yield reply


@pytest.fixture(scope="module")
def ca() -> ClusterCa:
    return ClusterCa.create()


@pytest.fixture(scope="module")
def other_ca() -> ClusterCa:
    return ClusterCa.create("another cluster")


async def _serve(
    nursery: trio.Nursery, tls: ClusterTls, impl: Seen, roles: dict[str, ServiceRole] | None
) -> int:
    authorize = callers(roles) if roles is not None else None
    service = rpc.rpc_service(EchoBase, impl, authorize=authorize)
    port: int = await nursery.start(
        lambda task_status: rpc.serve_rpc(
            [service], "127.0.0.1", 0, tls=tls.server_context(), task_status=task_status
        )
    )
    return port


async def _echo(
    port: int, tls: ssl.SSLContext | None, value: str = "hi", check: rpc.PeerCheck | None = None
) -> str:
    # The error is re-raised outside the channel's own asyncio loop, whose nursery would wrap
    # it in an ExceptionGroup.
    reply: StringValue | Exception
    async with rpc.open_rpc_channel("127.0.0.1", port, tls=tls, check_peer=check) as channel:
        try:
            with trio.fail_after(WAIT_S):
                reply = await rpc.call(EchoStub(channel).Echo, StringValue(value=value))
        except Exception as exc:
            reply = exc
    if isinstance(reply, Exception):
        raise reply
    return reply.value


async def _count(port: int, tls: ssl.SSLContext, check: rpc.PeerCheck | None = None) -> list[int]:
    result: list[int] | Exception
    async with rpc.open_rpc_channel("127.0.0.1", port, tls=tls, check_peer=check) as channel:
        try:
            with trio.fail_after(WAIT_S):
                stub = EchoStub(channel)
                async with rpc.open_stream_call(stub.Count, Int32Value(value=3)) as replies:
                    result = [x.value async for x in replies]
        except Exception as exc:
            result = exc
    if isinstance(result, Exception):
        raise result
    return result


# --- certificates -------------------------------------------------------------------------------
def test_an_issued_certificate_names_its_service(ca: ClusterCa) -> None:
    tls = ca.issue(MC)
    assert tls.identity == MC and MC.uri == "darktower://mc/mc-1"
    tls.check()
    assert ServiceIdentity.parse("darktower://gc/gc-1") == GC
    for bad in ("darktower://xx/a", "https://mc/a", "darktower://mc/", "darktower://mc/a b"):
        with pytest.raises(ValueError):
            ServiceIdentity.parse(bad)


def test_a_certificate_of_another_ca_or_with_another_key_does_not_check(
    ca: ClusterCa, other_ca: ClusterCa
) -> None:
    foreign = other_ca.issue(MC)
    with pytest.raises(ValueError, match="not issued by the cluster CA"):
        ClusterTls(ca.cert_pem, foreign.cert_pem, foreign.key_pem).check()
    mine = ca.issue(MC)
    with pytest.raises(ValueError, match="key does not belong"):
        ClusterTls(ca.cert_pem, mine.cert_pem, ca.issue(MC).key_pem).check()


def test_settings_load_checks_presence_role_and_id(ca: ClusterCa, tmp_path: pathlib.Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    cert, key = ca.issue(MC).write(tmp_path)
    ca_file = str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match="--cluster-ca, --cluster-cert and --cluster-key"):
        load_cluster_tls("", str(cert), str(key), role=ServiceRole.MC)
    with pytest.raises(ConfigError, match="names mc/mc-1, but this service is a MH"):
        load_cluster_tls(ca_file, str(cert), str(key), role=ServiceRole.MH)
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        load_cluster_tls(str(tmp_path / "missing.pem"), str(cert), str(key), role=ServiceRole.MC)
    tls = load_cluster_tls(ca_file, str(cert), str(key), role=ServiceRole.MC)
    assert own_id(tls, "", "--controller-id") == own_id(tls, "mc-1", "--controller-id") == "mc-1"
    with pytest.raises(ConfigError, match="--controller-id 'mc-2' differs"):
        own_id(tls, "mc-2", "--controller-id")
    assert key.stat().st_mode & 0o777 == 0o600


def test_identity_of_a_peer_certificate_needs_exactly_one_service_uri() -> None:
    def cert(*uris: str) -> dict[str, object]:
        return {"subjectAltName": (*(("URI", u) for u in uris), ("DNS", "x"))}

    assert identity_of_certificate(cert("darktower://mh/h1")) == ServiceIdentity(
        ServiceRole.MH, "h1"
    )
    assert identity_of_certificate(cert()) is None
    assert identity_of_certificate(cert("darktower://mh/h1", "darktower://mc/m1")) is None
    assert identity_of_certificate(cert("darktower://zz/h1")) is None
    assert identity_of_certificate(None) is None and identity_of_certificate({}) is None


# --- connections --------------------------------------------------------------------------------
async def test_mutual_tls_call_and_stream_see_the_verified_caller(
    ca: ClusterCa, nursery: trio.Nursery
) -> None:
    impl = Seen()
    port = await _serve(nursery, ca.issue(GC), impl, None)
    client = ca.issue(MC).client_context()
    assert await _echo(port, client, check=expect_peer(ServiceRole.GC, "gc-1")) == "HI"
    assert await _count(port, client) == [0, 1, 2]
    assert impl.callers == [MC, MC]


async def test_plaintext_is_refused(ca: ClusterCa, nursery: trio.Nursery) -> None:
    impl = Seen()
    port = await _serve(nursery, ca.issue(GC), impl, None)
    with pytest.raises(rpc.RpcUnavailable):
        await _echo(port, None)
    # A raw HTTP/2 client gets no HTTP/2 at all: at most a TLS alert, then the close.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
        received = b""
        with trio.fail_after(WAIT_S):
            while chunk := await _receive(stream):
                received += chunk
    assert received[:1] in (b"", b"\x15"), received[:32]
    assert impl.callers == []


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(4096)
    except trio.BrokenResourceError:  # reset by the server
        return b""


async def test_a_client_of_another_ca_or_without_a_certificate_is_refused(
    ca: ClusterCa, other_ca: ClusterCa, nursery: trio.Nursery
) -> None:
    impl = Seen()
    port = await _serve(nursery, ca.issue(GC), impl, None)
    with pytest.raises(rpc.RpcUnavailable):
        await _echo(port, other_ca.issue(MC).client_context())
    # Trusting the server but presenting nothing.
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca.cert_pem.decode())
    bare.set_alpn_protocols(["h2"])
    with pytest.raises(rpc.RpcUnavailable):
        await _echo(port, bare)
    assert impl.callers == []


async def test_a_server_of_another_ca_is_refused_by_the_client(
    ca: ClusterCa, other_ca: ClusterCa, nursery: trio.Nursery
) -> None:
    impl = Seen()
    port = await _serve(nursery, other_ca.issue(GC), impl, None)
    with pytest.raises(rpc.RpcUnavailable):
        await _echo(port, ca.issue(MC).client_context())
    assert impl.callers == []


async def test_the_wrong_server_gets_no_request(ca: ClusterCa, nursery: trio.Nursery) -> None:
    impl = Seen()
    port = await _serve(nursery, ca.issue(ServiceIdentity(ServiceRole.MH, "mh-1")), impl, None)
    client = ca.issue(MC).client_context()
    for check in (expect_peer(ServiceRole.GC), expect_peer(ServiceRole.MH, "mh-2")):
        with pytest.raises(rpc.RpcWrongPeer, match="the server is mh/mh-1"):
            await _echo(port, client, check=check)
    with pytest.raises(rpc.RpcWrongPeer):
        await _count(port, client, expect_peer(ServiceRole.GC))
    assert impl.callers == []
    assert await _echo(port, client, check=expect_peer(ServiceRole.MH, "mh-1")) == "HI"


async def test_callers_and_require_peer_refuse_other_roles_and_ids(
    ca: ClusterCa, nursery: trio.Nursery
) -> None:
    impl = Seen()
    roles = {"Echo": ServiceRole.MC}  # Count is listed for nobody
    port = await _serve(nursery, ca.issue(GC), impl, roles)
    as_mc1, as_mc2 = ca.issue(MC).client_context(), ca.issue(ServiceIdentity("mc", "mc-2"))
    as_mh = ca.issue(ServiceIdentity(ServiceRole.MH, "mc-1")).client_context()
    assert await _echo(port, as_mc1, "only-mc-1") == "ONLY-MC-1"
    with pytest.raises(Forbidden, match="cannot act as mc/mc-1"):
        await _echo(port, as_mc2.client_context(), "only-mc-1")
    with pytest.raises(Forbidden, match="only the MC may call Echo, not mh/mc-1"):
        await _echo(port, as_mh)
    with pytest.raises(Forbidden, match="Count is not open"):
        await _count(port, as_mc1)
    assert impl.callers == [MC, ServiceIdentity(ServiceRole.MC, "mc-2")]
