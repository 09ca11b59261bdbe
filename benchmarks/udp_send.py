"""Batched UDP sends: CPU and system calls per datagram with UDP GSO and without it.

What a connection's flush hands the endpoint is a burst of datagrams to one address: QUIC
packets of the connection's packet size (1,200 bytes), the last one shorter. The benchmark
sends such bursts with ``Endpoint.send_many`` on a real UDP socket to a receiver process on
127.0.0.1, once with GSO (one ``sendmsg`` per run of equal sizes) and once forced to the
fallback (one ``sendto`` per datagram), interleaved round by round, for bursts of 2, 4, 8
and 32 datagrams. A sample is the sender's CPU time (``time.process_time``: user + system)
over the send calls only, per datagram; the receiver (another process, 4 MiB buffer) counts
what arrives, and the sender waits for it between chunks so that nothing overflows.

On loopback the receive path's kernel work (IP and UDP input, the GSO split, the copy into
the receiver's buffer) runs inside the sender's system call and is counted here; towards a
real network interface that part runs on the receiving machine, so the saving is a larger
share of what the sender pays there.

Figures: ``gso_cpu_per_datagram_us_b{n}``, ``sendto_cpu_per_datagram_us_b{n}`` (medians),
``gso_vs_sendto_cpu_b{n}_ratio`` (median of per-round ratios, min and max printed),
``gso_syscalls_per_datagram_b{n}`` (``sendto`` makes 1.0), ``delivered_ratio``.
Run: ``python benchmarks/udp_send.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _bench

from darktower.transport import TransportLimits
from darktower.transport._endpoint import Endpoint, make_udp_socket
from darktower.transport._udp import gso_groups

PACKET = 1200
BURSTS = (2, 4, 8, 32)
CHUNK = 2000  # datagrams between two waits for the receiver (well inside its buffer)
MARK = b"!"


def _receiver() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    count = 0
    while True:
        data = sock.recv(65_535)
        if data == MARK:
            print(count, flush=True)
            count = 0
        elif data == b"quit":
            return
        else:
            count += 1


class Receiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.out = self.proc.stdout
        self.addr = ("127.0.0.1", int(self.out.readline()))
        self.ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def received(self) -> int:
        """What arrived since the last call (the mark is sent again if it was lost)."""
        while True:
            self.ctl.sendto(MARK, self.addr)
            ready, _, _ = select.select([self.out], [], [], 0.5)
            if ready:
                return int(self.out.readline())

    def close(self) -> None:
        self.ctl.sendto(b"quit", self.addr)
        self.proc.wait(timeout=5)
        self.ctl.close()


def _bursts(burst: int, count: int) -> list[list[bytes]]:
    body = os.urandom(PACKET)
    one = [body] * (burst - 1) + [body[:700]]  # full packets, the last one shorter
    return [one] * (count // burst)


def measure(endpoint: Endpoint, receiver: Receiver, bursts: list[list[bytes]]) -> tuple[float, int]:
    """CPU seconds spent in ``send_many`` for ``bursts``; the datagrams delivered."""
    cpu = 0.0
    delivered = 0
    send_many = endpoint.send_many
    addr = receiver.addr
    for start in range(0, len(bursts), max(1, CHUNK // len(bursts[0]))):
        part = bursts[start : start + max(1, CHUNK // len(bursts[0]))]
        t0 = time.process_time()
        for burst in part:
            send_many(burst, addr)
        cpu += time.process_time() - t0
        delivered += receiver.received()
    return cpu, delivered


def main() -> None:
    if "--receiver" in sys.argv:
        _receiver()
        return
    args = _bench.parser(__doc__ or "").parse_args()
    rounds = args.rounds or 3
    count = 8_000 if args.quick else 40_000
    receiver = Receiver()
    sock = make_udp_socket("127.0.0.1", 0)
    endpoint = Endpoint(sock, TransportLimits())
    if not endpoint.gso:
        print("UDP GSO is not available here: both sides measure sendto", file=sys.stderr)
    figures: dict[str, float] = {}
    sent = delivered = 0
    try:
        for burst in BURSTS:
            bursts = _bursts(burst, count)
            n = sum(len(b) for b in bursts)

            def gso(bursts: list[list[bytes]] = bursts, n: int = n) -> float:
                nonlocal sent, delivered
                endpoint.gso = True
                cpu, got = measure(endpoint, receiver, bursts)
                sent, delivered = sent + n, delivered + got
                return cpu / n * 1e6

            def plain(bursts: list[list[bytes]] = bursts, n: int = n) -> float:
                nonlocal sent, delivered
                endpoint.gso = False
                cpu, got = measure(endpoint, receiver, bursts)
                sent, delivered = sent + n, delivered + got
                return cpu / n * 1e6

            xs, ys = _bench.interleave(gso, plain, rounds)
            calls = len(list(gso_groups(bursts[0]))) / burst
            a, b, r = _bench.summary(xs), _bench.summary(ys), _bench.ratio_summary(xs, ys)
            print(
                f"burst {burst:2}: GSO {a['median']:.2f} us/datagram "
                f"[{a['min']:.2f}-{a['max']:.2f}], {calls:.3f} syscalls/datagram; "
                f"sendto {b['median']:.2f} [{b['min']:.2f}-{b['max']:.2f}]; "
                f"ratio {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
            )
            figures[f"gso_cpu_per_datagram_us_b{burst}"] = a["median"]
            figures[f"sendto_cpu_per_datagram_us_b{burst}"] = b["median"]
            figures[f"gso_vs_sendto_cpu_b{burst}_ratio"] = r["median"]
            figures[f"gso_syscalls_per_datagram_b{burst}"] = calls
    finally:
        receiver.close()
        sock.close()
    figures["delivered_ratio"] = delivered / sent if sent else float("nan")
    print(f"delivered {delivered} of {sent}, send errors {endpoint.send_errors}")
    _bench.emit("udp_send", figures)


if __name__ == "__main__":
    main()
