"""Shared helpers for the transport tests: a dev certificate and a server on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import trio

from darktower.transport import (
    Route,
    ServerConfig,
    SessionEnd,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportServer,
    WebTransportSession,
    generate_dev_certificate,
)


@pytest.fixture(scope="session")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


async def start_server(
    nursery: trio.Nursery,
    cert: TlsCredentials,
    routes: Mapping[str, Route],
    *,
    limits: TransportLimits | None = None,
    allowed_origins: frozenset[str] | None = None,
    origin_required: bool = True,
) -> tuple[WebTransportServer, str]:
    """Start a server in ``nursery``; return it and its base URL."""
    config = ServerConfig(
        tls=cert,
        host="127.0.0.1",
        port=0,
        allowed_origins=allowed_origins,
        origin_required=origin_required,
        limits=limits or TransportLimits(),
    )
    server = WebTransportServer(config, routes)
    host, port = await nursery.start(server.run)
    return server, f"https://{host}:{port}"


def record_sent(conn: Any) -> list[bytes]:
    """From now on, each datagram ``conn``'s endpoint sends is also appended to the list
    returned (a connection from ``open_quic_connection``)."""
    sent: list[bytes] = []
    send = conn.endpoint.send

    def record(data: bytes, addr: Any) -> None:
        sent.append(data)
        send(data, addr)

    conn.endpoint.send = record
    return sent


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for state that changes when packets are acknowledged on real sockets, or when
    another process lets go of something.

    There is no event for "QUIC discarded the stream", "the peer's CONNECTION_CLOSE arrived"
    or "PostgreSQL's backend exited", so this polls, bounded; it is used only for such
    end-of-life checks.
    """
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event exists for these conditions
            await trio.sleep(0.005)
    assert predicate(), f"timed out waiting for: {what}"


async def open_downstream(
    server: WebTransportSession, client: WebTransportSession
) -> tuple[WebTransportSendStream, WebTransportReceiveStream]:
    """A uni stream from ``server`` to ``client``, its first byte (b"o") sent and read."""
    out = await server.open_unidirectional_stream()
    await out.send_all(b"o")
    incoming = await client.accept_stream()
    assert isinstance(incoming, WebTransportReceiveStream)
    assert await incoming.receive_some(1) == b"o"
    return out, incoming


class EndRecorder:
    """A handler that waits for its session to end and records why."""

    def __init__(self) -> None:
        self.session: WebTransportSession | None = None
        self.started = trio.Event()
        self.end: SessionEnd | None = None
        self.ended_at: float | None = None
        self.ended = trio.Event()

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        self.session = session
        self.started.set()
        try:
            await session.wait_closed()
        finally:
            self.end = session.end
            self.ended_at = trio.current_time()
            self.ended.set()


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    certfile, keyfile = generate_dev_certificate().write(tmp_path_factory.mktemp("tls"))
    return str(certfile), str(keyfile)
