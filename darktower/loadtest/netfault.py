"""A UDP proxy on loopback that injects network faults, for tests and benchmarks.

Put it between a client and a service: the client sends to ``proxy.address`` instead of the
service, and the proxy forwards both ways while it can pause (a blackout), drop a fraction of
datagrams, add delay, cap the bit rate, and rebind its service-side port (the service then sees
a NAT rebinding of the client)::

    async with open_udp_proxy(("127.0.0.1", service_port), seed=1) as proxy:
        host, port = proxy.address          # dial this instead of the service
        proxy.pause()                       # blackout: every datagram both ways is dropped
        proxy.resume()
        proxy.drop_ratio = 0.05             # per datagram, both ways, from the seeded source
        proxy.delay_s = 0.05                # one-way: the round trip grows by 2 x delay_s
        proxy.rate_bps = 2_000_000          # bits per second per direction; None = unlimited
        await proxy.rebind()                # new service-side UDP port, same client
        proxy.stats.to_service.forwarded    # counters per direction (DirectionStats)

For WebTransport, dial ``proxy.via(service_url)`` (the same URL, the proxy's host and port) with
the service's certificate hash pinned (``server_certificate_hashes``): hash pinning does not
check the host.

Each client address is a *flow* with its own service-side socket, like a NAT: several clients
may share one proxy (up to ``max_flows``; datagrams from further addresses are dropped and
counted in ``stats.refused``), a flow lasts as long as the proxy, and a client whose own port
changes appears to the service as a rebinding. Faults apply to every flow.

Delay and the rate cap model one link per flow and direction: a datagram leaves the link at
``max(arrival, link free) + size / rate`` and arrives ``delay_s`` later, in order. A setting
changed mid-run applies to datagrams arriving after the change; a pause also drops what is
queued when its turn comes. Each link's queue is bounded (``queue_datagrams``,
``queue_bytes``): a datagram arriving at a full queue is dropped and counted (``dropped_full``),
as a router's tail drop. Drops from a full kernel buffer or a send error are counted too
(``dropped_error``): nothing waits, so a slow side never stalls the proxy. Time is
``trio.current_time()``, so a ``MockClock`` drives delay and rate (give it an
``autojump_threshold`` of a few milliseconds so datagrams cross loopback before it jumps).

Tests wait on the counters, not on time: ``await proxy.wait_until(lambda s: ...)``. Cost: about
35 µs of CPU per datagram forwarded, so a few thousand datagrams per second take a fraction of
one core. Only loopback targets (127.0.0.0/8, ::1) are accepted.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

# Flows (client addresses) one proxy serves; datagrams from further addresses are dropped and
# counted (stats.refused). Bounds the sockets and tasks a proxy holds.
MAX_FLOWS = 64
# Datagrams waiting on one link (one flow, one direction) for their delay or the rate cap;
# beyond it an arriving datagram is dropped and counted (dropped_full). Holds a 0.5 s delay of
# a few thousand datagrams per second.
QUEUE_DATAGRAMS = 4096
# Bytes waiting on one link, as above.
QUEUE_BYTES = 4 * 1024 * 1024
# Largest UDP payload read (a longer one is truncated by the kernel, as the services' own
# sockets do).
MAX_UDP_PAYLOAD = 65_535
# Datagrams handled per wake-up of a reader before it yields to other tasks (fairness).
RECEIVE_BATCH = 64
# Kernel receive buffer asked for per socket (the kernel caps it at net.core.rmem_max): a burst
# of a few thousand datagrams per second waits there while the proxy catches up.
SOCKET_RCVBUF = 1024 * 1024

Address = tuple[str, int]


@attrs.define
class DirectionStats:
    """Counters of one direction, summed over flows. Every datagram read is counted once in
    ``forwarded`` or one ``dropped_*`` (or is still queued)."""

    received: int = 0
    forwarded: int = 0
    forwarded_bytes: int = 0
    dropped_paused: int = 0
    dropped_random: int = 0
    dropped_full: int = 0
    dropped_error: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_paused + self.dropped_random + self.dropped_full + self.dropped_error


@attrs.define
class ProxyStats:
    to_service: DirectionStats = attrs.Factory(DirectionStats)
    to_client: DirectionStats = attrs.Factory(DirectionStats)
    flows: int = 0
    # Datagrams from a client address beyond max_flows (or when no socket could be opened).
    refused: int = 0
    rebinds: int = 0


def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is an IP literal in 127.0.0.0/8 or ::1."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address (loopback only): {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"not a loopback address: {host!r}")


def _udp_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        sock.setblocking(False)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _close(sock: socket.socket) -> None:
    # Wakes a reader blocked on it with ClosedResourceError before the descriptor goes.
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
    sock.close()


def _address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return (str(host), int(port))


class _Link:
    """One direction of one flow: drop or forward each datagram, through a bounded queue when
    a delay or a rate cap holds it."""

    def __init__(
        self, proxy: UdpProxy, stats: DirectionStats, send: Callable[[bytes], None]
    ) -> None:
        self._proxy = proxy
        self._stats = stats
        self._send = send
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued_bytes = 0
        self._free_at = -math.inf  # when the rate-capped link finishes its last datagram
        self._last_due = -math.inf
        self._wake = trio.lowlevel.ParkingLot()

    def offer(self, data: bytes) -> None:
        proxy, stats = self._proxy, self._stats
        stats.received += 1
        if proxy.paused:
            stats.dropped_paused += 1
            return
        if proxy._drop_ratio and proxy._rng.random() < proxy._drop_ratio:
            stats.dropped_random += 1
            return
        rate = proxy._rate_bps
        if not self._queue and rate is None and not proxy._delay_s:
            self._forward(data)
            return
        if len(self._queue) >= proxy.queue_datagrams or (
            self._queued_bytes + len(data) > proxy.queue_bytes
        ):
            stats.dropped_full += 1
            return
        now = trio.current_time()
        depart = now
        if rate is not None:
            depart = max(now, self._free_at) + len(data) * 8 / rate
            self._free_at = depart
        due = max(depart + proxy._delay_s, self._last_due)  # in order, even if delay shrinks
        self._last_due = due
        self._queue.append((due, data))
        self._queued_bytes += len(data)
        self._wake.unpark_all()

    def _forward(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:  # a full kernel buffer, or an ICMP error from an earlier datagram
            self._stats.dropped_error += 1
            return
        self._stats.forwarded += 1
        self._stats.forwarded_bytes += len(data)

    async def run(self) -> None:
        """Send queued datagrams when they are due; runs until cancelled."""
        queue = self._queue
        while True:
            if not queue:
                await self._wake.park()
                continue
            await trio.sleep_until(queue[0][0])
            # Everything due goes in one wake-up: at a few thousand datagrams per second one
            # sleep each would cost more than the sending.
            now = trio.current_time()
            while queue and queue[0][0] <= now:
                _due, data = queue.popleft()
                self._queued_bytes -= len(data)
                if self._proxy.paused:
                    self._stats.dropped_paused += 1
                else:
                    self._forward(data)
            self._proxy._counted()


class _Flow:
    """One client address: its service-side socket and a link each way."""

    def __init__(self, proxy: UdpProxy, client: Address, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_service = _Link(proxy, proxy.stats.to_service, self._send_to_service)
        self.to_client = _Link(proxy, proxy.stats.to_client, self._send_to_client)
        self._listen = proxy._listen

    def _send_to_service(self, data: bytes) -> None:
        self.upstream.send(data)

    def _send_to_client(self, data: bytes) -> None:
        self._listen.sendto(data, self.client)


class UdpProxy:
    """The proxy's state and controls; made by ``open_udp_proxy``, which owns its tasks."""

    def __init__(
        self,
        target: Address,
        *,
        seed: int | None,
        queue_datagrams: int,
        queue_bytes: int,
        max_flows: int,
    ) -> None:
        host, port = target
        check_loopback(host)
        self.target = (host, port)
        self._listen = _udp_socket(
            "::1" if ipaddress.ip_address(host).version == 6 else "127.0.0.1"
        )
        self._nursery: trio.Nursery | None = None
        self.address = _address(self._listen)
        self.stats = ProxyStats()
        self.queue_datagrams = queue_datagrams
        self.queue_bytes = queue_bytes
        self.max_flows = max_flows
        self.paused = False
        self._rng = random.Random(seed)
        self._drop_ratio = 0.0
        self._delay_s = 0.0
        self._rate_bps: float | None = None
        self._flows: dict[Address, _Flow] = {}
        self._changed = trio.lowlevel.ParkingLot()

    # --- faults -------------------------------------------------------------------------------
    def pause(self) -> None:
        """Blackout: every datagram, both ways, is dropped (and counted) until resume()."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    @property
    def drop_ratio(self) -> float:
        """Fraction of datagrams dropped at random, each way (0..1), from the seeded source."""
        return self._drop_ratio

    @drop_ratio.setter
    def drop_ratio(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"drop_ratio must be in 0..1: {value!r}")
        self._drop_ratio = float(value)

    @property
    def delay_s(self) -> float:
        """Added one-way delay, each direction."""
        return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        if not value >= 0.0:
            raise ValueError(f"delay_s must be >= 0: {value!r}")
        self._delay_s = float(value)

    @property
    def rate_bps(self) -> float | None:
        """Bit rate cap per flow and direction (UDP payload bits per second); None: no cap."""
        return self._rate_bps

    @rate_bps.setter
    def rate_bps(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"rate_bps must be > 0 or None: {value!r}")
        self._rate_bps = None if value is None else float(value)

    async def rebind(self) -> None:
        """Talk to the service from a new UDP port, for every flow: the service sees each
        client's address change (a NAT rebinding). Datagrams the service sends to the old port
        afterwards are lost, as behind a real NAT. Flows that start later get fresh ports too."""
        assert self._nursery is not None, "rebind() of a proxy that is not running"
        for flow in self._flows.values():
            new = self._open_upstream()
            old, flow.upstream = flow.upstream, new
            self._nursery.start_soon(self._read_upstream, flow, new)
            _close(old)
        self.stats.rebinds += 1
        await trio.lowlevel.checkpoint()

    def via(self, url: str) -> str:
        """``url`` (``https://service:port/path?query``) with the proxy's host and port instead,
        for a client that must dial through the proxy (pin the certificate hash: see above)."""
        split = urllib.parse.urlsplit(url)
        host, port = self.address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urllib.parse.urlunsplit(split._replace(netloc=netloc))

    @property
    def upstream_addresses(self) -> list[Address]:
        """The service-side (host, port) of each flow, oldest flow first."""
        return [_address(flow.upstream) for flow in self._flows.values()]

    async def wait_until(self, predicate: Callable[[ProxyStats], bool]) -> None:
        """Return once ``predicate(stats)`` holds; re-checked whenever the counters change.

        A test's way to wait for the proxy to have seen (or dropped) some datagrams. Add your
        own timeout (``trio.fail_after``).
        """
        while not predicate(self.stats):
            await self._changed.park()

    def _counted(self) -> None:
        if self._changed:
            self._changed.unpark_all()

    # --- forwarding ---------------------------------------------------------------------------
    def _open_upstream(self) -> socket.socket:
        sock = _udp_socket(self.address[0])
        try:
            sock.connect(self.target)  # the kernel then drops datagrams from anyone else
        except BaseException:
            sock.close()
            raise
        return sock

    def _flow_for(self, client: Address) -> _Flow | None:
        flow = self._flows.get(client)
        if flow is not None:
            return flow
        if len(self._flows) >= self.max_flows:
            self.stats.refused += 1
            return None
        assert self._nursery is not None
        try:
            upstream = self._open_upstream()
        except OSError:  # out of descriptors or ports: this client is not served
            self.stats.refused += 1
            return None
        flow = _Flow(self, client, upstream)
        self._flows[client] = flow
        self.stats.flows += 1
        self._nursery.start_soon(flow.to_service.run)
        self._nursery.start_soon(flow.to_client.run)
        self._nursery.start_soon(self._read_upstream, flow, flow.upstream)
        return flow

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Forward until cancelled, then close every socket. Reports ``address`` when ready."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_clients)
                task_status.started(self.address)
        finally:
            self._nursery = None
            for flow in self._flows.values():
                _close(flow.upstream)
            _close(self._listen)

    async def _read_clients(self) -> None:
        def handle(data: bytes, source: Any) -> None:
            flow = self._flow_for((source[0], source[1]))
            if flow is not None:
                flow.to_service.offer(data)

        await _read_loop(self._listen, handle, self._counted)

    async def _read_upstream(self, flow: _Flow, sock: socket.socket) -> None:
        def handle(data: bytes, source: Any) -> None:
            if flow.upstream is sock:
                flow.to_client.offer(data)

        try:
            await _read_loop(sock, handle, self._counted)
        except trio.ClosedResourceError:
            pass  # rebound: the flow reads its new socket


async def _read_loop(
    sock: socket.socket, handle: Callable[[bytes, Any], None], after_batch: Callable[[], None]
) -> None:
    """Read datagrams into ``handle`` until cancelled or ``sock`` is closed."""
    buffer = bytearray(MAX_UDP_PAYLOAD)
    view = memoryview(buffer)
    while sock.fileno() >= 0:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(RECEIVE_BATCH):
            try:
                size, source = sock.recvfrom_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                continue  # an ICMP error from an earlier send (e.g. the service not up yet)
            handle(bytes(view[:size]), source)
        after_batch()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_udp_proxy(
    target: Address,
    *,
    seed: int | None = None,
    drop_ratio: float = 0.0,
    delay_s: float = 0.0,
    rate_bps: float | None = None,
    queue_datagrams: int = QUEUE_DATAGRAMS,
    queue_bytes: int = QUEUE_BYTES,
    max_flows: int = MAX_FLOWS,
) -> AsyncIterator[UdpProxy]:
    """Run a fault-injecting UDP proxy to ``target`` (a loopback (host, port)).

    Listens on a new port of the target's loopback family (127.0.0.1 or ::1), forwards until
    the block exits, then stops its tasks and closes its sockets. ``seed`` makes the random
    drops reproducible. Raises ValueError for a target that is not loopback (127.0.0.0/8, ::1)
    or a bad setting.
    """
    proxy = UdpProxy(
        target,
        seed=seed,
        queue_datagrams=queue_datagrams,
        queue_bytes=queue_bytes,
        max_flows=max_flows,
    )
    try:
        proxy.drop_ratio = drop_ratio
        proxy.delay_s = delay_s
        proxy.rate_bps = rate_bps
    except BaseException:
        _close(proxy._listen)
        raise
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
