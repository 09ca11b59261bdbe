"""End-to-end encryption (docs/protocol.md §16): what it costs a Python client per frame, what a
receiver loses while keys rotate, and how much of the media still gets through.

1. **Per frame** (benchmarks/_e2ee_micro.py): ``SenderKey.encrypt`` and ``Keyring.decrypt``
   of 1.2 KB and 30 KB payloads, µs per frame, the median of the rounds; beside each the same
   run's plain baseline for the same payload (``encode_frame``, ``Frame.from_wire``).
   ``encrypt_us_per_frame`` and ``decrypt_us_per_frame`` are the 1.2 KB figures.
2. **Rotations** (benchmarks/_e2ee_rotation.py): a host publishes audio and video at a steady
   rate in an encrypted meeting on the real MC and MH (a separate process; real QUIC on
   127.0.0.1), two receivers subscribe; guests join (every sender ratchets) and leave or are
   kicked (every sender rotates to a fresh key) one after the other. ``rotation_gap_frames``:
   the receivers' end-to-end encryption drops, other than the frames deliberately tampered
   with. Goal: 0.
3. **Delivery** (benchmarks/_e2ee_load.py): the same load of client-library sessions (two
   client processes) in an encrypted and in a plain meeting, interleaved A B / B A, a new
   meeting per point. ``e2ee_delivery_ratio``: the median of the per-round ratios of
   delivered frames/s, encrypted / plain, at a fixed meeting load: 4 participants, each
   publishing 500 kbit/s video (30 fps) and audio (50 fps) and subscribed to the others' (960
   frames/s delivered when nothing is lost). Goal: ≥ 0.9. Beside it the same at saturation
   (``e2ee_saturation_delivery_ratio``): 2 publishers send 1.2 KB video frames as fast as the
   client library sends them, to a subscriber reading as fast as it can, so the pipeline's
   capacity, on a shared machine a noisy figure (see its min and max); steadier there are the
   publishers' CPU per frame sent and the subscriber's per frame received, with and without
   encryption. For both: the clients' and the server's CPU per delivered frame,
   ``*_cpu_capacity_ratio`` (all CPU per delivered frame, plain / encrypted: the delivery
   ratio were CPU the only limit), the MH's drops, latency.

    python benchmarks/e2ee.py [--quick] [--rounds N]
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles, ratio_summary, summary

GOALS = {
    "rotation_gap_frames": ("<=", 0.0),
    "e2ee_delivery_ratio": (">=", 0.9),
}
LOADS = ("meeting", "sat")


def abba(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[list[float], ...]:
    """Interleaved rounds, A B then B A: a load that drifts during the run weighs on both."""
    xs: list[float] = []
    ys: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys


def delivery_part(
    server: subprocess.Popen[str],
    info: dict[str, Any],
    issuer: Any,
    meetings: dict[tuple[str, bool, int], str],
    load: str,
    rounds: int,
    warm: float,
    window: float,
) -> dict[str, Any]:
    """Part 3 for ``load``: ``rounds`` interleaved rounds, encrypted and plain."""
    from benchmarks._e2ee_load import plans, point
    from darktower.model import MeetingId, Role

    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}

    def side(encrypted: bool) -> float:
        meeting = meetings[(load, encrypted, len(runs[encrypted]))]
        tokens = [
            [str(issuer.issue(MeetingId(meeting), Role.GUEST, time.time())) for _ in plan]
            for plan in plans(load)
        ]
        result = point(
            server.pid,
            info["mh_ops"],
            info["signal"],
            info["pins"],
            meeting,
            tokens,
            load,
            warm,
            window,
        )
        if result["encrypted"] is not encrypted:
            raise RuntimeError(f"meeting {meeting}: encrypted is {result['encrypted']}")
        runs[encrypted].append(result)
        return float(result["delivered_per_s"])

    xs, ys = abba(lambda: side(True), lambda: side(False), rounds)
    return {"e2ee": runs[True], "plain": runs[False], "ratio": ratio_summary(xs, ys)}


def delivery_figures(load: str, part: dict[str, Any]) -> dict[str, Any]:
    prefix = "e2ee_saturation_delivery" if load == "sat" else "e2ee_delivery"
    ratio = part["ratio"]
    figures: dict[str, Any] = {
        f"{prefix}_ratio": ratio["median"],
        f"{prefix}_ratio_min": ratio["min"],
        f"{prefix}_ratio_max": ratio["max"],
    }
    tag = "sat" if load == "sat" else "meeting"
    for side in ("e2ee", "plain"):
        runs = part[side]
        med = {
            key: summary([r[key] for r in runs])["median"]
            for key in (
                "delivered_per_s",
                "sent_per_s",
                "mb_per_s",
                "client_cpu_us_per_frame",
                "server_cpu_us_per_frame",
                "client_cpu_share",
            )
        }
        lat = percentiles([x for r in runs for x in r["lat_ms"]])
        figures.update(
            {
                f"{tag}_{side}_delivered_per_s": med["delivered_per_s"],
                f"{tag}_{side}_sent_per_s": med["sent_per_s"],
                f"{tag}_{side}_mb_per_s": med["mb_per_s"],
                f"{tag}_{side}_client_cpu_us": med["client_cpu_us_per_frame"],
                f"{tag}_{side}_server_cpu_us": med["server_cpu_us_per_frame"],
                f"{tag}_{side}_client_cpu_share_ratio": med["client_cpu_share"],
                f"{tag}_{side}_latency_p50_ms": lat["p50"],
                f"{tag}_{side}_latency_p99_ms": lat["p99"],
                f"{tag}_{side}_e2ee_drops": sum(sum(r["e2ee_drops"].values()) for r in runs),
                f"{tag}_{side}_subscription_drops": sum(r["subscription_drops"] for r in runs),
                f"{tag}_{side}_mh_drops": sum(r["mh_drops"] for r in runs),
            }
        )
        if load == "meeting":
            share = summary([r["delivered_share"] for r in runs])["median"]
            figures[f"{tag}_{side}_delivered_share_ratio"] = share
        else:  # the publishers' process, then the subscribers'
            pub = summary([r["cpu_us_per_sent"][0] for r in runs])["median"]
            sub = summary([r["cpu_us_per_received"][1] for r in runs])["median"]
            figures[f"{tag}_{side}_publisher_cpu_us_per_sent"] = pub
            figures[f"{tag}_{side}_subscriber_cpu_us_per_received"] = sub
    cpu = ratio_summary(
        [r["client_cpu_us_per_frame"] for r in part["e2ee"]],
        [r["client_cpu_us_per_frame"] for r in part["plain"]],
    )
    figures[f"{tag}_client_cpu_e2ee_vs_plain_ratio"] = cpu["median"]
    # All CPU (clients and server) per delivered frame, plain / encrypted: the delivery ratio
    # were CPU the only limit, steadier than throughput on a shared machine.
    capacity = ratio_summary(
        [r["cpu_us_per_frame"] for r in part["plain"]],
        [r["cpu_us_per_frame"] for r in part["e2ee"]],
    )
    figures[f"{tag}_cpu_capacity_ratio"] = capacity["median"]
    figures[f"{tag}_cpu_capacity_ratio_min"] = capacity["min"]
    figures[f"{tag}_cpu_capacity_ratio_max"] = capacity["max"]
    return figures


def print_delivery(load: str, part: dict[str, Any], figures: dict[str, Any]) -> None:
    tag = "sat" if load == "sat" else "meeting"
    what = (
        "saturation (2 publishers of 1.2 KB video frames as fast as they go, 1 subscriber)"
        if load == "sat"
        else "meeting (4 participants, 500 kbit/s video + audio each, all subscribed)"
    )
    print(f"delivery, {what}, {len(part['e2ee'])} rounds each:", flush=True)
    for side in ("e2ee", "plain"):
        share = figures.get(f"{tag}_{side}_delivered_share_ratio")
        print(
            f"  {side:>5}: {figures[f'{tag}_{side}_delivered_per_s']:8.0f} frames/s delivered"
            + (f" ({share:.0%} of the load)" if share is not None else "")
            + f", {figures[f'{tag}_{side}_mb_per_s']:.1f} MB/s; clients "
            f"{figures[f'{tag}_{side}_client_cpu_us']:.1f} us/frame "
            f"({figures[f'{tag}_{side}_client_cpu_share_ratio']:.0%} of a core), server "
            f"{figures[f'{tag}_{side}_server_cpu_us']:.1f} us/frame; latency p50 "
            f"{figures[f'{tag}_{side}_latency_p50_ms']:.1f} ms p99 "
            f"{figures[f'{tag}_{side}_latency_p99_ms']:.1f} ms; e2ee drops "
            f"{figures[f'{tag}_{side}_e2ee_drops']}, subscription drops "
            f"{figures[f'{tag}_{side}_subscription_drops']}, MH drops "
            f"{figures[f'{tag}_{side}_mh_drops']:.0f}",
            flush=True,
        )
        if load == "sat":
            print(
                f"         publishers' process "
                f"{figures[f'{tag}_{side}_publisher_cpu_us_per_sent']:.1f} us CPU per frame "
                "sent, subscriber's process "
                f"{figures[f'{tag}_{side}_subscriber_cpu_us_per_received']:.1f} us CPU per "
                "frame received",
                flush=True,
            )
    ratio = part["ratio"]
    print(
        f"  delivered e2ee/plain per round: {ratio['median']:.3f} (min {ratio['min']:.3f}, max "
        f"{ratio['max']:.3f}); client CPU per frame e2ee/plain "
        f"{figures[f'{tag}_client_cpu_e2ee_vs_plain_ratio']:.2f}; all CPU per frame "
        f"plain/e2ee {figures[f'{tag}_cpu_capacity_ratio']:.3f} (min "
        f"{figures[f'{tag}_cpu_capacity_ratio_min']:.3f}, max "
        f"{figures[f'{tag}_cpu_capacity_ratio_max']:.3f})",
        flush=True,
    )


def main() -> None:
    from benchmarks._e2ee_micro import micro_figures, per_frame_costs, print_costs
    from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key, public_key_pem
    from darktower.transport import generate_dev_certificate

    args = parser((__doc__ or "").splitlines()[0]).parse_args()
    quick = args.quick
    rounds = args.rounds or (1 if quick else 5)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    figures: dict[str, Any] = {}

    micro_rounds = max(3, rounds if quick else 7)
    costs = per_frame_costs(micro_rounds, 0.2 if quick else 1.0)
    print_costs(costs, micro_rounds)
    figures.update(micro_figures(costs))
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)

    tmp = tempfile.mkdtemp(prefix="dt-bench-e2ee-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    issuer = JoinTokenIssuer(key)
    meetings = {
        (load, encrypted, r): f"{load}-{'e2ee' if encrypted else 'plain'}-{r}"
        for load in LOADS
        for encrypted in (True, False)
        for r in range(rounds)
    }
    assigned = {m: encrypted for (_, encrypted, _), m in meetings.items()}
    assigned["rotation"] = True
    files = [str(f) for f in (certfile, keyfile, pubkey)]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *files, json.dumps(assigned)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        info["pins"] = [cert.sha256.hex()]
        rotation_part(info, issuer, 4 if quick else 12, figures)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
        warm, window = (1.0, 2.0) if quick else (1.5, 4.0)
        for load in LOADS:
            part = delivery_part(server, info, issuer, meetings, load, rounds, warm, window)
            load_figures = delivery_figures(load, part)
            print_delivery(load, part, load_figures)
            figures.update(load_figures)
            print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    figures.update(
        load_avg_1m_start=load_start,
        load_avg_1m_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - started,
    )
    print(f"total {figures['elapsed_s']:.0f} s", flush=True)
    for name, (sense, goal) in GOALS.items():
        value = figures[name]
        met = value >= goal if sense == ">=" else value <= goal
        figures[f"goal_{name}"] = goal
        figures[f"goal_{name}_met"] = met
        print(f"{name}: {value:.3g} (goal {sense} {goal:g}: {'met' if met else 'MISSED'})")
    emit("e2ee", figures)


def rotation_part(info: dict[str, Any], issuer: Any, cycles: int, figures: dict[str, Any]) -> None:
    import trio

    from benchmarks._e2ee_rotation import Club, rotation

    club = Club(info["signal"], [bytes.fromhex(p) for p in info["pins"]], issuer, "rotation")
    out = trio.run(rotation, club, cycles)
    print(
        f"rotations: {out['rotation_cycles']} guests joined and left ({out['rotation_kicks']} "
        f"kicked) in {out['rotation_churn_s']:.1f} s, the host's key moved "
        f"{out['rotation_generations']} generations; 2 receivers got "
        f"{out['rotation_frames_received']} of {2 * out['rotation_frames_sent']} frames; "
        f"could not decrypt {out['rotation_gap_frames']} (besides {out['rotation_tampered_sent']}"
        f" tampered frames, dropped {out['rotation_tampered_dropped']} times), lost on the way "
        f"{out['rotation_lost_frames']}, subscription drops "
        f"{out['rotation_subscription_drops']}; the guests dropped "
        f"{out['rotation_guest_drops']} of what they were sent",
        flush=True,
    )
    figures.update(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        from benchmarks._e2ee_server import serve

        serve(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--clients":
        from benchmarks._e2ee_load import run_clients

        run_clients(sys.argv[2])
    else:
        main()
