"""GC API throughput: create + get meeting against a trivial JSON endpoint, same stack, same run.

The GC (``darktower.global_controller.serve``: quart-trio on hypercorn's trio worker, TLS,
rate limiter, access-token check, store) runs in its own process, once on SQLite and once on
PostgreSQL (a throwaway server from tests/_postgres.py). The load generator (this process)
keeps 32 HTTP/1.1 keep-alive TLS connections (a lean hand-written client) busy for a fixed window, each worker alternating
``POST /api/v1/meetings`` and ``GET /api/v1/meetings/{id}``; the baseline is ``GET /healthz``
on the same server (same TLS, hypercorn and quart; no auth, no store, no limiter). Windows
alternate API, baseline, API, baseline, ... per backend. The MC is a no-op in-process stand-in
(the create does not include an AssignMeeting round trip; that is gRPC, measured elsewhere).
Then HTTP/3 ``GET /api/v1/meetings/{id}`` latency over one connection, sequential.

    python benchmarks/gc_api.py [--quick] [--rounds 3]
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, interleave, parser, percentiles, ratio_summary, summary

CONNECTIONS = 32
TICKS = os.sysconf("SC_CLK_TCK")


# --- server process -----------------------------------------------------------------------
class _NoopControllers:
    async def assign_meeting(self, controller: Any, meeting: Any) -> None:
        pass

    async def end_meeting(self, controller: Any, meeting_id: Any) -> None:
        pass

    async def kick(self, controller: Any, meeting_id: Any, participant_id: Any) -> None:
        pass


def run_server(data_dir: str, database: str) -> None:
    import trio

    from darktower.global_controller import Settings, serve
    from darktower.global_controller.store import ControllerCapacity
    from darktower.launch import run_until_signal
    from darktower.model import ControllerId

    settings = Settings(
        port=0,
        grpc_port=0,
        data_dir=data_dir,
        database=database,
        rate_limit_per_min=10**9,
        max_active_meetings_per_client=0,  # one client creates every meeting measured
        heartbeat_interval_s=3600.0,  # no MC heartbeats here: keep the controller placeable
        log_level="warning",
    )

    from darktower.__main__ import dev_cluster
    from darktower.servicekit import ServiceRole

    cluster = dev_cluster()[ServiceRole.GC]  # its gRPC is mutual TLS, unused here

    async def serve_with_mc(*args: Any, **kwargs: Any) -> None:
        await serve(*args, controllers=_NoopControllers(), cluster=cluster, **kwargs)

    def started(running: Any) -> None:
        print(json.dumps({"url": running.url, "sha": running.certificate_sha256.hex()}))
        sys.stdout.flush()

    async def main() -> None:
        from darktower.global_controller.server import open_gc_store

        async with open_gc_store(settings) as store:
            await store.register_controller(
                ControllerId("mc-bench"),
                "local",
                "127.0.0.1:1 https://127.0.0.1:4433/v1/signal",
                ControllerCapacity(10**9, 0, 10**9, 0),
            )
        await run_until_signal(serve_with_mc, settings, on_started=started)

    trio.run(main)


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    def __init__(self, data_dir: str, database: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", data_dir, database],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        info = json.loads(line)
        self.url: str = info["url"]
        self.sha = bytes.fromhex(info["sha"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- load ---------------------------------------------------------------------------------
class _Conn:
    """One HTTP/1.1 keep-alive connection over TLS, written by hand: httpx costs the load
    generator more CPU than the server spends, and the machine has 2 cores."""

    def __init__(self, stream: Any, host: str) -> None:
        self._stream = stream
        self._host = host
        self._buf = b""

    async def request(self, method: str, path: str, token: str = "", body: bytes = b"") -> Any:
        head = f"{method} {path} HTTP/1.1\r\nhost: {self._host}\r\n"
        if token:
            head += f"authorization: Bearer {token}\r\n"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        await self._stream.send_all(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self._buf:
            self._buf += await self._stream.receive_some(65536)
        header, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buf) < length:
            self._buf += await self._stream.receive_some(65536)
        payload, self._buf = self._buf[:length], self._buf[length:]
        return status, payload


async def _connect(url: str) -> _Conn:
    import ssl

    import trio

    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, ctx, server_hostname=host, https_compatible=True)
    await stream.do_handshake()
    return _Conn(stream, host_port)


def _window(server: Server, token: str, seconds: float, api: bool) -> dict[str, Any]:
    import trio

    latencies: list[float] = []
    count = 0
    create_body = json.dumps({"display_name": "bench"}).encode()

    async def worker(conn: _Conn, deadline: float) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            if api:
                status, body = await conn.request("POST", "/api/v1/meetings", token, create_body)
                assert status == 201, body
                latencies.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                meeting_id = json.loads(body)["meeting_id"]
                status, body = await conn.request("GET", f"/api/v1/meetings/{meeting_id}")
                assert status == 200, body
                count += 2
            else:
                status, body = await conn.request("GET", "/healthz")
                assert status == 200, body
                count += 1
            latencies.append(time.perf_counter() - t0)

    async def main() -> tuple[float, float]:
        conns: list[_Conn] = []

        async def open_one() -> None:
            conn = await _connect(server.url)
            await conn.request("GET", "/healthz")  # warm-up
            conns.append(conn)

        # Concurrently: opened one by one on a loaded machine, the first connections could sit
        # idle past hypercorn's keep-alive timeout (5 s) and be closed before the window.
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(open_one)
        cpu0, t0 = _cpu_s(server.proc.pid), time.monotonic()
        deadline = t0 + seconds
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(worker, conn, deadline)
        elapsed, cpu = time.monotonic() - t0, _cpu_s(server.proc.pid) - cpu0
        for conn in conns:
            await conn._stream.aclose()
        return elapsed, cpu

    elapsed, cpu = trio.run(main)
    return {
        "per_s": count / elapsed,
        "cpu_us": cpu / max(1, count) * 1e6,
        "lat": percentiles([x * 1000 for x in latencies]),
    }


def _token(server: Server, client_id: str, secret: str) -> str:
    import httpx

    r = httpx.post(
        f"{server.url}/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        verify=False,
    )
    r.raise_for_status()
    token: str = r.json()["access_token"]
    return token


def _h3_latency(server: Server, token: str, samples: int) -> dict[str, float]:
    import httpx
    import trio

    from darktower.transport import open_http3_client

    created = httpx.post(
        f"{server.url}/api/v1/meetings",
        headers={"authorization": f"Bearer {token}"},
        json={"display_name": "h3"},
        verify=False,
    ).json()
    path = f"/api/v1/meetings/{created['meeting_id']}"

    async def main() -> list[float]:
        out: list[float] = []
        async with open_http3_client(server.url, server_certificate_hashes=[server.sha]) as h3:
            for _ in range(20):
                await h3.request("GET", path)
            for _ in range(samples):
                t0 = time.perf_counter()
                r = await h3.request("GET", path)
                out.append((time.perf_counter() - t0) * 1000)
                assert r.status == 200
        return out

    return percentiles(trio.run(main))


def _add_client(data_dir: str, database: str) -> tuple[str, str]:
    import trio

    from darktower.global_controller import Settings
    from darktower.global_controller.clients import add_client

    settings = Settings(data_dir=data_dir, database=database)
    client_id, secret = trio.run(add_client, settings, "bench")
    return str(client_id), secret


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--serve", nargs=2, metavar=("DATA_DIR", "DATABASE"), help=argparse_hidden())
    args = p.parse_args()
    if args.serve:
        run_server(*args.serve)
        return
    rounds = args.rounds or 3
    window = 1.0 if args.quick else 2.5
    h3_samples = 300 if args.quick else 1000

    from tests._postgres import running_postgres

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as pg, pg.database() as dsn:
        backends = {
            "sqlite": (f"{tmp}/sqlite", ""),
            "postgres": (f"{tmp}/pg", dsn),
        }
        servers: dict[str, Server] = {}
        tokens: dict[str, str] = {}
        try:
            for name, (data_dir, database) in backends.items():
                client_id, secret = _add_client(data_dir, database)
                servers[name] = Server(data_dir, database)
                tokens[name] = _token(servers[name], client_id, secret)
            for name, server in servers.items():
                results: dict[str, list[dict[str, Any]]] = {"api": [], "base": []}

                def run_api(s: Server = server, n: str = name, out: Any = results) -> float:
                    r = _window(s, tokens[n], window, api=True)
                    out["api"].append(r)
                    return float(r["per_s"])

                def run_base(s: Server = server, n: str = name, out: Any = results) -> float:
                    r = _window(s, tokens[n], window, api=False)
                    out["base"].append(r)
                    return float(r["per_s"])

                api_rates, base_rates = interleave(run_api, run_base, rounds)
                ratio = ratio_summary(api_rates, base_rates)
                api_s, base_s = summary(api_rates), summary(base_rates)
                p50 = sorted(r["lat"]["p50"] for r in results["api"])[len(results["api"]) // 2]
                p99 = sorted(r["lat"]["p99"] for r in results["api"])[len(results["api"]) // 2]
                bp50 = sorted(r["lat"]["p50"] for r in results["base"])[len(results["base"]) // 2]
                cpu = summary([r["cpu_us"] for r in results["api"]])["median"]
                bcpu = summary([r["cpu_us"] for r in results["base"]])["median"]
                print(
                    f"{name:8s} create+get {api_s['median']:7.0f} req/s "
                    f"(min {api_s['min']:.0f}, max {api_s['max']:.0f}); baseline "
                    f"{base_s['median']:7.0f} req/s; ratio {ratio['median']:.2f} "
                    f"(min {ratio['min']:.2f}, max {ratio['max']:.2f}); p50 {p50:.1f} ms, "
                    f"p99 {p99:.1f} ms (baseline p50 {bp50:.1f} ms); server CPU "
                    f"{cpu:.0f} us/req (baseline {bcpu:.0f})"
                )
                figures.update(
                    {
                        f"{name}_create_get_per_s": api_s["median"],
                        f"{name}_baseline_per_s": base_s["median"],
                        f"{name}_ratio": ratio["median"],
                        f"{name}_ratio_min": ratio["min"],
                        f"{name}_ratio_max": ratio["max"],
                        f"{name}_p50_ms": p50,
                        f"{name}_p99_ms": p99,
                        f"{name}_baseline_p50_ms": bp50,
                        f"{name}_server_cpu_us": cpu,
                        f"{name}_baseline_server_cpu_us": bcpu,
                    }
                )
            h3 = _h3_latency(servers["sqlite"], tokens["sqlite"], h3_samples)
            print(
                f"HTTP/3 GET meeting over one connection: p50 {h3['p50']:.2f} ms, "
                f"p99 {h3['p99']:.2f} ms ({h3_samples} sequential requests)"
            )
            figures["h3_get_p50_ms"] = h3["p50"]
            figures["h3_get_p99_ms"] = h3["p99"]
        finally:
            for server in servers.values():
                server.stop()
    emit("gc_api", figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
