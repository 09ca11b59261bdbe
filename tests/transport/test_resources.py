"""1,000 sessions with streams opened and closed: nothing of them is left anywhere."""

from __future__ import annotations

import gc
import os
from typing import Any

import trio
import trio.testing

from darktower.transport import (
    Connection,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    WebTransportStream,
    open_quic_connection,
    open_session,
)

from .conftest import start_server, wait_until

CONNECTIONS = 4
WORKERS_PER_CONNECTION = 5
SESSIONS_PER_WORKER = 50  # 4 * 5 * 50 = 1,000 sessions


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def _open_fds() -> int:
    gc.collect()  # sockets of earlier tests closed by their finalizers, not counted against us
    return len(os.listdir("/proc/self/fd"))


def _connection_tables(conn: Connection) -> dict[str, int]:
    return {
        "streams": len(conn.streams),
        "sessions": len(conn.sessions),
        "sweep": len(conn.sweep),
        "rejected": len(conn.rejected),
        "pending_prefix": len(conn.pending_prefix),
        "blocked_senders": len(conn.blocked_senders),
        "request_handlers": len(conn.request_handlers),
        "quic_streams": _quic_streams(conn),
        "h3_streams": len(conn.h3._stream),
    }


def _quic_streams(conn: Connection) -> int:
    """Streams the QUIC core still holds: aioquic's table; on qh3 (which keeps them natively)
    the local streams it has not finished."""
    if conn.core.name == "qh3":
        return len(conn.quic._created_local_stream_ids)
    return len(conn.quic._streams)


async def _read_all(stream: Any) -> bytes:
    out = b""
    while chunk := await stream.receive_some():
        out += chunk
    return out


async def handler(session: WebTransportSession, context: object) -> None:
    uni = await session.open_unidirectional_stream()
    await uni.send_all(b"hello from server")
    await uni.aclose()
    stream = await session.accept_stream()
    assert isinstance(stream, WebTransportStream)
    await stream.send_all(await _read_all(stream))
    await stream.send_eof()
    await session.wait_closed()


async def test_thousand_sessions_leave_nothing_behind(dev_cert: TlsCredentials) -> None:
    # A session the client closes keeps its slot until the FIN of its CONNECT stream, sent
    # CLOSE_FIN_DELAY_S (0.25 s) after the close capsule: a fast core (qh3) closes more than
    # 64 in that time. Every session one connection opens fits.
    limits = TransportLimits(
        max_sessions_per_connection=WORKERS_PER_CONNECTION * SESSIONS_PER_WORKER
    )
    fds_before = _open_fds()
    tasks_before = _count_tasks()
    opened = 0
    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/r": Route(handler)}, limits=limits)
        endpoint = server.endpoint
        assert endpoint is not None
        port = int(base.rsplit(":", 1)[1])
        await trio.testing.wait_all_tasks_blocked()
        tasks_serving = _count_tasks()

        async def worker(conn: Connection) -> None:
            nonlocal opened
            for _ in range(SESSIONS_PER_WORKER):
                session = await open_session(conn, f"127.0.0.1:{port}", "/r")
                stream = await session.open_bidirectional_stream()
                await stream.send_all(b"ping")
                await stream.send_eof()
                assert await _read_all(stream) == b"ping"
                incoming = await session.accept_stream()
                assert await _read_all(incoming) == b"hello from server"
                await session.close()
                opened += 1

        async def client(ready: trio.Event, finish: trio.Event) -> None:
            async with open_quic_connection(
                "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256], limits=limits
            ) as conn:
                async with trio.open_nursery() as workers:
                    for _ in range(WORKERS_PER_CONNECTION):
                        workers.start_soon(worker, conn)
                ready.set()
                await finish.wait()
                clients.append(conn)

        clients: list[Connection] = []
        finish = trio.Event()
        readies = [trio.Event() for _ in range(CONNECTIONS)]
        baseline: dict[str, int] | None = None
        async with trio.open_nursery() as client_nursery:
            # Baseline: what a fresh connection holds (HTTP/3 control and QPACK streams).
            async with open_quic_connection(
                "127.0.0.1", port, server_certificate_hashes=[dev_cert.sha256]
            ):
                await wait_until(lambda: len(endpoint.connections) == 1, "one connection")
                (server_conn,) = endpoint.connections
                await wait_until(lambda: len(server_conn.h3._stream) == 3, "peer control streams")
                baseline = _connection_tables(server_conn)
            for ready in readies:
                client_nursery.start_soon(client, ready, finish)
            with trio.fail_after(60):
                for ready in readies:
                    await ready.wait()
            assert opened == CONNECTIONS * WORKERS_PER_CONNECTION * SESSIONS_PER_WORKER
            await wait_until(
                lambda: not server.sessions and server.session_tasks == 0, "sessions gone"
            )
            # Every connection still open, and each holds no more than a fresh one does.
            await wait_until(
                lambda: all(_connection_tables(c) == baseline for c in endpoint.connections),
                "per-connection tables back to baseline",
            )
            assert len(endpoint.connections) == CONNECTIONS
            for conn in endpoint.connections:
                assert conn.nursery is not None
                assert not conn.nursery.child_tasks  # no session task left
            finish.set()
        await wait_until(lambda: not endpoint.connections, "server connections gone")
        assert endpoint.by_cid == {} and endpoint.handshaking == set()
        assert endpoint.timers._heap == []  # the timers keep no connection either
        await trio.testing.wait_all_tasks_blocked()
        assert _count_tasks() == tasks_serving
        nursery.cancel_scope.cancel()
    assert _count_tasks() == tasks_before
    # Earlier tests may still be closing descriptors (GC); a leak would show as more.
    assert _open_fds() <= fds_before
