"""Join latency, ParticipantJoined fan-out and memory per idle session on the Meeting Controller.

The MC (with an in-process Media Handler stand-in answering RegisterParticipant, and a bare
WebTransport echo route on a second port of the same transport for the baseline) runs in its
own process; the clients run in this one, all on 127.0.0.1.

1. **Sequential joins**: 100 joins one after the other (WebTransport connect -> JoinResponse),
   interleaved in rounds with the baseline: a bare WebTransport connect + one echo round trip.
2. **Concurrent joins**: 200 clients join 20 meetings at once, interleaved with 200 concurrent
   baseline connects; p50/p99 of each client's latency.
3. **Fan-out**: 100 idle participants in one meeting; a new participant joins and the time from
   its JoinResponse to the last ParticipantJoined read by the 100 is measured (repeated).
4. **Memory**: the server's RSS growth per idle participant session (QUIC connection included),
   against the same for a bare WebTransport session (one stream open) on a fresh server. Both
   are read once the server has settled (``SETTLE_S`` after the last session opened: the
   transport returns freed handshake memory to the system at most once a second); the figure
   right after the last session opened is reported too (``..._at_open_kb``).

    python benchmarks/join.py [--quick] [--rounds 3]
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles, ratio_summary
from benchmarks._cluster import write_cluster

SEQUENTIAL = 100
CONCURRENT = 200
MEETINGS = 20
FANOUT = 100
# Both memory measurements wait this long before reading the server's RSS (before and after),
# so that both see the heap trim that follows handshakes (HEAP_TRIM_INTERVAL_S = 1 s).
SETTLE_S = 2.5


# --- the server process -------------------------------------------------------------------
def serve(certfile: str, keyfile: str, pubkey: str) -> None:
    import trio

    from benchmarks._cluster import cluster_options, cluster_tls
    from darktower.meeting_controller import Settings
    from darktower.meeting_controller import serve as serve_mc
    from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
    from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase
    from darktower.servicekit import ServiceRole
    from darktower.transport import Route, ServerConfig, TlsCredentials, WebTransportServer
    from darktower.transport.rpc import open_rpc_loop, rpc_service, serve_rpc

    class StandInMH:
        async def RegisterParticipant(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RegisterParticipantResponse(connection_token="t", media_handler_url="u")

        async def RouteMedia(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RouteMediaResponse()

        async def RemoveParticipant(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RemoveParticipantResponse()

        async def RemoveStream(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RemoveStreamResponse()

        async def StartRecording(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.StartRecordingResponse(recording_id=request.recording_id)

        async def StopRecording(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.StopRecordingResponse()

        async def Telemetry(self, request: Any) -> Any:
            await trio.sleep_forever()
            yield mh_pb.TelemetryEvent()

    async def echo(session: Any, context: object) -> None:
        stream = await session.accept_stream()
        await stream.send_all(await stream.receive_some())
        await session.wait_closed()

    async def main() -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            cluster = os.path.dirname(certfile)  # internal gRPC is mutual TLS
            mh_tls = cluster_tls(cluster, ServiceRole.MH).server_context()
            mh_port = await nursery.start(
                lambda task_status: serve_rpc(
                    [rpc_service(MediaControlBase, StandInMH())],
                    "127.0.0.1",
                    0,
                    tls=mh_tls,
                    task_status=task_status,
                )
            )
            settings = Settings(
                port=0,
                grpc_port=0,
                ops_port=0,
                certfile=certfile,
                keyfile=keyfile,
                **cluster_options(cluster, ServiceRole.MC),
                join_public_key_file=pubkey,
                media_handler=f"127.0.0.1:{mh_port}",
                log_level="warning",
            )
            running = await nursery.start(
                lambda task_status: serve_mc(
                    settings, shutdown=trio.Event(), task_status=task_status
                )
            )
            tls = TlsCredentials.from_files(certfile, keyfile)
            echo_server = WebTransportServer(ServerConfig(tls=tls), {"/echo": Route(echo)})
            _, echo_port = await nursery.start(echo_server.run)
            print(
                json.dumps(
                    {
                        "signal": running.signal_url,
                        "grpc": running.grpc_address[1],
                        "echo": f"https://127.0.0.1:{echo_port}/echo",
                    }
                ),
                flush=True,
            )
            await trio.to_thread.run_sync(sys.stdin.readline)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the clients --------------------------------------------------------------------------
async def run(
    info: dict[str, Any],
    pid: int,
    sha: bytes,
    key_pem: bytes,
    quick: bool,
    rounds: int,
    cluster: str,
) -> dict[str, Any]:
    import trio

    from benchmarks._cluster import cluster_tls
    from darktower.client._signaling import open_signaling
    from darktower.model import MeetingId, Role
    from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
    from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
    from darktower.protocol.tokens import JoinTokenIssuer, load_private_key_pem
    from darktower.servicekit import ServiceRole
    from darktower.transport import connect_webtransport
    from darktower.transport.rpc import call, open_rpc_channel, open_rpc_loop

    issuer = JoinTokenIssuer(load_private_key_pem(key_pem))
    hashes = [sha]
    figures: dict[str, Any] = {}

    async def join_once(meeting: str, out: list[float], hold: trio.Event | None = None) -> None:
        token = issuer.issue(MeetingId(meeting), Role.GUEST, time.time())
        start = time.perf_counter()
        async with open_signaling(
            info["signal"], meeting_id=meeting, join_token=token, server_certificate_hashes=hashes
        ):
            out.append(time.perf_counter() - start)
            if hold is not None:
                await hold.wait()

    async def echo_once(out: list[float]) -> None:
        start = time.perf_counter()
        async with connect_webtransport(info["echo"], server_certificate_hashes=hashes) as session:
            stream = await session.open_bidirectional_stream()
            await stream.send_all(b"ping")
            await stream.receive_some()
            out.append(time.perf_counter() - start)

    async def concurrently(n: int, fn: Any) -> list[float]:
        out: list[float] = []
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(fn, i, out)
        return out

    gc_tls = cluster_tls(cluster, ServiceRole.GC).client_context()  # AssignMeeting: the GC's
    async with open_rpc_loop(), open_rpc_channel("127.0.0.1", info["grpc"], tls=gc_tls) as channel:
        stub = MeetingControlStub(channel)
        for i in range(MEETINGS):
            await call(
                stub.AssignMeeting,
                mtg_pb.AssignMeeting(
                    meeting_id=f"m{i}", config=mtg_pb.MeetingConfig(max_participants=1000)
                ),
            )
        await call(
            stub.AssignMeeting,
            mtg_pb.AssignMeeting(
                meeting_id="fanout", config=mtg_pb.MeetingConfig(max_participants=1000)
            ),
        )
        # warm-up
        for _ in range(3):
            await join_once("m0", [])
            await echo_once([])

        # 3 + 4 first, on a fresh server (freed memory of earlier joins would hide the growth)
        size = FANOUT // 4 if quick else FANOUT
        await trio.sleep(SETTLE_S)
        rss_before = _rss_kb(pid)
        hold = trio.Event()
        clients: list[Any] = []

        async def idle(i: int, ready: trio.Event) -> None:
            token = issuer.issue(MeetingId("fanout"), Role.GUEST, time.time())
            async with open_signaling(
                info["signal"],
                meeting_id="fanout",
                join_token=token,
                server_certificate_hashes=hashes,
            ) as client:
                clients.append(client)
                if len(clients) == size:
                    ready.set()
                await hold.wait()

        fan: list[float] = []
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            for i in range(size):
                nursery.start_soon(idle, i, ready)
            await ready.wait()
            rss_at_open = _rss_kb(pid)
            # drain the ParticipantJoined of each other
            for client in clients:
                while True:
                    with trio.move_on_after(0.05):
                        await client.events.receive()
                        continue
                    break
            await trio.sleep(SETTLE_S)
            rss_after = _rss_kb(pid)
            figures["memory_per_idle_session_kb"] = (rss_after - rss_before) / size
            figures["memory_per_idle_session_at_open_kb"] = (rss_at_open - rss_before) / size
            for _ in range(5 if quick else 20):
                token = issuer.issue(MeetingId("fanout"), Role.GUEST, time.time())
                async with open_signaling(
                    info["signal"],
                    meeting_id="fanout",
                    join_token=token,
                    server_certificate_hashes=hashes,
                ) as joiner:
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
            f"fan-out to {size}: p50 {figures[f'fanout_{size}_p50_ms']:.1f} ms;"
            f" memory per idle session {figures['memory_per_idle_session_kb']:.0f} KB"
            f" ({figures['memory_per_idle_session_at_open_kb']:.0f} KB right after the last joined)"
        )
        # 1. sequential, interleaved in rounds
        per_round = (SEQUENTIAL // 4 if quick else SEQUENTIAL) // rounds
        seq_join: list[float] = []
        seq_echo: list[float] = []
        join_medians, echo_medians = [], []
        for _ in range(rounds):
            j: list[float] = []
            e: list[float] = []
            for _ in range(per_round):
                await join_once("m0", j)
            for _ in range(per_round):
                await echo_once(e)
            seq_join += j
            seq_echo += e
            join_medians.append(percentiles(j)["p50"])
            echo_medians.append(percentiles(e)["p50"])
        for name, samples in (("seq_join", seq_join), ("seq_baseline", seq_echo)):
            for q, v in percentiles(samples).items():
                figures[f"{name}_{q}_ms"] = v * 1000
        figures.update(
            {f"seq_p50_ratio_{k}": v for k, v in ratio_summary(join_medians, echo_medians).items()}
        )
        print(
            f"sequential joins: {len(seq_join)}  p50 {figures['seq_join_p50_ms']:.1f} ms"
            f"  p99 {figures['seq_join_p99_ms']:.1f} ms  (baseline p50 {figures['seq_baseline_p50_ms']:.1f} ms)"
        )

        # 2. concurrent, interleaved in rounds
        n = CONCURRENT // 4 if quick else CONCURRENT
        con_join: list[float] = []
        con_echo: list[float] = []
        j99, e99 = [], []
        cpu_join = 0.0
        for _ in range(rounds):
            before = _cpu_s(pid)
            j = await concurrently(n, lambda i, out: join_once(f"m{i % MEETINGS}", out))
            cpu_join += _cpu_s(pid) - before
            e = await concurrently(n, lambda i, out: echo_once(out))
            con_join += j
            con_echo += e
            j99.append(percentiles(j)["p99"])
            e99.append(percentiles(e)["p99"])
        for name, samples in (("concurrent_join", con_join), ("concurrent_baseline", con_echo)):
            for q, v in percentiles(samples).items():
                figures[f"{name}_{q}_ms"] = v * 1000
        figures.update({f"concurrent_p99_ratio_{k}": v for k, v in ratio_summary(j99, e99).items()})
        figures["concurrent_join_server_cpu_ms_per_join"] = cpu_join / len(con_join) * 1000
        print(
            f"concurrent joins: {n} x {rounds}  p50 {figures['concurrent_join_p50_ms']:.1f} ms"
            f"  p99 {figures['concurrent_join_p99_ms']:.1f} ms  (baseline p50"
            f" {figures['concurrent_baseline_p50_ms']:.1f}, p99 {figures['concurrent_baseline_p99_ms']:.1f} ms)"
        )

    return figures


async def baseline_memory(
    info: dict[str, Any], pid: int, sha: bytes, size: int
) -> tuple[float, float]:
    """RSS growth per idle bare WebTransport session (one stream open) on a fresh server:
    settled, and right after the last session opened."""
    import trio

    from darktower.transport import connect_webtransport

    hold = trio.Event()
    opened: list[int] = []
    all_open = trio.Event()

    async def idle() -> None:
        async with connect_webtransport(info["echo"], server_certificate_hashes=[sha]) as session:
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
    before = _rss_kb(pid)
    async with trio.open_nursery() as nursery:
        for _ in range(size):
            nursery.start_soon(idle)
        await all_open.wait()
        at_open = _rss_kb(pid)
        await trio.sleep(SETTLE_S)
        after = _rss_kb(pid)
        hold.set()
    return (after - before) / size, (at_open - before) / size


def _spawn(certfile: str, keyfile: str, pubkey: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--serve", certfile, keyfile, pubkey],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None and server.stdin is not None:
        server.stdin.write("\n")
        server.stdin.flush()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--serve", nargs=3, help=argparse_hidden())
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    import trio

    from darktower.protocol.tokens import generate_signing_key, private_key_pem, public_key_pem
    from darktower.transport import generate_dev_certificate

    rounds = max(3, args.rounds or 3)
    tmp = tempfile.mkdtemp(prefix="dt-join-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    write_cluster(tmp)  # the server process and this one share it
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    baseline = _spawn(str(certfile), str(keyfile), str(pubkey))
    try:
        assert baseline.stdout is not None
        base_info = json.loads(baseline.stdout.readline())
        size = FANOUT // 4 if args.quick else FANOUT
        base_kb, base_at_open_kb = trio.run(
            baseline_memory, base_info, baseline.pid, cert.sha256, size
        )
    finally:
        _stop(baseline)
    print(
        f"baseline: memory per idle bare WebTransport session {base_kb:.0f} KB"
        f" ({base_at_open_kb:.0f} KB right after the last opened)"
    )
    server = _spawn(str(certfile), str(keyfile), str(pubkey))
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        started = time.monotonic()
        figures = trio.run(
            run, info, server.pid, cert.sha256, private_key_pem(key), args.quick, rounds, tmp
        )
        figures["elapsed_s"] = time.monotonic() - started
        figures["goal_concurrent_p50_ms"] = 30
        figures["goal_concurrent_p99_ms"] = 100
        figures["goal_memory_per_idle_session_kb"] = 150
        figures["baseline_memory_per_idle_session_kb"] = base_kb
        figures["baseline_memory_per_idle_session_at_open_kb"] = base_at_open_kb
        figures["memory_per_idle_session_ratio"] = figures["memory_per_idle_session_kb"] / base_kb
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    emit("join", figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
