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
   would reach on a core of its own, steadier than throughput on a shared machine). On two
   cores the load generator (one aioquic process) is the bottleneck here, not the MH: a qh3
   MH, with CPU to spare, sends each frame as it comes (a packet per subscriber, which costs
   the clients more than fuller packets), and its flood rate comes out lower than aioquic's.
2. **Latency at 70 % of saturation.** The same fan-out, the publisher paced; the publisher,
   four subscribers and a fifth subscriber in three processes; one MH for steps 2-4, a new
   meeting per point. The rate is 70 % of the MH's saturation *for paced frames*: paced frames
   cost the MH more each than a flood's (which leave several to a packet), so 0.7 x step 1's
   rate can be more than it carries paced. Calibration points (no slow subscriber) start there
   and move the rate until the MH's CPU share is about 70 % (within 5 %, up to six points,
   each next rate on the line through the last two); steps 2-3 run at the point that came
   closest. What they tried is printed, with ``paced_saturation_delivered_per_s`` and the MH's
   CPU share during the plain points (``load_mh_cpu_share``). Added latency p50/p99 =
   subscriber read - publisher write, both ``time.monotonic_ns`` (one host clock), the write
   time carried in the payload's first 8 bytes. The baseline, in the same rounds: the raw
   relay carrying the same stamped 1,046-byte records at the same rate to four receivers;
   "added by the MH" is the difference. Inside the MH, where the clients' CPU does not enter:
   ``mh_residence_p99_ms`` (goal ≤ 10 ms), a frame's arrival at the MH -> its last byte handed
   to the socket, once per subscriber, from the MH's histogram
   ``darktower_mh_frame_residence_seconds`` read at the start and the end of each point's
   counted window (the points without the slow subscriber), the rounds' counts pooled, p99
   interpolated linearly inside its bucket; NaN if the MH has no such histogram.
3. **A slow subscriber.** Step 2 interleaved with the same load where the fifth subscriber reads
   at a tenth of the rate. The figure is the four others' p99 with it over their p99 without it
   in the same round, the median of the rounds' ratios (``slow_p99_change_ratio``, goal
   ≤ 1.1), with min and max; the ratio of the rounds' samples pooled is printed beside it
   (``slow_p99_pooled_ratio``), as are the MH's drops (by policy, for the slow one).
4. **Participants per core.** 6-person meetings: each participant publishes video at
   500 kbit/s (30 fps; a 30 KB key frame every 2 s and deltas that make up the rate) and audio
   (50 fps of 120 bytes) and subscribes to the five others; two client processes. The MH's CPU
   per participant gives how many such participants one MH process sustains per core (scaled
   by the share of the expected frames that were delivered, if the clients fell behind).

After each step: the machine's UDP receive-buffer overflows (``/proc/net/snmp``), the usual
cause of loss, and so of latency, when processes are starved of CPU; ``udp_rcvbuf_overflows``
counts those that happened during a core's points.

**QUIC cores.** ``--quic-core {aioquic,qh3,both}`` (default: both when qh3 imports, else
aioquic) is the core of the servers under test: the MH and, for the baselines, our relay. With
both, the two cores run side by side in the same sitting: one MH and one relay per core stay up
for all rounds, and every step interleaves the cores' points (A B / B A); each core's latency
points run at 70 % of its own saturation rate. The clients (load generators) stay on aioquic
whatever the core, so that only the server changes; those of steps 2-4, the relay's receivers
among them, ack as the client library's media connections do (``TransportLimits.for_media``).
The default core's figures carry their usual names; qh3's the same names prefixed ``qh3_``
(``qh3_participants_per_core``, ...).

    python benchmarks/media_fanout.py [--quick] [--rounds N] [--quic-core both]

Default rounds: 5 on one core; with both cores 3 (latency windows 1 s, two meetings per
core), so that the run stays under two minutes.
"""

from __future__ import annotations

import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import (
    add_quic_core,
    core_prefix,
    emit,
    histogram_quantile,
    parser,
    percentiles,
    quic_cores,
    ratio_summary,
    round_order,
    summary,
)
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
    fanout_at,
    meeting,
    mh_saturation,
    paced_rates,
    relay_at,
    relay_saturation,
    udp_rcvbuf_errors,
)
from benchmarks.transport_relay import Server as RelayServer


class Overflows:
    """UDP receive-buffer overflows on the machine during each core's points."""

    def __init__(self) -> None:
        self.by_core: dict[str, int] = {}

    def run(self, core: str, point: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``point(*args, **kwargs)``, its overflows counted to ``core``."""
        before = udp_rcvbuf_errors()
        try:
            return point(*args, **kwargs)
        finally:
            self.by_core[core] = self.by_core.get(core, 0) + udp_rcvbuf_errors() - before


def _rounds(rounds: int) -> range:
    """One round only if ``rounds`` < 3 (``--quick``)."""
    return range(1 if rounds < 3 else rounds)


def saturation_phase(
    files: tuple[str, str, str],
    cores: list[str],
    rounds: int,
    warm: float,
    win: float,
    overflows: Overflows,
    figures: dict[str, Any],
) -> dict[str, float]:
    """Step 1; returns each core's MH saturation rate (delivered frames/s, median). The MH and
    the relay of every core run through all rounds (fresh clients and a new meeting each
    round), like for like; a round runs MH, relay per core, the next one in reverse."""
    certfile, keyfile, cert_hash = files
    servers: dict[str, tuple[MH, RelayServer]] = {}
    mh_runs: dict[str, list[dict[str, float]]] = {c: [] for c in cores}
    relay_runs: dict[str, list[dict[str, float]]] = {c: [] for c in cores}
    try:
        for c in cores:
            servers[c] = (MH(certfile, keyfile, c), RelayServer("ours", certfile, keyfile, c))
        points = [(c, side) for c in cores for side in ("mh", "relay")]
        for i in _rounds(rounds):
            for core, side in round_order(points, i):
                mh, relay = servers[core]
                if side == "mh":
                    run = overflows.run(core, mh_saturation, mh, cert_hash, warm, win)
                    mh_runs[core].append(run)
                else:
                    run = overflows.run(core, relay_saturation, relay, cert_hash, warm, win)
                    relay_runs[core].append(run)
    finally:
        for mh, relay in servers.values():
            mh.close()
            relay.close()
    return {c: _saturation_figures(c, mh_runs[c], relay_runs[c], figures) for c in cores}


def _saturation_figures(
    core: str,
    mh_runs: list[dict[str, float]],
    relay_runs: list[dict[str, float]],
    figures: dict[str, Any],
) -> float:
    xs, ys = [r["rate"] for r in mh_runs], [r["rate"] for r in relay_runs]
    ratio = ratio_summary(xs, ys)
    mh_cpu = [r["cpu_us"] for r in mh_runs]
    relay_cpu = [r["cpu_us"] for r in relay_runs]
    cpu_ratio = ratio_summary(relay_cpu, mh_cpu)
    sat = summary(xs)["median"]
    mb = summary([r["mb_per_s"] for r in mh_runs])["median"]
    drops = summary([r["dropped"] for r in mh_runs])["median"]
    print(
        f"[{core}] saturation N={SAT_RECEIVERS} ({len(xs)} rounds): MH {sat:8.0f} frames/s "
        f"{mb:6.1f} MB/s {summary(mh_cpu)['median']:6.1f} us/frame | relay "
        f"{summary(ys)['median']:8.0f} msg/s {summary(relay_cpu)['median']:6.1f} us/msg",
        flush=True,
    )
    print(
        f"  throughput ratio MH/relay {ratio['median']:.2f} (min {ratio['min']:.2f} max "
        f"{ratio['max']:.2f}; goal >= 0.85) | CPU ratio relay/MH {cpu_ratio['median']:.2f} "
        f"(min {cpu_ratio['min']:.2f} max {cpu_ratio['max']:.2f}) | MH drops {drops:.0f}",
        flush=True,
    )
    _put(
        figures,
        core,
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
        },
    )
    return sat


def _put(figures: dict[str, Any], core: str, mine: dict[str, Any]) -> None:
    figures.update({core_prefix(core) + k: v for k, v in mine.items()})


def latency_phase(
    servers: dict[str, tuple[MH, RelayServer]],
    cert_hash: str,
    rates: dict[str, float],
    warms: dict[str, float],
    rounds: int,
    win: float,
    overflows: Overflows,
    figures: dict[str, Any],
) -> None:
    """Steps 2 and 3 at ``rates[core]`` published frames/s, and the relay's latency at the same
    rate as the baseline; each round runs the three kinds of point in a rotated order, each
    kind on every core in turn (A B / B A)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {
        (c, k): [] for c in servers for k in ("plain", "slow", "relay")
    }

    def point(core: str, kind: str) -> dict[str, Any]:
        (mh, relay), rate, warm = servers[core], rates[core], warms[core]
        if kind == "relay":
            return relay_at(relay, cert_hash, rate, warm, win)
        return fanout_at(mh, cert_hash, rate, warm, win, slow=kind == "slow")

    kinds = ["plain", "slow", "relay"]
    for i in _rounds(rounds):
        for k in range(len(kinds)):
            kind = kinds[(i + k) % len(kinds)]
            for core in round_order(list(servers), i):
                runs[core, kind].append(overflows.run(core, point, core, kind))
    for core in servers:
        _latency_figures(
            core, rates[core], runs[core, "plain"], runs[core, "slow"], runs[core, "relay"], figures
        )


def _latency_figures(
    core: str,
    rate: float,
    plain: list[dict[str, Any]],
    slowed: list[dict[str, Any]],
    base: list[dict[str, Any]],
    figures: dict[str, Any],
) -> None:
    p99_plain = [float(m["p99"]) for m in plain]
    p99_slow = [float(m["p99"]) for m in slowed]
    pooled_base = percentiles([x for m in base for x in m["lat_ms"]])
    pooled = percentiles([x for m in plain for x in m["lat_ms"]])
    pooled_slow = percentiles([x for m in slowed for x in m["lat_ms"]])
    change = ratio_summary(p99_slow, p99_plain)
    # The MH's residence histogram over the plain points' windows, pooled.
    residence: dict[float, float] = {}
    for m in plain:
        for le, n in m["residence"].items():
            residence[le] = residence.get(le, 0.0) + n
    res_p50, res_p99 = (histogram_quantile(q, residence) * 1000 for q in (0.5, 0.99))
    res_n = residence.get(math.inf, 0.0)
    print(
        f"[{core}] latency at {LOAD_SHARE:.0%} of paced saturation ({rate * SAT_RECEIVERS:.0f} "
        f"frames/s delivered, {len(plain)} rounds): p50 {pooled['p50']:.2f} ms p99 "
        f"{pooled['p99']:.2f} ms ({sum(len(m['lat_ms']) for m in plain)} samples of 4 "
        f"subscribers, per-round p99 median {summary(p99_plain)['median']:.2f} ms), "
        f"{summary([m['cpu_us_per_frame'] for m in plain])['median']:.1f} us/frame, "
        f"MH CPU {summary([m['cpu_share'] for m in plain])['median']:.0%} of a core, "
        f"drops {sum(m['dropped'] for m in plain):.0f}",
        flush=True,
    )
    print(
        "  inside the MH (arrival -> last byte to the socket, per subscriber): "
        + (
            f"p50 {res_p50:.2f} ms p99 {res_p99:.2f} ms ({res_n:.0f} observations; goal p99 "
            f"<= 10 ms)"
            if res_n
            else "no residence histogram in the MH's /metrics (NaN)"
        ),
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
        f"[{core}] slow subscriber (1/{SLOW_FACTOR} of the rate): the others' p99 with it over "
        f"without it, per round: median {change['median']:.2f} (min {change['min']:.2f} max "
        f"{change['max']:.2f}; goal <= 1.1); pooled {pooled_slow['p99']:.2f} ms with it vs "
        f"{pooled['p99']:.2f} ms without, {pooled_slow['p99'] / pooled['p99']:.2f}"
        f"; MH {summary([m['cpu_us_per_frame'] for m in slowed])['median']:.1f} us per frame"
        f" delivered to the others"
        f"; MH drops by reason, per round: {[m['by_reason'] for m in slowed]}",
        flush=True,
    )
    _put(
        figures,
        core,
        {
            "load_delivered_per_s": summary([m["frames_per_s"] for m in plain])["median"],
            "load_latency_p50_ms": pooled["p50"],
            "load_latency_p99_ms": pooled["p99"],
            "mh_residence_p50_ms": res_p50,
            "mh_residence_p99_ms": res_p99,
            "relay_latency_p50_ms": pooled_base["p50"],
            "relay_latency_p99_ms": pooled_base["p99"],
            "added_latency_p50_ms": pooled["p50"] - pooled_base["p50"],
            "added_latency_p99_ms": pooled["p99"] - pooled_base["p99"],
            "load_drops": sum(m["dropped"] for m in plain),
            "load_mh_cpu_share": summary([m["cpu_share"] for m in plain])["median"],
            "slow_others_p50_ms": pooled_slow["p50"],
            "slow_others_p99_ms": pooled_slow["p99"],
            # docs/decisions.md, "The slow subscriber's ratio is a per-round median"
            "slow_p99_change_ratio": change["median"],
            "slow_p99_change_ratio_min": change["min"],
            "slow_p99_change_ratio_max": change["max"],
            "slow_p99_pooled_ratio": pooled_slow["p99"] / pooled["p99"],
            "slow_drops": sum(m["dropped"] for m in slowed),
        },
    )


def meeting_phase(
    mhs: dict[str, MH],
    cert_hash: str,
    rounds: int,
    win: float,
    overflows: Overflows,
    figures: dict[str, Any],
) -> None:
    """Step 4, the cores' meetings interleaved (A B / B A)."""
    meets: dict[str, list[dict[str, Any]]] = {c: [] for c in mhs}
    for i in range(rounds):
        for core in round_order(list(mhs), i):
            run = overflows.run(core, meeting, mhs[core], cert_hash, MEETING_WARM_S, win)
            meets[core].append(run)
    for core, ms in meets.items():
        _meeting_figures(core, ms, figures)


def _meeting_figures(core: str, meets: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    per_core = [
        MEETING * m["delivered_share"] / m["cpu_share"] if m["cpu_share"] else float("nan")
        for m in meets
    ]
    lat = percentiles([x for m in meets for x in m["lat_ms"]])
    fps = summary([m["frames_per_s"] for m in meets])["median"]
    print(
        f"[{core}] meeting P={MEETING} at {VIDEO_BITS_PER_S // 1000} kbit/s video + audio "
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
        f"[{core}] participants per core (6-person meetings, 500 kbit/s video): "
        f"{summary(per_core)['median']:.0f} (min {summary(per_core)['min']:.0f} "
        f"max {summary(per_core)['max']:.0f})",
        flush=True,
    )
    _put(
        figures,
        core,
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
        },
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_quic_core(p)
    args = p.parse_args()
    cores = quic_cores(args.quic_core)
    # Two cores in one sitting keep the run under two minutes with fewer saturation rounds,
    # shorter latency windows and two meetings per core (one core: as before).
    both = len(cores) > 1
    rounds = args.rounds or (1 if args.quick else 3 if both else 5)
    lat_rounds = 1 if args.quick else max(3, (rounds + 1) // 2)
    meet_rounds = 1 if args.quick else 2 if both else lat_rounds
    warm, win = (0.5, 0.8) if args.quick else (0.7, 1.2)
    lat_warm, lat_win = (0.7, 1.0) if args.quick else (1.0, 1.0 if both else 1.5)
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    write_cluster(tmp)  # internal gRPC is mutual TLS: the MH process and _register share it
    files = (str(certfile), str(keyfile), cert.sha256.hex())
    figures: dict[str, Any] = {}
    overflows = Overflows()
    t0 = time.monotonic()
    print(f"QUIC cores of the servers under test: {', '.join(cores)} (clients: aioquic)")

    step_start = sum(overflows.by_core.values())

    def step_done() -> None:
        nonlocal step_start
        now = sum(overflows.by_core.values())
        print(
            f"  ({time.monotonic() - t0:.0f} s; UDP receive-buffer overflows on the machine "
            f"during this step's points: {now - step_start})",
            flush=True,
        )
        step_start = now

    sats = saturation_phase(files, cores, rounds, warm, win, overflows, figures)
    step_done()
    # Steps 2-4 share one MH process per core (a new meeting each point): starting one per
    # point would cost more wall time than the points themselves.
    servers: dict[str, tuple[MH, RelayServer]] = {}
    try:
        for core in cores:
            servers[core] = (
                MH(certfile, keyfile, core),
                RelayServer("ours", certfile, keyfile, core),
            )
        mhs = {c: mh for c, (mh, _) in servers.items()}
        rates, found = paced_rates(mhs, files[2], sats, lat_warm, lat_win, overflows.run)
        for core, mine in found.items():
            _put(figures, core, mine)
        warms = {
            c: min(
                SLOW_WARM_MAX_S / (2 if args.quick else 1),
                max(lat_warm, 1.2 * SLOW_BACKLOG_FRAMES / (rates[c] * (1 - 1 / SLOW_FACTOR))),
            )
            for c in cores
        }
        print(
            "  (latency points warm up while the slow backlog fills: "
            + ", ".join(f"{c} {w:.1f} s" for c, w in warms.items())
            + ")"
        )
        latency_phase(servers, files[2], rates, warms, lat_rounds, lat_win, overflows, figures)
        for _, relay in servers.values():
            relay.close()
        step_done()
        meeting_phase(mhs, files[2], meet_rounds, lat_win, overflows, figures)
        step_done()
    finally:
        for mh, relay in servers.values():
            mh.close()
            relay.close()
    for core in cores:
        figures[core_prefix(core) + "udp_rcvbuf_overflows"] = overflows.by_core.get(core, 0)
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)
    emit("media_fanout", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_mh(sys.argv[2], sys.argv[3], *sys.argv[4:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--sat-load":
        saturation_load(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--clients":
        run_clients(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
