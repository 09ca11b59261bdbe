"""The HTTP/3 client against hypercorn's trio worker over QUIC (what serves the GC)."""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from darktower.transport import TlsCredentials, open_http3_client


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await trio.sleep(0.2)  # so that concurrent requests overlap
    reply = f"{scope['method']} {scope['path']} {scope['http_version']} {len(body)}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if body else 200,
            "headers": [(b"x-echo", body[:20])],
        }
    )
    await send({"type": "http.response.body", "body": reply})


async def test_requests_over_one_connection(dev_cert: TlsCredentials, tmp_path: Any) -> None:
    certfile, keyfile = dev_cert.write(tmp_path)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.quic_bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    config.accesslog = config.errorlog = None
    sockets = config.create_sockets()
    for sock in sockets.secure_sockets:
        sock.listen(config.backlog)  # worker_serve listens only on sockets it created
    port = sockets.quic_sockets[0].getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: worker_serve(
                wrap_app(app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                task_status=task_status,
            )
        )
        async with open_http3_client(
            f"https://127.0.0.1:{port}", server_certificate_hashes=[dev_cert.sha256]
        ) as http:
            response = await http.request("GET", "/hello")
            assert (response.status, response.body) == (200, b"GET /hello 3 0")
            response = await http.request("POST", "/items", [("x-a", "1")], b"payload!")
            assert response.status == 201
            assert response.header("x-echo") == "payload!"
            assert response.body == b"POST /items 3 8"
            results: list[bytes] = []

            async def one(i: int) -> None:
                results.append((await http.request("GET", "/slow")).body)

            start = trio.current_time()
            async with trio.open_nursery() as requests:
                for i in range(10):
                    requests.start_soon(one, i)
            # Ten 0.2 s requests on one connection at once take about 0.2 s, not 2 s.
            assert trio.current_time() - start < 1.5
            assert results == [b"GET /slow 3 0"] * 10
        nursery.cancel_scope.cancel()
