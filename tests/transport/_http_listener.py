"""An HTTP listener of the GC's kind (``serve_http``) over a tiny app, for the listener tests:
``serving(cert_files, limits, counters)`` yields its port (``cert_files``: the fixture in
conftest.py); ``h3_get`` answers a GET over a
fresh HTTP/3 connection."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from quart_trio import QuartTrio

from darktower.transport import open_http3_client
from darktower.transport.http_server import HttpLimits, serve_http
from tests.transport._http3_peer import WAIT_S

__all__ = ["app", "h3_get", "serving"]


def app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    @app.post("/echo")
    async def echo() -> str:
        from quart import request

        return str(len(await request.get_data()))

    return app


@asynccontextmanager
async def serving(
    cert_files: tuple[str, str], limits: HttpLimits, counters: Counter[str]
) -> AsyncIterator[int]:
    certfile, keyfile = cert_files
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_http(
                app(),
                host="127.0.0.1",
                port=0,
                certfile=certfile,
                keyfile=keyfile,
                shutdown=shutdown,
                graceful_timeout_s=2,
                limits=limits,
                counters=counters,
                task_status=task_status,
            )
        )
        try:
            yield port
        finally:
            shutdown.set()


async def h3_get(port: int, path: str = "/healthz") -> int:
    with trio.fail_after(WAIT_S):
        async with open_http3_client(f"https://127.0.0.1:{port}", verify=False) as h3:
            return (await h3.request("GET", path)).status
