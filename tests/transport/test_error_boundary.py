"""The error boundary per connection: an exception while one connection handles its events
closes that connection with H3_GENERAL_PROTOCOL_ERROR, is counted by cause, and nothing else
is touched (docs/decisions.md, "An error boundary per connection")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.transport import (
    Connection,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportServer,
    WebTransportSession,
    _routing,
    open_quic_connection,
    open_session,
)
from darktower.transport._wire import H3_GENERAL_PROTOCOL_ERROR

from .conftest import start_server


async def _echo(session: WebTransportSession, context: object) -> None:
    stream = await session.accept_stream()
    await stream.send_all(await stream.receive_some())  # type: ignore[union-attr]
    await session.wait_closed()


async def _echo_once(conn: Connection, port: int) -> None:
    session = await open_session(conn, f"127.0.0.1:{port}", "/echo")
    stream = await session.open_bidirectional_stream()
    await stream.send_all(b"ping")
    with trio.fail_after(5):
        assert await stream.receive_some() == b"ping"
    await session.close()


def _server_side(server: WebTransportServer, client: Connection) -> Connection:
    """The server's connection for ``client`` (matched by the client's original Destination
    Connection ID, which either core keeps)."""
    assert server.endpoint is not None
    odcid = client.quic._original_destination_connection_id
    for conn in server.endpoint.connections:
        if conn.quic._original_destination_connection_id == odcid:
            return conn
    raise AssertionError("no server connection for this client")


async def _closed_by_boundary(conn: Connection) -> None:
    with trio.fail_after(5):
        await conn.terminated.wait()
    assert conn.close_error_code == H3_GENERAL_PROTOCOL_ERROR


@pytest.mark.parametrize("where", ["headers", "receive_datagram", "timer"])
async def test_an_error_closes_only_its_connection(
    dev_cert: TlsCredentials, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    limits = TransportLimits(keepalive_interval_s=0.05)
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(_echo)}, limits=limits)
        port = int(base.rsplit(":", 1)[1])
        pin = [dev_cert.sha256]
        async with (
            open_quic_connection("127.0.0.1", port, server_certificate_hashes=pin) as bystander,
            open_quic_connection("127.0.0.1", port, server_certificate_hashes=pin) as victim,
        ):
            await _echo_once(bystander, port)
            target = _server_side(server, victim)

            def boom(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("injected")

            if where == "headers":  # while handling a CONNECT (the endpoint's reader)
                monkeypatch.setattr(_routing, "parse_connect", boom)
                with pytest.raises(trio.BrokenResourceError):
                    await open_session(victim, f"127.0.0.1:{port}", "/echo")
                monkeypatch.undo()
            elif where == "receive_datagram":  # inside QUIC (the endpoint's reader)
                monkeypatch.setattr(target.quic, "receive_datagram", boom)
                victim.quic.send_ping(1)
                victim.schedule_flush()
            else:  # in the connection's own timer loop (a keepalive)
                monkeypatch.setattr(target.quic, "send_ping", boom)
            await _closed_by_boundary(victim)
            assert server.counters["peer_error:RuntimeError"] == 1
            # the other connection, and new ones, are served as before
            await _echo_once(bystander, port)
        async with open_quic_connection("127.0.0.1", port, server_certificate_hashes=pin) as fresh:
            await _echo_once(fresh, port)
        assert server.endpoint is not None
        nursery.cancel_scope.cancel()
