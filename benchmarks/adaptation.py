"""Adaptive media (issue 18, docs/protocol.md §17): layer switches under a bandwidth cap, the
MH's estimate against the cap, delivery while capped, and how soon the active speaker follows
the louder voice.

The Meeting Controller and the Media Handler run in a child process at their default
settings (benchmarks/_resume_server.py); the clients run in this one, all on 127.0.0.1.

* A host publishes a simulcast video of three layers (160x120 at 50 kbit/s, 320x240 at 150,
  640x480 at 500) at 30 fps with frames of those sizes (a key frame every 2 s, 4x a delta,
  and whenever asked: a ``KeyFrameRequest`` of a layer or of the stream); it keeps encoding
  every layer (the client drops the paused ones, dynacast).
* A viewer subscribes to it with no preferred layer, pinned (LastN would hold back the video
  of a host that does not speak), its media connection through a netfault ``UdpProxy``.
  Each trial: the viewer receives the top layer; the proxy caps the
  path at 300 kbit/s (``--cap-bps``; the proxy's default queue); ``downswitch_ms`` is the
  time to the first frame of a lower layer; frames received in the 4 s capped window that
  starts 1 s after it (the MH first drains what the path holds of the higher layer: those
  frames are ``draining_delivery_p99_ms``) give ``capped_delivery_p99_ms`` (header timestamp
  to receipt, one host clock), against ``uncapped_delivery_p99_ms``, the same viewer's 2 s
  before each cap (the same-run baseline; ``capped_delivery_p99_ratio``); the viewer's last
  ``QualityUpdate.available_bitrate`` since the cap, at the window's end, against the cap gives
  ``estimate_error_ratio`` (median over trials; a trial without one is not counted); then the
  cap is lifted and ``upswitch_ms`` is the time to the first frame of the top layer again.
  ``downswitch_ms`` and ``upswitch_ms`` are p50 over the trials that switched; a trial that did
  not switch within its bound (5 s down, 8 s up) is counted in ``*_timeouts``.
* Meanwhile two speakers publish audio (50 frames/s) with synthetic levels (docs/protocol.md
  §17.1): one at -20 dBov, the other at -110; each trial swaps them, and ``speaker_switch_ms``
  (p50) is the time to the first ``ActiveSpeakers`` at the viewer that names the new one first
  (bound 3 s, else ``speaker_timeouts``).

A figure whose every trial timed out is null. ``--trials`` (default 10, ``--quick`` 3).

    python benchmarks/adaptation.py [--quick] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._adaptation_peers import (
    BASELINE_S,
    CAPPED_S,
    DOWN_BOUND_S,
    SETTLE_S,
    SPEAKER_BOUND_S,
    UP_BOUND_S,
    Publisher,
    Speakers,
    Viewer,
    join,
    open_viewer,
)
from benchmarks._bench import emit, parser, percentiles
from benchmarks._resume_peers import Stack
from benchmarks._resume_server import serve
from darktower.client import MeetingSession
from darktower.model import Role


async def video_trials(
    stack: Stack, publisher: Publisher, viewer: Viewer, trials: int, cap_bps: int
) -> dict[str, Any]:
    top = len(publisher.layers) - 1
    downs: list[float] = []
    ups: list[float] = []
    errors: list[float] = []
    capped: list[float] = []
    draining: list[float] = []
    uncapped: list[float] = []  # the baseline: the same viewer's last 2 s before each cap
    counts = {"down_timeouts": 0, "up_timeouts": 0, "never_top": 0}
    for trial in range(trials):
        if not await viewer.wait_layer(lambda layer: layer == top, UP_BOUND_S):
            counts["never_top"] += 1
        t0 = trio.current_time()
        uncapped.extend(viewer.latencies(t0 - BASELINE_S, t0))
        viewer.proxy.rate_bps = cap_bps
        down = await viewer.wait_layer(lambda layer: layer < top, DOWN_BOUND_S)
        if down is None:
            counts["down_timeouts"] += 1
        else:
            downs.append((down - t0) * 1000)
        switched = down if down is not None else t0
        window_start = switched + SETTLE_S
        await trio.sleep_until(window_start + CAPPED_S)
        window_end = trio.current_time()
        capped.extend(viewer.latencies(window_start, window_end))
        draining.extend(viewer.latencies(switched, window_start))
        estimate = viewer.estimate(t0, window_end)
        if estimate is not None:
            errors.append(abs(estimate - cap_bps) / cap_bps)
        viewer.proxy.rate_bps = None
        t1 = trio.current_time()
        up = await viewer.wait_layer(lambda layer: layer == top, UP_BOUND_S)
        if up is None:
            counts["up_timeouts"] += 1
        else:
            ups.append((up - t1) * 1000)
        print(
            f"trial {trial + 1}: down {_ms(downs, down)} up {_ms(ups, up)} estimate "
            f"{estimate if estimate is not None else '-'} bit/s, {len(capped)} capped samples",
            flush=True,
        )
    return {
        "downswitch_ms": statistics.median(downs) if downs else None,
        "upswitch_ms": statistics.median(ups) if ups else None,
        "estimate_error_ratio": statistics.median(errors) if errors else None,
        "capped_delivery_p99_ms": percentiles(capped)["p99"] if capped else None,
        "capped_delivery_p50_ms": percentiles(capped)["p50"] if capped else None,
        "capped_delivery_samples": len(capped),
        "draining_delivery_p99_ms": percentiles(draining)["p99"] if draining else None,
        "uncapped_delivery_p99_ms": percentiles(uncapped)["p99"] if uncapped else None,
        "capped_delivery_p99_ratio": (
            percentiles(capped)["p99"] / percentiles(uncapped)["p99"]
            if capped and uncapped
            else None
        ),
        "estimate_samples": len(errors),
        **counts,
    }


def _ms(values: list[float], at: float | None) -> str:
    return "-" if at is None else f"{values[-1]:.0f} ms"


async def speaker_trials(speakers: Speakers, viewer: Viewer, trials: int) -> dict[str, Any]:
    switches: list[float] = []
    timeouts = 0
    loud = 0
    speakers.loud = loud
    await viewer.wait_speaker(speakers.ids[loud], SPEAKER_BOUND_S)
    for _ in range(trials):
        await trio.sleep(1.0)  # the current one speaks for a while
        loud = 1 - loud
        t0 = trio.current_time()
        speakers.loud = loud
        at = await viewer.wait_speaker(speakers.ids[loud], SPEAKER_BOUND_S)
        if at is None:
            timeouts += 1
        else:
            switches.append((at - t0) * 1000)
    print(f"speaker switches: {[round(s) for s in switches]} ms, {timeouts} timeouts", flush=True)
    return {
        "speaker_switch_ms": statistics.median(switches) if switches else None,
        "speaker_timeouts": timeouts,
    }


async def run(stack: Stack, trials: int, cap_bps: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with AsyncExitStack() as exits:
        host = await exits.enter_async_context(join(stack, "host", Role.HOST))
        viewer = await exits.enter_async_context(open_viewer(stack))
        voices = [await exits.enter_async_context(join(stack, f"speaker-{i}")) for i in range(2)]
        async with trio.open_nursery() as nursery:
            figures.update(await measure(stack, host, viewer, voices, nursery, trials, cap_bps))
            nursery.cancel_scope.cancel()
    return figures


async def measure(
    stack: Stack,
    host: MeetingSession,
    viewer: Viewer,
    voices: list[MeetingSession],
    nursery: trio.Nursery,
    trials: int,
    cap_bps: int,
) -> dict[str, Any]:
    """The video and the speaker trials at once (the speakers' audio costs the MH little)."""
    publisher = await Publisher.start(host, nursery)
    await viewer.subscribe(publisher.publication.stream_id, publisher.layer_ids)
    speakers = await Speakers.start(voices, nursery)
    figures: dict[str, Any] = {}

    async def video() -> None:
        figures.update(await video_trials(stack, publisher, viewer, trials, cap_bps))

    async def speech() -> None:
        figures.update(await speaker_trials(speakers, viewer, trials))

    async with trio.open_nursery() as phases:
        phases.start_soon(video)
        phases.start_soon(speech)
    figures.update(
        paused_dropped=publisher.publication.paused_dropped,
        key_frame_requests=publisher.key_requests,
    )
    return figures


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, default=None, help="trials of each kind (≥ 10)")
    p.add_argument("--cap-bps", type=int, default=300_000, help="the proxy's cap, bits/s")
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key, public_key_pem
    from darktower.transport import generate_dev_certificate

    trials = args.trials or (3 if args.quick else 10)
    tmp = tempfile.mkdtemp(prefix="dt-adaptation-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(certfile), str(keyfile), str(pubkey)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        stack = Stack(
            info["signal"], info["media"], info["mh_ops"], [cert.sha256], JoinTokenIssuer(key)
        )
        figures = trio.run(run, stack, trials, args.cap_bps)
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    figures.update(
        trials=trials,
        cap_bps=args.cap_bps,
        goal_downswitch_ms=2000,
        goal_upswitch_ms=5000,
        goal_estimate_error_ratio=0.3,
        goal_capped_delivery_p99_ms=200,
        goal_speaker_switch_ms=500,
        load_avg_1m_start=load_start,
        load_avg_1m_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - started,
    )
    emit("adaptation", figures)


if __name__ == "__main__":
    main()
