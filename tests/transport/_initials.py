"""Real QUIC Initial datagrams, made by aioquic client connections that are then abandoned:
what a flood of spoofed Initials looks like to a server."""

from __future__ import annotations

import socket

import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection


def client_initial(port: int, token: bytes = b"") -> bytes:
    """The first datagram (a padded Initial with a ClientHello) of a new client connection."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="127.0.0.1")
    config.token = token
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


async def udp_socket(host: str) -> trio.socket.SocketType:
    """A UDP socket bound to ``host`` (any 127.0.0.x is a local address on Linux)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock
