"""Interop with an independent peer: aioquic's own asyncio client drives a session against us."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import trio
from aioquic.asyncio import connect
from aioquic.buffer import encode_uint_var
from aioquic.h3 import events as h3e
from aioquic.quic.events import StreamDataReceived

from darktower.transport import (
    RETRY_ALWAYS,
    RETRY_THRESHOLD,
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    WebTransportStream,
)
from tests._aioquic_peer import EVENT_TIMEOUT_S, AioquicPeer, peer_configuration

from .conftest import start_server


async def _aioquic_session(port: int, server_saw_close: threading.Event) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with connect(
        "127.0.0.1", port, configuration=peer_configuration(), create_protocol=AioquicPeer
    ) as c:
        client: AioquicPeer = c  # type: ignore[assignment]
        session_id = await client.open_session(port, "/echo", origin="http://127.0.0.1")
        # a bidirectional stream, echoed
        stream_id = client.open_bidi_stream(session_id)
        client._quic.send_stream_data(stream_id, b"interop hello", end_stream=True)
        # a datagram, echoed
        client.h3.send_datagram(session_id, b"interop datagram")
        client.transmit()
        echoed = b""
        while "stream" not in out or "datagram" not in out:
            ev = await client.next_event()
            if isinstance(ev, h3e.DatagramReceived):
                out["datagram"] = ev.data
            elif isinstance(ev, StreamDataReceived):
                echoed += ev.data
                if ev.end_stream:
                    out["stream"] = echoed
        # close the session with a code and reason (capsule) and FIN
        client.h3.send_data(
            session_id,
            encode_uint_var(0x2843) + encode_uint_var(4 + 5) + (9).to_bytes(4, "big") + b"later",
            end_stream=True,
        )
        client.transmit()
        # keep the connection until the server has read the close (leaving would close it)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server_saw_close.wait, EVENT_TIMEOUT_S)
    return out


@pytest.mark.parametrize("retry", ["over threshold", "always"])
async def test_aioquic_asyncio_client_against_our_server(
    dev_cert: TlsCredentials, retry: str
) -> None:
    limits = TransportLimits(retry_threshold=RETRY_ALWAYS if retry == "always" else RETRY_THRESHOLD)
    closed: list[tuple[int | None, str | None]] = []
    done = trio.Event()
    saw_close = threading.Event()

    async def echo(session: WebTransportSession, context: object) -> None:
        async def datagrams() -> None:
            while True:
                session.send_datagram(await session.receive_datagram())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(datagrams)
                stream = await session.accept_stream()
                assert isinstance(stream, WebTransportStream)
                data = b""
                while chunk := await stream.receive_some():
                    data += chunk
                await stream.send_all(data)
                await stream.send_eof()
                await session.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            closed.append((session.peer_close_code, session.peer_close_reason))
            done.set()
            saw_close.set()

    async with trio.open_nursery() as nursery:
        server, base = await start_server(nursery, dev_cert, {"/echo": Route(echo)}, limits=limits)
        port = int(base.rsplit(":", 1)[1])
        result = await trio.to_thread.run_sync(asyncio.run, _aioquic_session(port, saw_close))
        assert result["stream"] == b"interop hello"
        assert result["datagram"] == b"interop datagram"
        with trio.fail_after(5):
            await done.wait()
        assert closed == [(9, "later")]
        assert server.counters["retry_sent"] == (1 if retry == "always" else 0)
        nursery.cancel_scope.cancel()
