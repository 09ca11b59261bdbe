"""Failover (docs/architecture.md §4.6, docs/protocol.md §13): what participants see when a Media
Handler or a Meeting Controller dies or drains during a live meeting, and what a second MH
worker adds.

Every service is the operator's launcher in its own process on 127.0.0.1, at its defaults;
the participants are client-library sessions in this process, four per meeting, each sending
audio at 50 fps (one also video at 30 fps) and receiving everyone else's.

1. **MH killed** (benchmarks/_failover_mh.py): an MC and ``python -m darktower.media --workers
   2``; SIGKILL of the worker hosting the room, 10 times (``--quick``: 4), the two workers
   taking turns (each restarted by the supervisor and registered again before the next kill).
   ``mh_failover_media_*``: from the kill to each participant's first frame from the worker the
   room moved to (the first on the media connection the MC's MediaReconnect named).
2. **MH drained**: the same with SIGTERM, 8 times (``--quick``: 3), on services of its own.
   ``mh_drain_media_gap_*``: each participant's longest gap between received frames from
   0.5 s before the SIGTERM to 1 s after its media came from the other worker (beside it
   ``mh_drain_baseline_gap_*``, the same participant's longest gap just before).
3. **MC killed** (benchmarks/_failover_mc.py): a GC, two MCs with an MH each; participants
   joined through the GC; SIGKILL of the meeting's MC, 4 times (``--quick``: 1), the killed
   MC started again before the next. ``mc_failover_rejoin_*``: from the kill to each
   participant's Rejoined (back in the meeting at the other MC).
4. **Workers** (benchmarks/_failover_scaling.py): ``media_workers_scaling``, delivered frames/s
   with ``--workers 2`` over ``--workers 1``, same load (headless Chromium's WebTransport
   sessions, the cheapest client on the machine), interleaved rounds, with the bound the two
   cores allow (docs/decisions.md, "Media workers on two cores").

A miss (media not back within 30 s) counts as 30 s in the percentiles and is counted apart.
Progress lines go to stderr, the JSON line to stdout.

    python benchmarks/failover.py [--quick] [--rounds N] [--verbose]
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser
from benchmarks._failover_mc import mc_figures, mc_phase
from benchmarks._failover_mh import drain_figures, kill_figures, mh_phase
from benchmarks._failover_procs import open_services
from benchmarks._failover_scaling import measure_workers_scaling
from benchmarks._fanout_runs import udp_rcvbuf_errors

COUNTS = {True: (4, 3, 1), False: (10, 8, 4)}  # --quick: (MH kills, MH drains, MC kills)
GOALS = {
    "goal_mh_failover_media_p99_ms": 3000,
    "goal_mc_failover_rejoin_p99_ms": 5000,
    "goal_mh_drain_media_gap_p99_ms": 2000,
    "goal_media_workers_scaling": 1.6,
}
# The figures a failed phase leaves empty (null), with its note.
PHASE_KEYS = {
    "mh_failover": ("mh_failover_media_p50_ms", "mh_failover_media_p99_ms"),
    "mh_drain": ("mh_drain_media_gap_p99_ms",),
    "mc_failover": ("mc_failover_rejoin_p99_ms",),
    "media_workers_scaling": ("media_workers_scaling",),
}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _phase(
    name: str, figures: dict[str, Any], measure: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """One phase's figures; a phase that fails leaves its figures null and says why."""
    began = time.monotonic()
    try:
        figures.update(await measure())
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        figures.update(dict.fromkeys(PHASE_KEYS[name]))
        figures[f"{name}_note"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        log(f"{name}: failed ({figures[f'{name}_note']})")
    log(f"  ({time.monotonic() - began:.0f} s)")


async def run(directory: pathlib.Path, quick: bool, verbose: bool) -> dict[str, Any]:
    kills, drains, mc_kills = COUNTS[quick]
    figures: dict[str, Any] = {}
    async with open_services(str(directory)) as services:

        async def mh_kills() -> dict[str, Any]:
            runs = await mh_phase(services, directory / "kills", signal.SIGKILL, kills, verbose)
            return kill_figures(runs, log)

        async def mh_drains() -> dict[str, Any]:
            runs = await mh_phase(services, directory / "drains", signal.SIGTERM, drains, verbose)
            return drain_figures(runs, log)

        async def mc_kills_() -> dict[str, Any]:
            runs, note = await mc_phase(services, directory / "mc", mc_kills, verbose)
            return mc_figures(runs, note, log)

        log(f"MH killed: {kills} x SIGKILL of the room's worker")
        await _phase("mh_failover", figures, mh_kills)
        log(f"MH drained: {drains} x SIGTERM of the room's worker")
        await _phase("mh_drain", figures, mh_drains)
        log(f"MC killed: {mc_kills} x SIGKILL of the meeting's MC")
        await _phase("mc_failover", figures, mc_kills_)
    return figures


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--verbose", action="store_true", help="print every failure's samples")
    args = p.parse_args()
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    overflows = udp_rcvbuf_errors()
    with tempfile.TemporaryDirectory(prefix="dt-failover-bench-") as tmp:
        figures = trio.run(run, pathlib.Path(tmp), args.quick, args.verbose)

    async def scaling() -> dict[str, Any]:
        return await trio.to_thread.run_sync(
            lambda: measure_workers_scaling(quick=args.quick, rounds=args.rounds, log=log)
        )

    log("Workers: --workers 2 over --workers 1, same load")
    trio.run(_phase, "media_workers_scaling", figures, scaling)
    figures.update(
        GOALS,
        udp_rcvbuf_overflows=udp_rcvbuf_errors() - overflows,
        load_avg_1m_start=load_start,
        load_avg_1m_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - started,
    )
    emit("failover", figures)


if __name__ == "__main__":
    main()
