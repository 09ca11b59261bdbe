"""Join latency, ParticipantJoined fan-out and memory per idle session on the Meeting Controller.

The MC (with a bare WebTransport echo route on a second port of the same transport for the
baseline) runs in its own process, and the Media Handler stand-in answering its
RegisterParticipant / RemoveParticipant calls in another, as a real MH would
(benchmarks/_join_server.py); the clients run in this one, all on 127.0.0.1.

1. **Sequential joins**: 100 joins one after the other (WebTransport connect -> JoinResponse),
   interleaved in rounds with the baseline: a bare WebTransport connect + one echo round trip.
2. **Concurrent joins**: 200 clients join 20 meetings at once, interleaved with 200 concurrent
   baseline connects; p50/p99 of each client's latency (``concurrent_join_p50_ms``), and the
   MC's CPU per join (``concurrent_join_server_cpu_ms_per_join``: join and leave; the MH
   stand-in's own, ``concurrent_join_mh_cpu_ms_per_join``, apart), against the MC's CPU per
   baseline connect (``concurrent_baseline_server_cpu_ms_per_connect``). The clients' own CPU
   is printed too (``concurrent_join_client_cpu_ms_per_join``, ``..._per_connect``): they
   share the machine's cores with the servers, so what they spend delays every join. Each
   client comes from its own loopback address (127.0.x.y), as from its own host: the server's
   per-address caps (10 handshakes at once) do not apply to them together; its global ones
   (Retry from 20 handshakes in progress, 100 at most) do.
3. **Fan-out**: 100 idle participants in one meeting; a new participant joins and the time from
   its JoinResponse to the last ParticipantJoined read by the 100 is measured (repeated).
4. **Memory**: the server's RSS growth per idle participant session (QUIC connection included),
   against the same for a bare WebTransport session (one stream open) on a fresh server. Both
   are read once the server has settled (``SETTLE_S`` after the last session opened: the
   transport returns freed handshake memory to the system at most once a second); the figure
   right after the last session opened is reported too (``..._at_open_kb``). The idle
   sessions of steps 3 and 4 come from their own addresses too, as the concurrent clients':
   from one address, the per-address cap held 90 of the 100 handshakes back, and qh3 clients
   (``--client-core qh3``) gave up waiting.

**QUIC cores.** ``--quic-core {aioquic,qh3,both}`` (default: both when qh3 imports, else
aioquic) is the core of the server under test: its MC's WebTransport endpoint and its echo
route. With both, one server per core stays up for the whole sitting: steps 3-4 run on each
fresh server in turn, then the rounds of steps 1 and 2 alternate between the cores (A B / B A);
the baseline memory is measured on a fresh server of each core. The clients stay on aioquic
whatever the core, so that only the server changes (``--client-core qh3`` puts them on qh3, a
cheaper load generator: the figures then say what a server's joins cost with less of the
clients' CPU in the way; ``client_quic_core`` names it). The default core's figures carry their
usual names; qh3's the same names prefixed ``qh3_`` (``qh3_concurrent_join_p50_ms``, ...).

    python benchmarks/join.py [--quick] [--rounds 3] [--quic-core both] [--client-core aioquic]
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import (
    CLIENT_QUIC_CORE,
    add_quic_core,
    core_prefix,
    emit,
    parser,
    percentiles,
    quic_cores,
    ratio_summary,
    round_order,
)
from benchmarks._cluster import write_cluster
from benchmarks._join_server import Server, cpu_s, rss_kb, serve, serve_stand_in_mh

SEQUENTIAL = 100
CONCURRENT = 200
MEETINGS = 20
FANOUT = 100
# Both memory measurements wait this long before reading the server's RSS (before and after),
# so that both see the heap trim that follows handshakes (HEAP_TRIM_INTERVAL_S = 1 s).
SETTLE_S = 2.5
# The CPU time measured over step 2's rounds: the MC's, the MH stand-in's and the clients'
# (this process) over the joins; the server's and the clients' over the baseline connects.
CPU_KEYS = (
    "concurrent_join_server_cpu",
    "concurrent_join_mh_cpu",
    "concurrent_join_client_cpu",
    "concurrent_baseline_server_cpu",
    "concurrent_baseline_client_cpu",
)


# --- the clients --------------------------------------------------------------------------
class Clients:
    """Joins and baseline connects against one server, on the clients' QUIC core."""

    def __init__(self, server: Server, sha: bytes, key_pem: bytes, client_core: str) -> None:
        from darktower.protocol.tokens import JoinTokenIssuer, load_private_key_pem
        from darktower.transport import TransportLimits

        self.server, self.core, self.info, self.hashes = server, server.core, server.info, [sha]
        self.issuer = JoinTokenIssuer(load_private_key_pem(key_pem))
        self.limits = TransportLimits(quic_core=client_core)

    def signaling(self, meeting: str, host: str | None = None) -> Any:
        from darktower.client._signaling import open_signaling
        from darktower.model import MeetingId, Role

        token = self.issuer.issue(MeetingId(meeting), Role.GUEST, time.time())
        return open_signaling(
            self.info["signal"],
            meeting_id=meeting,
            join_token=token,
            server_certificate_hashes=self.hashes,
            limits=self.limits,
            local_host=host,
        )

    async def join_once(
        self, meeting: str, out: list[float], hold: Any = None, host: str | None = None
    ) -> None:
        start = time.perf_counter()
        async with self.signaling(meeting, host):
            out.append(time.perf_counter() - start)
            if hold is not None:
                await hold.wait()

    async def echo_once(self, out: list[float], host: str | None = None) -> None:
        from darktower.transport import connect_webtransport

        start = time.perf_counter()
        async with connect_webtransport(
            self.info["echo"],
            server_certificate_hashes=self.hashes,
            limits=self.limits,
            local_host=host,
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"ping")
            await stream.receive_some()
            out.append(time.perf_counter() - start)

    async def concurrently(self, n: int, fn: Any) -> list[float]:
        import trio

        out: list[float] = []
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(fn, i, out)
        return out

    async def assign(self, cluster: str) -> None:
        """The meetings, assigned as the GC would; then a warm-up."""
        from benchmarks._cluster import cluster_tls
        from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
        from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
        from darktower.servicekit import ServiceRole
        from darktower.transport.rpc import call, open_rpc_channel

        gc_tls = cluster_tls(cluster, ServiceRole.GC).client_context()  # AssignMeeting: the GC's
        async with open_rpc_channel("127.0.0.1", self.info["grpc"], tls=gc_tls) as channel:
            stub = MeetingControlStub(channel)
            for meeting in [f"m{i}" for i in range(MEETINGS)] + ["fanout"]:
                await call(
                    stub.AssignMeeting,
                    mtg_pb.AssignMeeting(
                        meeting_id=meeting, config=mtg_pb.MeetingConfig(max_participants=1000)
                    ),
                )
        for _ in range(3):
            await self.join_once("m0", [])
            await self.echo_once([])


async def fanout_and_memory(c: Clients, size: int, quick: bool, figures: dict[str, Any]) -> None:
    """Steps 3 and 4, on a fresh server (freed memory of earlier joins would hide the growth)."""
    import trio

    pid = c.server.pid
    await trio.sleep(SETTLE_S)
    rss_before = rss_kb(pid)
    hold = trio.Event()
    clients: list[Any] = []

    async def idle(ready: trio.Event, i: int) -> None:
        async with c.signaling("fanout", host(i)) as client:
            clients.append(client)
            if len(clients) == size:
                ready.set()
            await hold.wait()

    fan: list[float] = []
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        for i in range(size):
            nursery.start_soon(idle, ready, i)
        await ready.wait()
        rss_at_open = rss_kb(pid)
        # drain the ParticipantJoined of each other
        for client in clients:
            while True:
                with trio.move_on_after(0.05):
                    await client.events.receive()
                    continue
                break
        await trio.sleep(SETTLE_S)
        rss_after = rss_kb(pid)
        figures["memory_per_idle_session_kb"] = (rss_after - rss_before) / size
        figures["memory_per_idle_session_at_open_kb"] = (rss_at_open - rss_before) / size
        for _ in range(5 if quick else 20):
            async with c.signaling("fanout") as joiner:
                t0 = time.perf_counter()
                last = 0.0
                for client in clients:
                    while True:
                        event = await client.events.receive()
                        if event.WhichOneof("message") == "participant_joined":
                            break
                    last = time.perf_counter()
                fan.append(last - t0)
                await joiner.leave()
            for client in clients:  # the ParticipantLeft of the joiner
                await client.events.receive()
        hold.set()
    for q, v in percentiles(fan).items():
        figures[f"fanout_{size}_{q}_ms"] = v * 1000
    print(
        f"[{c.server.core}] fan-out to {size}: p50 {figures[f'fanout_{size}_p50_ms']:.1f} ms;"
        f" memory per idle session {figures['memory_per_idle_session_kb']:.0f} KB"
        f" ({figures['memory_per_idle_session_at_open_kb']:.0f} KB right after the last joined)"
    )


async def run(
    servers: list[Server],
    sha: bytes,
    key_pem: bytes,
    quick: bool,
    rounds: int,
    cluster: str,
    client_core: str,
) -> dict[str, dict[str, Any]]:
    """Every step on every server; {core: figures}."""
    from darktower.transport.rpc import open_rpc_loop

    every = [Clients(s, sha, key_pem, client_core) for s in servers]
    figures: dict[str, dict[str, Any]] = {s.core: {} for s in servers}
    async with open_rpc_loop():
        for c in every:
            await c.assign(cluster)
        for c in every:
            await fanout_and_memory(c, FANOUT // 4 if quick else FANOUT, quick, figures[c.core])

        # 1. sequential, interleaved in rounds (and between the cores: A B / B A)
        per_round = (SEQUENTIAL // 4 if quick else SEQUENTIAL) // rounds
        seq: dict[str, dict[str, list[Any]]] = {
            c.core: {"join": [], "echo": [], "join_p50": [], "echo_p50": []} for c in every
        }
        for i in range(rounds):
            for c in round_order(every, i):
                j: list[float] = []
                e: list[float] = []
                for _ in range(per_round):
                    await c.join_once("m0", j)
                for _ in range(per_round):
                    await c.echo_once(e)
                mine = seq[c.core]
                mine["join"] += j
                mine["echo"] += e
                mine["join_p50"].append(percentiles(j)["p50"])
                mine["echo_p50"].append(percentiles(e)["p50"])

        # 2. concurrent, interleaved in rounds likewise
        n = CONCURRENT // 4 if quick else CONCURRENT
        con: dict[str, dict[str, list[Any]]] = {
            c.core: {k: [] for k in ("join", "echo", "join_p99", "echo_p99", *CPU_KEYS)}
            for c in every
        }
        me = os.getpid()
        for i in range(rounds):
            for c in round_order(every, i):
                mine = con[c.core]
                mc0, mh0, me0 = cpu_s(c.server.pid), cpu_s(c.server.info["mh_pid"]), cpu_s(me)
                j = await c.concurrently(
                    n, lambda i, out, c=c: c.join_once(f"m{i % MEETINGS}", out, None, host(i))
                )
                mc1, mh1, me1 = cpu_s(c.server.pid), cpu_s(c.server.info["mh_pid"]), cpu_s(me)
                e = await c.concurrently(n, lambda i, out, c=c: c.echo_once(out, host(i)))
                mc2, me2 = cpu_s(c.server.pid), cpu_s(me)
                spent = (mc1 - mc0, mh1 - mh0, me1 - me0, mc2 - mc1, me2 - me1)
                for key, seconds in zip(CPU_KEYS, spent, strict=True):
                    mine[key].append(seconds)
                mine["join"] += j
                mine["echo"] += e
                mine["join_p99"].append(percentiles(j)["p99"])
                mine["echo_p99"].append(percentiles(e)["p99"])
    for core, f in figures.items():
        _sequential_figures(core, seq[core], f)
        _concurrent_figures(core, con[core], n, rounds, f)
    return figures


def _sequential_figures(core: str, seq: dict[str, list[Any]], figures: dict[str, Any]) -> None:
    for name, samples in (("seq_join", seq["join"]), ("seq_baseline", seq["echo"])):
        for q, v in percentiles(samples).items():
            figures[f"{name}_{q}_ms"] = v * 1000
    ratio = ratio_summary(seq["join_p50"], seq["echo_p50"])
    figures.update({f"seq_p50_ratio_{k}": v for k, v in ratio.items()})
    print(
        f"[{core}] sequential joins: {len(seq['join'])}  p50 {figures['seq_join_p50_ms']:.1f} ms"
        f"  p99 {figures['seq_join_p99_ms']:.1f} ms"
        f"  (baseline p50 {figures['seq_baseline_p50_ms']:.1f} ms)"
    )


def _concurrent_figures(
    core: str, con: dict[str, list[Any]], n: int, rounds: int, figures: dict[str, Any]
) -> None:
    for name, samples in (("concurrent_join", con["join"]), ("concurrent_baseline", con["echo"])):
        for q, v in percentiles(samples).items():
            figures[f"{name}_{q}_ms"] = v * 1000
    ratio = ratio_summary(con["join_p99"], con["echo_p99"])
    figures.update({f"concurrent_p99_ratio_{k}": v for k, v in ratio.items()})
    for key in CPU_KEYS:
        joins = key.startswith("concurrent_join")
        count = len(con["join" if joins else "echo"])
        figures[f"{key}_ms_per_{'join' if joins else 'connect'}"] = sum(con[key]) / count * 1000
    print(
        f"[{core}] concurrent joins: {n} x {rounds}  p50 {figures['concurrent_join_p50_ms']:.1f}"
        f" ms  p99 {figures['concurrent_join_p99_ms']:.1f} ms  (baseline p50"
        f" {figures['concurrent_baseline_p50_ms']:.1f}, p99"
        f" {figures['concurrent_baseline_p99_ms']:.1f} ms);"
        f" {figures['concurrent_join_server_cpu_ms_per_join']:.1f} ms of the MC's CPU per join"
        f" ({figures['concurrent_join_mh_cpu_ms_per_join']:.1f} ms of the MH stand-in's,"
        f" {figures['concurrent_join_client_cpu_ms_per_join']:.1f} ms of the clients');"
        f" per baseline connect {figures['concurrent_baseline_server_cpu_ms_per_connect']:.1f} ms"
        f" of the server's, {figures['concurrent_baseline_client_cpu_ms_per_connect']:.1f} ms"
        " of the clients'"
    )


async def baseline_memory(
    server: Server, sha: bytes, size: int, client_core: str
) -> tuple[float, float]:
    """RSS growth per idle bare WebTransport session (one stream open) on a fresh server:
    settled, and right after the last session opened."""
    import trio

    from darktower.transport import TransportLimits, connect_webtransport

    hold = trio.Event()
    opened: list[int] = []
    all_open = trio.Event()
    limits = TransportLimits(quic_core=client_core)

    async def idle(i: int = 0) -> None:
        async with connect_webtransport(
            server.info["echo"], server_certificate_hashes=[sha], limits=limits, local_host=host(i)
        ) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"ping")
            await stream.receive_some()
            opened.append(1)
            if len(opened) == size:
                all_open.set()
            await hold.wait()

    for _ in range(3):  # warm-up, as for the MC
        hold.set()
        await idle()
    hold = trio.Event()
    await trio.sleep(SETTLE_S)
    before = rss_kb(server.pid)
    async with trio.open_nursery() as nursery:
        for i in range(size):
            nursery.start_soon(idle, i)
        await all_open.wait()
        at_open = rss_kb(server.pid)
        await trio.sleep(SETTLE_S)
        after = rss_kb(server.pid)
        hold.set()
    return (after - before) / size, (at_open - before) / size


def host(i: int) -> str:
    """Concurrent client i's loopback address: the clients come from as many addresses as a
    real meeting's from as many hosts (the server admits 10 handshakes per address at once and
    drops the rest, docs/architecture.md §5.1: from one address, 200 joins measured mostly
    the clients' retransmission timers)."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def main() -> None:
    p = parser(__doc__ or "")
    add_quic_core(p)
    p.add_argument(
        "--client-core",
        choices=("aioquic", "qh3"),
        default=CLIENT_QUIC_CORE,
        help=f"QUIC core of the clients (default: {CLIENT_QUIC_CORE}, whatever the server's)",
    )
    p.add_argument("--serve", nargs=4, help=argparse_hidden())
    p.add_argument("--serve-mh", nargs=1, help=argparse_hidden())
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    if args.serve_mh:
        serve_stand_in_mh(*args.serve_mh)
        return
    import trio

    from darktower.protocol.tokens import generate_signing_key, private_key_pem, public_key_pem
    from darktower.transport import generate_dev_certificate

    cores = quic_cores(args.quic_core)
    rounds = max(3, args.rounds or 3)
    tmp = tempfile.mkdtemp(prefix="dt-join-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    write_cluster(tmp)  # the server process and this one share it
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    spawn = (str(certfile), str(keyfile), str(pubkey))
    print(f"QUIC cores of the server under test: {', '.join(cores)} (clients: {args.client_core})")
    base: dict[str, tuple[float, float]] = {}
    for core in cores:
        baseline = Server(*spawn, core)
        try:
            size = FANOUT // 4 if args.quick else FANOUT
            base[core] = trio.run(baseline_memory, baseline, cert.sha256, size, args.client_core)
        finally:
            baseline.stop()
        print(
            f"[{core}] baseline: memory per idle bare WebTransport session {base[core][0]:.0f} KB"
            f" ({base[core][1]:.0f} KB right after the last opened)"
        )
    servers: list[Server] = []
    try:
        for core in cores:
            servers.append(Server(*spawn, core))
        started = time.monotonic()
        by_core = trio.run(
            run,
            servers,
            cert.sha256,
            private_key_pem(key),
            args.quick,
            rounds,
            tmp,
            args.client_core,
        )
        elapsed = time.monotonic() - started
    finally:
        for server in servers:
            server.stop()
    figures: dict[str, Any] = {
        "elapsed_s": elapsed,
        "client_quic_core": args.client_core,
        "goal_concurrent_p50_ms": 30,
        "goal_concurrent_p99_ms": 100,
        "goal_memory_per_idle_session_kb": 150,
    }
    for core, mine in by_core.items():
        base_kb, base_at_open_kb = base[core]
        mine["baseline_memory_per_idle_session_kb"] = base_kb
        mine["baseline_memory_per_idle_session_at_open_kb"] = base_at_open_kb
        mine["memory_per_idle_session_ratio"] = mine["memory_per_idle_session_kb"] / base_kb
        figures.update({core_prefix(core) + k: v for k, v in mine.items()})
    emit("join", figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
