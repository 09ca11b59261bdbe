"""The GC's HTTP server: TLS over TCP and HTTP/3 on the same port, Alt-Svc, bounded shutdown."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio
from quart import request
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

    @app.post("/length")
    async def length() -> dict[str, int]:
        return {"length": len(await request.get_data())}

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


async def test_a_restarted_timer_task_still_delivers_the_event_it_took() -> None:
    """hypercorn restarts (cancels) a connection's timer task at every send, even while that
    task is handing an event it already took out of the QUIC connection to the HTTP/3 layer:
    a request's body was lost and the request timed out with 408 when several requests ran on
    one connection. Our protocol finishes that delivery."""
    from hypercorn.protocol.quic import _Connection
    from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext

    from darktower.transport._http_streams import StreamTable
    from darktower.transport.http_server import _TrackingQuicProtocol

    delivered: list[str] = []
    in_http3 = trio.Event()
    release = trio.Event()

    class FakeQuic:
        _close_at = 1.0  # a live connection (idle timeout armed)

        def __init__(self) -> None:
            self.events = ["body of request 1", "end of request 1"]

        def handle_timer(self, now: float) -> None:
            pass

        def next_event(self) -> str | None:
            return self.events.pop(0) if self.events else None

        def datagrams_to_send(self, now: float) -> list[tuple[bytes, object]]:
            return []

        def get_timer(self) -> None:
            return None

    class FakeHttp3:
        streams = StreamTable()

        async def handle(self, event: str) -> None:
            in_http3.set()
            await release.wait()  # e.g. the app's receive queue is full
            delivered.append(event)

    protocol = object.__new__(_TrackingQuicProtocol)  # only the timer path is exercised
    protocol.connections = {}
    protocol.context = WorkerContext(None)
    protocol.idle_event = trio.Event()
    connection = _Connection(cids=set(), quic=FakeQuic(), task=TrioSingleTask(), h3=FakeHttp3())
    restart = trio.CancelScope()

    async def timer_task() -> None:
        with restart:
            await protocol._handle_timer(0.0, connection)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer_task)
        await in_http3.wait()
        restart.cancel()  # what the next send's restart of the timer task does
        release.set()
    assert delivered == ["body of request 1", "end of request 1"]


async def test_concurrent_requests_with_bodies_on_one_http3_connection(
    cert_files: tuple[str, str],
) -> None:
    certfile, keyfile = cert_files
    shutdown = trio.Event()
    sizes = [100 + 997 * i for i in range(40)]  # one to many QUIC packets each
    answers: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(
                _app(),
                host="127.0.0.1",
                port=0,
                certfile=certfile,
                keyfile=keyfile,
                shutdown=shutdown,
                task_status=task_status,
            )
        )
        async with open_http3_client(f"https://127.0.0.1:{port}", verify=False) as h3:

            async def post(size: int) -> None:
                response = await h3.request("POST", "/length", body=b"x" * size)
                assert response.status == 200, response.body
                answers[size] = json.loads(response.body)["length"]

            with trio.fail_after(30):
                async with trio.open_nursery() as requests:
                    for size in sizes:
                        requests.start_soon(post, size)
        shutdown.set()
    assert answers == {size: size for size in sizes}


async def test_a_timer_that_fires_after_the_connection_terminated_is_ignored() -> None:
    """The read loop may terminate a connection after its timer task woke up but before it
    ran; aioquic's handle_timer must not be called then (it raised TypeError)."""
    from hypercorn.protocol.quic import _Connection
    from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext

    from darktower.transport.http_server import _TrackingQuicProtocol

    class TerminatedQuic:
        _close_at = None  # as aioquic leaves it once terminated

        def handle_timer(self, now: float) -> None:
            raise TypeError("'>=' not supported between instances of 'float' and 'NoneType'")

        def next_event(self) -> None:
            return None

        def datagrams_to_send(self, now: float) -> list[tuple[bytes, object]]:
            return []

        def get_timer(self) -> None:
            return None

    protocol = object.__new__(_TrackingQuicProtocol)
    protocol.connections = {}
    protocol.context = WorkerContext(None)
    protocol.idle_event = trio.Event()
    connection = _Connection(cids=set(), quic=TerminatedQuic(), task=TrioSingleTask())
    await protocol._handle_timer(0.0, connection)  # returns quietly
