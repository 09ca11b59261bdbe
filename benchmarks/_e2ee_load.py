"""The end-to-end encryption benchmark's delivery load (benchmarks/e2ee.py, part 3): the client
processes (``--clients``: client-library sessions that join a meeting through the MC, publish,
subscribe and count) and one measured point of the driver (the same load in an encrypted or a
plain meeting; the server is the run's MC + MH process).

Two loads, both of Python client sessions in two processes:

- ``meeting``: MEETING sessions (two processes) each publish video (30 fps at 500 kbit/s: a
  30 KB key frame every 2 s, deltas making up the rate) and audio (50 fps of 120 bytes), as
  benchmarks/media_fanout.py's meetings do, and subscribe to every other's streams: a fixed
  load, the share of it delivered.
- ``sat``: SAT_PUBLISHERS sessions (one process) each publish one video stream of
  SAT_PAYLOAD-byte frames (a key frame every SAT_KEY_EVERY) as fast as the client library
  sends them; SAT_SUBSCRIBERS sessions (the other process) subscribe to every stream and read
  as fast as they can. Delivered frames/s is the pipeline's capacity, so every microsecond a
  client spends encrypting or decrypting could show in it (and so does any other process).

Every payload starts with the sender's ``time.monotonic_ns`` (one host clock), read by the
subscribers for latency. Each process counts from ``warm`` s after the start for ``window``
s; it reports what it sent and received, its CPU time over the window and its sessions'
end-to-end encryption drops."""

from __future__ import annotations

import collections
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from contextlib import AsyncExitStack
from typing import Any

from benchmarks._e2ee_rotation import poll
from benchmarks._fanout_load import (
    AUDIO_BYTES,
    AUDIO_FPS,
    DELTA_BYTES,
    KEY_BYTES,
    KEY_EVERY,
    VIDEO_FPS,
)

SAT_PUBLISHERS, SAT_SUBSCRIBERS = 2, 1
SAT_PAYLOAD, SAT_KEY_EVERY = 1200, 30
MEETING = 4  # participants of the meeting load, half in each client process
STAMP = 8  # bytes of the sender's monotonic clock at the start of every payload
MAX_SAMPLES = 20_000  # latency samples kept per process (bounded)
SETUP_S = 60.0  # bound on a client process's joins, subscriptions and key exchange
SCRIPT = pathlib.Path(__file__).with_name("e2ee.py")


# --- the driver's side ------------------------------------------------------------------------
def plans(load: str) -> list[list[dict[str, Any]]]:
    """The participants of each client process: {name, publish: [kinds], subscribe: streams
    expected (0: none)}."""
    if load == "sat":
        return [
            [
                {"name": f"pub{i}", "publish": ["sat"], "subscribe": 0}
                for i in range(SAT_PUBLISHERS)
            ],
            [
                {"name": f"sub{i}", "publish": [], "subscribe": SAT_PUBLISHERS}
                for i in range(SAT_SUBSCRIBERS)
            ],
        ]
    others = 2 * (MEETING - 1)  # the others' video and audio streams
    group = [
        {"name": f"p{i}", "publish": ["video", "audio"], "subscribe": others}
        for i in range(MEETING)
    ]
    return [group[0::2], group[1::2]]


def expected_per_s(load: str) -> float:
    """Frames/s the subscribers are sent at the meeting load (0 for the saturating one)."""
    return MEETING * (MEETING - 1) * (VIDEO_FPS + AUDIO_FPS) if load == "meeting" else 0.0


def _cpu_s(pid: int) -> float:
    """utime + stime of process ``pid``, seconds."""
    import os

    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _line(proc: subprocess.Popen[str], want: str | None = None) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a client process ended early (exit {proc.wait()})")
    if want is not None and line.strip() != want:
        raise RuntimeError(f"a client process said {line.strip()!r}, not {want}")
    return line


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """A client process's result line (after its own START and STOP)."""
    while (line := _line(proc).strip()) in ("START", "STOP"):
        pass
    result: dict[str, Any] = json.loads(line)
    return result


def mh_dropped(ops_url: str) -> float:
    """Frames the MH dropped so far, all reasons (its /metrics)."""
    text = urllib.request.urlopen(ops_url + "/metrics", timeout=5).read().decode()
    prefix = "darktower_mh_frames_dropped_total{"
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))


def point(
    server_pid: int,
    mh_ops: str,
    signal: str,
    pins: list[str],
    meeting: str,
    tokens: list[list[str]],
    load: str,
    warm: float,
    window: float,
) -> dict[str, Any]:
    """One measured point: the client processes of ``load`` in ``meeting`` (tokens: one per
    participant of each process, as :func:`plans` orders them)."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for plan, toks in zip(plans(load), tokens, strict=True):
            spec = {
                "signal": signal,
                "pins": pins,
                "meeting": meeting,
                "participants": [dict(p, token=t) for p, t in zip(plan, toks, strict=True)],
                "warm": warm,
                "window": window,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(SCRIPT), "--clients", json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            _line(proc, "READY")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        _line(procs[0], "START")
        cpu0, dropped0 = _cpu_s(server_pid), mh_dropped(mh_ops)
        _line(procs[0], "STOP")
        cpu1, dropped1 = _cpu_s(server_pid), mh_dropped(mh_ops)
        results = [_result(proc) for proc in procs]
        for proc in procs:
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = _combine(results, cpu1 - cpu0, load)
    out["mh_drops"] = dropped1 - dropped0
    return out


def _combine(results: list[dict[str, Any]], server_cpu: float, load: str) -> dict[str, Any]:
    elapsed = max(r["elapsed"] for r in results)
    received = sum(r["received"] for r in results)
    client_cpu = sum(r["cpu_s"] for r in results)
    drops: dict[str, int] = {}
    for r in results:
        for reason, n in r["e2ee_drops"].items():
            drops[reason] = drops.get(reason, 0) + n
    expected = expected_per_s(load)
    rate = received / elapsed
    return {
        "delivered_per_s": rate,
        "sent_per_s": sum(r["sent"] for r in results) / elapsed,
        "delivered_share": min(1.0, rate / expected) if expected else float("nan"),
        "mb_per_s": sum(r["bytes"] for r in results) / elapsed / 1e6,
        "client_cpu_us_per_frame": client_cpu * 1e6 / max(1, received),
        "client_cpu_share": client_cpu / elapsed,
        "server_cpu_us_per_frame": server_cpu * 1e6 / max(1, received),
        "server_cpu_share": server_cpu / elapsed,
        "cpu_us_per_frame": (client_cpu + server_cpu) * 1e6 / max(1, received),
        "lat_ms": [x for r in results for x in r["lat_ms"]],
        "subscription_drops": sum(r["subscription_drops"] for r in results),
        "e2ee_drops": drops,
        "encrypted": all(r["encrypted"] for r in results),
        # Per process (the saturating load: the publishers', then the subscribers'): CPU µs
        # per frame sent, per frame received.
        "cpu_us_per_sent": [r["cpu_s"] * 1e6 / max(1, r["sent"]) for r in results],
        "cpu_us_per_received": [r["cpu_s"] * 1e6 / max(1, r["received"]) for r in results],
    }


# --- the client processes -----------------------------------------------------------------
def run_clients(spec_json: str) -> None:
    """``python benchmarks/e2ee.py --clients SPEC``: join, publish, subscribe, print READY;
    at a line on stdin send and count; print START and STOP (the window) and the results."""
    import trio

    from darktower.client import MeetingSession, Publication, Subscription, join_meeting_session
    from darktower.frames import FrameType
    from darktower.model import StreamType

    spec = json.loads(spec_json)
    pins = [bytes.fromhex(p) for p in spec["pins"]]
    now_ns = time.monotonic_ns
    sent = [0]
    got = {"frames": 0, "bytes": 0}
    lat_ms: list[float] = []
    subscriptions: list[Subscription] = []

    async def publish(pub: Publication, kind: str) -> None:
        send = pub.send_frame
        if kind == "sat":
            fill = b"s" * (SAT_PAYLOAD - STAMP)
            for i in range(10**12):
                key = FrameType.VIDEO_KEY if i % SAT_KEY_EVERY == 0 else FrameType.VIDEO_DELTA
                await send(key, now_ns().to_bytes(STAMP, "big") + fill)
                sent[0] += 1
        start = trio.current_time()
        rate = AUDIO_FPS if kind == "audio" else VIDEO_FPS
        for i in range(10**12):
            await trio.sleep_until(start + i / rate)
            if kind == "audio":
                frame_type, size = FrameType.AUDIO, AUDIO_BYTES
            elif i % KEY_EVERY == 0:
                frame_type, size = FrameType.VIDEO_KEY, KEY_BYTES
            else:
                frame_type, size = FrameType.VIDEO_DELTA, DELTA_BYTES
            await send(frame_type, now_ns().to_bytes(STAMP, "big") + b"m" * (size - STAMP))
            sent[0] += 1

    async def receive(sub: Subscription) -> None:
        async for frame in sub:
            got["frames"] += 1
            got["bytes"] += len(frame.raw)
            if len(lat_ms) < MAX_SAMPLES and counting:
                lat_ms.append((now_ns() - int.from_bytes(frame.payload[:STAMP], "big")) / 1e6)

    async def until_streams(session: MeetingSession, n: int) -> None:
        """Read ``session``'s events until it knows ``n`` streams of the others."""
        if len(streams_of_others(session)) >= n:
            return
        async for _ in session.events:
            if len(streams_of_others(session)) >= n:
                return
        raise RuntimeError("the session ended during the set-up")

    def streams_of_others(session: MeetingSession) -> list[str]:
        return [s.stream_id for p in session.participants.values() for s in p.streams]

    def keys_held(session: MeetingSession) -> bool:
        """Encrypted: a key of every publisher is held (its frames decrypt from the start)."""
        if not session.e2ee.enabled:
            return True
        ring = session.e2ee.keyring
        return all(ring.generations(p) for p, i in session.participants.items() if i.streams)

    counting = False

    async def main() -> None:
        nonlocal counting
        async with AsyncExitStack() as stack:
            sessions: list[tuple[dict[str, Any], MeetingSession]] = []
            pubs: list[tuple[Publication, str]] = []
            for p in spec["participants"]:
                session = await stack.enter_async_context(
                    join_meeting_session(
                        spec["signal"],
                        meeting_id=spec["meeting"],
                        join_token=p["token"],
                        participant_name=p["name"],
                        server_certificate_hashes=pins,
                    )
                )
                sessions.append((p, session))
                for kind in p["publish"]:
                    stream_type = StreamType.AUDIO if kind == "audio" else StreamType.VIDEO_CAMERA
                    codec = "Opus" if kind == "audio" else "VP8"
                    pubs.append((await session.publish(stream_type, codec=codec), kind))
            # Joins are bounded by the client library; the waits for the others by SETUP_S.
            with trio.fail_after(SETUP_S):
                for p, session in sessions:
                    if p["subscribe"]:
                        await until_streams(session, p["subscribe"])
                        for stream_id in streams_of_others(session):
                            subscriptions.append(await session.subscribe(stream_id))
                # Key shares make no event: their arrival is polled (set-up only).
                await poll(lambda: all(keys_held(s) for _, s in sessions), SETUP_S)
            encrypted = all(s.e2ee.enabled for _, s in sessions)
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            async with trio.open_nursery() as nursery:
                for sub in subscriptions:
                    nursery.start_soon(receive, sub)
                for pub, kind in pubs:
                    nursery.start_soon(publish, pub, kind)
                await trio.sleep(spec["warm"])
                counting = True
                first = (
                    sent[0],
                    got["frames"],
                    got["bytes"],
                    time.process_time(),
                    trio.current_time(),
                )
                drops0 = sum((s.e2ee.drops for _, s in sessions), start=collections.Counter[str]())
                sub_drops0 = sum(sub.dropped for sub in subscriptions)
                print("START", flush=True)
                await trio.sleep(spec["window"])
                last = (
                    sent[0],
                    got["frames"],
                    got["bytes"],
                    time.process_time(),
                    trio.current_time(),
                )
                counting = False
                print("STOP", flush=True)
                drops = (
                    sum((s.e2ee.drops for _, s in sessions), start=collections.Counter[str]())
                    - drops0
                )
                result = {
                    "sent": last[0] - first[0],
                    "received": last[1] - first[1],
                    "bytes": last[2] - first[2],
                    "cpu_s": last[3] - first[3],
                    "elapsed": last[4] - first[4],
                    "lat_ms": lat_ms,
                    "subscription_drops": sum(sub.dropped for sub in subscriptions) - sub_drops0,
                    "e2ee_drops": dict(drops),
                    "encrypted": encrypted,
                }
                print(json.dumps(result), flush=True)
                nursery.cancel_scope.cancel()

    trio.run(main)
