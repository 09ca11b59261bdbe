"""A webhook receiver for tests: a small HTTP/1.1 server (trio + h11) on 127.0.0.1 that records
every request and answers with the statuses it is given (200 once they are used up), or holds
every request unanswered while ``hang`` is set."""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

HOST = "127.0.0.1"


@attrs.frozen
class Received:
    target: str
    headers: dict[str, str]  # names lowercase
    body: bytes


class Receiver:
    def __init__(self) -> None:
        self.statuses: list[int] = []  # answered in order, then 200
        self.hang = False  # hold requests unanswered
        self.requests: list[Received] = []
        self.answered = 0
        self.port = 0
        self._send, self._received = trio.open_memory_channel[Received](math.inf)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook?x=1"

    async def next(self) -> Received:
        """The next request received (waits for it)."""
        return await self._received.receive()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        target, headers, body = "", {}, b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Request):
                    target = event.target.decode()
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            received = Received(target, headers, body)
            self.requests.append(received)
            self._send.send_nowait(received)
            if self.hang:
                await trio.sleep_forever()
            status = self.statuses.pop(0) if self.statuses else 200
            head = h11.Response(
                status_code=status, headers=[("content-length", "0"), ("connection", "close")]
            )
            await stream.send_all(conn.send(head) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            self.answered += 1
        except (trio.BrokenResourceError, h11.RemoteProtocolError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def running_receiver(tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (HTTPS with ``tls``), stopped on exit."""
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        tcp = await trio.open_tcp_listeners(0, host=HOST)
        receiver.port = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if tls is not None:
            listeners = [trio.SSLListener(t, tls, https_compatible=True) for t in tcp]
        nursery.start_soon(trio.serve_listeners, receiver._handle, listeners)
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port
