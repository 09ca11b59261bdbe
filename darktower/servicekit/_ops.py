"""The operations listener: /metrics, /healthz, /readyz, /debug/tree over plain HTTP/1.0.

Deliberately minimal (one request per connection, GET only) and bound to 127.0.0.1: it serves
operators and Prometheus, not clients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import trio

from darktower.protocol.addresses import netloc

logger = logging.getLogger("darktower.ops")

# Where the listener binds: operators and Prometheus reach it on the machine itself.
OPS_HOST = "127.0.0.1"

# Limit: bytes of request head read; a longer head gets 431 and the connection closes.
MAX_REQUEST_HEAD = 8 * 1024
# A client that has not sent its request head by then is dropped.
REQUEST_TIMEOUT_S = 5.0

Page = Callable[[], tuple[int, str, str]]  # () -> (status, content type, body)


def _response(status: int, content_type: str, body: str) -> bytes:
    data = body.encode()
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}.get(
        status, "Service Unavailable"
    )
    head = (
        f"HTTP/1.0 {status} {reason}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + data


async def _handle(stream: trio.SocketStream, pages: dict[str, Page]) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            while b"\r\n\r\n" not in head and len(head) <= MAX_REQUEST_HEAD:
                chunk = await stream.receive_some(MAX_REQUEST_HEAD)
                if not chunk:
                    break
                head += chunk
        if len(head) > MAX_REQUEST_HEAD:
            await stream.send_all(_response(431, "text/plain", "request head too large\n"))
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2:
            return
        method, path = parts[0].decode("latin-1"), parts[1].decode("latin-1").split("?")[0]
        page = pages.get(path)
        if page is None:
            reply = _response(404, "text/plain", "not found\n")
        elif method != "GET":
            reply = _response(405, "text/plain", "GET only\n")
        else:
            reply = _response(*page())
        try:
            await stream.send_all(reply)
        except trio.BrokenResourceError:
            pass


async def serve_ops(
    port: int,
    *,
    metrics: Callable[[], str],
    ready: Callable[[], bool],
    tree: Callable[[], object],
    host: str = OPS_HOST,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops pages on ``host:port`` (0: any free port) until cancelled; reports the
    listener's URL (``http://127.0.0.1:PORT``) with ``task_status.started``.

    ``/metrics`` is ``metrics()``, ``/readyz`` 200 while ``ready()`` (else 503), ``/debug/tree``
    ``tree()`` as JSON, ``/healthz`` always 200. Owns its listener and one task per connection
    (each bounded by REQUEST_TIMEOUT_S). Raises OSError if it cannot bind.
    """
    pages: dict[str, Page] = {
        "/metrics": lambda: (200, "text/plain; version=0.0.4", metrics()),
        "/healthz": lambda: (200, "text/plain", "ok\n"),
        "/readyz": lambda: (
            (200, "text/plain", "ready\n") if ready() else (503, "text/plain", "not ready\n")
        ),
        "/debug/tree": lambda: (200, "application/json", json.dumps(tree(), default=str)),
    }
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, lambda s: _handle(s, pages), listeners)
        task_status.started(f"http://{netloc(host, bound)}")
