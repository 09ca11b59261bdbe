"""Legitimate joins under a spoofed-Initial flood, and what the hostile checker leaves alive.

``python -m darktower`` runs as a subprocess on free ports of 127.0.0.1 (its own data dir).
This process is the legitimate client; the flood is another process
(``python -m darktower.loadtest._flood``): real client Initials under fresh connection IDs
from 127.0.0.2..., never answered, at ``--flood-rate`` spread over the GC's, MC's and MH's
QUIC ports.

1. **Joins, quiet and under flood, interleaved** (quiet, flood, quiet, flood ... ``--rounds``
   each): sequential joins through the client library, each timed from asking the GC for a
   join ticket (one authenticated HTTP/3 connection, reused) to a connected media session
   (MC signaling join on its own QUIC connection, then the MH media connection); then the
   participant leaves (not timed). A failed join counts with the time it took to fail
   (``join_failures_*``). Per round: p50/p99 of each side and the ratio of the p99s;
   ``join_p99_*_ms`` are the medians over rounds, ``flood_join_p99_ratio`` the median of the
   per-round ratios (goal <= 3), with min and max. Server CPU per join is read from /proc.
2. **The checker** (``darktower.loadtest.hostile``) against the same stack with a short
   budget: ``fuzz_cases_per_s`` is the malformed inputs it delivered per second of its phases;
   ``crashes`` the services found dead afterwards (goal 0; the bystander participant's fate is
   ``bystander_hurt``).

    python benchmarks/hostile.py [--quick] [--rounds 3] [--flood-rate 500]
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles

JOINS = 40  # per side per round (--quick: 10)
FLOOD_RATE = 500.0  # Initials per second, over the three QUIC ports (--quick: 300)
FLOOD_SOURCES = 32
CHECKER_BUDGET_S = 15.0  # (--quick: 5)
JOIN_TIMEOUT_S = 15.0  # a join that takes longer counts as failed, with this time
STARTUP_S = 60.0
WARMUP_JOINS = 5


def _free_ports() -> dict[str, int]:
    """Ports free on 127.0.0.1 now (all held at once, so they differ; the API port is free
    for TCP and UDP)."""
    names = {
        "api": (socket.SOCK_STREAM, socket.SOCK_DGRAM),
        "page": (socket.SOCK_STREAM,),
        "signal": (socket.SOCK_DGRAM,),
        "media": (socket.SOCK_DGRAM,),
        "gc_grpc": (socket.SOCK_STREAM,),
        "mc_grpc": (socket.SOCK_STREAM,),
        "mh_grpc": (socket.SOCK_STREAM,),
        "mc_ops": (socket.SOCK_STREAM,),
        "mh_ops": (socket.SOCK_STREAM,),
    }
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name, kinds in names.items():
            while True:
                first = socket.socket(socket.AF_INET, kinds[0])
                first.bind(("127.0.0.1", 0))
                port = first.getsockname()[1]
                others = []
                try:
                    for kind in kinds[1:]:
                        other = socket.socket(socket.AF_INET, kind)
                        others.append(other)
                        other.bind(("127.0.0.1", port))
                except OSError:
                    for sock in (first, *others):
                        sock.close()
                    continue
                held += [first, *others]
                ports[name] = port
                break
    finally:
        for sock in held:
            sock.close()
    return ports


def _start_stack(data_dir: str, ports: dict[str, int], log: Any) -> subprocess.Popen[str]:
    # Every measured join asks the GC for a join token: more than its default 100 a minute.
    argv = [sys.executable, "-m", "darktower", "--data-dir", data_dir, "--drain-grace-s=1"]
    argv += ["--rate-limit-per-min=100000"]
    argv += [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKTOWER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)


def _wait_running(stack: subprocess.Popen[str]) -> None:
    assert stack.stdout is not None
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        line = stack.stdout.readline()
        if not line:
            raise RuntimeError("python -m darktower exited before it was running")
        if "dev client id" in line:
            return
    raise RuntimeError("python -m darktower was not running in time")


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    ports: dict[str, int], pid: int, rounds: int, joins: int, rate: float, budget_s: float
) -> dict[str, Any]:
    import trio

    from darktower.client import (
        fetch_dev_access,
        media_url,
        open_gc_client,
        open_media_client,
        open_signaling,
    )
    from darktower.loadtest.hostile import Options, Targets, run_hostile

    page = f"http://127.0.0.1:{ports['page']}/"
    api = f"https://127.0.0.1:{ports['api']}"
    access = await fetch_dev_access(page)
    pins = [access.certificate_sha256]
    figures: dict[str, Any] = {}

    async with open_gc_client(api, server_certificate_hashes=pins) as gc:
        await gc.authenticate(access.client_id, access.client_secret)
        meeting = (await gc.create_meeting("bench-hostile", max_participants=1000)).meeting_id

        causes: collections.Counter[str] = collections.Counter()

        async def join_once() -> tuple[float, bool]:
            started = time.perf_counter()
            try:
                with trio.fail_after(JOIN_TIMEOUT_S):
                    ticket = await gc.join_meeting(meeting, "bench")
                    async with open_signaling(
                        ticket.meeting_controller_url,
                        meeting_id=meeting,
                        join_token=ticket.join_token,
                        server_certificate_hashes=pins,
                        origin=gc.origin,
                    ) as signaling:
                        async with open_media_client(
                            media_url(signaling.join_response),
                            server_certificate_hashes=pins,
                            origin=gc.origin,
                        ):
                            elapsed = time.perf_counter() - started
                        await signaling.leave()
                return elapsed, True
            except Exception as exc:
                causes[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
                return time.perf_counter() - started, False

        async def side(n: int) -> tuple[list[float], int, float]:
            cpu = _cpu_s(pid)
            samples, failures = [], 0
            for _ in range(n):
                seconds, ok = await join_once()
                samples.append(seconds)
                failures += not ok
            return samples, failures, _cpu_s(pid) - cpu

        for _ in range(WARMUP_JOINS):
            await join_once()

        quiet: list[list[float]] = []
        flooded: list[list[float]] = []
        failures = {"quiet": 0, "flood": 0}
        cpu = {"quiet": 0.0, "flood": 0.0}
        achieved: list[float] = []
        targets = [f"127.0.0.1:{ports[n]}" for n in ("signal", "media", "api")]
        for r in range(rounds):
            samples, failed, used = await side(joins)
            quiet.append(samples)
            failures["quiet"] += failed
            cpu["quiet"] += used
            argv = [sys.executable, "-m", "darktower.loadtest._flood", "--rate", str(rate)]
            argv += ["--sources", str(FLOOD_SOURCES), "--max-s", "300"]
            for target in targets:
                argv += ["--target", target]
            flood = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            try:
                assert flood.stdout is not None and flood.stdin is not None
                lines = _lines(flood.stdout)
                ready = json.loads(await lines.__anext__())
                assert ready.get("ready"), ready
                samples, failed, used = await side(joins)
                flooded.append(samples)
                failures["flood"] += failed
                cpu["flood"] += used
                await flood.stdin.send_all(b"\n")
                result = json.loads(await lines.__anext__())
                achieved.append(float(result["per_s"]))
            finally:
                if flood.returncode is None:
                    flood.kill()
                await flood.wait()
            q, f = percentiles(quiet[-1]), percentiles(flooded[-1])
            print(
                f"round {r + 1}: quiet p50 {q['p50'] * 1000:.0f} ms p99 {q['p99'] * 1000:.0f} ms;"
                f" under {achieved[-1]:.0f} Initials/s p50 {f['p50'] * 1000:.0f} ms"
                f" p99 {f['p99'] * 1000:.0f} ms",
                flush=True,
            )
        with trio.move_on_after(5):
            try:
                await gc.end_meeting(meeting)
            except Exception:  # the GC's fate is reported by the checker below
                pass

    for cause, count in causes.most_common():
        print(f"join failed {count}x: {cause}", file=sys.stderr)
    q99 = [percentiles(s)["p99"] * 1000 for s in quiet]
    f99 = [percentiles(s)["p99"] * 1000 for s in flooded]
    ratios = [f / q for q, f in zip(q99, f99, strict=True) if q]
    all_q = [x for s in quiet for x in s]
    all_f = [x for s in flooded for x in s]
    figures.update(
        {
            "join_p99_quiet_ms": statistics.median(q99),
            "join_p99_under_flood_ms": statistics.median(f99),
            "flood_initials_per_s": statistics.median(achieved),
            "flood_join_p99_ratio": statistics.median(ratios),
            "flood_join_p99_ratio_min": min(ratios),
            "flood_join_p99_ratio_max": max(ratios),
            "join_p50_quiet_ms": percentiles(all_q)["p50"] * 1000,
            "join_p50_under_flood_ms": percentiles(all_f)["p50"] * 1000,
            "join_failures_quiet": failures["quiet"],
            "join_failures_under_flood": failures["flood"],
            "joins_per_side": len(all_q),
            "rounds": rounds,
            "flood_target_initials_per_s": rate,
            "server_cpu_ms_per_join_quiet": cpu["quiet"] / len(all_q) * 1000,
            "server_cpu_ms_per_join_under_flood": cpu["flood"] / len(all_f) * 1000,
        }
    )

    targets_all = Targets.on(
        "127.0.0.1",
        ports["api"],
        ports["page"],
        ports["signal"],
        ports["media"],
        (ports["gc_grpc"], ports["mc_grpc"], ports["mh_grpc"]),
        (ports["mc_ops"], ports["mh_ops"]),
    )
    report = await run_hostile(
        targets_all,
        Options(
            budget_s=budget_s,
            cases=200,
            seed=12,
            client_id=access.client_id,
            client_secret=access.client_secret,
            cert_sha256=access.certificate_sha256,
        ),
    )
    print(report.text(), flush=True)
    figures["fuzz_cases_per_s"] = report.cases_per_s
    figures["fuzz_cases"] = report.cases
    figures["crashes"] = sum(
        1 for c in report.checks if not c.alive and c.name != "bystander participant"
    )
    figures["bystander_hurt"] = int("bystander participant" in report.dead)
    return figures


async def _lines(stream: Any) -> Any:
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise RuntimeError("the flood process ended early")
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        yield line.decode()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--flood-rate", type=float, default=None, help="spoofed Initials per second")
    args = p.parse_args()
    import trio

    rounds = max(3, args.rounds or 3)
    joins = 10 if args.quick else JOINS
    rate = args.flood_rate or (300.0 if args.quick else FLOOD_RATE)
    budget = 5.0 if args.quick else CHECKER_BUDGET_S
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dt-hostile-bench-") as tmp:
        ports = _free_ports()
        with open(pathlib.Path(tmp) / "stack.log", "w") as log:
            stack = _start_stack(str(pathlib.Path(tmp) / "data"), ports, log)
            try:
                _wait_running(stack)
                figures = trio.run(_measure, ports, stack.pid, rounds, joins, rate, budget)
                if stack.poll() is not None:
                    figures["crashes"] = max(figures["crashes"], 3)
            finally:
                if stack.poll() is None:
                    stack.terminate()
                    try:
                        stack.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        stack.kill()
                        stack.wait()
        # A dead stack's traceback in full; otherwise the last lines.
        lines = (pathlib.Path(tmp) / "stack.log").read_text().splitlines()
        tail = lines[-80:] if figures.get("crashes") else lines[-5:]
        if tail:
            print("stack log (last lines):", *tail, sep="\n  ")
    figures["elapsed_s"] = time.monotonic() - started
    figures["goal_flood_join_p99_ratio"] = 3
    figures["goal_crashes"] = 0
    emit("hostile", figures)


if __name__ == "__main__":
    main()
