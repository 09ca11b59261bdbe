"""Interop with an independent peer: aioquic's own asyncio client drives a session against us."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import trio
from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3 import events as h3e
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

from darktower.transport import Route, TlsCredentials, WebTransportSession, WebTransportStream

from .conftest import start_server


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.queue: asyncio.Queue[h3e.H3Event | StreamDataReceived] = asyncio.Queue()
        self.own_streams: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        # aioquic parses the peer's data on streams it opened as HTTP/3 frames and dies
        # (DESIGN section 10): the independent client has to route around it too.
        if isinstance(event, StreamDataReceived) and event.stream_id in self.own_streams:
            self.queue.put_nowait(event)
            return
        for h3_event in self.h3.handle_event(event):
            self.queue.put_nowait(h3_event)


async def _aioquic_session(port: int) -> dict[str, Any]:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], max_datagram_frame_size=65536)
    config.verify_mode = ssl.CERT_NONE
    out: dict[str, Any] = {}
    async with connect("127.0.0.1", port, configuration=config, create_protocol=_Client) as c:
        client: _Client = c  # type: ignore[assignment]
        session_id = client._quic.get_next_available_stream_id()
        client.h3.send_headers(
            session_id,
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{port}".encode()),
                (b":path", b"/echo"),
                (b":protocol", b"webtransport"),
                (b"origin", b"http://127.0.0.1"),
            ],
        )
        client.transmit()
        event = await asyncio.wait_for(client.queue.get(), 5)
        assert isinstance(event, h3e.HeadersReceived)
        out["status"] = dict(event.headers)[b":status"]
        # a bidirectional stream, echoed
        stream_id = client.h3.create_webtransport_stream(session_id)
        client.own_streams.add(stream_id)
        client._quic.send_stream_data(stream_id, b"interop hello", end_stream=True)
        # a datagram, echoed
        client.h3.send_datagram(session_id, b"interop datagram")
        client.transmit()
        echoed = b""
        while "stream" not in out or "datagram" not in out:
            ev = await asyncio.wait_for(client.queue.get(), 5)
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
        await asyncio.sleep(0.2)  # let the close leave before the connection closes
    return out


async def test_aioquic_asyncio_client_against_our_server(dev_cert: TlsCredentials) -> None:
    closed: list[tuple[int | None, str | None]] = []
    done = trio.Event()

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

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/echo": Route(echo)})
        port = int(base.rsplit(":", 1)[1])
        result = await trio.to_thread.run_sync(asyncio.run, _aioquic_session(port))
        assert result["status"] == b"200"
        assert result["stream"] == b"interop hello"
        assert result["datagram"] == b"interop datagram"
        with trio.fail_after(5):
            await done.wait()
        assert closed == [(9, "later")]
        nursery.cancel_scope.cancel()
