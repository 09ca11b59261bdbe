"""The error boundaries of the GC's HTTP/3 listener, over real sockets on 127.0.0.x: a request
hypercorn cannot read resets its own stream; an error while handling one connection's events
closes that connection only."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aioquic.quic.events import StreamDataReceived

from darktower.transport._http_streams import GuardedH3Protocol
from darktower.transport.http_server import HttpLimits
from tests.transport._http3_peer import Http3Peer
from tests.transport._http_listener import h3_get, serving


async def test_a_connect_without_a_path_resets_only_its_stream(
    cert_files: tuple[str, str],
) -> None:
    """hypercorn reads ``:path`` of every request it accepts: a CONNECT without ``:protocol``
    (valid HTTP/3, no ``:path``) raised UnboundLocalError on the read loop and ended the QUIC
    listener. Now that request's stream is reset and its connection goes on."""
    counters: Counter[str] = Counter()
    async with serving(cert_files, HttpLimits(), counters) as port:
        peer = Http3Peer("127.0.0.2", port)
        try:
            assert await peer.connect()
            connect = [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{port}".encode())]
            assert await peer.request(connect, wait_s=0.5) is None
            assert counters["quic_stream_error:UnboundLocalError"] == 1
            assert await peer.get("/healthz") == 200
            assert peer.terminated is None
        finally:
            peer.close()


async def test_an_error_in_one_connections_events_closes_only_that_connection(
    cert_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever hypercorn's HTTP/3 protocol raises while handling one connection's events
    (here: injected for the connections from 127.0.0.2) closes that connection with
    H3_GENERAL_PROTOCOL_ERROR; the listener and every other connection go on."""
    handle = GuardedH3Protocol.handle

    async def failing_handle(self: GuardedH3Protocol, event: Any) -> None:
        if self.client[0] == "127.0.0.2" and isinstance(event, StreamDataReceived):
            raise RuntimeError("injected")
        await handle(self, event)

    monkeypatch.setattr(GuardedH3Protocol, "handle", failing_handle)
    counters: Counter[str] = Counter()
    async with serving(cert_files, HttpLimits(), counters) as port:
        bystander = Http3Peer("127.0.0.1", port)
        attacker = Http3Peer("127.0.0.2", port)
        try:
            assert await bystander.connect()
            assert await attacker.connect()
            assert await attacker.get("/healthz") is None
            assert attacker.terminated is not None
            assert attacker.terminated.error_code == 0x101  # H3_GENERAL_PROTOCOL_ERROR
            assert counters["quic_error:RuntimeError"] == 1
            assert await bystander.get("/healthz") == 200
            assert await h3_get(port) == 200
        finally:
            bystander.close()
            attacker.close()
