"""Why a session ended, as data: one test per way (``WebTransportSession.end``)."""

from __future__ import annotations

import trio

from darktower.errors import ErrorCode, Forbidden
from darktower.protocol import INTERNAL_ERROR_MESSAGE
from darktower.transport import (
    ClosedByPeer,
    ClosedLocally,
    ConnectionLost,
    IdleTimeout,
    Route,
    SessionEnd,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
    open_quic_connection,
    open_session,
)

from .conftest import EndRecorder, start_server


async def test_peer_closes_with_code_and_reason(dev_cert: TlsCredentials) -> None:
    rec = EndRecorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            await rec.started.wait()
            assert session.end is None
            await session.close(4242, "bye now")
            assert session.end == ClosedLocally(4242, "bye now")
            with trio.fail_after(5):
                await rec.ended.wait()
        assert rec.end == ClosedByPeer(4242, "bye now")
        nursery.cancel_scope.cancel()


async def test_closed_locally_by_the_handler(dev_cert: TlsCredentials) -> None:
    seen: list[SessionEnd | None] = []

    async def handler(session: WebTransportSession, context: object) -> None:
        session.close_nowait(7, "server says bye")  # the session's end cancels the handler
        seen.append(session.end)
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            with trio.fail_after(5):
                await session.wait_closed()
            assert session.end == ClosedByPeer(7, "server says bye")
        assert seen == [ClosedLocally(7, "server says bye")]
        nursery.cancel_scope.cancel()


async def test_connection_lost_when_the_peer_closes_its_connection(
    dev_cert: TlsCredentials,
) -> None:
    rec = EndRecorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)})
        host, port = base.removeprefix("https://").split(":")
        async with open_quic_connection(
            host, int(port), server_certificate_hashes=[dev_cert.sha256]
        ) as conn:
            session = await open_session(conn, f"{host}:{port}", "/s")
            await rec.started.wait()
            conn.close(0x42, "network gone")
            with trio.fail_after(5):
                await rec.ended.wait()
                await conn.terminated.wait()
            assert session.end == ConnectionLost(0x42, "network gone", by_peer=False)
        assert rec.end == ConnectionLost(0x42, "network gone", by_peer=True)
        nursery.cancel_scope.cancel()


async def test_idle_timeout(dev_cert: TlsCredentials) -> None:
    rec = EndRecorder()
    quiet = TransportLimits(idle_timeout_s=0.3, keepalive_interval_s=None)
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)}, limits=quiet)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=quiet
        ) as session:
            with trio.fail_after(5):
                await rec.ended.wait()
                await session.wait_closed()
            assert session.end == IdleTimeout()
        assert rec.end == IdleTimeout()
        nursery.cancel_scope.cancel()


async def test_only_a_darktower_error_message_reaches_the_peer(dev_cert: TlsCredentials) -> None:
    async def secret(session: WebTransportSession, context: object) -> None:
        raise RuntimeError("database password is hunter2")

    async def refused(session: WebTransportSession, context: object) -> None:
        raise Forbidden("not you")

    async with trio.open_nursery() as nursery:
        _, base = await start_server(
            nursery, dev_cert, {"/secret": Route(secret), "/refused": Route(refused)}
        )
        ends = []
        for path in ("/secret", "/refused"):
            async with connect_webtransport(
                base + path, server_certificate_hashes=[dev_cert.sha256]
            ) as session:
                with trio.fail_after(5):
                    await session.wait_closed()
                ends.append(session.end)
        assert ends == [
            ClosedByPeer(int(ErrorCode.INTERNAL_ERROR), INTERNAL_ERROR_MESSAGE),
            ClosedByPeer(int(Forbidden.code), "not you"),
        ]
        nursery.cancel_scope.cancel()
