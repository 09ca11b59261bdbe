"""Spoofed QUIC Initials and malformed datagrams, sent from loopback addresses other than
127.0.0.1 and never answered.

:class:`InitialForge` makes real client Initial datagrams: the ClientHellos come from aioquic
client ``QuicConnection`` objects; each datagram carries one of them under a fresh destination
connection ID (so a server sees a new connection attempt each time, decrypts it and starts a
TLS handshake). Building a ``QuicConnection`` per Initial costs ~4 ms (key generation); the
forge costs ~0.2 ms, so one process can flood at thousands per second.

:func:`flood` is synchronous (a separate process or a thread runs it)::

    python -m darktower.loadtest._flood --target 127.0.0.1:4433 --rate 500

prints ``{"ready": ...}`` once it is sending, stops at EOF or a line on stdin (or after
``--max-s``), and prints ``{"sent": N, "seconds": S, "per_s": R}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import attrs
from aioquic._buffer import Buffer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

from darktower.protocol.addresses import split_host_port

from ._loopback import ensure_loopback, spoofed_sources

# Real ClientHellos the forge rotates through (each costs one QuicConnection to make).
HELLOS = 4
# The flood's pacing tick: each tick sends what the rate owes since the start.
TICK_S = 0.005
# Receive buffer of a spoofed source: the server's answers are never read, so keep it small.
SOURCE_RCVBUF = 4096
# Longest datagram the fuzz sends (a QUIC server reads at most about this much).
MAX_FUZZ_DATAGRAM = 1500
QUIC_MIN_INITIAL = 1200


def _client_hello(server_name: str) -> tuple[int, bytes, bytes]:
    """(version, source CID, ClientHello) of one real aioquic client's first Initial."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    client = QuicConnection(configuration=config)
    now = time.monotonic()
    client.connect(("127.0.0.1", 9), now=now)
    datagram = client.datagrams_to_send(now=now)[0][0]
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    assert header.version is not None
    # Open it as the server would: the Initial keys derive from the destination CID.
    keys = CryptoPair()
    keys.setup_initial(header.destination_cid, is_client=False, version=header.version)
    _, payload, _ = keys.decrypt_packet(datagram[: header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    while not frames.eof():
        frame_type = frames.pull_uint_var()
        if frame_type == QuicFrameType.PADDING:
            continue
        if frame_type != QuicFrameType.CRYPTO:
            break
        frames.pull_uint_var()  # offset 0
        hello = frames.pull_bytes(frames.pull_uint_var())
        return header.version, header.source_cid, hello
    raise RuntimeError("aioquic's first Initial carried no CRYPTO frame")


class InitialForge:
    """Real client Initials under fresh destination connection IDs (see the module doc)."""

    def __init__(self, server_name: str = "127.0.0.1", hellos: int = HELLOS) -> None:
        self._hellos = [_client_hello(server_name) for _ in range(hellos)]
        self._next = 0

    def initial(self, dcid: bytes | None = None) -> bytes:
        """One 1,200-byte Initial datagram (a new connection attempt to any server)."""
        version, scid, hello = self._hellos[self._next]
        self._next = (self._next + 1) % len(self._hellos)
        dcid = dcid if dcid is not None else os.urandom(8)
        # The source CID must be the one in the hello's transport parameters.
        builder = QuicPacketBuilder(
            host_cid=scid,
            peer_cid=dcid,
            version=version,
            is_client=True,
            max_datagram_size=QUIC_MIN_INITIAL,
        )
        keys = CryptoPair()
        keys.setup_initial(dcid, is_client=True, version=version)
        builder.start_packet(QuicPacketType.INITIAL, keys)
        buf = builder.start_frame(QuicFrameType.CRYPTO)
        buf.push_uint_var(0)
        buf.push_uint16(len(hello) | 0x4000)
        buf.push_bytes(hello)
        datagrams, _ = builder.flush()
        return datagrams[0]


def fuzz_datagrams(rng: random.Random, forge: InitialForge) -> Iterator[tuple[str, bytes]]:
    """Endless (kind, datagram): random bytes and mutated QUIC packets of every header form."""

    def rand(n: int) -> bytes:
        return rng.randbytes(n)

    def flipped(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)

    kinds: list[tuple[str, Callable[[], bytes]]] = [
        ("random", lambda: rand(rng.randint(1, MAX_FUZZ_DATAGRAM))),
        ("empty", lambda: b""),
        ("initial-bitflips", lambda: flipped(forge.initial())),
        ("initial-truncated", lambda: forge.initial()[: rng.randint(1, QUIC_MIN_INITIAL - 1)]),
        ("initial-random-tail", lambda: forge.initial() + rand(rng.randint(1, 300))),
        ("initial-random-payload", lambda: forge.initial()[:30] + rand(QUIC_MIN_INITIAL - 30)),
        (
            "initial-long-dcid",  # a DCID length over QUIC v1's 20
            lambda: b"\xc0\x00\x00\x00\x01" + bytes([rng.randint(21, 255)]) + rand(1194),
        ),
        (
            "unknown-version",  # Version Negotiation territory
            lambda: b"\xc0" + rand(4) + b"\x08" + rand(8) + b"\x08" + rand(8) + rand(1178),
        ),
        (
            "short-unknown-version",
            lambda: b"\xc0" + rand(4) + b"\x08" + rand(8) + b"\x08" + rand(rng.randint(0, 40)),
        ),
        (
            "version-negotiation",
            lambda: b"\x80\x00\x00\x00\x00\x08" + rand(8) + b"\x08" + rand(8) + rand(12),
        ),
        ("short-header", lambda: bytes([0x40 | rng.randrange(64)]) + rand(rng.randint(8, 1400))),
        ("retry", lambda: b"\xf0\x00\x00\x00\x01\x08" + rand(8) + b"\x08" + rand(8) + rand(40)),
        (
            "handshake",
            lambda: b"\xe0\x00\x00\x00\x01\x08" + rand(8) + b"\x08" + rand(8) + rand(900),
        ),
        ("zero-rtt", lambda: b"\xd0\x00\x00\x00\x01\x08" + rand(8) + b"\x08" + rand(8) + rand(900)),
    ]
    while True:
        kind, make = rng.choice(kinds)
        yield kind, make()


class SpoofedSources:
    """Non-blocking UDP sockets bound to 127.0.0.2, 127.0.0.3, ...: what is sent from them
    looks like it comes from other machines, and what the server answers is never read."""

    def __init__(self, count: int) -> None:
        self._socks: list[socket.socket] = []
        try:
            for host in spoofed_sources(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOURCE_RCVBUF)
                sock.setblocking(False)
                sock.bind((host, 0))
        except BaseException:
            self.close()
            raise
        self._next = 0
        self.dropped = 0

    def send(self, data: bytes, target: tuple[str, int]) -> bool:
        """Send from the next source; False if the kernel dropped it (buffer full)."""
        sock = self._socks[self._next]
        self._next = (self._next + 1) % len(self._socks)
        try:
            sock.sendto(data, target)
        except OSError:  # full buffer, or an ICMP error from an earlier datagram
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()


@attrs.frozen
class FloodResult:
    sent: int
    seconds: float
    dropped: int

    @property
    def per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def check_targets(targets: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The targets with loopback IP literals; raises NotLoopback for any other."""
    return [(ensure_loopback(host), port) for host, port in targets]


def flood(
    targets: Sequence[tuple[str, int]],
    rate: float,
    *,
    sources: int = 32,
    stop: threading.Event,
    max_s: float = 600.0,
    forge: InitialForge | None = None,
    on_start: Callable[[], None] | None = None,
) -> FloodResult:
    """Send spoofed Initials at ``rate`` per second in all (round-robin over ``targets`` and
    ``sources``) until ``stop`` is set or ``max_s`` has passed. Blocks the calling thread."""
    targets = check_targets(targets)
    forge = forge or InitialForge()
    spoofed = SpoofedSources(sources)
    sent = 0
    try:
        if on_start is not None:
            on_start()
        started = time.monotonic()
        turn = 0
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= max_s:
                break
            owed = int(rate * elapsed) - sent
            for _ in range(min(owed, int(rate * 0.1) + 1)):  # never a burst over 100 ms' worth
                if spoofed.send(forge.initial(), targets[turn % len(targets)]):
                    sent += 1
                turn += 1
            stop.wait(TICK_S)
        return FloodResult(sent, time.monotonic() - started, spoofed.dropped)
    finally:
        spoofed.close()


def _target(text: str) -> tuple[str, int]:
    host, port = split_host_port(text)  # ValueError: argparse reports a bad --target
    return ensure_loopback(host), port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m darktower.loadtest._flood",
        description="Spoofed QUIC Initials from 127.0.0.2... at a rate, to loopback targets.",
    )
    parser.add_argument("--target", action="append", type=_target, required=True)
    parser.add_argument("--rate", type=float, default=500.0, help="Initials per second in all")
    parser.add_argument("--sources", type=int, default=32, help="spoofed source addresses")
    parser.add_argument("--max-s", type=float, default=600.0, help="stop after this long")
    args = parser.parse_args(argv)
    stop = threading.Event()
    forge = InitialForge()

    def ready() -> None:
        print(json.dumps({"ready": True, "rate": args.rate}), flush=True)

    def wait_for_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    result = flood(
        args.target,
        args.rate,
        sources=args.sources,
        stop=stop,
        max_s=args.max_s,
        forge=forge,
        on_start=ready,
    )
    print(
        json.dumps(
            {
                "sent": result.sent,
                "seconds": result.seconds,
                "per_s": result.per_s,
                "dropped": result.dropped,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
