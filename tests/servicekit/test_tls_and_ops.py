"""The service kit's TLS credentials and ops listener."""

from __future__ import annotations

import logging
import pathlib
from functools import partial

import pytest
import trio

from darktower.servicekit import OPS_HOST, serve_ops, tls_credentials
from darktower.servicekit._ops import MAX_REQUEST_HEAD
from darktower.transport import generate_dev_certificate

LOG = logging.getLogger("tests.servicekit")


def test_configured_files_are_used(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = generate_dev_certificate()
    certfile, keyfile = creds.write(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert tls_credentials(str(certfile), str(keyfile), log=LOG) == creds
    assert caplog.records == []


def test_without_files_a_dev_certificate_is_generated_and_its_hash_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=LOG.name):
        creds = tls_credentials("", "", log=LOG)
    (record,) = caplog.records
    assert record.getMessage() == "generated a dev certificate"
    assert record.__dict__["fields"] == {"sha256": creds.sha256.hex()}


async def _get(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_ops_listener_pages() -> None:
    ready = False
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            partial(
                serve_ops,
                0,
                metrics=lambda: "up 1\n",
                ready=lambda: ready,
                tree=lambda: {"counts": {"meetings": 0}},
            )
        )
        assert url.startswith(f"http://{OPS_HOST}:") and not url.endswith(":0")
        with trio.fail_after(10):
            metrics = await _get(url, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert metrics.startswith(b"HTTP/1.0 200 ") and metrics.endswith(b"\r\n\r\nup 1\n")
            assert (await _get(url, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200 ")
            assert (await _get(url, b"GET /readyz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 503 ")
            ready = True
            assert (await _get(url, b"GET /readyz?x HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200 ")
            tree = await _get(url, b"GET /debug/tree HTTP/1.0\r\n\r\n")
            assert tree.endswith(b'{"counts": {"meetings": 0}}')
            assert (await _get(url, b"GET /nope HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404 ")
            assert (await _get(url, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 405 ")
            # One byte over the bound and no end of head: the listener reads all of it.
            huge = (b"GET /metrics HTTP/1.0\r\nx: " + b"a" * MAX_REQUEST_HEAD)[
                : MAX_REQUEST_HEAD + 1
            ]
            assert (await _get(url, huge)).startswith(b"HTTP/1.0 431 ")
        nursery.cancel_scope.cancel()
