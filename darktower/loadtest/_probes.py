"""Is each service still answering? One well-formed request per port, each bounded in time.

GC: ``GET /healthz`` over HTTPS (TCP) and over HTTP/3; MC: a real join (a GC join ticket, then
signaling); MH: a media connection with the token from that join; page: ``GET /``; gRPC: a
TLS handshake (mutual TLS: a live server then asks for a client certificate); ops:
``GET /healthz``.
"""

from __future__ import annotations

import time

import attrs
import trio

from darktower.client import media_url, open_gc_client, open_media_client, open_signaling
from darktower.transport import open_http3_client

from ._abuse_tcp import tls_context

# Every probe gets this long; a service that needs longer to answer one request is not alive.
PROBE_S = 10.0
# A quick check between phases (TCP listeners only) gets less.
QUICK_S = 3.0
MAX_BODY = 1024 * 1024


@attrs.frozen
class Check:
    name: str
    alive: bool
    detail: str

    def line(self) -> str:
        return f"{self.name:<26} {'alive' if self.alive else 'DEAD '}  {self.detail}"


async def http_get(host: str, port: int, path: str, *, tls: bool) -> tuple[int, bytes]:
    """One HTTP/1.1 GET (``Connection: close``); (status, body head). Raises OSError & co."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if tls:
            stream = trio.SSLStream(
                stream, tls_context("http/1.1"), server_hostname="localhost", https_compatible=True
            )
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while len(data) < MAX_BODY and not _complete(data):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    finally:
        await trio.aclose_forcefully(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {data[:60]!r}")
    return int(parts[1]), body


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response (by its content-length; else at EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


async def _check(name: str, seconds: float, probe: object) -> Check:
    started = time.perf_counter()
    try:
        with trio.fail_after(seconds):
            detail = await probe()  # type: ignore[operator]
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {str(exc)[:120]}")
    return Check(name, True, f"{detail} in {(time.perf_counter() - started) * 1000:.0f} ms")


async def check_http(
    name: str, host: str, port: int, path: str, *, tls: bool, seconds: float = PROBE_S
) -> Check:
    async def probe() -> str:
        status, _ = await http_get(host, port, path, tls=tls)
        if status != 200:
            raise ValueError(f"GET {path} answered {status}")
        return f"GET {path} 200"

    return await _check(name, seconds, probe)


async def check_http3(name: str, url: str, pins: list[bytes], seconds: float = PROBE_S) -> Check:
    async def probe() -> str:
        async with open_http3_client(
            url, server_certificate_hashes=pins or None, verify=bool(pins)
        ) as http:
            response = await http.request("GET", "/healthz")
        if response.status != 200:
            raise ValueError(f"GET /healthz over HTTP/3 answered {response.status}")
        return "GET /healthz over HTTP/3 200"

    return await _check(name, seconds, probe)


async def check_grpc(name: str, host: str, port: int, seconds: float = PROBE_S) -> Check:
    """Internal gRPC is mutual TLS (docs/architecture.md §8) and the checker holds no cluster
    certificate: a live server completes the TLS handshake (its side of it), then closes the
    connection for want of one; a dead or stuck one fails the connect or the handshake."""

    async def probe() -> str:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, tls_context("h2"), server_hostname="localhost")
        try:
            await stream.do_handshake()
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
        finally:
            await trio.aclose_forcefully(stream)
        if data:
            raise ValueError("answered a client without a certificate")
        return "TLS handshake, then closed: no client certificate"

    return await _check(name, seconds, probe)


@attrs.frozen
class JoinResult:
    mc: Check
    mh: Check
    seconds: float | None  # the whole join (ticket, signaling, media) if it succeeded


async def timed_join(
    api_url: str,
    client_id: str,
    client_secret: str,
    pins: list[bytes],
    *,
    seconds: float = PROBE_S,
    meeting_id: str | None = None,
) -> JoinResult:
    """A legitimate participant: GC join ticket, MC signaling join, MH media connection."""
    mc = Check("MC (signaling join)", False, "not tried: the GC gave no join ticket")
    mh = Check("MH (media connect)", False, "not tried: no join")
    started = time.perf_counter()
    stage = "GC"
    try:
        with trio.fail_after(seconds):
            async with open_gc_client(api_url, server_certificate_hashes=pins) as gc:
                await gc.authenticate(client_id, client_secret)
                created = None
                if meeting_id is None:
                    created = await gc.create_meeting("hostile-probe")
                    meeting_id = created.meeting_id
                ticket = await gc.join_meeting(meeting_id, "probe")
                stage = "MC"
                t0 = time.perf_counter()
                async with open_signaling(
                    ticket.meeting_controller_url,
                    meeting_id=meeting_id,
                    join_token=ticket.join_token,
                    participant_name="probe",
                    server_certificate_hashes=pins,
                    origin=gc.origin,
                ) as signaling:
                    mc = Check(
                        mc.name, True, f"JoinResponse in {(time.perf_counter() - t0) * 1000:.0f} ms"
                    )
                    stage = "MH"
                    t1 = time.perf_counter()
                    async with open_media_client(
                        media_url(signaling.join_response),
                        server_certificate_hashes=pins,
                        origin=gc.origin,
                    ):
                        mh = Check(
                            mh.name,
                            True,
                            f"connected in {(time.perf_counter() - t1) * 1000:.0f} ms",
                        )
                    total = time.perf_counter() - started
                    await signaling.leave()
                if created is not None:
                    await gc.end_meeting(created.meeting_id)
            return JoinResult(mc, mh, total)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:120]}"
        if stage == "MC":
            mc = Check(mc.name, False, detail)
        elif stage == "MH":
            mh = Check(mh.name, False, detail)
        else:
            mc = Check(mc.name, False, f"no join ticket from the GC: {detail}")
        return JoinResult(mc, mh, None)
