"""Every send path of the GC's listeners is an error boundary: an app answering on a request
stream the client has stopped (STOP_SENDING, so the server's side is reset) made hypercorn's
``H3Protocol.stream_send`` raise from the app's task, and the 500 hypercorn then sends from
``_handle``'s ``finally`` raised again, out of its task group: the whole listener (and the GC
process) ended. Now that stream's sends are dropped, counted and logged once; the connection
and the listener go on."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from aioquic.h3.connection import FrameUnexpected
from aioquic.quic.events import StreamReset
from hypercorn.config import Config

from darktower.transport import generate_dev_certificate
from darktower.transport._http_streams import BoundedTaskGroup
from darktower.transport.http_server import HttpLimits, serve_http
from tests.transport._http3_peer import WAIT_S, Http3Peer

H3_REQUEST_CANCELLED = 0x10C


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    certfile, keyfile = generate_dev_certificate().write(tmp_path_factory.mktemp("tls"))
    return str(certfile), str(keyfile)


class _App:
    """A plain ASGI app: ``/slow`` answers once ``answer`` is set; anything else is 200."""

    def __init__(self) -> None:
        self.answer = trio.Event()
        self.slow_done = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        try:
            if scope["path"] == "/slow":
                await self.answer.wait()
            # No try/except around send: an error from it goes to hypercorn, as from any app.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok" * 1000})
        finally:
            if scope["path"] == "/slow":
                self.slow_done.set()


@asynccontextmanager
async def serving(
    cert_files: tuple[str, str], app: _App, counters: Counter[str]
) -> AsyncIterator[int]:
    certfile, keyfile = cert_files
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_http(
                app,
                host="127.0.0.1",
                port=0,
                certfile=certfile,
                keyfile=keyfile,
                shutdown=shutdown,
                graceful_timeout_s=2,
                limits=HttpLimits(),
                counters=counters,
                task_status=task_status,
            )
        )
        try:
            yield port
        finally:
            shutdown.set()


def _get(port: int, path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b":path", path.encode()),
    ]


async def test_an_answer_on_a_stream_the_client_stopped_ends_nothing(
    cert_files: tuple[str, str],
) -> None:
    counters: Counter[str] = Counter()
    app = _App()
    async with serving(cert_files, app, counters) as port:
        peer = Http3Peer("127.0.0.1", port)
        try:
            assert await peer.connect()
            stream_id = peer.quic.get_next_available_stream_id()
            peer.h3.send_headers(stream_id, _get(port, "/slow"), end_stream=True)
            peer.quic.stop_stream(stream_id, H3_REQUEST_CANCELLED)
            reset = False

            def on_event(event: object) -> None:
                nonlocal reset
                if isinstance(event, StreamReset) and event.stream_id == stream_id:
                    reset = True

            # The server resets its side of the stream when the STOP_SENDING arrives.
            await peer.run_until(lambda: reset, on_event)
            assert reset
            app.answer.set()
            with trio.fail_after(WAIT_S):
                await app.slow_done.wait()
            assert await peer.get("/healthz") == 200  # the same connection still serves
            assert peer.terminated is None
            errors = {k: n for k, n in counters.items() if k.startswith("quic_stream_error:")}
            assert sum(errors.values()) == 1, counters  # once for the stream, not per send
            assert not [k for k in counters if k.startswith("quic_error:")], counters
        finally:
            peer.close()


async def test_an_error_from_the_last_send_of_an_app_task_stays_in_its_task() -> None:
    """hypercorn's app task calls ``send(None)`` in a ``finally`` (a 500 if nothing was
    answered): what that raises is counted, not raised into the listener's task group."""
    counters: Counter[str] = Counter()

    async def app(*args: Any) -> None:
        pass

    async def send(message: Any) -> None:
        raise FrameUnexpected("HEADERS frame is not allowed in this state")

    async with BoundedTaskGroup(counters) as task_group:
        await task_group.spawn_app(app, Config(), {}, send)
    assert counters == {"quic_stream_error:FrameUnexpected": 1}
