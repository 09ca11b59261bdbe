"""A client offers key shares for P-256 and X25519 only (transport/_quic.py), also in the
ClientHello it sends again after a Retry; the handshake with an aioquic server completes.
aioquic's own client, the control, offers four."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import encode_quic_retry, pull_quic_header
from aioquic.tls import Group

from darktower.transport import generate_dev_certificate
from darktower.transport._quic import CreditedQuicConnection

from ._in_memory import SERVER, exchange


@pytest.fixture
def hellos(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ClientHello an aioquic server parses in the test, in order."""
    seen: list[Any] = []
    pull = tls.pull_client_hello

    def record(buf: Buffer) -> Any:
        hello = pull(buf)
        seen.append(hello)
        return hello

    monkeypatch.setattr(tls, "pull_client_hello", record)
    return seen


def _client(ours: bool) -> QuicConnection:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    if ours:
        return CreditedQuicConnection(configuration=config, consumed=lambda _s: None, window=1)
    return QuicConnection(configuration=config)


def _handshake(
    client: QuicConnection, tmp_path: pathlib.Path, retry_cid: bytes | None = None
) -> QuicConnection:
    """Run ``client``'s handshake (it has connected) against an aioquic server in memory;
    ``retry_cid``: the source connection ID of the Retry the client had."""
    certfile, keyfile = generate_dev_certificate().write(str(tmp_path))
    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    config.load_cert_chain(str(certfile), str(keyfile))
    server = QuicConnection(
        configuration=config,
        original_destination_connection_id=client.original_destination_connection_id,
        retry_source_connection_id=retry_cid,
    )
    for _ in range(4):  # Initial, the server's flight, the client's Finished
        exchange(client, server, now=0.0)
    return server


def _groups(hello: Any) -> tuple[list[int], list[int]]:
    return [group for group, _key in hello.key_share], list(hello.supported_groups)


@pytest.mark.parametrize("ours", [True, False], ids=["darktower", "aioquic-control"])
def test_the_client_offers_two_key_shares(
    ours: bool, hellos: list[Any], tmp_path: pathlib.Path
) -> None:
    client = _client(ours)
    client.connect(SERVER, now=0.0)
    server = _handshake(client, tmp_path)
    assert server._handshake_complete and client._handshake_complete
    shares, supported = _groups(hellos[0])
    if ours:
        assert shares == supported == [Group.SECP256R1, Group.X25519]
    else:
        assert shares == supported == [Group.SECP256R1, Group.SECP384R1, Group.X25519, Group.X448]


def test_the_client_hello_after_a_retry_offers_the_same_two(
    hellos: list[Any], tmp_path: pathlib.Path
) -> None:
    client = _client(True)
    client.connect(SERVER, now=0.0)
    (initial, _addr), *_ = client.datagrams_to_send(now=0.0)
    header = pull_quic_header(Buffer(data=initial), host_cid_length=8)
    retry_cid = os.urandom(8)
    retry = encode_quic_retry(
        version=header.version,
        source_cid=retry_cid,
        destination_cid=header.source_cid,
        original_destination_cid=header.destination_cid,
        retry_token=b"token",
    )
    client.receive_datagram(retry, SERVER, now=0.0)
    assert client._retry_count == 1
    server = _handshake(client, tmp_path, retry_cid)
    assert server._handshake_complete and client._handshake_complete
    # The server saw the second ClientHello only: the first went to the Retry.
    assert len(hellos) == 1
    assert _groups(hellos[0]) == ([Group.SECP256R1, Group.X25519],) * 2
