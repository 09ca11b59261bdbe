"""Media fan-out through the Media Handler, against the raw transport relay, same run.

Three measurements, the MH server and the clients in separate processes on 127.0.0.1:

1. **Saturation, same bytes as the relay.** One publisher writes 1,046-byte frames (46-byte
   header + 1,000 bytes) as fast as it can to N = 5 subscribers; interleaved with
   ``benchmarks/transport_relay.py``'s relay (our transport, 1,046-byte messages, N = 5
   receivers). Delivered frames/s, MB/s and server CPU µs per delivered frame; the ratio MH/relay.
2. **A meeting.** P = 6 participants, each publishing video (30 fps: a 30 KB key frame every
   2 s, 1.2 KB deltas) and audio (50 fps of 120 bytes) and subscribed to everyone else, one
   process each. Delivered frames/s, MB/s, server CPU µs per delivered frame, added latency
   p50/p99 (header timestamp written by the publisher -> read by the subscriber), drops (the
   MH's /metrics), and participants per core at this load (~450 kbit/s video per publisher).
3. **A slow subscriber.** Measurement 2 runs with a seventh, subscribe-only participant that
   reads at full speed; interleaved, the same with that participant reading at a tenth of its
   rate. The figure is the six others' p99 latency ratio, slow/fast, so that only the slowness
   differs (the extra routing work is in both).

    python benchmarks/media_fanout.py [--quick] [--rounds 3]
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, interleave, parser, percentiles, ratio_summary, summary
from benchmarks.transport_relay import _cpu_s
from benchmarks.transport_relay import run_point as relay_point

SAT_RECEIVERS = 5
SAT_PAYLOAD = 1000  # + 46-byte header = transport_relay's 1,046-byte message
SAT_KEY_EVERY = 30
MEETING = 6
CLIENT_PROCESSES = 2  # the meeting's participants, spread over this many client processes
VIDEO_FPS, AUDIO_FPS = 30, 50
KEY_BYTES, DELTA_BYTES, AUDIO_BYTES = 30_000, 1_200, 120
KEY_EVERY = 2 * VIDEO_FPS
MAX_SAMPLES = 50_000


# --- the MH server process ----------------------------------------------------------------
def serve_mh(certfile: str, keyfile: str) -> None:
    import trio

    from darktower.media_handler import Settings, serve

    settings = Settings(
        port=0,
        grpc_port=0,
        ops_port=0,
        certfile=certfile,
        keyfile=keyfile,
        budget_in_bytes_per_s=1 << 30,
        budget_out_bytes_per_s=1 << 30,
        max_participants_per_room=1000,
        log_level="warning",
    )

    async def main() -> None:
        from darktower.transport.rpc import open_rpc_loop

        async with open_rpc_loop(), trio.open_nursery() as nursery:
            running = await nursery.start(
                lambda task_status: serve(settings, shutdown=trio.Event(), task_status=task_status)
            )
            print(
                json.dumps(
                    {
                        "grpc": running.grpc_address[1],
                        "ops": running.ops_url,
                    }
                ),
                flush=True,
            )

    import logging

    logging.basicConfig(level=logging.WARNING)
    trio.run(main)


def _register(
    grpc_port: int, meeting: str, plan: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    """Register every participant of ``plan`` ({pid: [streams]}) and route every stream to
    every other participant; return {pid: URL with token}."""
    import trio

    from darktower.protocol.pb.v1 import common_pb2
    from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
    from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
    from darktower.transport.rpc import call, open_rpc_channel

    urls: dict[str, str] = {}

    async def main() -> None:
        async with open_rpc_channel("127.0.0.1", grpc_port) as channel:
            stub = MediaControlStub(channel)
            for pid, streams in plan.items():
                reply = await call(
                    stub.RegisterParticipant,
                    mc_pb.RegisterParticipant(
                        participant_id=pid,
                        meeting_id=meeting,
                        streams=[common_pb2.MediaStream(**s) for s in streams],
                    ),
                )
                urls[pid] = f"{reply.media_handler_url}?token={reply.connection_token}"
            for pid, streams in plan.items():
                others = [p for p in plan if p != pid]
                for s in streams:
                    await call(
                        stub.RouteMedia,
                        mc_pb.RouteMediaCommand(
                            source_stream_id=s["stream_id"],
                            destination_participant_ids=others,
                            meeting_id=meeting,
                        ),
                    )

    trio.run(main)
    return urls


# --- client processes -----------------------------------------------------------------------
def saturation_load(urls_json: str, cert_hash: str, warm: float, window: float) -> None:
    import trio

    from darktower.client._media import open_media_client
    from darktower.frames import FrameType

    urls = json.loads(urls_json)
    pinned = [bytes.fromhex(cert_hash)]
    counted = {"frames": 0, "bytes": 0}
    counting = False

    async def receiver(url: str, ready: trio.Event) -> None:
        async with open_media_client(url, server_certificate_hashes=pinned) as media:
            ready.set()
            async for frame in media:
                if counting:
                    counted["frames"] += 1
                    counted["bytes"] += frame.raw.nbytes

    async def sender(url: str, stream_id: str) -> None:
        async with open_media_client(url, server_certificate_hashes=pinned) as media:
            pub = await media.publish(stream_id)
            key, delta = b"k" * SAT_PAYLOAD, b"d" * SAT_PAYLOAD
            # A key frame every SAT_KEY_EVERY frames, as an encoder answering the MH's key frame
            # requests would: a subscriber that overflowed its queue resumes at the next one.
            for i in range(10**12):
                if i % SAT_KEY_EVERY == 0:
                    await pub.send_frame(FrameType.VIDEO_KEY, key)
                else:
                    await pub.send_frame(FrameType.VIDEO_DELTA, delta)

    async def main() -> None:
        nonlocal counting
        async with trio.open_nursery() as nursery:
            for url in urls["receivers"]:
                ready = trio.Event()
                nursery.start_soon(receiver, url, ready)
                await ready.wait()
            nursery.start_soon(sender, urls["sender"], urls["stream"])
            await trio.sleep(warm)
            counting = True
            print("START", flush=True)
            start = trio.current_time()
            await trio.sleep(window)
            counting = False
            elapsed = trio.current_time() - start
            print("STOP", flush=True)
            print(json.dumps({**counted, "elapsed": elapsed}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def meeting_clients(specs_json: str, cert_hash: str, warm: float, window: float) -> None:
    """Run the participants of ``specs_json`` ([{pid, url, video, audio, mode}]) in this
    process. mode "full": publish and subscribe; "watch": subscribe only; "slow": subscribe
    only, read at a tenth of the rate.
    Prints READY once all are connected, starts at a line on stdin, prints {pid: stats}."""
    import trio

    from darktower.client._media import open_media_client
    from darktower.frames import FrameType

    specs = json.loads(specs_json)
    pinned = [bytes.fromhex(cert_hash)]
    stats: dict[str, dict[str, Any]] = {
        s["pid"]: {"frames": 0, "bytes": 0, "lat_us": []} for s in specs
    }
    counting = False

    async def video(media: Any, stream_id: str) -> None:
        pub = await media.publish(stream_id)
        key, delta = b"K" * KEY_BYTES, b"d" * DELTA_BYTES
        start = trio.current_time()
        for i in range(10**9):
            await trio.sleep_until(start + i / VIDEO_FPS)
            kind = FrameType.VIDEO_KEY if i % KEY_EVERY == 0 else FrameType.VIDEO_DELTA
            await pub.send_frame(kind, key if i % KEY_EVERY == 0 else delta)

    async def audio(media: Any, stream_id: str) -> None:
        pub = await media.publish(stream_id)
        payload = b"a" * AUDIO_BYTES
        start = trio.current_time()
        for i in range(10**9):
            await trio.sleep_until(start + i / AUDIO_FPS)
            await pub.send_frame(FrameType.AUDIO, payload)

    async def receive(media: Any, mine: dict[str, Any], slow: bool) -> None:
        pause = 10 / ((MEETING - 1) * (VIDEO_FPS + AUDIO_FPS))
        samples: list[int] = mine["lat_us"]
        async for frame in media:
            if counting:
                mine["frames"] += 1
                mine["bytes"] += frame.raw.nbytes
                if len(samples) < MAX_SAMPLES:
                    samples.append(time.time_ns() // 1000 - frame.timestamp_us)
            if slow:
                await trio.sleep(pause)

    async def participant(
        spec: dict[str, Any], go: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with (
            open_media_client(
                spec["url"], server_certificate_hashes=pinned, max_buffered_frames=64
            ) as media,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            await go.wait()
            nursery.start_soon(receive, media, stats[spec["pid"]], spec["mode"] == "slow")
            if spec["mode"] == "full":
                nursery.start_soon(video, media, spec["video"])
                nursery.start_soon(audio, media, spec["audio"])
            await trio.sleep_forever()

    async def main() -> None:
        nonlocal counting
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for spec in specs:
                await nursery.start(participant, spec, go)
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()
            await trio.sleep(warm)
            counting = True
            await trio.sleep(window)
            counting = False
            print(json.dumps(stats), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- orchestration ----------------------------------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


class MH:
    def __init__(self, certfile: str, keyfile: str) -> None:
        self.proc = _spawn("--serve", certfile, keyfile)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.grpc, self.ops = int(info["grpc"]), info["ops"]

    def dropped(self) -> dict[str, float]:
        """Frames dropped so far, by reason (the MH's /metrics)."""
        text = urllib.request.urlopen(self.ops + "/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("darktower_mh_frames_dropped_total{"):
                reason = line.split('"')[1]
                out[reason] = float(line.rsplit(" ", 1)[1])
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def mh_saturation(
    files: tuple[str, str, str], warm: float, win: float
) -> tuple[float, float, float, float]:
    certfile, keyfile, cert_hash = files
    mh = MH(certfile, keyfile)
    try:
        stream = str(uuid.uuid4())
        plan: dict[str, list[dict[str, Any]]] = {"s": [{"stream_id": stream, "stream_type": 1}]}
        plan.update({f"r{i}": [] for i in range(SAT_RECEIVERS)})
        urls = _register(mh.grpc, str(uuid.uuid4()), plan)
        spec = {
            "sender": urls["s"],
            "stream": stream,
            "receivers": [urls[f"r{i}"] for i in range(SAT_RECEIVERS)],
        }
        gen = _spawn("--sat-load", json.dumps(spec), cert_hash, str(warm), str(win))
        assert gen.stdout is not None
        assert gen.stdout.readline().strip() == "START"
        cpu0 = _cpu_s(mh.proc.pid)
        assert gen.stdout.readline().strip() == "STOP"
        cpu1 = _cpu_s(mh.proc.pid)
        result = json.loads(gen.stdout.readline())
        gen.wait(timeout=30)
        dropped = sum(mh.dropped().values())
    finally:
        mh.close()
    rate = result["frames"] / result["elapsed"]
    cpu_us = (cpu1 - cpu0) * 1e6 / max(1, result["frames"])
    return rate, result["bytes"] / result["elapsed"] / 1e6, cpu_us, dropped


def meeting_point(
    files: tuple[str, str, str], warm: float, win: float, extra: str
) -> dict[str, Any]:
    certfile, keyfile, cert_hash = files
    mh = MH(certfile, keyfile)
    procs: list[subprocess.Popen[str]] = []
    try:
        ids = {f"p{i}": (str(uuid.uuid4()), str(uuid.uuid4())) for i in range(MEETING)}
        plan: dict[str, list[dict[str, Any]]] = {
            pid: [{"stream_id": v, "stream_type": 1}, {"stream_id": a, "stream_type": 0}]
            for pid, (v, a) in ids.items()
        }
        plan["extra"] = []
        urls = _register(mh.grpc, str(uuid.uuid4()), plan)
        specs = [
            {"pid": pid, "url": urls[pid], "video": v, "audio": a, "mode": "full"}
            for pid, (v, a) in ids.items()
        ]
        groups = [specs[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
        groups.append([{"pid": "extra", "url": urls["extra"], "mode": extra}])
        for group in groups:
            procs.append(_spawn("--clients", json.dumps(group), cert_hash, str(warm), str(win)))
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        time.sleep(warm)
        cpu0 = _cpu_s(mh.proc.pid)
        dropped0 = mh.dropped()
        time.sleep(win)
        cpu1 = _cpu_s(mh.proc.pid)
        dropped1 = mh.dropped()
        results: list[tuple[str, dict[str, Any]]] = []
        for p in procs:
            assert p.stdout is not None
            results.extend(json.loads(p.stdout.readline()).items())
            p.wait(timeout=30)
    finally:
        for p in procs:
            p.kill()
        mh.close()
    normal = [r for pid, r in results if pid != "extra"]
    frames = sum(r["frames"] for r in normal)
    nbytes = sum(r["bytes"] for r in normal)
    lat = [x for r in normal for x in r["lat_us"]]
    cpu_us = (cpu1 - cpu0) * 1e6
    return {
        "frames_per_s": frames / win,
        "mb_per_s": nbytes / win / 1e6,
        "cpu_us_per_frame": cpu_us / max(1, frames),
        "cpu_share": (cpu1 - cpu0) / win,
        "lat": percentiles([x / 1000 for x in lat]),
        "samples": len(lat),
        "dropped": sum(dropped1.values()) - sum(dropped0.values()),
        "dropped_by_reason": {
            k: v - dropped0.get(k, 0) for k, v in dropped1.items() if v - dropped0.get(k, 0)
        },
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    warm, win = (0.7, 1.0) if args.quick else (1.0, 1.5)
    # The meeting counts after one key frame period: no MC answers key frame requests here,
    # so a subscription that began between two key frames waits for the next periodic one.
    meeting_warm = KEY_EVERY / VIDEO_FPS + 0.2
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    files = (str(certfile), str(keyfile), cert.sha256.hex())
    figures: dict[str, Any] = {}

    # 1. saturation against the relay, same bytes, same fan-out.
    mh_runs: list[tuple[float, float, float, float]] = []
    relay_runs: list[tuple[float, float]] = []

    def a() -> float:
        mh_runs.append(mh_saturation(files, warm, win))
        return mh_runs[-1][0]

    def b() -> float:
        relay_runs.append(relay_point("ours", SAT_RECEIVERS, files, warm, win))
        return relay_runs[-1][0]

    xs, ys = interleave(a, b, rounds) if rounds >= 3 else ([a()], [b()])
    ratio = ratio_summary(xs, ys)
    mh_cpu = summary([c for _, _, c, _ in mh_runs])
    relay_cpu = summary([c for _, c in relay_runs])
    print(
        f"saturation N={SAT_RECEIVERS}: MH {summary(xs)['median']:8.0f} frames/s "
        f"{summary([m for _, m, _, _ in mh_runs])['median']:6.1f} MB/s {mh_cpu['median']:5.1f} us/frame"
        f" | relay {summary(ys)['median']:8.0f} msg/s {relay_cpu['median']:5.1f} us/msg"
        f" | ratio {ratio['median']:.2f} (min {ratio['min']:.2f} max {ratio['max']:.2f})"
        f" | MH drops (by policy: the MH does not push back on a publisher)"
        f" {summary([d for *_, d in mh_runs])['median']:.0f}",
        flush=True,
    )
    figures["sat_mh_delivered_per_s"] = summary(xs)["median"]
    figures["sat_mh_mb_per_s"] = summary([m for _, m, _, _ in mh_runs])["median"]
    figures["sat_mh_server_cpu_us"] = mh_cpu["median"]
    figures["sat_mh_drops"] = summary([d for *_, d in mh_runs])["median"]
    figures["sat_relay_delivered_per_s"] = summary(ys)["median"]
    figures["sat_relay_server_cpu_us"] = relay_cpu["median"]
    figures["sat_throughput_ratio"] = ratio["median"]
    figures["sat_throughput_ratio_min"] = ratio["min"]
    figures["sat_throughput_ratio_max"] = ratio["max"]

    # 2 and 3. the meeting with a fast and with a slow extra subscriber, interleaved.
    plain: list[dict[str, Any]] = []
    with_slow: list[dict[str, Any]] = []

    def c() -> float:
        plain.append(meeting_point(files, meeting_warm, win, "watch"))
        return float(plain[-1]["lat"]["p99"])

    def d() -> float:
        with_slow.append(meeting_point(files, meeting_warm, win, "slow"))
        return float(with_slow[-1]["lat"]["p99"])

    p99_plain, p99_slow = interleave(c, d, rounds) if rounds >= 3 else ([c()], [d()])
    slow_ratio = ratio_summary(p99_slow, p99_plain)
    fps = summary([m["frames_per_s"] for m in plain])["median"]
    cpu = summary([m["cpu_us_per_frame"] for m in plain])["median"]
    share = summary([m["cpu_share"] for m in plain])["median"]
    p50 = summary([m["lat"]["p50"] for m in plain])["median"]
    p99 = summary(p99_plain)["median"]
    per_core = MEETING / share if share else float("nan")
    print(
        f"meeting P={MEETING} (+1 subscribe-only): {fps:7.0f} frames/s {summary([m['mb_per_s'] for m in plain])['median']:5.2f} MB/s"
        f" {cpu:5.1f} us/frame, latency p50 {p50:.2f} ms p99 {p99:.2f} ms"
        f" ({sum(m['samples'] for m in plain)} samples), drops {sum(m['dropped'] for m in plain):.0f},"
        f" load {fps / figures['sat_mh_delivered_per_s']:.0%} of saturation",
        flush=True,
    )
    print(f"drops by reason, per round: {[m['dropped_by_reason'] for m in plain]}", flush=True)
    print(
        f"participants per core (6-person meetings, ~450 kbit/s video): {per_core:.0f}", flush=True
    )
    print(
        f"slow subscriber: others' p99 {summary(p99_slow)['median']:.2f} ms vs {p99:.2f} ms,"
        f" ratio {slow_ratio['median']:.2f} (min {slow_ratio['min']:.2f} max {slow_ratio['max']:.2f}),"
        f" drops with it {sum(m['dropped'] for m in with_slow):.0f}",
        flush=True,
    )
    figures.update(
        {
            "meeting_delivered_per_s": fps,
            "meeting_mb_per_s": summary([m["mb_per_s"] for m in plain])["median"],
            "meeting_server_cpu_us": cpu,
            "meeting_latency_p50_ms": p50,
            "meeting_latency_p99_ms": p99,
            "meeting_drops": sum(m["dropped"] for m in plain),
            "meeting_load_of_saturation_ratio": fps / figures["sat_mh_delivered_per_s"],
            "participants_per_core": per_core,
            "slow_p99_ms": summary(p99_slow)["median"],
            "slow_p99_ratio": slow_ratio["median"],
            "slow_p99_ratio_min": slow_ratio["min"],
            "slow_p99_ratio_max": slow_ratio["max"],
            "slow_drops": sum(m["dropped"] for m in with_slow),
        }
    )
    emit("media_fanout", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_mh(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--sat-load":
        saturation_load(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--clients":
        meeting_clients(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
