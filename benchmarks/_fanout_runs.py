"""The media fan-out benchmark's measurement points (benchmarks/media_fanout.py): the MH process,
a saturation round on the MH or the relay, a latency point on either, a meeting, and the
interleaving of rounds. Child processes run benchmarks/media_fanout.py with a role argument."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks._bench import histogram, histogram_delta, percentiles
from benchmarks._fanout_load import (
    AUDIO_FPS,
    KEY_S,
    LOAD_SHARE,
    MEETING,
    MEETING_FRAMES_PER_S,
    MEETING_PROCESSES,
    SAT_RECEIVERS,
    VIDEO_FPS,
    _register,
)
from benchmarks.transport_relay import Server as RelayServer
from benchmarks.transport_relay import _cpu_s
from benchmarks.transport_relay import _spawn as relay_spawn

# The script whose command line runs the child processes (--serve, --sat-load, --clients).
SCRIPT = pathlib.Path(__file__).with_name("media_fanout.py")
# The MH's histogram of a frame's time inside it: arrival -> last byte handed to the socket,
# once per subscriber (absent from MHs that predate it: its quantiles are then NaN).
RESIDENCE = "darktower_mh_frame_residence_seconds"
# paced_rate: at most this many calibration points, and how far from the share one may be.
CALIBRATE_STEPS = 6
CALIBRATE_TOLERANCE = 0.05


# --- orchestration ----------------------------------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


class MH:
    """An MH process on QUIC core ``core`` (None: the MH's default)."""

    def __init__(self, certfile: str, keyfile: str, core: str | None = None) -> None:
        self.proc = _spawn("--serve", certfile, keyfile, *([core] if core else []))
        self.cluster = os.path.dirname(certfile)  # its cluster CA and certificates
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.grpc, self.ops = int(info["grpc"]), info["ops"]

    def dropped(self) -> dict[str, float]:
        """Frames dropped so far, by reason (the MH's /metrics)."""
        return self.scrape()[0]

    def scrape(self) -> tuple[dict[str, float], dict[float, float]]:
        """One read of /metrics: frames dropped so far by reason, and the residence histogram
        ({upper bound in s: cumulative count}; empty if the MH has none)."""
        text = urllib.request.urlopen(self.ops + "/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("darktower_mh_frames_dropped_total{"):
                reason = line.split('"')[1]
                out[reason] = float(line.rsplit(" ", 1)[1])
        return out, histogram(text, RESIDENCE)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped for a full socket receive buffer, machine-wide: a process
    starved of CPU loses packets this way, and QUIC's recovery then shows in latency."""
    lines = [x.split() for x in pathlib.Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [x for x in lines if x[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def _measure(gen: subprocess.Popen[str], pid: int) -> tuple[dict[str, Any], float]:
    """A load generator's result and the server's CPU seconds over its START..STOP window."""
    try:
        assert gen.stdout is not None
        assert gen.stdout.readline().strip() == "START"
        cpu0 = _cpu_s(pid)
        assert gen.stdout.readline().strip() == "STOP"
        cpu1 = _cpu_s(pid)
        result: dict[str, Any] = json.loads(gen.stdout.readline())
        gen.wait(timeout=30)
    finally:
        gen.kill()
    return result, cpu1 - cpu0


def mh_saturation(mh: MH, cert_hash: str, warm: float, win: float) -> dict[str, float]:
    """Step 1, MH side: a new meeting on ``mh``, one sat-load process."""
    stream = str(uuid.uuid4())
    plan: dict[str, list[dict[str, Any]]] = {"s": [{"stream_id": stream, "stream_type": 1}]}
    plan.update({f"r{i}": [] for i in range(SAT_RECEIVERS)})
    urls = _register(mh.grpc, str(uuid.uuid4()), plan, mh.cluster)
    spec = {
        "sender": urls["s"],
        "stream": stream,
        "receivers": [urls[f"r{i}"] for i in range(SAT_RECEIVERS)],
    }
    dropped0 = sum(mh.dropped().values())
    gen = _spawn("--sat-load", json.dumps(spec), cert_hash, str(warm), str(win))
    result, cpu = _measure(gen, mh.proc.pid)
    return {
        "rate": result["frames"] / result["elapsed"],
        "mb_per_s": result["bytes"] / result["elapsed"] / 1e6,
        "cpu_us": cpu * 1e6 / max(1, result["frames"]),
        "dropped": sum(mh.dropped().values()) - dropped0,
    }


def relay_saturation(
    relay: RelayServer, cert_hash: str, warm: float, win: float
) -> dict[str, float]:
    """Step 1, relay side: transport_relay's own load generator against a running relay."""
    args = (str(relay.port), cert_hash, str(SAT_RECEIVERS), str(warm), str(win))
    result, cpu = _measure(relay_spawn("--load", *args), relay.proc.pid)
    return {
        "rate": result["delivered"] / result["elapsed"],
        "cpu_us": cpu * 1e6 / max(1.0, result["delivered"]),
    }


def load_point(
    mh: MH,
    cert_hash: str,
    plan: dict[str, list[dict[str, Any]]],
    groups: list[list[dict[str, Any]]],
    warm: float,
    win: float,
) -> dict[str, Any]:
    """A new meeting on the running ``mh``: the participants of ``plan`` registered (every
    stream routed to every other participant), ``groups`` of client specs (``url`` filled in
    here) one process each, which close their sessions when done. Returns per-participant
    results, server CPU seconds per second, drops by reason and what the residence histogram
    counted (cumulative buckets, {upper bound in s: count}), over the window."""
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = _register(mh.grpc, str(uuid.uuid4()), plan, mh.cluster)
        for group in groups:
            for spec in group:
                spec["url"] = urls[spec["pid"]]
            procs.append(_spawn("--clients", json.dumps(group), cert_hash, str(warm), str(win)))
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        time.sleep(warm)
        cpu0, (dropped0, res0) = _cpu_s(mh.proc.pid), mh.scrape()
        time.sleep(win)
        cpu1, (dropped1, res1) = _cpu_s(mh.proc.pid), mh.scrape()
        results: dict[str, dict[str, Any]] = {}
        for p in procs:
            assert p.stdout is not None
            results.update(json.loads(p.stdout.readline()))
            p.wait(timeout=30)
    finally:
        for p in procs:
            p.kill()
    return {
        "results": results,
        "cpu_share": (cpu1 - cpu0) / win,
        "dropped": {
            k: v - dropped0.get(k, 0) for k, v in dropped1.items() if v > dropped0.get(k, 0)
        },
        "residence": histogram_delta(res1, res0),
    }


def _figures(point: dict[str, Any], pids: list[str], win: float) -> dict[str, Any]:
    """Delivered frames/s, MB/s, server CPU µs per frame and latency (ms) of ``pids``."""
    rs = [point["results"][pid] for pid in pids]
    frames = sum(r["frames"] for r in rs)
    lat_ms = [x / 1000 for r in rs for x in r["lat_us"]]
    return {
        "frames_per_s": frames / win,
        "mb_per_s": sum(r["bytes"] for r in rs) / win / 1e6,
        "cpu_us_per_frame": point["cpu_share"] * win * 1e6 / max(1, frames),
        "lat_ms": lat_ms,
        **percentiles(lat_ms),
        "dropped": sum(point["dropped"].values()),
    }


def fanout_at(
    mh: MH, cert_hash: str, rate: float, warm: float, win: float, *, slow: bool
) -> dict[str, Any]:
    """Step 2/3: one publisher at ``rate`` frames/s of 1,046 bytes, SAT_RECEIVERS subscribers,
    the last one reading at 1/SLOW_FACTOR of the rate if ``slow``. Figures of the others."""
    stream = str(uuid.uuid4())
    plan: dict[str, list[dict[str, Any]]] = {"s": [{"stream_id": stream, "stream_type": 1}]}
    plan.update({f"r{i}": [] for i in range(SAT_RECEIVERS)})
    publisher = [
        {"pid": "s", "read": "none", "publish": [{"stream": stream, "kind": "sat", "rate": rate}]}
    ]
    others = [
        {"pid": f"r{i}", "read": "fast", "publish": [], "rate": rate}
        for i in range(SAT_RECEIVERS - 1)
    ]
    last = {
        "pid": f"r{SAT_RECEIVERS - 1}",
        "read": "slow" if slow else "fast",
        "publish": [],
        "rate": rate,
    }
    # Three processes: the slow subscriber's connection shares a process with neither the
    # publisher nor the subscribers measured.
    point = load_point(mh, cert_hash, plan, [publisher, others, [last]], warm, win)
    return {
        **_figures(point, [o["pid"] for o in others], win),
        "by_reason": point["dropped"],
        "residence": point["residence"],
        "cpu_share": point["cpu_share"],
    }


def paced_rate(
    mh: MH, cert_hash: str, rate: float, share: float, warm: float, win: float
) -> tuple[float, list[tuple[float, float]]]:
    """The publisher's rate (frames/s) at which the MH spends about ``share`` of a core on step
    2's paced fan-out, at most ``rate`` (``share`` of the flood's saturation, step 1).

    A flood's frames queue up while the MH is busy and leave several to a packet and a system
    call; paced frames arrive one at a time and each costs more, so ``share`` of the flood's
    rate can be more than the MH can carry paced (its queues then grow without bound, and so
    does any latency read there). Plain points (no slow subscriber) read the MH's CPU share
    ``u`` until it is within CALIBRATE_TOLERANCE of ``share`` (or below it at ``rate``), at
    most CALIBRATE_STEPS points; each next rate comes from the last two points (next_rate).
    Returns the rate of the point tried whose ``u`` came closest to ``share``, and the
    (rate, u) of every point tried."""
    top = rate
    tried: list[tuple[float, float]] = []
    for _ in range(CALIBRATE_STEPS):
        u = fanout_at(mh, cert_hash, rate, warm, win, slow=False)["cpu_share"]
        tried.append((rate, u))
        if abs(u - share) <= share * CALIBRATE_TOLERANCE or (u < share and rate >= top):
            break
        rate = next_rate(tried, share, top)
    return min(tried, key=lambda point: abs(point[1] - share))[0], tried


def next_rate(tried: list[tuple[float, float]], share: float, top: float) -> float:
    """The rate to try after the points ``tried`` (rate, CPU share), aiming at ``share``: on
    the line through the last two points when the share rose with the rate between them (a
    frame costs more at a lower rate, so scaling the rate by ``share / u`` alone takes many
    steps), else scaled by ``share / u``; within half and twice the last rate, at most
    ``top``."""
    rate, u = tried[-1]
    guess = rate * share / u if u > 0 else 2 * rate
    if len(tried) >= 2:
        (r0, u0), (r1, u1) = tried[-2], tried[-1]
        if r1 != r0 and (u1 - u0) / (r1 - r0) > 0:
            guess = r1 + (share - u1) * (r1 - r0) / (u1 - u0)
    return min(top, max(rate / 2, min(2 * rate, guess)))


def paced_rates(
    mhs: dict[str, MH],
    cert_hash: str,
    sats: dict[str, float],
    warm: float,
    win: float,
    run: Callable[..., Any],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Each core's publisher rate for steps 2-3 (paced_rate from LOAD_SHARE of the flood's
    saturation ``sats[core]``, delivered frames/s), each point through ``run(core, point,
    *args)``; and each core's figures of it."""
    rates: dict[str, float] = {}
    figures: dict[str, dict[str, float]] = {}
    for core, mh in mhs.items():
        flood = LOAD_SHARE * sats[core] / SAT_RECEIVERS  # each frame is sent to 5
        rate, tried = run(core, paced_rate, mh, cert_hash, flood, LOAD_SHARE, warm, win)
        rates[core] = rate
        chosen_share = dict(tried)[rate]  # the point steps 2-3 run at
        print(
            f"[{core}] paced rate: {LOAD_SHARE:.0%} of the flood's saturation is "
            f"{flood * SAT_RECEIVERS:.0f} frames/s delivered; the MH's CPU share at the points "
            "tried: "
            + ", ".join(f"{r * SAT_RECEIVERS:.0f}/s {u:.0%}" for r, u in tried)
            + f"; steps 2-3 run at {rate * SAT_RECEIVERS:.0f}/s",
            flush=True,
        )
        figures[core] = {
            "flood_share_delivered_per_s": flood * SAT_RECEIVERS,
            "paced_saturation_delivered_per_s": rate * SAT_RECEIVERS / chosen_share,
            "load_rate_delivered_per_s": rate * SAT_RECEIVERS,
        }
    return rates, figures


def relay_at(
    relay: RelayServer, cert_hash: str, rate: float, warm: float, win: float
) -> dict[str, Any]:
    """Step 2's baseline: the same records at the same rate through the raw relay, to four
    receivers (the relay has no slow-subscriber policy: a fifth would only slow it down)."""
    url = f"https://127.0.0.1:{relay.port}/relay"
    sender = [{"pid": "s", "relay": "send", "url": url, "rate": rate}]
    receivers = [{"pid": f"r{i}", "relay": "recv", "url": url} for i in range(SAT_RECEIVERS - 1)]
    procs: list[subprocess.Popen[str]] = []
    try:
        # Receivers first: the relay sends only to receivers present when data arrives.
        for group in (receivers, sender):
            proc = _spawn("--clients", json.dumps(group), cert_hash, str(warm), str(win))
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
            procs.append(proc)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        time.sleep(warm)
        cpu0 = _cpu_s(relay.proc.pid)
        time.sleep(win)
        cpu1 = _cpu_s(relay.proc.pid)
        results: dict[str, dict[str, Any]] = {}
        for proc in procs:
            assert proc.stdout is not None
            results.update(json.loads(proc.stdout.readline()))
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            proc.kill()
    point = {"results": results, "cpu_share": (cpu1 - cpu0) / win, "dropped": {}}
    return _figures(point, [r["pid"] for r in receivers], win)


def meeting(mh: MH, cert_hash: str, warm: float, win: float) -> dict[str, Any]:
    """Step 4: one 6-person meeting at VIDEO_BITS_PER_S video + audio per participant."""
    ids = {f"p{i}": (str(uuid.uuid4()), str(uuid.uuid4())) for i in range(MEETING)}
    plan: dict[str, list[dict[str, Any]]] = {
        pid: [{"stream_id": v, "stream_type": 1}, {"stream_id": a, "stream_type": 0}]
        for pid, (v, a) in ids.items()
    }
    specs = [
        {
            "pid": pid,
            "read": "fast",
            "rate": MEETING_FRAMES_PER_S,
            "publish": [
                # Encoders are not in step: key frames spread over the key frame period.
                {"stream": v, "kind": "video", "rate": VIDEO_FPS, "delay": n * KEY_S / MEETING},
                {"stream": a, "kind": "audio", "rate": AUDIO_FPS},
            ],
        }
        for n, (pid, (v, a)) in enumerate(ids.items())
    ]
    groups = [specs[i::MEETING_PROCESSES] for i in range(MEETING_PROCESSES)]
    point = load_point(mh, cert_hash, plan, groups, warm, win)
    out = _figures(point, list(ids), win)
    out["cpu_share"] = point["cpu_share"]
    # Clients that fell behind leave the MH less to do: scale to the load as specified.
    out["delivered_share"] = min(1.0, out["frames_per_s"] / (MEETING * MEETING_FRAMES_PER_S))
    return out


def abba(
    a: Callable[[], float], b: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """Interleaved rounds, A B then B A: a load that drifts during the run (the machine is
    shared) weighs on both sides alike. One round only if ``rounds`` < 3 (``--quick``)."""
    xs: list[float] = []
    ys: list[float] = []
    for i in range(1 if rounds < 3 else rounds):
        if i % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys
