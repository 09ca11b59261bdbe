"""Relay throughput and CPU: our trio transport against aioquic's asyncio API, same run.

One sender writes 1,046-byte messages on one WebTransport stream; the server relays what it
reads to N receivers (N = 0, 1, 5, 10), each over a server-opened unidirectional stream.
Server, and load generator (sender + receivers, on our client), are separate processes on
127.0.0.1. Per point and implementation: delivered messages/s (counted by the receivers; for
N = 0 the messages the server consumed, which flow control ties to what the sender wrote) and
server CPU µs per delivered message (utime+stime of the server process over the window).
Then server memory per idle session with 1,000 sessions open, both implementations.

``--quic-core {aioquic,qh3,both}`` (default: both when qh3 imports, else aioquic) chooses the
QUIC core of our relay server; with both, each point runs our relay on each core and aioquic's
asyncio server in the same rounds (A B C / C B A), and each core's ratios are against those
asyncio rounds. The load generator stays on aioquic whatever the core: only the server changes.
The default core's figures carry the names they always had; qh3's the same names prefixed
``qh3_`` (``qh3_n10_throughput_ratio``, ...). The asyncio baseline's figures
(``n{N}_asyncio_*``, ``idle_session_asyncio_kb``) are printed once, unprefixed.

    python benchmarks/transport_relay.py [--quick] [--rounds 3] [--quic-core both]
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
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
    quic_cores,
    ratio_summary,
    round_order,
    summary,
)

MESSAGE = 1046
RECEIVER_COUNTS = (0, 1, 5, 10)
IDLE_SESSIONS = 1000
IDLE_CONNECTIONS = 20
TICKS = os.sysconf("SC_CLK_TCK")


# --- server processes --------------------------------------------------------------------
def serve_ours(certfile: str, keyfile: str, core: str | None = None) -> None:
    """Our relay; ``core``: its QUIC core (None: the transport's default)."""
    import trio

    from darktower.transport import (
        Route,
        ServerConfig,
        TlsCredentials,
        TransportLimits,
        WebTransportSendStream,
        WebTransportServer,
        WebTransportSession,
    )

    receivers: list[WebTransportSendStream] = []

    async def handler(session: WebTransportSession, context: object) -> None:
        role = session.query.get("role")
        if role == "recv":
            stream = await session.open_unidirectional_stream()
            receivers.append(stream)
            try:
                await session.wait_closed()
            finally:
                receivers.remove(stream)
        elif role == "send":
            stream = await session.accept_stream()
            receive = stream.receive_some  # type: ignore[union-attr]
            while data := await receive(65536):
                for r in receivers:
                    await r.send_all(data)
        else:
            await session.wait_closed()

    async def main() -> None:
        core_limit = {} if core is None else {"quic_core": core}
        limits = TransportLimits(max_sessions_per_connection=1000, **core_limit)
        config = ServerConfig(tls=TlsCredentials.from_files(certfile, keyfile), limits=limits)
        server = WebTransportServer(config, {"/relay": Route(handler)})
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.run)
            print(port, flush=True)

    trio.run(main)


def serve_asyncio(certfile: str, keyfile: str) -> None:
    from urllib.parse import parse_qs, urlsplit

    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.h3 import events as h3e
    from aioquic.h3.connection import H3Connection
    from aioquic.quic.configuration import QuicConfiguration

    receivers: list[tuple[Any, int]] = []

    class Relay(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic, enable_webtransport=True)

        def quic_event_received(self, event: Any) -> None:
            for ev in self.h3.handle_event(event):
                if isinstance(ev, h3e.HeadersReceived):
                    headers = dict(ev.headers)
                    self.h3.send_headers(
                        ev.stream_id,
                        [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
                    )
                    query = parse_qs(urlsplit(headers[b":path"].decode()).query)
                    if query.get("role") == ["recv"]:
                        sid = self.h3.create_webtransport_stream(
                            ev.stream_id, is_unidirectional=True
                        )
                        receivers.append((self, sid))
                    self.transmit()
                elif isinstance(ev, h3e.WebTransportStreamDataReceived):
                    for proto, sid in receivers:
                        proto._quic.send_stream_data(sid, ev.data)
                        proto.transmit()

    async def main() -> None:
        config = QuicConfiguration(
            is_client=False, alpn_protocols=["h3"], max_datagram_frame_size=65536
        )
        config.load_cert_chain(certfile, keyfile)
        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Relay)
        print(server._transport.get_extra_info("sockname")[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- load generator process ----------------------------------------------------------------
def load(port: int, cert_hash: str, receivers: int, warmup: float, window: float) -> None:
    import trio

    from darktower.transport import SessionClosed, TransportLimits, connect_webtransport

    pinned = [bytes.fromhex(cert_hash)]
    client = TransportLimits(quic_core=CLIENT_QUIC_CORE)
    base = f"https://127.0.0.1:{port}/relay"
    counted = [0] * receivers
    counting = False
    sent = 0

    async def receiver(i: int, ready: trio.Event) -> None:
        async with connect_webtransport(
            base + "?role=recv", server_certificate_hashes=pinned, limits=client
        ) as s:
            stream = await s.accept_stream()
            ready.set()
            try:
                while data := await stream.receive_some(1 << 20):
                    if counting:
                        counted[i] += len(data)
            except SessionClosed:
                pass  # the server may stop first once the result is printed

    async def sender() -> None:
        nonlocal sent
        async with connect_webtransport(
            base + "?role=send",
            server_certificate_hashes=pinned,
            limits=TransportLimits(stream_send_high_water=64 * 1024, quic_core=CLIENT_QUIC_CORE),
        ) as s:
            stream = await s.open_unidirectional_stream()
            message = b"m" * MESSAGE
            try:
                while True:
                    await stream.send_all(message)
                    if counting:
                        sent += 1
            except SessionClosed:
                pass  # as for the receivers

    async def main() -> None:
        nonlocal counting
        async with trio.open_nursery() as nursery:
            for i in range(receivers):
                ready = trio.Event()
                nursery.start_soon(receiver, i, ready)
                await ready.wait()
            nursery.start_soon(sender)
            await trio.sleep(warmup)
            counting = True
            print("START", flush=True)
            start = trio.current_time()
            await trio.sleep(window)
            counting = False
            elapsed = trio.current_time() - start
            print("STOP", flush=True)
            delivered = sum(counted) / MESSAGE if receivers else sent
            print(json.dumps({"delivered": delivered, "elapsed": elapsed}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def idle_sessions(port: int, cert_hash: str) -> None:
    import trio

    from darktower.transport import TransportLimits, open_quic_connection, open_session

    pinned = [bytes.fromhex(cert_hash)]
    client = TransportLimits(quic_core=CLIENT_QUIC_CORE)

    async def one_connection(done: trio.Event, hold: trio.Event) -> None:
        async with open_quic_connection(
            "127.0.0.1", port, server_certificate_hashes=pinned, limits=client
        ) as conn:
            for _ in range(IDLE_SESSIONS // IDLE_CONNECTIONS):
                await open_session(conn, f"127.0.0.1:{port}", "/relay?role=idle")
            done.set()
            await hold.wait()

    async def main() -> None:
        hold = trio.Event()
        async with trio.open_nursery() as nursery:
            dones = [trio.Event() for _ in range(IDLE_CONNECTIONS)]
            for done in dones:
                nursery.start_soon(one_connection, done, hold)
            for done in dones:
                await done.wait()
            print("OPEN", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            hold.set()

    trio.run(main)


# --- orchestration -----------------------------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """A relay server process: ``impl`` "ours" (on QUIC core ``core``; None: the transport's
    default) or "asyncio" (aioquic's asyncio API)."""

    def __init__(self, impl: str, certfile: str, keyfile: str, core: str | None = None) -> None:
        self.proc = _spawn("--serve", impl, certfile, keyfile, *([core] if core else []))
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_point(
    impl: str,
    receivers: int,
    files: tuple[str, str, str],
    warm: float,
    win: float,
    core: str | None = None,
) -> tuple[float, float]:
    certfile, keyfile, cert_hash = files
    server = Server(impl, certfile, keyfile, core)
    try:
        gen = _spawn("--load", str(server.port), cert_hash, str(receivers), str(warm), str(win))
        assert gen.stdout is not None
        assert gen.stdout.readline().strip() == "START"
        cpu0 = _cpu_s(server.proc.pid)
        assert gen.stdout.readline().strip() == "STOP"
        cpu1 = _cpu_s(server.proc.pid)
        result = json.loads(gen.stdout.readline())
        gen.wait(timeout=30)
    finally:
        server.close()
    rate = result["delivered"] / result["elapsed"]
    cpu_us = (cpu1 - cpu0) * 1e6 / max(1.0, result["delivered"])
    return rate, cpu_us


def idle_memory(impl: str, files: tuple[str, str, str], core: str | None = None) -> float:
    certfile, keyfile, cert_hash = files
    server = Server(impl, certfile, keyfile, core)
    try:
        time.sleep(0.3)
        before = _rss_kb(server.proc.pid)
        gen = _spawn("--idle", str(server.port), cert_hash)
        assert gen.stdout is not None and gen.stdin is not None
        assert gen.stdout.readline().strip() == "OPEN"
        time.sleep(0.5)
        after = _rss_kb(server.proc.pid)
        gen.stdin.write("\n")
        gen.stdin.flush()
        gen.wait(timeout=30)
    finally:
        server.close()
    return (after - before) / IDLE_SESSIONS


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_quic_core(p)
    args = p.parse_args()
    cores = quic_cores(args.quic_core)
    rounds = args.rounds or (1 if args.quick else 3)
    warm, win = (0.5, 0.7) if args.quick else (0.7, 1.5)
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    files = (str(certfile), str(keyfile), cert.sha256.hex())
    figures: dict[str, Any] = {}
    # Sides: our relay on each core, then aioquic's asyncio server (core None).
    sides: list[tuple[str, str | None]] = [("ours", c) for c in cores] + [("asyncio", None)]
    for n in RECEIVER_COUNTS:
        runs: dict[tuple[str, str | None], list[tuple[float, float]]] = {s: [] for s in sides}
        for i in range(rounds if rounds >= 3 else 1):
            for impl, core in round_order(sides, i):
                runs[impl, core].append(run_point(impl, n, files, warm, win, core))
        theirs = runs["asyncio", None]
        ys = [r for r, _ in theirs]
        theirs_cpu = summary([c for _, c in theirs])
        line = f"N={n:2d}"
        for core in cores:
            ours = runs["ours", core]
            xs = [r for r, _ in ours]
            ours_cpu = summary([c for _, c in ours])
            ratio = ratio_summary(xs, ys)
            cpu_ratio = ratio_summary([c for _, c in theirs], [c for _, c in ours])
            line += (
                f"  ours/{core} {summary(xs)['median']:8.0f} msg/s {ours_cpu['median']:6.1f} "
                f"us/msg ratio {ratio['median']:.2f} (min {ratio['min']:.2f} max "
                f"{ratio['max']:.2f}) cpu ratio {cpu_ratio['median']:.2f} |"
            )
            pre = f"{core_prefix(core)}n{n}"
            figures[f"{pre}_ours_delivered_per_s"] = summary(xs)["median"]
            figures[f"{pre}_ours_server_cpu_us"] = ours_cpu["median"]
            figures[f"{pre}_throughput_ratio"] = ratio["median"]
            figures[f"{pre}_throughput_ratio_min"] = ratio["min"]
            figures[f"{pre}_throughput_ratio_max"] = ratio["max"]
            figures[f"{pre}_cpu_ratio"] = cpu_ratio["median"]
        print(
            f"{line}  asyncio {summary(ys)['median']:8.0f} msg/s "
            f"{theirs_cpu['median']:6.1f} us/msg",
            flush=True,
        )
        figures[f"n{n}_asyncio_delivered_per_s"] = summary(ys)["median"]
        figures[f"n{n}_asyncio_server_cpu_us"] = theirs_cpu["median"]
    mem_line = "idle session memory:"
    for core in cores:
        kb = idle_memory("ours", files, core)
        figures[f"{core_prefix(core)}idle_session_ours_kb"] = kb
        mem_line += f" ours/{core} {kb:.1f} KB,"
    mem_theirs = idle_memory("asyncio", files)
    print(f"{mem_line} asyncio {mem_theirs:.1f} KB", flush=True)
    figures["idle_session_asyncio_kb"] = mem_theirs
    emit("transport_relay", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        impl, certfile, keyfile = sys.argv[2:5]
        if impl == "ours":
            serve_ours(certfile, keyfile, *sys.argv[5:6])
        else:
            serve_asyncio(certfile, keyfile)
    elif len(sys.argv) > 1 and sys.argv[1] == "--load":
        port, cert_hash, receivers, warm, win = sys.argv[2:7]
        load(int(port), cert_hash, int(receivers), float(warm), float(win))
    elif len(sys.argv) > 1 and sys.argv[1] == "--idle":
        idle_sessions(int(sys.argv[2]), sys.argv[3])
    else:
        main()
