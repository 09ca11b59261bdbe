"""A QUIC client and server exchanging datagrams in memory, with no socket: for tests of what
one packet or handshake holds (test_key_shares.py, test_stream_table.py)."""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection

SERVER = ("127.0.0.1", 4433)
CLIENT = ("127.0.0.1", 50000)


def exchange(client: QuicConnection, server: QuicConnection, now: float) -> None:
    """One round at ``now``: what the client has to send reaches the server, then back."""
    for data, _addr in client.datagrams_to_send(now=now):
        server.receive_datagram(data, CLIENT, now=now)
    for data, _addr in server.datagrams_to_send(now=now):
        client.receive_datagram(data, SERVER, now=now)
