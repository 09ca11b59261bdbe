"""Client side: a QUIC connection on its own endpoint, and WebTransport sessions over it."""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
from aioquic.h3 import events as h3e

from darktower.errors import ErrorCode, sole_error

from ._config import TransportLimits
from ._connection import Connection
from ._endpoint import Endpoint, make_udp_socket
from ._errors import ConnectFailed, SessionRefused
from ._session import ConnectRequest, WebTransportSession
from ._tls import check_pinned_certificate, quic_configuration

# How long the client waits for CONNECTION_CLOSE to leave when it shuts a connection down.
CLOSE_GRACE_S = 1.0


@asynccontextmanager
async def open_quic_connection(
    host: str,
    port: int,
    *,
    server_certificate_hashes: Sequence[bytes] | None = None,
    cafile: str | None = None,
    verify: bool = True,
    limits: TransportLimits | None = None,
    local_host: str | None = None,
) -> AsyncIterator[Connection]:
    """A client QUIC+HTTP/3 connection on its own UDP socket; closed on exit.

    Owns the socket, the reader and the connection task. ``server_certificate_hashes`` pins
    the server's certificate by SHA-256 (as the browser's ``serverCertificateHashes``) instead
    of CA verification; ``local_host`` binds the socket to that address (a load test's clients
    on many loopback addresses, as many hosts). Raises ConnectFailed when the handshake fails
    or times out.
    """
    limits = limits or TransportLimits()
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    pinned = list(server_certificate_hashes or [])
    config = quic_configuration(
        limits,
        is_client=True,
        server_name=host,
        cafile=cafile,
        verify=verify and not pinned,
    )
    any_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    sock = make_udp_socket(local_host or any_host, 0)
    endpoint = Endpoint(sock, limits)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            conn = endpoint.connect(addr[:2], config)
            try:
                with trio.move_on_after(limits.handshake_timeout_s):
                    await conn.settled.wait()
                if not conn.handshake_complete.is_set():
                    reason = conn.close_reason or "timeout"
                    raise ConnectFailed(f"QUIC handshake with {host}:{port} failed: {reason}")
                if pinned:
                    check_pinned_certificate(conn.quic.dt_peer_certificate_sha256(), pinned)
                yield conn
            finally:
                conn.close()
                with trio.move_on_after(CLOSE_GRACE_S, shield=True):
                    await conn.terminated.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: a single error (the body's, or ours while
        # connecting) is raised as itself.
        error = sole_error(group)
        if error is group:
            raise
        raise error from None


async def open_session(
    conn: Connection,
    authority: str,
    target: str,
    *,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> WebTransportSession:
    """Send an extended CONNECT for ``target`` (path and query) and wait for the answer.

    Raises SessionRefused on a non-2xx status, SessionClosed if the connection is lost.
    Cancelled while waiting, the CONNECT stream is reset.
    """
    split = urllib.parse.urlsplit(target)
    stream_id = conn.quic.get_next_available_stream_id()
    request = ConnectRequest(
        path=split.path or "/",
        query=dict(urllib.parse.parse_qsl(split.query)),
        authority=authority,
        origin=origin,
        headers=tuple(headers),
    )
    session = WebTransportSession(conn, stream_id, request)
    conn.sessions[stream_id] = session
    answered = trio.Event()
    status = 0

    def on_event(event: h3e.H3Event | None) -> None:
        nonlocal status
        if isinstance(event, conn.core.h3_events.HeadersReceived):
            status = int(dict(event.headers).get(b":status", b"0"))
            conn.request_handlers.pop(stream_id, None)
            if 200 <= status < 300:
                session.opened()
            else:
                session.reject_answered()
                if event.stream_ended:
                    session.on_connect_stream_gone()
            answered.set()
        elif event is None:
            answered.set()

    conn.request_handlers[stream_id] = on_event
    wire = [
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", target.encode()),
        (b":protocol", b"webtransport"),
        (b"sec-webtransport-http3-draft02", b"1"),
    ]
    if origin is not None:
        wire.append((b"origin", origin.encode()))
    wire += [(k.lower().encode(), v.encode()) for k, v in headers]
    conn.send_headers(stream_id, wire, False)
    try:
        await answered.wait()
    except BaseException:
        session.close_nowait(int(ErrorCode.UNKNOWN), "cancelled")
        conn.abandon_request(stream_id)
        conn.forget_session(session)
        raise
    if status == 0:
        session.check_usable()
    if not 200 <= status < 300:
        raise SessionRefused(status)
    return session


@asynccontextmanager
async def connect_webtransport(
    url: str,
    *,
    server_certificate_hashes: Sequence[bytes] | None = None,
    cafile: str | None = None,
    verify: bool = True,
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    limits: TransportLimits | None = None,
    local_host: str | None = None,
) -> AsyncIterator[WebTransportSession]:
    """Open a WebTransport session at ``url`` (``https://host:port/path?query``).

    Owns its own UDP socket and QUIC connection. On exit the session is closed with code 0
    (or ``ErrorCode.INTERNAL_ERROR`` if the body raised) and the connection is closed.
    Raises ConnectFailed, SessionRefused (status on ``.status``). If the peer closes the
    session the body is not cancelled: session and stream calls raise SessionClosed.
    ``local_host``: as for ``open_quic_connection``.
    """
    split = urllib.parse.urlsplit(url)
    if split.scheme != "https" or split.hostname is None:
        raise ValueError(f"not an https URL: {url!r}")
    port = split.port or 443
    target = split.path or "/"
    if split.query:
        target += "?" + split.query
    async with open_quic_connection(
        split.hostname,
        port,
        server_certificate_hashes=server_certificate_hashes,
        cafile=cafile,
        verify=verify,
        limits=limits,
        local_host=local_host,
    ) as conn:
        session = await open_session(conn, split.netloc, target, origin=origin, headers=headers)
        code, reason = 0, ""
        try:
            yield session
        except BaseException as exc:
            code, reason = int(ErrorCode.INTERNAL_ERROR), type(exc).__name__
            raise
        finally:
            session.close_nowait(code, reason)
