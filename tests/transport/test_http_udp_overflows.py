"""The GC's HTTP/3 socket: the kernel buffers it asks for and its receive-buffer overflows
counted under ``udp_receive_overflows`` (the GC's /metrics shows them), as the WebTransport
endpoint's are (test_udp_socket.py)."""

from __future__ import annotations

import pathlib
import socket
import sys
from collections import Counter

import pytest
import trio
import trio.testing

from darktower.transport.http_server import HttpLimits
from tests.transport._http_listener import h3_get, serving
from tests.transport._proc_udp import udp_socket_line

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_RXQ_OVFL and /proc/net/udp are Linux's"
)


def _udp_socket_line(port: int) -> list[str]:
    """The listener's line in /proc/net/udp."""
    return udp_socket_line(lambda fields: int(fields[1].split(":")[1], 16) == port, f"port {port}")


async def test_overflows_of_the_http3_socket_are_counted(cert_files: tuple[str, str]) -> None:
    counters: Counter[str] = Counter()
    # The kernel's smallest receive buffer: a few datagrams.
    limits = HttpLimits(quic_udp_receive_buffer=4096)
    async with serving(cert_files, limits, counters) as port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # One step without a checkpoint: the listener does not read between the sends.
            for _ in range(100):
                sender.sendto(b"\x00" * 1000, ("127.0.0.1", port))
            await trio.testing.wait_all_tasks_blocked()  # what fitted was read
            # Those datagrams were queued before the drops: they carry no count.
            assert counters["udp_receive_overflows"] == 0
            sender.sendto(b"\x00" * 1000, ("127.0.0.1", port))  # carries the count
            await trio.testing.wait_all_tasks_blocked()
            # (The kernel's count, read once the last datagram was read: all were delivered.)
            dropped = int(_udp_socket_line(port)[-1])
            assert dropped > 50
            assert counters["udp_receive_overflows"] == dropped
        # The listener serves on: the garbage was dropped, a request is answered.
        assert await h3_get(port) == 200
        # The request's own datagrams may overflow the small buffer too: counted as the kernel
        # counts them (once a later datagram is read), never more.
        assert dropped <= counters["udp_receive_overflows"] <= int(_udp_socket_line(port)[-1])


def _receive_buffer(port: int) -> tuple[int, int]:
    """The receive buffer size of this process's UDP socket on ``port`` and what Linux grants
    at most (net.core.rmem_max)."""
    inode = _udp_socket_line(port)[9]
    for fd in pathlib.Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target) == f"socket:[{inode}]":
            sock = socket.socket(fileno=int(fd.name))
            try:
                granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            finally:
                sock.detach()  # the listener owns it
            rmem_max = int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
            return granted, rmem_max
    raise AssertionError("the listener's socket is not among this process's files")


async def test_the_http3_socket_asks_for_larger_buffers(cert_files: tuple[str, str]) -> None:
    limits = HttpLimits()
    async with serving(cert_files, limits, Counter()) as port:
        granted, rmem_max = _receive_buffer(port)
    # Linux reports twice what it keeps for data, capped at net.core.rmem_max.
    assert granted == 2 * min(limits.quic_udp_receive_buffer, rmem_max)
