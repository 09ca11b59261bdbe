"""The endpoint's UDP socket: the buffer sizes it asks for, its receive-buffer overflows counted
(and on /metrics), batched sends with UDP GSO and without it."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import socket
import sys

import pytest
import trio
import trio.testing

from darktower.metrics import Registry, count_refusals
from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    _endpoint,
    _udp,
)
from darktower.transport._config import UDP_RECEIVE_BUFFER, UDP_SEND_BUFFER
from darktower.transport._endpoint import Endpoint, make_udp_socket
from darktower.transport._udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, gso_groups

from ._proc_udp import udp_socket_line
from .conftest import start_server

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="SO_RXQ_OVFL and UDP GSO are Linux's")


def _kernel_max(name: str) -> int | None:
    path = pathlib.Path(f"/proc/sys/net/core/{name}")
    return int(path.read_text()) if path.exists() else None


def _reported(asked: int, cap_name: str) -> int:
    """What Linux reports for a buffer asked: twice the size, capped at net.core.*_max."""
    cap = _kernel_max(cap_name)
    return 2 * (asked if cap is None else min(asked, cap))


async def _idle(session: WebTransportSession, context: object) -> None:
    await session.wait_closed()


@linux_only
def test_buffer_sizes_asked_are_applied() -> None:
    limits = TransportLimits(udp_receive_buffer=96 * 1024, udp_send_buffer=80 * 1024)
    sock = make_udp_socket("127.0.0.1", 0)
    with sock:
        endpoint = Endpoint(sock, limits)
        assert endpoint.socket_buffers == (
            _reported(96 * 1024, "rmem_max"),
            _reported(80 * 1024, "wmem_max"),
        )
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == endpoint.socket_buffers[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == endpoint.socket_buffers[1]


@linux_only
async def test_a_server_and_a_rebound_socket_ask_the_default_buffers(
    dev_cert: TlsCredentials,
) -> None:
    expected = (_reported(UDP_RECEIVE_BUFFER, "rmem_max"), _reported(UDP_SEND_BUFFER, "wmem_max"))
    async with trio.open_nursery() as nursery:
        server, _ = await start_server(nursery, dev_cert, {"/s": Route(_idle)})
        endpoint = server.endpoint
        assert endpoint is not None
        assert endpoint.socket_buffers == expected
        endpoint.rebind()
        sock = endpoint._sock
        assert (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        ) == expected
        nursery.cancel_scope.cancel()


def test_granted_sizes_are_logged_once_for_each_size_asked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_udp, "_buffers_logged", set())
    caplog.set_level(logging.INFO, logger=_udp.__name__)
    with (
        make_udp_socket("127.0.0.1", 0) as a,
        make_udp_socket("127.0.0.1", 0) as b,
        make_udp_socket("127.0.0.1", 0) as c,
    ):
        Endpoint(a, TransportLimits(udp_receive_buffer=64 * 1024))
        Endpoint(b, TransportLimits(udp_receive_buffer=64 * 1024))
        Endpoint(c, TransportLimits())
    lines = [r.getMessage() for r in caplog.records if r.name == _udp.__name__]
    assert len(lines) == 2
    assert "receive 65536 bytes asked" in lines[0]
    assert f"receive {UDP_RECEIVE_BUFFER} bytes asked" in lines[1]


def _proc_drops(sock: socket.socket) -> int:
    """The socket's drop count in /proc/net/udp (the kernel's own figure, to compare)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    return int(udp_socket_line(lambda fields: fields[9] == inode, f"inode {inode}")[-1])


@linux_only
async def test_overflows_are_counted_when_the_reader_is_stopped() -> None:
    sock = make_udp_socket("127.0.0.1", 0)
    # The kernel's minimum receive buffer: a few datagrams.
    endpoint = Endpoint(sock, TransportLimits(udp_receive_buffer=4096))
    addr = endpoint.local_address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        # The reader is not running: the flood fills the buffer, the rest is dropped.
        for _ in range(100):
            sender.sendto(b"\x00" * 1000, addr)
        dropped = _proc_drops(sock)
        assert dropped > 50
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            await trio.testing.wait_all_tasks_blocked()  # what fitted was read
            # Those datagrams were queued before the drops: they carry no count.
            assert endpoint.receive_overflows == 0
            sender.sendto(b"\x00" * 1000, addr)
            await trio.testing.wait_all_tasks_blocked()
            assert endpoint.receive_overflows == dropped
            nursery.cancel_scope.cancel()
    assert endpoint.counters["udp_receive_overflows"] == dropped


@linux_only
async def test_a_second_flood_adds_its_own_drops() -> None:
    sock = make_udp_socket("127.0.0.1", 0)
    endpoint = Endpoint(sock, TransportLimits(udp_receive_buffer=4096))
    addr = endpoint.local_address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            seen = []
            for _ in range(2):
                # One step without a checkpoint: the reader does not run between the sends.
                for _ in range(100):
                    sender.sendto(b"\x00" * 1000, addr)
                await trio.testing.wait_all_tasks_blocked()
                sender.sendto(b"\x00" * 1000, addr)  # carries the count of the drops
                await trio.testing.wait_all_tasks_blocked()
                seen.append(endpoint.receive_overflows)
            assert seen[1] == _proc_drops(sock)
            assert 50 < seen[0] < seen[1] - 50
            nursery.cancel_scope.cancel()


def test_overflows_on_metrics_apart_from_refusals() -> None:
    registry = Registry()
    counters = {"refused_cap": 2, "udp_receive_overflows": 7}
    count_refusals(registry, counters)
    text = registry.render()
    assert "\ndarktower_transport_udp_receive_overflows_total 7\n" in text
    assert 'darktower_transport_refusals_total{cause="refused_cap"} 2' in text
    assert 'udp_receive_overflows"' not in text
    counters["udp_receive_overflows"] = 9  # read live
    assert "darktower_transport_udp_receive_overflows_total 9" in registry.render()


# --- batched sends -------------------------------------------------------------------------


def _datagrams() -> list[bytes]:
    sizes = [1200] * 12 + [300] + [1200] * 3 + [700, 700, 40] + [1200] * 70 + [5, 1200]
    return [i.to_bytes(2, "big") + os.urandom(n - 2) for i, n in enumerate(sizes)]


async def _receive(receiver: trio.socket.SocketType, count: int) -> list[bytes]:
    got = []
    with trio.fail_after(5):
        for _ in range(count):
            data, _ = await receiver.recvfrom(65_535)
            got.append(data)
    return got


async def _send_many_and_receive(endpoint: Endpoint, datagrams: list[bytes]) -> list[bytes]:
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver:
        await receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        endpoint.send_many(datagrams, receiver.getsockname())
        return await _receive(receiver, len(datagrams))


@linux_only
async def test_send_many_with_gso_delivers_every_datagram_in_order() -> None:
    datagrams = _datagrams()
    with make_udp_socket("127.0.0.1", 0) as sock:
        endpoint = Endpoint(sock, TransportLimits())
        assert endpoint.gso
        got = await _send_many_and_receive(endpoint, datagrams)
        assert got == datagrams
        assert endpoint.gso and endpoint.send_errors == 0
        # GSO runs: 12x1200+300 | 3x1200+700 | 700+40 | 54x1200 | 16x1200+5; the last alone.
        assert endpoint.gso_sends == 5


async def test_send_many_without_gso_sends_one_by_one() -> None:
    datagrams = _datagrams()
    with make_udp_socket("127.0.0.1", 0) as sock:
        endpoint = Endpoint(sock, TransportLimits())
        endpoint.gso = False
        got = await _send_many_and_receive(endpoint, datagrams)
        assert got == datagrams
        assert endpoint.gso_sends == 0 and endpoint.send_errors == 0


async def test_gso_refused_at_first_use_falls_back_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def refuse(sock: socket.socket, group: list[bytes], addr: object) -> None:
        calls.append(len(group))
        raise OSError(errno.EIO, "no checksum offload")

    monkeypatch.setattr(_endpoint, "send_segments", refuse)
    datagrams = _datagrams()
    with make_udp_socket("127.0.0.1", 0) as sock:
        endpoint = Endpoint(sock, TransportLimits())
        endpoint.gso = True
        got = await _send_many_and_receive(endpoint, datagrams)
        assert got == datagrams
        assert calls == [13] and not endpoint.gso and endpoint.send_errors == 0


async def test_a_refusal_after_gso_worked_is_that_destinations_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a GSO send went, a refusal (a peer at port 0, a small path MTU) sends that group
    one by one and leaves GSO on for everyone else."""
    calls = []

    def refuse(sock: socket.socket, group: list[bytes], addr: object) -> None:
        calls.append(len(group))
        raise OSError(errno.EINVAL, "invalid argument")

    monkeypatch.setattr(_endpoint, "send_segments", refuse)
    datagrams = _datagrams()
    with make_udp_socket("127.0.0.1", 0) as sock:
        endpoint = Endpoint(sock, TransportLimits())
        endpoint.gso, endpoint.gso_sends = True, 1
        got = await _send_many_and_receive(endpoint, datagrams)
        assert got == datagrams
        assert calls == [13, 4, 2, 54, 17] and endpoint.gso and endpoint.send_errors == 0


@linux_only
async def test_send_batch_keeps_order_across_addresses() -> None:
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b, make_udp_socket("127.0.0.1", 0) as sock:
        await a.bind(("127.0.0.1", 0))
        await b.bind(("127.0.0.1", 0))
        endpoint = Endpoint(sock, TransportLimits())
        to_a = [bytes([1, i]) * 600 for i in range(4)]
        to_b = [bytes([2, i]) * 600 for i in range(3)]
        endpoint.send_batch(
            [(d, a.getsockname()) for d in to_a[:2]]
            + [(d, b.getsockname()) for d in to_b]
            + [(d, a.getsockname()) for d in to_a[2:]]
        )
        assert await _receive(a, 4) == to_a
        assert await _receive(b, 3) == to_b
        assert endpoint.gso_sends == 3


def test_gso_groups_respect_the_kernel_caps() -> None:
    def sizes(lengths: list[int]) -> list[list[int]]:
        return [[len(d) for d in g] for g in gso_groups([b"x" * n for n in lengths])]

    assert sizes([]) == []
    assert sizes([1200, 1200, 100, 1200]) == [[1200, 1200, 100], [1200]]
    assert sizes([100, 1200]) == [[100], [1200]]  # a longer one starts a new run
    assert sizes([500, 500, 500]) == [[500, 500, 500]]
    per_send = GSO_MAX_BYTES // 1200
    assert sizes([1200] * 100) == [[1200] * per_send, [1200] * (100 - per_send)]
    assert sizes([10] * 150) == [[10] * GSO_MAX_SEGMENTS] * 2 + [[10] * 22]


@linux_only
async def test_a_gro_read_is_cut_into_its_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    datagrams = _datagrams()
    sock = make_udp_socket("127.0.0.1", 0)
    endpoint = Endpoint(sock, TransportLimits())
    gro = sock.getsockopt(_udp.SOL_UDP, _udp.UDP_GRO)  # 0 before Linux 5.0
    dispatched: list[bytes] = []

    def dispatch(data: bytes, addr: object, now: float) -> None:
        dispatched.append(data)

    monkeypatch.setattr(endpoint, "_dispatch", dispatch)
    with make_udp_socket("127.0.0.1", 0) as out:
        sender = Endpoint(out, TransportLimits())
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            sender.send_many(datagrams, endpoint.local_address)  # GSO: 5 sends, 1 sendto
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert dispatched == datagrams
    # Each GSO send arrives in one read on loopback, where the kernel supports UDP_GRO.
    assert sender.gso_sends == 5
    assert endpoint.gro_reads == (5 if gro else 0)
