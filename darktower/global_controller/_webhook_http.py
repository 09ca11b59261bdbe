"""One webhook attempt: an HTTP/1.1 ``POST`` over trio with h11 (docs/protocol.md §18.5).

The receiver's host is resolved here and every address it has is checked: a loopback,
private, link-local or otherwise non-global one refuses the attempt (``address not allowed``)
unless the GC allows them (``--webhooks-allow-private``); the connection then goes to those
checked addresses, never to a name resolved again. The whole attempt (resolve, connect, TLS,
send, the response's head) is bounded in time by the caller and the head in size here; the
response's body is never read: the status is the answer.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Sequence

import h11
import trio

from darktower.global_controller._webhook_limits import MAX_RESPONSE_HEAD_BYTES
from darktower.global_controller.store import DeliveryAttempt

USER_AGENT = "DarkTower-Webhooks/1"
NOT_ALLOWED = "address not allowed"
_READ_BYTES = 4096


class AttemptFailed(Exception):
    """The attempt got no HTTP answer; the message says why (it goes to the delivery log)."""


def address_allowed(address: str) -> bool:
    """Whether a receiver may be at ``address`` without ``--webhooks-allow-private``: a global
    unicast address (not loopback, private, link-local, shared, reserved, multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (IPv4-mapped ::ffff:0:0/96, 6to4 2002::/16)
        # reaches that IPv4 address: it is judged as it.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and not address_allowed(str(embedded)):
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    refused = (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )
    return not refused


async def _resolve(host: str, port: int, allow_private: bool) -> list[str]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
        raise AttemptFailed(f"cannot resolve {host}: {exc}") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AttemptFailed(f"cannot resolve {host}")
    if not allow_private and not all(address_allowed(a) for a in addresses):
        raise AttemptFailed(NOT_ALLOWED)
    return addresses


async def _connect(addresses: Sequence[str], port: int) -> trio.SocketStream:
    error: OSError | None = None
    for address in addresses:
        try:
            return await trio.open_tcp_stream(address, port)
        except OSError as exc:
            error = exc
    raise AttemptFailed(f"cannot connect: {error}")


async def _exchange(stream: trio.abc.Stream, request: list[bytes]) -> int:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
    for part in request:
        await stream.send_all(part)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise AttemptFailed(f"bad response: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_BYTES)
            conn.receive_data(bytes(data))  # b"": the peer closed; h11 then says so
            continue
        if isinstance(event, h11.Response):
            return int(event.status_code)
        if isinstance(event, h11.ConnectionClosed):
            raise AttemptFailed("connection closed without a response")
        # An informational (1xx) response: the final one follows.


def _request(
    parts: urllib.parse.SplitResult, headers: Sequence[tuple[str, str]], body: bytes
) -> list[bytes]:
    conn = h11.Connection(h11.CLIENT)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [
        ("Host", parts.netloc),
        ("User-Agent", USER_AGENT),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *headers,
    ]
    return [
        conn.send(h11.Request(method="POST", target=target, headers=head)) or b"",
        conn.send(h11.Data(data=body)) or b"",
        conn.send(h11.EndOfMessage()) or b"",
    ]


async def post(
    url: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    allow_private: bool,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryAttempt:
    """POST ``body`` to ``url`` (http:// or https://, verified against the system's CAs or
    ``ssl_context``); returns the response's status, or the error that stopped the attempt.
    Unbounded in time: the caller bounds it. Closes its connection on return or cancellation."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        request = _request(parts, headers, body)
    except (ValueError, h11.LocalProtocolError) as exc:
        return DeliveryAttempt(None, f"bad url: {exc}")
    stream: trio.abc.Stream | None = None
    try:
        addresses = await _resolve(host, port, allow_private)
        stream = await _connect(addresses, port)
        if parts.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
        status = await _exchange(stream, request)
    except AttemptFailed as exc:
        return DeliveryAttempt(None, str(exc))
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        cause = exc.__cause__ or exc  # trio's SSLStream wraps the TLS error
        return DeliveryAttempt(None, f"connection failed: {cause or type(cause).__name__}")
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
    return DeliveryAttempt(status, "" if 200 <= status < 300 else f"HTTP {status}")
