"""Close codes and reasons, resets, rejections, limits, timeouts, cancellation."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import trio

from darktower.transport import (
    CLOSE_CODE_CANCELLED,
    ConnectRequest,
    DatagramTooLarge,
    RejectSession,
    Route,
    SessionClosed,
    SessionRefused,
    StreamReset,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    WebTransportStream,
    connect_webtransport,
)

from ._cores import aioquic_only
from .conftest import start_server, wait_until


async def _read_all(stream: Any) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


class Recorder:
    """A handler that records its session and waits for it to end."""

    def __init__(self) -> None:
        self.session: WebTransportSession | None = None
        self.started = trio.Event()
        self.ended = trio.Event()
        self.cancelled = False

    async def __call__(self, session: WebTransportSession, context: object) -> None:
        self.session = session
        self.started.set()
        try:
            await session.wait_closed()
            await trio.sleep_forever()  # the session's end cancels us
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.ended.set()


async def test_client_close_code_and_reason_reach_server(dev_cert: TlsCredentials) -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            await rec.started.wait()
            await session.close(4242, "bye now")
            await session.close(1, "again")  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await session.open_bidirectional_stream()
        with trio.fail_after(5):
            await rec.ended.wait()
        assert rec.session is not None
        assert rec.session.peer_close_code == 4242
        assert rec.session.peer_close_reason == "bye now"
        assert rec.cancelled
        nursery.cancel_scope.cancel()


async def test_server_close_code_and_reason_reach_client(dev_cert: TlsCredentials) -> None:
    async def handler(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert await stream.receive_some() == b"close me"
        await session.close(7, "server says bye")

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"close me")
            with trio.fail_after(5):
                await session.wait_closed()
            assert (session.peer_close_code, session.peer_close_reason) == (7, "server says bye")
            with pytest.raises(SessionClosed) as info:
                await stream.receive_some()
            assert info.value.code == 7
        nursery.cancel_scope.cancel()


async def test_handler_error_closes_session_with_its_code(dev_cert: TlsCredentials) -> None:
    from darktower.errors import Forbidden

    async def handler(session: WebTransportSession, context: object) -> None:
        raise Forbidden("not you")

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            with trio.fail_after(5):
                await session.wait_closed()
            assert session.peer_close_code == int(Forbidden.code)
            assert session.peer_close_reason == "not you"
        nursery.cancel_scope.cancel()


async def test_stream_resets_carry_codes_both_ways(dev_cert: TlsCredentials) -> None:
    seen: dict[str, int | None] = {}
    done = trio.Event()

    async def handler(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        assert await stream.receive_some() == b"some data"
        await stream.send_all(b"ok")
        with pytest.raises(StreamReset) as info:
            while True:
                await stream.receive_some()
        seen["client_reset"] = info.value.code
        stream.reset(77)  # our sending side, with a code of our own
        other = await session.accept_stream()
        assert isinstance(other, WebTransportStream)
        other.stop_sending(55)
        done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"some data")
            assert await stream.receive_some() == b"ok"
            stream.reset(1234)
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"more")
            with trio.fail_after(5), pytest.raises(StreamReset) as info:
                await stream.receive_some()
            assert info.value.code == 77
            other = await session.open_bidirectional_stream()
            await other.send_all(b"x")
            with trio.fail_after(5), pytest.raises(StreamReset) as info:
                while True:
                    await other.send_all(b"y" * 1000)
                    await trio.sleep(0.01)
            assert info.value.code == 55 and info.value.stop_sending
            await done.wait()
        assert seen["client_reset"] == 1234
        nursery.cancel_scope.cancel()


@aioquic_only(
    "qh3 2.1 grants receive credit as data arrives, not as the application reads: a lagging reader past the window is refused"
)
async def test_large_transfer_is_intact(dev_cert: TlsCredentials) -> None:
    payload = os.urandom(10 * 1024 * 1024)

    async def handler(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        digest = hashlib.sha256()
        size = 0
        while data := await stream.receive_some():
            digest.update(data)
            size += len(data)
        await stream.send_all(f"{size} {digest.hexdigest()}".encode())
        await stream.send_eof()
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            with trio.fail_after(60):
                await stream.send_all(payload)
                await stream.send_eof()
                answer = await _read_all(stream)
            assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
        nursery.cancel_scope.cancel()


@aioquic_only("qh3 2.1 grants receive credit as data arrives, not as the application reads")
async def test_peer_that_never_reads_holds_sender_back(dev_cert: TlsCredentials) -> None:
    limits = TransportLimits(stream_receive_window=64 * 1024, stream_send_high_water=64 * 1024)
    server_stream: list[WebTransportStream] = []
    got_stream = trio.Event()

    async def handler(session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        server_stream.append(stream)
        got_stream.set()
        await trio.sleep_forever()  # never reads

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            stream = await session.open_bidirectional_stream()
            sent = 0
            blocked = False
            chunk = b"z" * 8192
            await stream.send_all(chunk)
            sent += len(chunk)
            await got_stream.wait()
            while sent < 4 * 1024 * 1024:
                with trio.move_on_after(0.5) as scope:
                    await stream.send_all(chunk)
                if scope.cancelled_caught:
                    blocked = True
                    break
                sent += len(chunk)
            assert blocked, "the sender was never held back"
            state = server_stream[0]._state
            # Buffered on the server: never more than the window it granted.
            assert state.buffered <= limits.stream_receive_window
            conn = state.conn
            quic_stream = conn.quic._streams[stream.stream_id]
            assert quic_stream.max_stream_data_local <= limits.stream_receive_window + 2
            # The client holds at most the high-water mark plus one chunk unacknowledged.
            assert sent <= limits.stream_receive_window + limits.stream_send_high_water + 2 * 65536
            # Reading frees credit and the sender goes on.
            data = await server_stream[0].receive_some(1_000_000)
            assert len(data) > 0
            with trio.fail_after(5):
                await stream.send_all(chunk)
        nursery.cancel_scope.cancel()


async def test_oversize_datagram_refused(dev_cert: TlsCredentials) -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            limit = session.max_datagram_size
            assert 1000 < limit < 1200
            with pytest.raises(DatagramTooLarge):
                session.send_datagram(b"x" * (limit + 1))
            await rec.started.wait()
            assert rec.session is not None
            session.send_datagram(b"after")  # the queue is not blocked
            with trio.fail_after(5):
                assert await rec.session.receive_datagram() == b"after"
        nursery.cancel_scope.cancel()


async def _refusal(
    dev_cert: TlsCredentials, url_path: str, *, origin_required: bool = True, **kwargs: Any
) -> int:
    async def deny(request: ConnectRequest) -> object:
        if request.query.get("token") != "good":
            raise RejectSession(401)
        return "ctx"

    async def handler(session: WebTransportSession, context: object) -> None:
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(
            nursery,
            dev_cert,
            {"/s": Route(handler, authorize=deny)},
            allowed_origins=frozenset({"https://good.example"}),
            origin_required=origin_required,
        )
        try:
            async with connect_webtransport(
                base + url_path, server_certificate_hashes=[dev_cert.sha256], **kwargs
            ):
                return 200
        except SessionRefused as exc:
            return exc.status
        finally:
            nursery.cancel_scope.cancel()


async def test_unknown_path_404(dev_cert: TlsCredentials) -> None:
    assert await _refusal(dev_cert, "/nope?token=good") == 404


async def test_disallowed_origin_403(dev_cert: TlsCredentials) -> None:
    assert await _refusal(dev_cert, "/s?token=good", origin="https://evil.example") == 403
    assert await _refusal(dev_cert, "/s?token=good", origin="https://good.example") == 200


async def test_missing_origin_403_when_origins_are_restricted(
    dev_cert: TlsCredentials,
) -> None:
    assert await _refusal(dev_cert, "/s?token=good", origin_required=True) == 403
    assert await _refusal(dev_cert, "/s?token=good", origin_required=False) == 200
    good = "https://good.example"
    assert await _refusal(dev_cert, "/s?token=good", origin=good, origin_required=True) == 200


async def test_authorize_hook_401(dev_cert: TlsCredentials) -> None:
    assert await _refusal(dev_cert, "/s?token=bad", origin="https://good.example") == 401


async def test_idle_timeout_closes_session(dev_cert: TlsCredentials) -> None:
    limits = TransportLimits(idle_timeout_s=0.5, keepalive_interval_s=None)
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(rec)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            start = trio.current_time()
            with trio.fail_after(5):
                await session.wait_closed()
                await rec.ended.wait()
            assert 0.4 < trio.current_time() - start < 3
            assert server.endpoint is not None
            endpoint = server.endpoint
            await wait_until(lambda: not endpoint.connections, "server connection gone")
        nursery.cancel_scope.cancel()


async def test_keepalive_keeps_idle_session_open(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    # Two minutes of virtual silence with a 30 s idle timeout: pings keep it open.
    limits = TransportLimits(idle_timeout_s=30.0, keepalive_interval_s=10.0)
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await rec.started.wait()
            await trio.sleep(120)
            assert not session.is_closed
            assert rec.session is not None and not rec.session.is_closed
        nursery.cancel_scope.cancel()


async def test_cancelling_session_scope_resets_streams_and_closes(dev_cert: TlsCredentials) -> None:
    rec = Recorder()
    got_stream = trio.Event()

    async def handler(session: WebTransportSession, context: object) -> None:
        await session.accept_stream()
        got_stream.set()
        await rec(session, context)

    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"hi")
            await got_stream.wait()
            await rec.started.wait()
            assert rec.session is not None
            server_session = rec.session
            assert server_session.open_stream_count == 1
            assert server_session.cancel_scope is not None
            server_session.cancel_scope.cancel()
            with trio.fail_after(5):
                await session.wait_closed()
                await rec.ended.wait()
            assert session.peer_close_code == CLOSE_CODE_CANCELLED
            with pytest.raises(SessionClosed):
                await stream.receive_some()
            assert server_session.open_stream_count == 0
            assert server_session not in server.sessions
            conn = server_session._conn
            await wait_until(lambda: not conn.streams and not conn.sessions, "stream state gone")
        nursery.cancel_scope.cancel()


async def test_idle_timeout_on_virtual_time(dev_cert: TlsCredentials, autojump_clock: Any) -> None:
    # The connection timers run on trio.current_time(): a MockClock drives a real QUIC
    # connection through a 30 s idle timeout without waiting for it.
    limits = TransportLimits(idle_timeout_s=30.0, keepalive_interval_s=None)
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(rec)}, limits=limits)
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256], limits=limits
        ) as session:
            await rec.started.wait()
            start = trio.current_time()
            await session.wait_closed()
            await rec.ended.wait()
            assert 30.0 <= trio.current_time() - start < 32.0
        nursery.cancel_scope.cancel()
