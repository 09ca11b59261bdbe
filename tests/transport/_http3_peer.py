"""A QUIC/HTTP/3 client driven by hand (aioquic's sans-IO core on a trio UDP socket) that can
bind any 127.0.0.x source address, send only Initials (a flood that never answers), or put
arbitrary bytes and headers on a real HTTP/3 connection."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import trio
from aioquic._buffer import Buffer
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import QuicPacketType, pull_quic_header

# Every wait on the server in these tests is bounded by this.
WAIT_S = 10.0


def _config() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    config.verify_mode = 0  # ssl.CERT_NONE: the tests' certificate is self-signed
    return config


def initial_datagram(port: int, token: bytes = b"") -> bytes:
    """The first datagram of a fresh client connection: an Initial padded to 1,200 bytes."""
    config = _config()
    config.token = token
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


def udp_socket(host: str, rcvbuf: int = 1 << 20) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already received on ``sock`` (non-blocking)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65_536))
        except BlockingIOError:
            return out


def server_connections(datagrams: Iterable[bytes]) -> tuple[set[bytes], int]:
    """(the server connection ids that answered with an Initial, the number of Retries)."""
    cids: set[bytes] = set()
    retries = 0
    for data in datagrams:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            continue
        if header.packet_type == QuicPacketType.INITIAL:
            cids.add(header.source_cid)
        elif header.packet_type == QuicPacketType.RETRY:
            retries += 1
    return cids, retries


class Http3Peer:
    """One real HTTP/3 connection from ``host`` to 127.0.0.1:``port``."""

    def __init__(self, host: str, port: int) -> None:
        self.quic = QuicConnection(configuration=_config())
        self.h3 = H3Connection(self.quic)
        self.address = ("127.0.0.1", port)
        self.sock = trio.socket.from_stdlib_socket(udp_socket(host))
        self.terminated: ConnectionTerminated | None = None
        self.responses: dict[int, tuple[list[tuple[bytes, bytes]], bytes, bool]] = {}

    async def connect(self) -> bool:
        """True once the handshake completed; False if the server refused or closed."""
        self.quic.connect(self.address, now=trio.current_time())
        done = False

        def on_event(event: object) -> None:
            nonlocal done
            done = done or isinstance(event, HandshakeCompleted)

        await self.run_until(lambda: done, on_event)
        return done

    async def flush(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=trio.current_time()):
            await self.sock.sendto(data, addr)

    async def run_until(
        self, condition: object, on_event: object = None, wait_s: float = WAIT_S
    ) -> None:
        """Exchange packets until ``condition()`` or the connection ends (≤ ``wait_s``)."""
        with trio.move_on_after(wait_s):
            while not condition() and self.terminated is None:  # type: ignore[operator]
                await self.flush()
                timer = self.quic.get_timer()
                wait = WAIT_S if timer is None else max(0.0, timer - trio.current_time())
                with trio.move_on_after(wait):
                    data, addr = await self.sock.recvfrom(65_536)
                    self.quic.receive_datagram(data, addr, now=trio.current_time())
                if timer is not None and trio.current_time() >= timer:
                    self.quic.handle_timer(now=trio.current_time())
                event = self.quic.next_event()
                while event is not None:
                    if on_event is not None:
                        on_event(event)  # type: ignore[operator]
                    if isinstance(event, ConnectionTerminated):
                        self.terminated = event
                    for h3_event in self.h3.handle_event(event):
                        self._record(h3_event)
                    event = self.quic.next_event()
                # The peer's CONNECTION_CLOSE is reported only after the draining period.
                if self.terminated is None and self.quic._close_event is not None:
                    self.terminated = self.quic._close_event
        await self.flush()

    def _record(self, event: object) -> None:
        if isinstance(event, HeadersReceived):
            _, body, _ = self.responses.get(event.stream_id, ([], b"", False))
            self.responses[event.stream_id] = (event.headers, body, event.stream_ended)
        elif isinstance(event, DataReceived):
            headers, body, _ = self.responses.get(event.stream_id, ([], b"", False))
            self.responses[event.stream_id] = (headers, body + event.data, event.stream_ended)

    async def request(
        self, headers: list[tuple[bytes, bytes]], body: bytes = b"", wait_s: float = WAIT_S
    ) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        """Send a request; its response, or None if none came (within ``wait_s``)."""
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        await self.run_until(
            lambda: self.responses.get(stream_id, ([], b"", False))[2], wait_s=wait_s
        )
        if stream_id not in self.responses or not self.responses[stream_id][2]:
            return None
        headers_out, body_out, _ = self.responses.pop(stream_id)
        return headers_out, body_out

    async def get(self, path: str, wait_s: float = WAIT_S) -> int | None:
        """GET ``path``: the status, or None if none came (within ``wait_s``)."""
        port = self.address[1]
        response = await self.request(
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{port}".encode()),
                (b":path", path.encode()),
            ],
            wait_s=wait_s,
        )
        return None if response is None else int(dict(response[0])[b":status"])

    def close(self) -> None:
        self.sock.close()
