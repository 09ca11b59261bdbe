"""Shared helpers for the transport tests: a dev certificate and a server on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import trio

from darktower.transport import (
    Route,
    ServerConfig,
    TlsCredentials,
    TransportLimits,
    WebTransportServer,
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


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for state that changes when packets are acknowledged on real sockets.

    There is no event for "QUIC discarded the stream" or "the peer's CONNECTION_CLOSE
    arrived", so this polls, bounded; it is used only for such end-of-life checks.
    """
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event exists for these conditions
            await trio.sleep(0.005)
    assert predicate(), f"timed out waiting for: {what}"
