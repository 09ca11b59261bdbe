"""Media fan-out through the Media Handler, against the raw transport relay, same run.

The MH server and the clients run in separate processes on 127.0.0.1. Four measurements:

1. **Saturation, same bytes as the relay.** One publisher writes 1,046-byte frames (46-byte
   header + 1,000 bytes) as fast as it can to N = 5 subscribers; interleaved, round by round,
   with ``benchmarks/transport_relay.py``'s relay (our transport, 1,046-byte messages, N = 5
   receivers). The MH's load generator is shaped like the relay's (ready-made frames, one per
   write; receivers count bytes without decoding), both servers stay up for all rounds, and
   rounds alternate A B / B A. Delivered frames/s, MB/s, server CPU µs per delivered frame;
   the median of the per-round throughput ratios MH/relay (goal ≥ 0.85) and of the CPU ratios
   relay/MH (µs per delivered message over µs per delivered frame: the throughput ratio each
   would reach on a core of its own, steadier than throughput on a shared machine).
2. **Latency at 70 % of saturation.** The same fan-out, the publisher paced at 0.7 x the MH's
   saturation rate of step 1; the publisher, four subscribers and a fifth subscriber in three
   processes; one MH for steps 2-4, a new meeting per point. Added latency p50/p99 = subscriber read - publisher write, both ``time.monotonic_ns`` (one
   host clock), the write time carried in the payload's first 8 bytes. Goal: p99 ≤ 10 ms. The
   baseline, in the same rounds: the raw relay carrying the same stamped 1,046-byte records at
   the same rate to four receivers; "added by the MH" is the difference.
3. **A slow subscriber.** Step 2 interleaved with the same load where the fifth subscriber reads
   at a tenth of the rate. The figure is the four others' p99, with and without it, and the
   change in % (goal: ≤ 10 %); the MH's drops (by policy, for the slow one) are printed.
4. **Participants per core.** 6-person meetings: each participant publishes video at
   500 kbit/s (30 fps; a 30 KB key frame every 2 s and deltas that make up the rate) and audio
   (50 fps of 120 bytes) and subscribes to the five others; two client processes. The MH's CPU
   per participant gives how many such participants one MH process sustains per core (scaled
   by the share of the expected frames that were delivered, if the clients fell behind).

After each step: the machine's UDP receive-buffer overflows (``/proc/net/snmp``), the usual
cause of loss, and so of latency, when processes are starved of CPU.

    python benchmarks/media_fanout.py [--quick] [--rounds 5]
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles, ratio_summary, summary
from benchmarks._cluster import write_cluster
from benchmarks._fanout_load import (
    LOAD_SHARE,
    MEETING,
    MEETING_WARM_S,
    SAT_RECEIVERS,
    SLOW_BACKLOG_FRAMES,
    SLOW_FACTOR,
    SLOW_WARM_MAX_S,
    VIDEO_BITS_PER_S,
    run_clients,
    saturation_load,
    serve_mh,
)
from benchmarks._fanout_runs import (
    MH,
    abba,
    fanout_at,
    meeting,
    mh_saturation,
    relay_at,
    relay_saturation,
    udp_rcvbuf_errors,
)
from benchmarks.transport_relay import Server as RelayServer


def saturation_phase(
    files: tuple[str, str, str], rounds: int, warm: float, win: float, figures: dict[str, Any]
) -> float:
    """Step 1; returns the MH's saturation rate (delivered frames/s, median). Both servers
    run through all rounds (fresh clients and a new meeting each round), like for like."""
    certfile, keyfile, cert_hash = files
    mh_runs: list[dict[str, float]] = []
    relay_runs: list[dict[str, float]] = []
    mh, relay = MH(certfile, keyfile), RelayServer("ours", certfile, keyfile)
    try:

        def a() -> float:
            mh_runs.append(mh_saturation(mh, cert_hash, warm, win))
            return mh_runs[-1]["rate"]

        def b() -> float:
            relay_runs.append(relay_saturation(relay, cert_hash, warm, win))
            return relay_runs[-1]["rate"]

        xs, ys = abba(a, b, rounds)
    finally:
        mh.close()
        relay.close()
    ratio = ratio_summary(xs, ys)
    mh_cpu = [r["cpu_us"] for r in mh_runs]
    relay_cpu = [r["cpu_us"] for r in relay_runs]
    cpu_ratio = ratio_summary(relay_cpu, mh_cpu)
    sat = summary(xs)["median"]
    mb = summary([r["mb_per_s"] for r in mh_runs])["median"]
    drops = summary([r["dropped"] for r in mh_runs])["median"]
    print(
        f"saturation N={SAT_RECEIVERS} ({len(xs)} rounds): MH {sat:8.0f} frames/s {mb:6.1f} MB/s "
        f"{summary(mh_cpu)['median']:6.1f} us/frame | relay {summary(ys)['median']:8.0f} msg/s "
        f"{summary(relay_cpu)['median']:6.1f} us/msg",
        flush=True,
    )
    print(
        f"  throughput ratio MH/relay {ratio['median']:.2f} (min {ratio['min']:.2f} max "
        f"{ratio['max']:.2f}; goal >= 0.85) | CPU ratio relay/MH {cpu_ratio['median']:.2f} "
        f"(min {cpu_ratio['min']:.2f} max {cpu_ratio['max']:.2f}) | MH drops {drops:.0f}",
        flush=True,
    )
    figures.update(
        {
            "sat_mh_delivered_per_s": sat,
            "sat_mh_mb_per_s": mb,
            "sat_mh_server_cpu_us": summary(mh_cpu)["median"],
            "sat_mh_drops": drops,
            "sat_relay_delivered_per_s": summary(ys)["median"],
            "sat_relay_server_cpu_us": summary(relay_cpu)["median"],
            "sat_throughput_ratio": ratio["median"],
            "sat_throughput_ratio_min": ratio["min"],
            "sat_throughput_ratio_max": ratio["max"],
            "sat_cpu_ratio": cpu_ratio["median"],
            "sat_cpu_ratio_min": cpu_ratio["min"],
            "sat_cpu_ratio_max": cpu_ratio["max"],
        }
    )
    return sat


def latency_phase(
    mh: MH,
    relay: RelayServer,
    cert_hash: str,
    rate: float,
    rounds: int,
    warm: float,
    win: float,
    figures: dict[str, Any],
) -> None:
    """Steps 2 and 3 at ``rate`` published frames/s, and the relay's latency at the same rate
    as the baseline; each round runs the three in a rotated order."""
    plain: list[dict[str, Any]] = []
    slowed: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    points = [
        lambda: plain.append(fanout_at(mh, cert_hash, rate, warm, win, slow=False)),
        lambda: slowed.append(fanout_at(mh, cert_hash, rate, warm, win, slow=True)),
        lambda: base.append(relay_at(relay, cert_hash, rate, warm, win)),
    ]
    for i in range(1 if rounds < 3 else rounds):
        for k in range(len(points)):
            points[(i + k) % len(points)]()
    p99_plain = [float(m["p99"]) for m in plain]
    p99_slow = [float(m["p99"]) for m in slowed]
    pooled_base = percentiles([x for m in base for x in m["lat_ms"]])
    pooled = percentiles([x for m in plain for x in m["lat_ms"]])
    pooled_slow = percentiles([x for m in slowed for x in m["lat_ms"]])
    change = ratio_summary(p99_slow, p99_plain)
    print(
        f"latency at {LOAD_SHARE:.0%} of saturation ({rate * SAT_RECEIVERS:.0f} frames/s "
        f"delivered, {len(plain)} rounds): p50 {pooled['p50']:.2f} ms p99 {pooled['p99']:.2f} ms"
        f" (goal p99 <= 10 ms; {sum(len(m['lat_ms']) for m in plain)} samples of 4 subscribers,"
        f" per-round p99 median {summary(p99_plain)['median']:.2f} ms), "
        f"{summary([m['cpu_us_per_frame'] for m in plain])['median']:.1f} us/frame, "
        f"drops {sum(m['dropped'] for m in plain):.0f}",
        flush=True,
    )
    print(
        f"  baseline, the raw relay at the same rate: p50 {pooled_base['p50']:.2f} ms p99 "
        f"{pooled_base['p99']:.2f} ms ({sum(len(m['lat_ms']) for m in base)} samples, "
        f"{summary([m['cpu_us_per_frame'] for m in base])['median']:.1f} us/msg); added by "
        f"the MH: p50 {pooled['p50'] - pooled_base['p50']:+.2f} ms "
        f"p99 {pooled['p99'] - pooled_base['p99']:+.2f} ms",
        flush=True,
    )
    print(
        f"slow subscriber (1/{SLOW_FACTOR} of the rate): the others' p99 "
        f"{pooled_slow['p99']:.2f} ms with it vs {pooled['p99']:.2f} ms without, change "
        f"{(pooled_slow['p99'] / pooled['p99'] - 1) * 100:+.0f} % (per-round ratio median "
        f"{change['median']:.2f}, min {change['min']:.2f} max {change['max']:.2f}; goal <= +10 %)"
        f"; MH {summary([m['cpu_us_per_frame'] for m in slowed])['median']:.1f} us per frame"
        f" delivered to the others"
        f"; MH drops by reason, per round: {[m['by_reason'] for m in slowed]}",
        flush=True,
    )
    figures.update(
        {
            "load_delivered_per_s": summary([m["frames_per_s"] for m in plain])["median"],
            "load_latency_p50_ms": pooled["p50"],
            "load_latency_p99_ms": pooled["p99"],
            "relay_latency_p50_ms": pooled_base["p50"],
            "relay_latency_p99_ms": pooled_base["p99"],
            "added_latency_p50_ms": pooled["p50"] - pooled_base["p50"],
            "added_latency_p99_ms": pooled["p99"] - pooled_base["p99"],
            "load_drops": sum(m["dropped"] for m in plain),
            "slow_others_p50_ms": pooled_slow["p50"],
            "slow_others_p99_ms": pooled_slow["p99"],
            "slow_p99_change_ratio": pooled_slow["p99"] / pooled["p99"],
            "slow_p99_round_ratio": change["median"],
            "slow_p99_round_ratio_min": change["min"],
            "slow_p99_round_ratio_max": change["max"],
            "slow_drops": sum(m["dropped"] for m in slowed),
        }
    )


def meeting_phase(mh: MH, cert_hash: str, rounds: int, win: float, figures: dict[str, Any]) -> None:
    """Step 4."""
    meets = [meeting(mh, cert_hash, MEETING_WARM_S, win) for _ in range(rounds)]
    per_core = [
        MEETING * m["delivered_share"] / m["cpu_share"] if m["cpu_share"] else float("nan")
        for m in meets
    ]
    lat = percentiles([x for m in meets for x in m["lat_ms"]])
    fps = summary([m["frames_per_s"] for m in meets])["median"]
    print(
        f"meeting P={MEETING} at {VIDEO_BITS_PER_S // 1000} kbit/s video + audio "
        f"({len(meets)} rounds): {fps:.0f} frames/s "
        f"({summary([m['delivered_share'] for m in meets])['median']:.0%} of expected),"
        f" {summary([m['mb_per_s'] for m in meets])['median']:.2f} MB/s, "
        f"{summary([m['cpu_us_per_frame'] for m in meets])['median']:.1f} us/frame, "
        f"server CPU {summary([m['cpu_share'] for m in meets])['median']:.0%} of a core, "
        f"latency p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms, "
        f"drops {sum(m['dropped'] for m in meets):.0f}",
        flush=True,
    )
    print(
        f"participants per core (6-person meetings, 500 kbit/s video): "
        f"{summary(per_core)['median']:.0f} (min {summary(per_core)['min']:.0f} "
        f"max {summary(per_core)['max']:.0f})",
        flush=True,
    )
    figures.update(
        {
            "meeting_delivered_per_s": fps,
            "meeting_mb_per_s": summary([m["mb_per_s"] for m in meets])["median"],
            "meeting_server_cpu_us": summary([m["cpu_us_per_frame"] for m in meets])["median"],
            "meeting_server_cpu_share_ratio": summary([m["cpu_share"] for m in meets])["median"],
            "meeting_latency_p50_ms": lat["p50"],
            "meeting_latency_p99_ms": lat["p99"],
            "meeting_drops": sum(m["dropped"] for m in meets),
            "participants_per_core": summary(per_core)["median"],
            "participants_per_core_min": summary(per_core)["min"],
            "participants_per_core_max": summary(per_core)["max"],
        }
    )


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    lat_rounds = 1 if args.quick else max(3, (rounds + 1) // 2)
    warm, win = (0.5, 0.8) if args.quick else (0.7, 1.2)
    lat_warm, lat_win = (0.7, 1.0) if args.quick else (1.0, 1.5)
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    write_cluster(tmp)  # internal gRPC is mutual TLS: the MH process and _register share it
    files = (str(certfile), str(keyfile), cert.sha256.hex())
    figures: dict[str, Any] = {}
    t0 = time.monotonic()

    overflows = udp_rcvbuf_errors()

    def step_done() -> None:
        nonlocal overflows
        now = udp_rcvbuf_errors()
        print(
            f"  ({time.monotonic() - t0:.0f} s; UDP receive-buffer overflows on the machine "
            f"during this step: {now - overflows})",
            flush=True,
        )
        figures["udp_rcvbuf_overflows"] = figures.get("udp_rcvbuf_overflows", 0) + now - overflows
        overflows = now

    sat = saturation_phase(files, rounds, warm, win, figures)
    step_done()
    # Steps 2-4 share one MH process (a new meeting each point): starting one per point
    # would cost more wall time than the points themselves.
    mh, relay = MH(certfile, keyfile), RelayServer("ours", certfile, keyfile)
    try:
        rate = LOAD_SHARE * sat / SAT_RECEIVERS  # frames/s published; each is sent to 5
        fill_s = SLOW_BACKLOG_FRAMES / (rate * (1 - 1 / SLOW_FACTOR))
        lat_warm = min(SLOW_WARM_MAX_S / (2 if args.quick else 1), max(lat_warm, 1.2 * fill_s))
        print(f"  (latency points warm up for {lat_warm:.1f} s: the slow backlog fills)")
        latency_phase(mh, relay, files[2], rate, lat_rounds, lat_warm, lat_win, figures)
        relay.close()
        step_done()
        meeting_phase(mh, files[2], lat_rounds, lat_win, figures)
        step_done()
    finally:
        mh.close()
        relay.close()
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)
    emit("media_fanout", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_mh(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--sat-load":
        saturation_load(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--clients":
        run_clients(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
