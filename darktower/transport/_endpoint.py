"""One UDP socket, many QUIC connections: batch reads, dispatch by connection ID, limits.

The reader task reads up to RECEIVE_BATCH datagrams per wake-up, hands each to its connection
(found by destination connection ID, never by address: issued IDs are routed from the moment
they are sent, retired ones forgotten), then processes the touched connections' events and
flushes each of them once; each datagram goes to the address aioquic names for it. So a
client whose address changes keeps its connection (QUIC migration, docs/protocol.md §13):
aioquic validates the new path and limits what is sent to it until then. A server endpoint
decides what a datagram for no known connection gets with its ``Admission`` (_admission.py:
caps, Retry, Version Negotiation); a client endpoint uses the same code with connections it
creates, and can move to a new socket (``rebind``).

Error boundary: an exception while one connection handles its datagrams or events closes that
connection (``Connection.fail``); the reader goes on with the others. Every refusal and close
by cause is counted in ``Endpoint.counters``.

A server endpoint also gives the heap back after handshakes (see ``HEAP_TRIM_INTERVAL_S``).

The socket asks for larger kernel buffers (``TransportLimits.udp_receive_buffer`` and
``udp_send_buffer``); datagrams its receive buffer dropped are counted as
``udp_receive_overflows``; ``send_many`` sends several datagrams to one address in one system
call where the kernel can (UDP GSO), and one read may return several datagrams of one sender
(UDP GRO), cut apart again (see _udp.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import trio
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import QuicHeader, pull_quic_header

from darktower.metrics import UDP_RECEIVE_OVERFLOWS

from ._admission import Admission, Admit
from ._config import MAX_UDP_PAYLOAD, RECEIVE_BATCH, TransportLimits
from ._connection import Connection
from ._core import load_core
from ._flusher import Flusher
from ._quic import CreditedQuicConnection
from ._timers import Timers
from ._udp import (
    GSO_UNAVAILABLE,
    RECEIVE_ANCBUF,
    drops_grown,
    gso_groups,
    gso_supported,
    read_ancillary,
    send_segments,
    tune_socket,
)

logger = logging.getLogger(__name__)

# A handshake allocates far more than the connection keeps (TLS buffers and transcripts, key
# derivations, packet buffers). After a burst of handshakes glibc holds the freed memory in
# its heap among the connections' long-lived allocations, so the RSS stays at the burst's
# peak (measured: ~30 KB per connection of 100 concurrent handshakes). When no handshake is
# left in progress, a server endpoint asks malloc to return its free pages to the system
# (malloc_trim), at most once per this many seconds (a trim walks the heap: milliseconds).
HEAP_TRIM_INTERVAL_S = 1.0
# Our connection IDs' length (the QUIC cores' default, 8 bytes), and the first byte of a short
# header packet: the header form bit clear, the fixed bit set (RFC 9000 §17.3).
CID_LENGTH = 8
_FORM_AND_FIXED = 0xC0
_SHORT_HEADER = 0x40
# As a plain int: ``flags & socket.MSG_TRUNC`` goes through IntFlag's Python-level __and__
# (1.7 µs, once per merged read).
_MSG_TRUNC = int(socket.MSG_TRUNC)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): the heap is left as the allocator keeps it
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_heap() -> None:
    """Return the C heap's free pages to the system, where the C library can (glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def make_udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Endpoint:
    """A UDP socket and the QUIC connections on it. ``run`` owns the reader and connections."""

    def __init__(
        self,
        sock: socket.socket,
        limits: TransportLimits,
        *,
        server_configuration: QuicConfiguration | None = None,
        on_connection: Callable[[Connection], None] | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self._sock = sock
        self.limits = limits
        self.core = load_core(limits.quic_core)  # aioquic or qh3 (_core.py)
        # The kernel's buffer sizes (as it reports them), and its receive buffer's drop count
        # (cumulative per socket) as last read.
        self.socket_buffers = tune_socket(sock, limits.udp_receive_buffer, limits.udp_send_buffer)
        self._drops_seen = 0
        # UDP GSO, until the kernel refuses it (then one sendto per datagram); GSO sends made.
        self.gso = gso_supported(sock)
        self.gso_sends = 0
        self.gro_reads = 0  # reads that held several datagrams (UDP GRO)
        # A client's server: its socket is connected to it, so that the kernel reports an ICMP
        # port unreachable (nobody listens there any more) as ECONNREFUSED.
        self._peer: NetworkAddress | None = None
        self._server_configuration = server_configuration
        self._on_connection = on_connection
        self.by_cid: dict[bytes, Connection] = {}
        self.connections: set[Connection] = set()
        self.handshaking: set[Connection] = set()
        # Refusals and closes by cause (see _admission.py, Connection.fail, the server).
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.admission = (
            None
            if server_configuration is None
            else Admission(limits, server_configuration.supported_versions, self.counters)
        )
        self.send_errors = 0
        self.flusher = Flusher()  # sends what the connections wrote, once per tick
        self.timers = Timers()  # wakes each connection at its time
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self.heap_trims = 0
        # Set when the last handshake in progress ends; the trim task waits on it.
        self._handshakes_idle = trio.Event()

    @property
    def refused_connections(self) -> int:
        """New connections refused by a cap (all causes)."""
        return sum(n for cause, n in self.counters.items() if cause.startswith("refused_"))

    @property
    def receive_overflows(self) -> int:
        """Datagrams the socket's kernel receive buffer dropped (seen so far)."""
        return self.counters[UDP_RECEIVE_OVERFLOWS]

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the socket, the reader, the flusher, the timers and every connection's task;
        report the bound address.

        Cancelled, every connection sends a CONNECTION_CLOSE best-effort and the socket is
        closed. Raises OSError from the socket.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.flusher.run)
                nursery.start_soon(self.timers.run)
                if self._server_configuration is not None:
                    nursery.start_soon(self._trim_heap_loop)
                task_status.started(self.local_address)
                await self._read_loop()
        finally:
            self._nursery = None
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    # --- connections ----------------------------------------------------------------------
    def connect(self, addr: NetworkAddress, configuration: QuicConfiguration) -> Connection:
        """Start a client connection to ``addr``; its task runs in this endpoint's nursery."""
        assert self._nursery is not None, "the endpoint is not running"
        quic = self.core.connection_class(
            configuration=configuration,
            consumed=lambda _sid: None,
            window=self.limits.stream_receive_window,
        )
        self._peer = addr
        self._sock.connect(addr)
        conn = self._adopt(quic)
        quic.connect(addr, now=trio.current_time())
        conn.flush()
        return conn

    def _adopt(
        self, quic: CreditedQuicConnection, *cids: bytes, admit: Admit | None = None
    ) -> Connection:
        assert self._nursery is not None
        conn = Connection(self, quic, self.limits)
        conn.admit = admit
        self.connections.add(conn)
        self.handshaking.add(conn)
        try:
            for cid in (*cids, quic.host_cid):
                self.add_cid(cid, conn)
            if self._on_connection is not None:
                self._on_connection(conn)
            self._nursery.start_soon(conn.run)
        except BaseException:
            self.forget(conn)  # releases what admission took for it
            raise
        return conn

    def add_cid(self, cid: bytes, conn: Connection) -> None:
        if conn in self.connections:  # not after the connection was forgotten
            self.by_cid[cid] = conn
            conn.cids.add(cid)

    def remove_cid(self, cid: bytes, conn: Connection) -> None:
        if self.by_cid.get(cid) is conn:
            del self.by_cid[cid]
        conn.cids.discard(cid)

    def handshake_done(self, conn: Connection) -> None:
        self._end_handshake(conn)

    def _end_handshake(self, conn: Connection) -> None:
        if conn in self.handshaking:
            self.handshaking.discard(conn)
            if conn.admit is not None and self.admission is not None:
                self.admission.handshake_ended(conn.admit)
            if not self.handshaking:
                self._handshakes_idle.set()

    async def _trim_heap_loop(self) -> None:
        while True:
            await self._handshakes_idle.wait()
            self._handshakes_idle = trio.Event()
            release_free_heap()
            self.heap_trims += 1
            # Handshakes ending meanwhile set the event again: one trim follows this pause.
            await trio.sleep(HEAP_TRIM_INTERVAL_S)

    def forget(self, conn: Connection) -> None:
        for cid in conn.cids:
            if self.by_cid.get(cid) is conn:
                del self.by_cid[cid]
        conn.cids.clear()
        self._end_handshake(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            # Released under the address it was admitted from, even after a migration.
            if conn.admit is not None and self.admission is not None:
                self.admission.connection_ended(conn.admit)

    # --- I/O ------------------------------------------------------------------------------
    def rebind(self) -> tuple[str, int]:
        """Move to a new UDP socket on the same host and a new port, as after a network
        change; return its address. The old socket is closed (what was queued on it is lost,
        as in flight). Client side: the server sees the client's connections arrive from the
        new address (``Connection.migrate`` also makes them say so at once)."""
        if self._closed:
            raise trio.ClosedResourceError("the endpoint is closed")
        old = self._sock
        self._sock = make_udp_socket(self.local_address[0], 0)
        tune_socket(self._sock, self.limits.udp_receive_buffer, self.limits.udp_send_buffer)
        self._drops_seen = 0  # the count is the new socket's
        if self._peer is not None:
            self._sock.connect(self._peer)
        trio.lowlevel.notify_closing(old)  # the reader waiting on it moves to the new one
        old.close()
        return self.local_address

    def send(self, data: bytes, addr: NetworkAddress) -> None:
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            # The kernel's buffer is full: dropped like a lost packet, QUIC retransmits.
            self.send_errors += 1
        except OSError as exc:
            self.send_errors += 1  # unreachable peer etc.: the connection will time out
            if exc.errno == errno.ECONNREFUSED:
                self._peer_unreachable()

    def send_many(self, datagrams: Sequence[bytes], addr: NetworkAddress) -> None:
        """Send ``datagrams`` to ``addr`` in this order, as few system calls as the kernel
        allows (UDP GSO: runs of equal sizes, each ended by at most one shorter datagram, go
        in one call), else one ``sendto`` each. Errors are counted as ``send`` counts them."""
        if self._closed:
            return
        if not self.gso or len(datagrams) < 2:
            for data in datagrams:
                self.send(data, addr)
            return
        for group in gso_groups(datagrams):
            if len(group) == 1 or not self.gso:
                for data in group:
                    self.send(data, addr)
                continue
            try:
                send_segments(self._sock, group, addr)
                self.gso_sends += 1
            except (BlockingIOError, InterruptedError):
                self.send_errors += len(group)  # the kernel's buffer is full: lost packets
            except OSError as exc:
                if exc.errno in GSO_UNAVAILABLE and not self.gso_sends:
                    # Refused before any GSO send went: the kernel has none. Once one went,
                    # a refusal is this destination's (a port 0, a small path MTU, IPsec):
                    # that group goes one datagram at a time, GSO stays for the others.
                    self.gso = False
                    logger.info("UDP GSO unavailable (%s): one send per datagram", exc)
                if exc.errno in GSO_UNAVAILABLE or exc.errno == errno.EMSGSIZE:
                    for data in group:
                        self.send(data, addr)
                    continue
                self.send_errors += len(group)
                if exc.errno == errno.ECONNREFUSED:
                    self._peer_unreachable()

    def send_batch(self, datagrams: Iterable[tuple[bytes, NetworkAddress]]) -> None:
        """Send (datagram, address) pairs in order: each run to one address by ``send_many``."""
        run: list[bytes] = []
        run_addr: NetworkAddress = ("", 0)
        for data, addr in datagrams:
            if run and addr != run_addr:
                self.send_many(run, run_addr)
                run = []
            run_addr = addr
            run.append(data)
        if run:
            self.send_many(run, run_addr)

    def _count_overflows(self, drops: int) -> None:
        if drops != self._drops_seen:
            # A 32-bit count: one below what was seen has wrapped around.
            self.counters[UDP_RECEIVE_OVERFLOWS] += drops_grown(drops, self._drops_seen)
            self._drops_seen = drops

    async def _read_loop(self) -> None:
        while True:
            sock = self._sock
            recvmsg = sock.recvmsg
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                if sock is self._sock:
                    raise
                continue  # rebound: read the new socket
            now = trio.current_time()
            touched: dict[Connection, None] = {}
            received = 0
            while received < RECEIVE_BATCH:
                received += 1
                try:
                    data, ancdata, flags, addr = recvmsg(MAX_UDP_PAYLOAD, RECEIVE_ANCBUF)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.ECONNREFUSED:
                        self._peer_unreachable()  # ICMP port unreachable, on a client
                    continue
                if ancdata:
                    drops, segment = read_ancillary(ancdata)
                    if drops is not None:
                        self._count_overflows(drops)
                    if 0 < segment < len(data):  # several datagrams in one read (GRO)
                        self.gro_reads += 1
                        received += (len(data) - 1) // segment
                        end = len(data)
                        if flags & _MSG_TRUNC:  # a merged read over 64 KiB: its cut tail
                            end -= end % segment  # is lost like a lost packet
                        for start in range(0, end, segment):
                            conn = self._dispatch(data[start : start + segment], addr, now)
                            if conn is not None:
                                touched[conn] = None
                        continue
                conn = self._dispatch(data, addr, now)
                if conn is not None:
                    touched[conn] = None
            for conn in touched:
                try:
                    conn.after_receive()
                except Exception as exc:
                    conn.fail(exc)

    def _peer_unreachable(self) -> None:
        """A client's server answered with ICMP port unreachable: its connection ends unless
        a packet from the server arrives soon after (``Connection.peer_unreachable``)."""
        if self._peer is not None:
            for conn in list(self.connections):
                conn.peer_unreachable(trio.current_time())

    def _dispatch(self, data: bytes, addr: NetworkAddress, now: float) -> Connection | None:
        # Nearly every datagram is a short header packet to a connection we have: its ID is
        # bytes 1-8, read without aioquic's header parser (Python, about 3 µs a datagram).
        # Anything else, or an ID we do not have, goes the whole way, as before.
        conn = None
        if len(data) > CID_LENGTH and data[0] & _FORM_AND_FIXED == _SHORT_HEADER:
            conn = self.by_cid.get(data[1 : CID_LENGTH + 1])
        if conn is None:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
            except ValueError:
                return None
            conn = self.by_cid.get(header.destination_cid)
            if conn is None:
                conn = self._maybe_accept(data, header, addr, now)
                if conn is None:
                    return None
        try:
            conn.receive(data, addr, now)
        except Exception as exc:
            conn.fail(exc)
        return conn

    def _maybe_accept(
        self, data: bytes, header: QuicHeader, addr: NetworkAddress, now: float
    ) -> Connection | None:
        config = self._server_configuration
        admission = self.admission
        if config is None or admission is None:
            return None
        try:
            verdict = admission.decide(
                header,
                len(data),
                addr,
                now,
                connections=len(self.connections),
                handshakes=len(self.handshaking),
            )
        except Exception as exc:  # a header our admission code cannot handle: dropped
            self._drop(exc, addr)
            return None
        if verdict is None:
            return None
        if isinstance(verdict, bytes):
            self.send(verdict, addr)  # Version Negotiation or Retry
            return None
        try:
            quic = self.core.connection_class(
                configuration=config,
                original_destination_connection_id=verdict.original_destination_cid,
                retry_source_connection_id=verdict.retry_source_cid,
                consumed=lambda _sid: None,
                window=self.limits.stream_receive_window,
            )
        except Exception as exc:  # the datagram is dropped; what admission took is released
            admission.handshake_ended(verdict)
            admission.connection_ended(verdict)
            self._drop(exc, addr)
            return None
        try:
            conn = self._adopt(quic, header.destination_cid, admit=verdict)
        except Exception as exc:  # _adopt forgot the connection, which released its slots
            self._drop(exc, addr)
            return None
        return conn

    def _drop(self, exc: Exception, addr: NetworkAddress) -> None:
        self.counters[f"peer_error:{type(exc).__name__}"] += 1
        logger.warning("dropped a datagram from %s: %s: %s", addr[0], type(exc).__name__, exc)
