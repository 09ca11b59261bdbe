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

import json
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles, ratio_summary, summary
from benchmarks.transport_relay import Server as RelayServer
from benchmarks.transport_relay import _cpu_s
from benchmarks.transport_relay import _spawn as relay_spawn

SAT_RECEIVERS = 5
SAT_PAYLOAD = 1000  # + 46-byte header = transport_relay's 1,046-byte message
SAT_KEY_EVERY = 30
LOAD_SHARE = 0.7  # step 2 runs at this share of the saturation rate
SLOW_FACTOR = 10  # the slow subscriber reads at 1/SLOW_FACTOR of the rate
MEETING = 6
MEETING_PROCESSES = 2  # the meeting's participants, spread over this many client processes
VIDEO_FPS, AUDIO_FPS = 30, 50
VIDEO_BITS_PER_S = 500_000
KEY_BYTES, AUDIO_BYTES = 30_000, 120
KEY_S = 2.0
KEY_EVERY = int(KEY_S * VIDEO_FPS)
# Deltas fill what the key frame leaves of VIDEO_BITS_PER_S over one key frame period (~1.6 KB).
DELTA_BYTES = (VIDEO_BITS_PER_S // 8 * KEY_EVERY // VIDEO_FPS - KEY_BYTES) // (KEY_EVERY - 1)
# Frames each participant of a meeting is sent per second: 5 others x (video + audio).
MEETING_FRAMES_PER_S = (MEETING - 1) * (VIDEO_FPS + AUDIO_FPS)
MEETING_WARM_S = KEY_S  # one key frame period: congestion windows opened, backlogs drained
# Frames a slow subscriber holds back before the MH drops for it: its client's buffer (64),
# the stream's receive window and the MH's send high-water mark (256 KiB each, of 1,046-byte
# frames) and the MH's queue (256). Step 3 warms up until that backlog is full, so that the
# window sees the drop policy at work, not buffers filling; bounded by SLOW_WARM_MAX_S.
SLOW_BACKLOG_FRAMES = 64 + 2 * 256 * 1024 // (SAT_PAYLOAD + 46) + 256
SLOW_WARM_MAX_S = 4.0  # keeps the whole run within 2-3 minutes on a busy machine
MAX_SAMPLES = 50_000  # latency samples kept per subscriber (bounded)
STAMP = 8  # bytes of the monotonic write time at the start of every payload


# --- the MH server process ----------------------------------------------------------------
def serve_mh(certfile: str, keyfile: str) -> None:
    import logging

    import trio

    from darktower.media_handler import Settings, serve
    from darktower.transport.rpc import open_rpc_loop

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
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            running = await nursery.start(
                lambda task_status: serve(settings, shutdown=trio.Event(), task_status=task_status)
            )
            print(json.dumps({"grpc": running.grpc_address[1], "ops": running.ops_url}), flush=True)

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
    """Step 1's load, shaped exactly like transport_relay's: one process; the sender writes
    ready-made 1,046-byte frames, one per ``send_all``, with the relay sender's send limits;
    the receivers count bytes on the streams the MH opens, without decoding frames. The client
    side then costs the same for both, whichever of them is the bottleneck."""
    import trio

    from darktower.frames import HEADER_SIZE, FrameFlags, FrameHeader, FrameType
    from darktower.transport import TransportLimits, connect_webtransport

    urls = json.loads(urls_json)
    pinned = [bytes.fromhex(cert_hash)]
    counted = [0] * len(urls["receivers"])
    counting = False

    def encoded(frame_type: FrameType, fill: bytes) -> bytes:
        header = FrameHeader(
            frame_type=frame_type,
            stream_id=uuid.UUID(urls["stream"]),
            timestamp_us=0,
            sequence=0,
            payload_length=SAT_PAYLOAD,
            flags=FrameFlags.END_OF_FRAME,
        )
        return header.encode() + fill * SAT_PAYLOAD

    async def receiver(i: int, url: str, ready: trio.Event) -> None:
        async with connect_webtransport(url, server_certificate_hashes=pinned) as session:
            ready.set()
            stream = await session.accept_stream()
            while data := await stream.receive_some(1 << 20):  # type: ignore[union-attr]
                if counting:
                    counted[i] += len(data)

    async def sender(url: str) -> None:
        async with connect_webtransport(
            url,
            server_certificate_hashes=pinned,
            limits=TransportLimits(stream_send_high_water=64 * 1024),
        ) as session:
            stream = await session.open_bidirectional_stream()
            key, delta = encoded(FrameType.VIDEO_KEY, b"k"), encoded(FrameType.VIDEO_DELTA, b"d")
            # A key frame every SAT_KEY_EVERY frames, as an encoder answering the MH's key frame
            # requests would: a subscriber that overflowed its queue resumes at the next one.
            for i in range(10**12):
                await stream.send_all(key if i % SAT_KEY_EVERY == 0 else delta)

    async def main() -> None:
        nonlocal counting
        async with trio.open_nursery() as nursery:
            for i, url in enumerate(urls["receivers"]):
                ready = trio.Event()
                nursery.start_soon(receiver, i, url, ready)
                await ready.wait()
            nursery.start_soon(sender, urls["sender"])
            await trio.sleep(warm)
            counting = True
            print("START", flush=True)
            start = trio.current_time()
            await trio.sleep(window)
            counting = False
            elapsed = trio.current_time() - start
            print("STOP", flush=True)
            nbytes = sum(counted)
            frames = nbytes / (SAT_PAYLOAD + HEADER_SIZE)
            print(json.dumps({"frames": frames, "bytes": nbytes, "elapsed": elapsed}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def run_clients(specs_json: str, cert_hash: str, warm: float, window: float) -> None:
    """Run the participants of ``specs_json`` in this process.

    Each spec: {pid, url, publish: [{stream, kind: "sat"|"video"|"audio", rate}], read:
    "fast"|"slow"|"none", rate: frames/s it is sent (for "slow")}. Prints READY once all are
    connected, starts at a line on stdin, counts from ``warm`` s after it for ``window`` s,
    then prints {pid: {frames, bytes, lat_us}}."""
    import trio

    from darktower.client._media import open_media_client
    from darktower.frames import HEADER_SIZE, FrameType
    from darktower.transport import TransportLimits, connect_webtransport

    specs = json.loads(specs_json)
    pinned = [bytes.fromhex(cert_hash)]
    stats: dict[str, dict[str, Any]] = {
        s["pid"]: {"frames": 0, "bytes": 0, "lat_us": []} for s in specs
    }
    counting = False
    now_ns = time.monotonic_ns

    def stamped(size: int, fill: bytes) -> bytes:
        return now_ns().to_bytes(STAMP, "big") + fill * (size - STAMP)

    async def publish(media: Any, spec: dict[str, Any]) -> None:
        pub = await media.publish(spec["stream"])
        kind, rate = spec["kind"], spec["rate"]
        start = trio.current_time() + spec.get("delay", 0.0)
        for i in range(10**12):
            await trio.sleep_until(start + i / rate)
            if kind == "audio":
                await pub.send_frame(FrameType.AUDIO, stamped(AUDIO_BYTES, b"a"))
                continue
            key_every, key_size, delta_size = (
                (SAT_KEY_EVERY, SAT_PAYLOAD, SAT_PAYLOAD)
                if kind == "sat"
                else (KEY_EVERY, KEY_BYTES, DELTA_BYTES)
            )
            if i % key_every == 0:
                await pub.send_frame(FrameType.VIDEO_KEY, stamped(key_size, b"K"))
            else:
                await pub.send_frame(FrameType.VIDEO_DELTA, stamped(delta_size, b"d"))

    async def receive(media: Any, mine: dict[str, Any], pause: float) -> None:
        samples: list[int] = mine["lat_us"]
        async for frame in media:
            if counting:
                mine["frames"] += 1
                mine["bytes"] += frame.raw.nbytes
                if len(samples) < MAX_SAMPLES:
                    sent = int.from_bytes(frame.payload[:STAMP], "big")
                    samples.append((now_ns() - sent) // 1000)
            if pause:
                await trio.sleep(pause)

    async def relay_peer(
        spec: dict[str, Any], go: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The baseline: transport_relay's server relays what its sender writes, byte for
        byte, to every receiver; records are the same 1,046 bytes, stamped at their start."""
        size = SAT_PAYLOAD + HEADER_SIZE
        async with connect_webtransport(
            f"{spec['url']}?role={spec['relay']}",
            server_certificate_hashes=pinned,
            limits=TransportLimits(stream_send_high_water=64 * 1024),
        ) as session:
            if spec["relay"] == "send":
                stream: Any = await session.open_unidirectional_stream()
                task_status.started()
                await go.wait()
                start, rate = trio.current_time(), spec["rate"]
                for i in range(10**12):
                    await trio.sleep_until(start + i / rate)
                    await stream.send_all(stamped(size, b"r"))
            stream = await session.accept_stream()
            task_status.started()
            mine, pending = stats[spec["pid"]], b""
            samples: list[int] = mine["lat_us"]
            while data := await stream.receive_some(1 << 20):
                pending += data
                records = len(pending) // size
                if counting:
                    mine["frames"] += records
                    mine["bytes"] += records * size
                    if records and len(samples) < MAX_SAMPLES:
                        now = now_ns()
                        for r in range(records):
                            sent = int.from_bytes(pending[r * size : r * size + STAMP], "big")
                            samples.append((now - sent) // 1000)
                pending = pending[records * size :]

    async def participant(
        spec: dict[str, Any], go: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        if "relay" in spec:
            await relay_peer(spec, go, task_status=task_status)
            return
        async with (
            open_media_client(
                spec["url"], server_certificate_hashes=pinned, max_buffered_frames=64
            ) as media,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            await go.wait()
            if spec["read"] != "none":
                pause = SLOW_FACTOR / spec["rate"] if spec["read"] == "slow" else 0.0
                nursery.start_soon(receive, media, stats[spec["pid"]], pause)
            for stream in spec["publish"]:
                nursery.start_soon(publish, media, stream)
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
    urls = _register(mh.grpc, str(uuid.uuid4()), plan)
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
    results, server CPU seconds per second and drops by reason, over the window."""
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = _register(mh.grpc, str(uuid.uuid4()), plan)
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
        cpu0, dropped0 = _cpu_s(mh.proc.pid), mh.dropped()
        time.sleep(win)
        cpu1, dropped1 = _cpu_s(mh.proc.pid), mh.dropped()
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
    return {**_figures(point, [o["pid"] for o in others], win), "by_reason": point["dropped"]}


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
