"""connect_webtransport(local_host=...): the client's socket binds to that address, so a load
test's clients can come from many loopback addresses, as from many hosts (the server's
per-address caps then apply to each alone, docs/architecture.md §5.1). Real QUIC."""

from __future__ import annotations

import trio

from darktower.transport import Route, TlsCredentials, WebTransportSession, connect_webtransport

from .conftest import start_server


async def test_the_client_comes_from_its_local_host(dev_cert: TlsCredentials) -> None:
    seen: list[str] = []

    async def peer(session: WebTransportSession, context: object) -> None:
        address = session.peer_address
        assert address is not None
        seen.append(address[0])
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/p": Route(peer)})
        for host in ("127.0.0.2", "127.3.4.5"):
            async with connect_webtransport(
                base + "/p", server_certificate_hashes=[dev_cert.sha256], local_host=host
            ) as session:
                assert session.local_address[0] == host
        nursery.cancel_scope.cancel()
    assert seen == ["127.0.0.2", "127.3.4.5"]
