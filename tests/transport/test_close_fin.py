"""The CLOSE_WEBTRANSPORT_SESSION capsule leaves at once and the CONNECT stream's FIN after
CLOSE_FIN_DELAY_S (docs/decisions.md, "The FIN after a close capsule waits"): Chromium ends a
server-closed session in a task of its own, and a CONNECT stream finished both ways before that
task runs crashes the page's renderer."""

from __future__ import annotations

import pytest
import trio

from darktower.transport import (
    ClosedByPeer,
    Route,
    TlsCredentials,
    WebTransportSession,
    connect_webtransport,
)
from darktower.transport._session import WebTransportSession as SessionImpl

from .conftest import start_server


async def test_the_close_capsule_comes_before_the_connect_streams_fin(
    dev_cert: TlsCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, bool]] = []  # (capsule bytes, FIN) per CONNECT-stream event
    fin = trio.Event()
    original = SessionImpl.on_connect_stream_data

    def record(self: SessionImpl, data: bytes, ended: bool) -> None:
        if self._conn.is_client:
            seen.append((bool(data), ended))
            if ended:
                fin.set()
        original(self, data, ended)

    monkeypatch.setattr(SessionImpl, "on_connect_stream_data", record)

    async def handler(session: WebTransportSession, context: object) -> None:
        session.close_nowait(7, "bye")
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            with trio.fail_after(5):
                await session.wait_closed()
                assert session.end == ClosedByPeer(7, "bye")  # from the capsule alone
                await fin.wait()
        nursery.cancel_scope.cancel()
    capsule_at = next(i for i, (data, _) in enumerate(seen) if data)
    fin_at = next(i for i, (_, ended) in enumerate(seen) if ended)
    assert seen[capsule_at] == (True, False)
    assert fin_at > capsule_at
