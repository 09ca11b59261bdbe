"""The GC's HTTP server: TLS over TCP and HTTP/3 on the same port, Alt-Svc, bounded shutdown."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio
from quart_trio import QuartTrio

from darktower.transport import generate_dev_certificate, open_http3_client
from darktower.transport.http_server import bind_plain_http, serve_http


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    certfile, keyfile = generate_dev_certificate().write(tmp_path_factory.mktemp("tls"))
    return str(certfile), str(keyfile)


def _app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


def _get(port: int) -> httpx.Response:
    with httpx.Client(verify=False, http2=False) as client:
        return client.get(f"https://127.0.0.1:{port}/ping")


def _port_free(kind: int, port: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


async def test_serves_tls_with_alt_svc_and_shuts_down_promptly(cert_files: tuple[str, str]) -> None:
    certfile, keyfile = cert_files
    shutdown = trio.Event()
    plain = bind_plain_http(0)
    plain_port = plain.getsockname()[1]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(
                _app(),
                host="127.0.0.1",
                port=0,
                certfile=certfile,
                keyfile=keyfile,
                shutdown=shutdown,
                graceful_timeout_s=30,
                plain_http_socket=plain,
                task_status=task_status,
            )
        )
        response = await trio.to_thread.run_sync(_get, port)
        assert response.status_code == 200
        assert response.json() == {"pong": "yes"}
        assert f'h3=":{port}"' in response.headers["alt-svc"]
        plain_response = await trio.to_thread.run_sync(
            lambda: httpx.get(f"http://127.0.0.1:{plain_port}/ping")
        )
        assert plain_response.json() == {"pong": "yes"}
        async with open_http3_client(f"https://127.0.0.1:{port}", verify=False) as h3:
            h3_response = await h3.request("GET", "/ping")
        assert h3_response.status == 200
        assert json.loads(h3_response.body) == {"pong": "yes"}
        started = trio.current_time()
        shutdown.set()
    # Without our QUIC server, hypercorn would hold shutdown for graceful_timeout (30 s).
    assert trio.current_time() - started < 5
    assert _port_free(socket.SOCK_STREAM, port)
    assert _port_free(socket.SOCK_DGRAM, port)
    assert _port_free(socket.SOCK_STREAM, plain_port)
