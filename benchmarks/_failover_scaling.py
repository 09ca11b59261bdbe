"""``media_workers_scaling``: delivered frames/s with ``python -m darktower.media --workers 2``
over ``--workers 1``, the same load, interleaved in one run (part of benchmarks/failover.py;
also runnable alone).

The load is media_fanout's saturation shape, in ROOMS rooms: in each, one publisher writes
1,046-byte frames as fast as the MH takes them to SAT_RECEIVERS subscribers, which count bytes
without decoding. By default every publisher and subscriber is a WebTransport session of one
headless Chromium page (benchmarks/_scaling_browser.py): Chromium's native QUIC stack is the
cheapest client on this machine (``--load python``: LOAD_PROCESSES processes of the project's
own client, which cost about as much CPU per frame as the MH). Rooms are placed round-robin
over the supervisor's workers by this driver, registering the participants as an MC would
(gRPC, an MC certificate of the run's cluster CA): the MHs' own work, not the MC's, is what
scales here. Both supervisors (``--workers 1`` and ``--workers 2``, each worker certificate
issued by the supervisor from ``--worker-ca-dir``) stay up for the whole run; each round is
one point of each, alternating A B / B A, with new rooms and a new load per point.

Figures beside the ratio: each side's delivered frames/s, the MH workers' CPU per delivered
frame (µs, from /proc) and cores used, and the load's (its whole process tree) over the same
window. The load shares the two cores with the MHs: with one worker the MH is bound by its one
core, with two by what the load leaves of two. ``media_workers_scaling_cpu_bound`` is the
ratio those CPU costs allow at best (cores x MH CPU per frame / (MH + load CPU per frame),
at most the worker count); ``mh_cpu_per_frame_ratio`` (2 workers over 1) near 1 says the
workers share no bottleneck of their own (docs/decisions.md, "Media workers on two cores").

    python benchmarks/_failover_scaling.py [--quick] [--rounds N]
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, ratio_summary, summary
from benchmarks._cluster import IDS
from benchmarks._fanout_load import SAT_KEY_EVERY, SAT_PAYLOAD, SAT_RECEIVERS, _register
from benchmarks.transport_relay import _cpu_s

ROOMS = 4
LOAD_PROCESSES = 4  # one room each
WORKER_COUNTS = (1, 2)
START_S = 60.0  # a supervisor's workers all running (interpreters start on a busy machine)
DRAIN_GRACE_S = 1.0
KEY = "media_workers_scaling"


# --- the MH supervisor --------------------------------------------------------------------
class Workers:
    """``python -m darktower.media --workers N`` with every port 0; its workers' gRPC ports
    and pids are read from its log (a thread reads it to the end, so the pipe never fills)."""

    def __init__(self, count: int, directory: str, certfile: str, keyfile: str) -> None:
        self.count = count
        self.cluster = directory
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "darktower.media",
                f"--workers={count}",
                f"--handler-id=bench-{count}w",
                f"--worker-ca-dir={directory}",
                "--port=0",
                "--grpc-port=0",
                "--ops-port=0",
                f"--certfile={certfile}",
                f"--keyfile={keyfile}",
                f"--budget-in-bytes-per-s={1 << 30}",
                f"--budget-out-bytes-per-s={1 << 30}",
                f"--drain-grace-s={DRAIN_GRACE_S}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("DARKTOWER_")},
        )
        self.grpc: list[int] = []
        self.pids: list[int] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(START_S):
            self.close()
            raise RuntimeError(f"--workers {count}: not running within {START_S} s")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "media handler running":
                self.grpc.append(int(record["grpc"].rsplit(":", 1)[1]))
            elif record.get("msg") == "media worker started":
                self.pids.append(int(record["pid"]))
            elif record.get("level") in ("warning", "error"):
                print(f"  (--workers {self.count}: {line.strip()})", flush=True)
            if len(self.grpc) >= self.count and len(self.pids) >= self.count:
                self._ready.set()

    def cpu_s(self) -> float:
        return sum(_cpu_s(pid) for pid in self.pids[-self.count :])

    def close(self) -> None:
        self.proc.terminate()  # the workers drain; the supervisor exits 0
        try:
            self.proc.wait(timeout=DRAIN_GRACE_S + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- one point ----------------------------------------------------------------------------
def _room(workers: Workers, index: int) -> dict[str, Any]:
    """A new room on worker ``index % count``: its sender's and receivers' URLs."""
    stream = str(uuid.uuid4())
    plan: dict[str, list[dict[str, Any]]] = {"s": [{"stream_id": stream, "stream_type": 1}]}
    plan.update({f"r{i}": [] for i in range(SAT_RECEIVERS)})
    grpc = workers.grpc[index % workers.count]
    urls = _register(grpc, str(uuid.uuid4()), plan, workers.cluster)
    receivers = [urls[f"r{i}"] for i in range(SAT_RECEIVERS)]
    return {"sender": urls["s"], "stream": stream, "receivers": receivers}


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every process below it (Chromium's browser, renderer and
    network processes under the load process); processes that exited are not counted."""
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    total = 0.0
    for pid in parents:
        up, hops = pid, 0
        while up not in (0, 1, root) and up in parents and hops < 64:  # a pid reused mid-scan
            up, hops = parents[up], hops + 1
        if up == root:
            with contextlib.suppress(OSError):
                total += _cpu_s(pid)
    return total


def _load_processes(
    rooms: list[dict[str, Any]], cert_hash: str, warm: float, window: float, load: str
) -> list[subprocess.Popen[str]]:
    """The load: one headless Chromium for every room (``browser``), or LOAD_PROCESSES
    Python processes (``python``), all waiting for a line on stdin."""
    here = pathlib.Path(__file__).resolve()
    if load == "browser":
        script, groups = str(here.parent / "_scaling_browser.py"), [rooms]
        argv = [[sys.executable, script, json.dumps(rooms)]]
    else:
        groups = [rooms[i::LOAD_PROCESSES] for i in range(LOAD_PROCESSES)]
        argv = [[sys.executable, str(here), "--load-process", json.dumps(g)] for g in groups]
    return [
        subprocess.Popen(
            [*a, cert_hash, str(warm), str(window)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for a in argv
    ]


def point(
    workers: Workers, cert_hash: str, warm: float, window: float, load: str = "browser"
) -> dict[str, float]:
    """ROOMS new rooms over ``workers`` and their load, started together; the delivered
    frames/s over ``window`` after ``warm`` s, the MHs' CPU and the load's."""
    rooms = [_room(workers, i) for i in range(ROOMS)]
    procs = _load_processes(rooms, cert_hash, warm, window, load)
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a load process did not get ready ({p.wait()})")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(warm)  # the load processes count from here: CPU is read alike
        cpu0, load0 = workers.cpu_s(), sum(_tree_cpu_s(p.pid) for p in procs)
        time.sleep(window)
        cpu1, load1 = workers.cpu_s(), sum(_tree_cpu_s(p.pid) for p in procs)
        results = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a load process exited ({p.wait()}) without its figures")
            results.append(json.loads(line))
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    if errors := sum(r.get("errors", 0) for r in results):
        print(f"  ({errors} load sessions failed during the point)", flush=True)
    frames = sum(r["frames"] for r in results)
    rate = sum(r["frames"] / r["elapsed"] for r in results)
    return {
        "rate": rate,
        "mh_cpu_us": (cpu1 - cpu0) * 1e6 / max(1.0, frames),
        "mh_cores": (cpu1 - cpu0) / window,
        "load_cores": (load1 - load0) / window,
        "load_cpu_us": (load1 - load0) * 1e6 / max(1.0, frames),
    }


def measure_workers_scaling(
    *,
    quick: bool = False,
    rounds: int | None = None,
    load: str = "browser",
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the measurement (module docstring) and return its figures: ``media_workers_scaling``
    (the median of the per-round ratios) and the figures behind it. Starts and stops its own
    processes (all on 127.0.0.1); under a minute with ``quick``, two or three without."""
    from darktower.servicekit import ClusterCa, ServiceIdentity, ServiceRole
    from darktower.transport import generate_dev_certificate

    rounds = rounds or (1 if quick else 4)
    warm, window = (0.8, 1.5) if quick else (1.0, 3.0)
    with tempfile.TemporaryDirectory(prefix="dt-bench-workers-") as tmp:
        cert = generate_dev_certificate()
        certfile, keyfile = cert.write(tmp)
        ca = ClusterCa.create("Dark Tower benchmark cluster CA")
        ca.write(tmp)  # the supervisors issue their workers' certificates (--worker-ca-dir)
        ca.issue(ServiceIdentity(ServiceRole.MC, IDS[ServiceRole.MC])).write(tmp)  # the driver
        sides: dict[int, list[dict[str, float]]] = {n: [] for n in WORKER_COUNTS}
        supervisors: list[Workers] = []
        try:
            for n in WORKER_COUNTS:
                supervisors.append(Workers(n, tmp, str(certfile), str(keyfile)))
            for r in range(max(1, rounds)):
                order = supervisors if r % 2 == 0 else supervisors[::-1]
                for workers in order:
                    sides[workers.count].append(
                        point(workers, cert.sha256.hex(), warm, window, load)
                    )
        finally:
            for workers in supervisors:
                workers.close()
    one, two = sides[1], sides[2]
    ratio = ratio_summary([p["rate"] for p in two], [p["rate"] for p in one])
    cpu = ratio_summary([p["mh_cpu_us"] for p in two], [p["mh_cpu_us"] for p in one])
    figures: dict[str, float] = {
        KEY: ratio["median"],
        f"{KEY}_min": ratio["min"],
        f"{KEY}_max": ratio["max"],
        "mh_cpu_per_frame_ratio": cpu["median"],  # workers 2 / workers 1: ~1, nothing shared
        "machine_cores": float(len(os.sched_getaffinity(0))),
        "rounds": float(len(one)),
    }
    for n, points in sides.items():
        figures.update(
            {
                f"workers{n}_delivered_per_s": summary([p["rate"] for p in points])["median"],
                f"workers{n}_mh_cpu_us": summary([p["mh_cpu_us"] for p in points])["median"],
                f"workers{n}_mh_cores_ratio": summary([p["mh_cores"] for p in points])["median"],
                f"workers{n}_load_cores_ratio": summary([p["load_cores"] for p in points])[
                    "median"
                ],
                f"workers{n}_load_cpu_us": summary([p["load_cpu_us"] for p in points])["median"],
            }
        )
    # What the two cores allow at best: one worker is bound by its core; two by the machine's
    # cores shared with the load, at the CPU per frame each side was measured to cost.
    mh_us, load_us = figures["workers2_mh_cpu_us"], figures["workers2_load_cpu_us"]
    cores = figures["machine_cores"]
    figures[f"{KEY}_cpu_bound"] = round(min(2.0, cores * mh_us / (mh_us + load_us)), 3)
    for n in WORKER_COUNTS:
        log(
            f"--workers {n}: {figures[f'workers{n}_delivered_per_s']:8.0f} frames/s delivered, "
            f"{figures[f'workers{n}_mh_cpu_us']:5.1f} us of MH CPU per frame, MH cores "
            f"{figures[f'workers{n}_mh_cores_ratio']:.2f}, load cores "
            f"{figures[f'workers{n}_load_cores_ratio']:.2f}"
        )
    log(
        f"{KEY} {figures[KEY]:.2f} (min {figures[f'{KEY}_min']:.2f} max "
        f"{figures[f'{KEY}_max']:.2f}, {len(one)} rounds; goal >= 1.6 on two cores); MH CPU per "
        f"frame, 2 workers over 1: {figures['mh_cpu_per_frame_ratio']:.2f}; at best with this "
        f"load on {cores:.0f} cores: {figures[f'{KEY}_cpu_bound']:.2f}"
    )
    return figures


# --- a load process -----------------------------------------------------------------------
def run_load(rooms_json: str, cert_hash: str, warm: float, window: float) -> None:
    """The rooms of ``rooms_json`` ({sender, stream, receivers}) in this process: connect all,
    print READY, start sending at a line on stdin, count the receivers' bytes over ``window``
    from ``warm`` s later, print {"frames", "elapsed"}."""
    import trio

    from benchmarks._scaling_browser import encoded_frames
    from darktower.frames import HEADER_SIZE
    from darktower.transport import StreamReset, TransportLimits, connect_webtransport

    rooms = json.loads(rooms_json)
    pinned = [bytes.fromhex(cert_hash)]
    counted = [0]
    counting = False

    async def read(stream: Any) -> None:
        with contextlib.suppress(StreamReset):  # an abandoned send (the MH goes on anew)
            while data := await stream.receive_some(1 << 20):
                if counting:
                    counted[0] += len(data)

    async def receiver(url: str, *, task_status: trio.TaskStatus[None]) -> None:
        """Every uni stream the MH opens: under saturation it resets a stream whose sends the
        receiver did not take in time and carries on on a new one."""
        async with connect_webtransport(url, server_certificate_hashes=pinned) as session:
            task_status.started()
            async with trio.open_nursery() as streams:
                while True:
                    streams.start_soon(read, await session.accept_stream())

    async def sender(room: dict[str, Any], go: trio.Event, *, task_status: Any) -> None:
        limits = TransportLimits(stream_send_high_water=64 * 1024)
        async with connect_webtransport(
            room["sender"], server_certificate_hashes=pinned, limits=limits
        ) as session:
            stream = await session.open_bidirectional_stream()
            task_status.started()
            key, delta = encoded_frames(room["stream"])
            await go.wait()
            for i in range(10**12):
                await stream.send_all(key if i % SAT_KEY_EVERY == 0 else delta)

    async def main() -> None:
        nonlocal counting
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for room in rooms:
                for url in room["receivers"]:
                    await nursery.start(receiver, url)
                await nursery.start(sender, room, go)
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()
            await trio.sleep(warm)
            counting = True
            start = trio.current_time()
            await trio.sleep(window)
            counting = False
            elapsed = trio.current_time() - start
            frames = counted[0] / (SAT_PAYLOAD + HEADER_SIZE)
            print(json.dumps({"frames": frames, "elapsed": elapsed}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--load", choices=("browser", "python"), default="browser")
    args = cli.parse_args()
    figures = measure_workers_scaling(quick=args.quick, rounds=args.rounds, load=args.load)
    emit("failover_scaling", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load-process":
        run_load(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
