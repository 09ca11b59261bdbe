"""A small HTTP/3 client: plain requests over one reused QUIC connection, concurrently."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio
from aioquic.h3 import events as h3e

from ._client import open_quic_connection
from ._config import TransportLimits
from ._connection import Connection

# A response body beyond this fails the request (ResponseTooLarge) and resets the stream:
# the client never buffers an unbounded body.
MAX_RESPONSE_BODY = 16 * 1024 * 1024


class ResponseTooLarge(Exception):
    pass


@attrs.frozen
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


class HTTP3Client:
    """Requests over one HTTP/3 connection; any number of them concurrently."""

    def __init__(self, conn: Connection, authority: str) -> None:
        self._conn = conn
        self._authority = authority

    @property
    def authority(self) -> str:
        """``host:port`` of the server, as sent in ``:authority``."""
        return self._authority

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Send one request and wait for the whole response.

        Raises trio.BrokenResourceError if the connection is lost or the stream is reset,
        ResponseTooLarge beyond MAX_RESPONSE_BODY. Cancelled, the request stream is reset.
        """
        conn = self._conn
        if conn.terminated.is_set():
            raise trio.BrokenResourceError("HTTP/3 connection closed")
        stream_id = conn.quic.get_next_available_stream_id()
        done = trio.Event()
        status = 0
        response_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        size = 0
        failure: BaseException | None = None

        def on_event(event: h3e.H3Event | None) -> None:
            nonlocal status, size, failure
            if event is None:
                failure = trio.BrokenResourceError("HTTP/3 connection lost")
                done.set()
                return
            ended = False
            if isinstance(event, conn.core.h3_events.HeadersReceived):
                if status == 0:
                    for k, v in event.headers:
                        if k == b":status":
                            status = int(v)
                        elif not k.startswith(b":"):
                            response_headers.append((k.decode("latin-1"), v.decode("latin-1")))
                ended = event.stream_ended
            elif isinstance(event, conn.core.h3_events.DataReceived):
                size += len(event.data)
                if size > MAX_RESPONSE_BODY:
                    failure = ResponseTooLarge(f"response body over {MAX_RESPONSE_BODY} bytes")
                    ended = True
                else:
                    chunks.append(event.data)
                    ended = event.stream_ended
            if ended:
                conn.request_handlers.pop(stream_id, None)
                done.set()

        conn.request_handlers[stream_id] = on_event
        wire = [
            (b":method", method.upper().encode()),
            (b":scheme", b"https"),
            (b":authority", self._authority.encode()),
            (b":path", path.encode()),
        ]
        wire += [(k.lower().encode(), v.encode()) for k, v in headers]
        conn.send_headers(stream_id, wire, not body)
        if body:
            conn.send_data(stream_id, body, True)
        try:
            await done.wait()
        except BaseException:
            conn.abandon_request(stream_id)
            raise
        if failure is not None:
            if isinstance(failure, ResponseTooLarge):
                conn.abandon_request(stream_id)
            raise failure
        return Response(status, tuple(response_headers), b"".join(chunks))


@asynccontextmanager
async def open_http3_client(
    url: str,
    *,
    server_certificate_hashes: Sequence[bytes] | None = None,
    cafile: str | None = None,
    verify: bool = True,
    limits: TransportLimits | None = None,
) -> AsyncIterator[HTTP3Client]:
    """An HTTP/3 client for the origin of ``url``; owns its connection, closed on exit."""
    split = urllib.parse.urlsplit(url)
    if split.scheme != "https" or split.hostname is None:
        raise ValueError(f"not an https URL: {url!r}")
    async with open_quic_connection(
        split.hostname,
        split.port or 443,
        server_certificate_hashes=server_certificate_hashes,
        cafile=cafile,
        verify=verify,
        limits=limits,
    ) as conn:
        yield HTTP3Client(conn, split.netloc)
