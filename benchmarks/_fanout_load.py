"""The media fan-out benchmark's load (benchmarks/media_fanout.py): its shapes, and the code of
the processes it runs on 127.0.0.1: the MH server, the saturation load generator and the clients
(publishers and subscribers, or the raw relay's sender and receivers for the baseline). The MH
runs on the QUIC core it is given; the clients stay on aioquic (CLIENT_QUIC_CORE) whatever it is."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

from benchmarks._bench import CLIENT_QUIC_CORE

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
def serve_mh(certfile: str, keyfile: str, core: str | None = None) -> None:
    """The MH on QUIC core ``core`` (None: the MH's default); prints its gRPC port and ops URL."""
    import logging

    import trio

    from benchmarks._cluster import cluster_options
    from darktower.media_handler import Settings, serve
    from darktower.servicekit import ServiceRole
    from darktower.transport.rpc import open_rpc_loop

    settings = Settings(
        port=0,
        grpc_port=0,
        ops_port=0,
        certfile=certfile,
        keyfile=keyfile,
        **cluster_options(os.path.dirname(certfile), ServiceRole.MH),
        budget_in_bytes_per_s=1 << 30,
        budget_out_bytes_per_s=1 << 30,
        max_participants_per_room=1000,
        log_level="warning",
        **({} if core is None else {"quic_core": core}),
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
    grpc_port: int, meeting: str, plan: dict[str, list[dict[str, Any]]], cluster: str
) -> dict[str, str]:
    """Register every participant of ``plan`` ({pid: [streams]}) and route every stream to
    every other participant, as the MC of the run's cluster (files in ``cluster``); return
    {pid: URL with token}."""
    import trio

    from benchmarks._cluster import cluster_tls
    from darktower.protocol.pb.v1 import common_pb2
    from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
    from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
    from darktower.servicekit import ServiceRole
    from darktower.transport.rpc import call, open_rpc_channel

    urls: dict[str, str] = {}
    tls = cluster_tls(cluster, ServiceRole.MC).client_context()

    async def main() -> None:
        async with open_rpc_channel("127.0.0.1", grpc_port, tls=tls) as channel:
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
    client = TransportLimits(quic_core=CLIENT_QUIC_CORE)
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
        async with connect_webtransport(
            url, server_certificate_hashes=pinned, limits=client
        ) as session:
            ready.set()
            stream = await session.accept_stream()
            while data := await stream.receive_some(1 << 20):  # type: ignore[union-attr]
                if counting:
                    counted[i] += len(data)

    async def sender(url: str) -> None:
        async with connect_webtransport(
            url,
            server_certificate_hashes=pinned,
            limits=TransportLimits(stream_send_high_water=64 * 1024, quic_core=CLIENT_QUIC_CORE),
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
    client = TransportLimits(quic_core=CLIENT_QUIC_CORE)
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
        limits = TransportLimits(stream_send_high_water=64 * 1024, quic_core=CLIENT_QUIC_CORE)
        async with connect_webtransport(
            f"{spec['url']}?role={spec['relay']}",
            server_certificate_hashes=pinned,
            limits=limits.for_media(),  # a receiver acks as the MH's subscribers do
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
                spec["url"],
                server_certificate_hashes=pinned,
                max_buffered_frames=64,
                limits=client,
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
