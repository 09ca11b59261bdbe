"""An independent WebTransport peer built only on aioquic's asyncio API (for interop tests).

aioquic parses the peer's data on streams it opened itself as HTTP/3 frames and dies
(docs/decisions.md, "aioquic internals touched"), so this client, like our transport, routes data of
its own streams around ``H3Connection.handle_event``. Run it with
``trio.to_thread.run_sync(asyncio.run, coro)``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3 import events as h3e
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

EVENT_TIMEOUT_S = 5


class AioquicPeer(QuicConnectionProtocol):
    """Events land in ``queue``: HTTP/3 events, and raw data of the streams we opened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.queue: asyncio.Queue[h3e.H3Event | StreamDataReceived] = asyncio.Queue()
        self.own_streams: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id in self.own_streams:
            self.queue.put_nowait(event)
            return
        for h3_event in self.h3.handle_event(event):
            self.queue.put_nowait(h3_event)

    async def next_event(self) -> h3e.H3Event | StreamDataReceived:
        return await asyncio.wait_for(self.queue.get(), EVENT_TIMEOUT_S)

    async def open_session(self, port: int, path: str, origin: str | None = None) -> int:
        """Send the extended CONNECT; return the session id once the status is 200."""
        session_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":scheme", b"https"),
            (b":authority", f"127.0.0.1:{port}".encode()),
            (b":path", path.encode()),
            (b":protocol", b"webtransport"),
        ]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.h3.send_headers(session_id, headers)
        self.transmit()
        event = await self.next_event()
        assert isinstance(event, h3e.HeadersReceived)
        status = dict(event.headers)[b":status"]
        assert status == b"200", status
        return session_id

    def open_bidi_stream(self, session_id: int) -> int:
        stream_id = self.h3.create_webtransport_stream(session_id)
        self.own_streams.add(stream_id)
        return stream_id


def peer_configuration() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], max_datagram_frame_size=65536)
    config.verify_mode = ssl.CERT_NONE
    return config
