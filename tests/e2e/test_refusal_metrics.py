"""What the transport refuses or closes is counted by cause on every service's /metrics
(``darktower_transport_refusals_total{cause=...}``): a malformed CONNECT on the MC and the MH,
an HTTP/3 request the GC's HTTP layer cannot read."""

from __future__ import annotations

import pathlib
import re

import httpx
import trio

from darktower.transport import open_quic_connection
from tests._stack import dev_stack
from tests.transport.test_bad_connect import connect_headers, raw_request

WAIT_S = 20


def _count(metrics: str, cause: str) -> float:
    pattern = rf'^darktower_transport_refusals_total\{{cause="{re.escape(cause)}"\}} (\S+)$'
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _metrics(client: httpx.AsyncClient, url: str) -> str:
    reply = await client.get(url)
    assert reply.status_code == 200
    return reply.text


async def test_refusals_are_counted_by_cause_on_each_service(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack, httpx.AsyncClient(verify=False) as http:
        pins = [stack.certificate_sha256]
        for running, port in (
            (stack.mc, stack.mc.signal_address[1]),
            (stack.mh, stack.mh.media_address[1]),
        ):
            before = _count(await _metrics(http, f"{running.ops_url}/metrics"), "bad_connect")
            with trio.fail_after(WAIT_S):
                async with open_quic_connection(
                    "127.0.0.1", port, server_certificate_hashes=pins
                ) as conn:
                    await conn.handshake_complete.wait()
                    assert await raw_request(conn, connect_headers(port, path=b"//[x")) == 400
            after = _count(await _metrics(http, f"{running.ops_url}/metrics"), "bad_connect")
            assert after == before + 1

        # The GC: a plain CONNECT without :path breaks hypercorn's request handling; the
        # listener resets that request's stream, counts it, and the connection goes on.
        gc_port = int(stack.api_url.rsplit(":", 1)[1].split("/", 1)[0])
        with trio.fail_after(WAIT_S):
            async with open_quic_connection(
                "127.0.0.1", gc_port, server_certificate_hashes=pins
            ) as conn:
                await conn.handshake_complete.wait()
                authority = f"127.0.0.1:{gc_port}".encode()
                conn.send_headers(
                    conn.quic.get_next_available_stream_id(),
                    [(b":method", b"CONNECT"), (b":authority", authority)],
                    False,
                )
                # Answered after the bad request (one connection's events are handled in order).
                get = [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", authority),
                    (b":path", b"/healthz"),
                ]
                assert await raw_request(conn, get, end_stream=True) == 200
        metrics = await _metrics(http, f"{stack.api_url.rstrip('/')}/metrics")
        assert _count(metrics, "quic_stream_error:UnboundLocalError") == 1, metrics
