"""What the endpoint asks of its UDP socket: buffer sizes, an overflow count, batched sends.

- Buffers. Each socket asks for a larger kernel receive and send buffer than the default
  (~208 KiB on Linux, which overflows in bursts of media: a datagram dropped there is a QUIC
  loss). Linux caps what it grants at net.core.rmem_max / wmem_max and reports twice what it
  keeps for data (the other half is its bookkeeping); the sizes granted are logged once per
  process for each pair of sizes asked (the GC's HTTP/3 socket asks for less than the
  endpoints).
- Overflows. On Linux, SO_RXQ_OVFL makes every datagram read with recvmsg carry the number of
  datagrams the socket's receive buffer has dropped so far (a cumulative count, present once
  it is not zero); the endpoint adds what it grew by to its counters.
- Batched sends. Several datagrams to one address leave in one system call with UDP GSO (a
  UDP_SEGMENT control message: the kernel cuts the buffer into datagrams of that size, the
  last one may be smaller). Where GSO is missing (not Linux, or the kernel or the device
  refuses it at first use) the datagrams go one ``sendto`` each.
- Batched receives. With UDP_GRO on (Linux), the kernel may hand several datagrams of one
  sender in one read, their segment size in a UDP_GRO control message (datagrams a GSO send
  made, or that the network device merged); the endpoint cuts them apart again.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

logger = logging.getLogger(__name__)

LINUX = sys.platform.startswith("linux")
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RXQ_OVFL: int | None = getattr(socket, "SO_RXQ_OVFL", 40 if LINUX else None)
# Segments one GSO send may carry: the kernel's UDP_MAX_SEGMENTS (64 since Linux 4.18).
GSO_MAX_SEGMENTS = 64
# Bytes one GSO send may carry: the largest UDP payload of an IPv4 datagram.
GSO_MAX_BYTES = 65_507
# Errors of a GSO send that mean the path cannot do GSO at all (no kernel support, a device
# without checksum offload answers EIO): the endpoint stops asking and sends one by one.
GSO_UNAVAILABLE = frozenset(
    {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP}
)
# Room for the control messages of a receive: the overflow count and the GRO segment size.
RECEIVE_ANCBUF = 2 * socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0

# The (receive, send) sizes asked whose grant was logged: once each per process.
_buffers_logged: set[tuple[int, int]] = set()


def gso_supported(sock: socket.socket) -> bool:
    """Whether GSO may be tried on ``sock`` (Linux, a sendmsg, an IP datagram socket)."""
    return (
        LINUX
        and hasattr(sock, "sendmsg")
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_DGRAM
    )


def tune_socket(
    sock: socket.socket, receive_buffer: int, send_buffer: int, *, gro: bool = True
) -> tuple[int, int]:
    """Ask for the buffer sizes (best effort: a kernel that refuses keeps its own), the
    overflow count and (``gro``: for a reader that cuts merged reads apart) UDP GRO; return
    the receive and send buffer sizes the kernel reports."""
    for option, size in ((socket.SO_RCVBUF, receive_buffer), (socket.SO_SNDBUF, send_buffer)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass
    if SO_RXQ_OVFL is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
    if gro and gso_supported(sock):
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            pass  # a kernel before 5.0: one datagram per read
    granted = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )
    _log_once(receive_buffer, send_buffer, granted)
    return granted


def _log_once(receive_buffer: int, send_buffer: int, granted: tuple[int, int]) -> None:
    if (receive_buffer, send_buffer) in _buffers_logged:
        return
    _buffers_logged.add((receive_buffer, send_buffer))
    # Linux reports twice the size it keeps for data.
    data = tuple(g // 2 for g in granted) if LINUX else granted
    capped = data[0] < receive_buffer or data[1] < send_buffer
    # Info, not a warning: most kernels cap it by default; /metrics shows what overflows.
    logger.info(
        "UDP socket buffers: receive %d bytes asked, %d granted; send %d asked, %d granted%s",
        receive_buffer,
        data[0],
        send_buffer,
        data[1],
        " (capped by net.core.rmem_max / net.core.wmem_max)" if capped and LINUX else "",
    )


def read_ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, int]:
    """From a read's control messages: the socket's cumulative receive-buffer drop count (None
    when absent) and the size of the datagrams the read holds (0: one datagram)."""
    drops = None
    segment = 0
    for level, kind, data in ancdata:
        if len(data) < 4:
            continue
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
            drops = int.from_bytes(data[:4], sys.byteorder)
        elif level == SOL_UDP and kind == UDP_GRO:
            segment = int.from_bytes(data[:4], sys.byteorder, signed=True)
    return drops, segment


def drops_grown(drops: int, seen: int) -> int:
    """What a socket's cumulative drop count (32 bits: it wraps around) grew by since
    ``seen``."""
    return (drops - seen) % (1 << 32)


def gso_groups(datagrams: Sequence[bytes]) -> Iterator[list[bytes]]:
    """Cut ``datagrams`` into runs, in order, each of which one GSO send carries: every one
    as long as the first except the last, which may be shorter, within the kernel's caps."""
    group: list[bytes] = []
    size = total = 0
    for data in datagrams:
        n = len(data)
        if group and (n > size or total + n > GSO_MAX_BYTES or len(group) == GSO_MAX_SEGMENTS):
            yield group
            group = []
        if not group:
            size, total = n, 0
        group.append(data)
        total += n
        if n < size:  # a shorter one ends its run
            yield group
            group = []
    if group:
        yield group


def send_segments(sock: socket.socket, group: list[bytes], addr: tuple[Any, ...]) -> None:
    """One GSO send of ``group`` (from ``gso_groups``, two datagrams or more) to ``addr``.
    Raises what the socket raises."""
    segment = len(group[0]).to_bytes(2, sys.byteorder)
    sock.sendmsg(group, [(SOL_UDP, UDP_SEGMENT, segment)], 0, addr)
