"""The reconnection benchmark's phases (benchmarks/resume.py): 1. blackouts, 2. rebinds, 3. a stalled
subscriber, 4. loss detection; each adds its figures."""

from __future__ import annotations

import functools
import random
import time
import urllib.parse
import urllib.request
from typing import Any

import attrs
import trio

from benchmarks._bench import percentiles
from benchmarks._resume_peers import (
    AFTER_S,
    AUDIO_FPS,
    BLACKOUTS,
    LEAVE_S,
    LOSS_STAGGER_S,
    LOSS_WAIT_S,
    MEETING,
    REBIND_AFTER_S,
    REBIND_BEFORE_S,
    SEED,
    SETTLE_S,
    SHORT_IDLE,
    STALL_READ_S,
    STALL_S,
    STALL_WARM_S,
    STALL_WINDOW,
    VIDEO_FPS,
    WAIT_S,
    Peer,
    Stack,
    bound,
    detail,
    hold,
    is_video,
    open_subject,
)
from darktower.client import (
    ConnectionState,
    MediaClient,
    Reconnecting,
    SignalingClient,
    media_url,
    open_signaling,
)
from darktower.frames import FrameDecoder, FrameError, FrameType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits, WebTransportReceiveStream, connect_webtransport


# --- 1. blackouts ---------------------------------------------------------------------------
async def blackout(peer: Peer, duration: float) -> dict[str, Any]:
    """One blackout of both of ``peer``'s paths; what came back, and when."""
    if not await peer.steady():
        return {"ok": False, "reconnected": False, "why": f"no steady media before: {peer.state()}"}
    reconnects = peer.session.reconnects
    peer.pause()
    await trio.sleep(duration)
    peer.resume()
    back, back_wall = time.monotonic(), time.time()
    rx = peer.rx
    first = await rx.first_after(back)
    ok = first is not None and peer.session.end_reason is None
    out: dict[str, Any] = {"ok": ok, "reconnected": False}
    if not ok:
        out["why"] = f"no media in {WAIT_S:.0f} s: {peer.state()}"
        return out
    assert first is not None
    video = await rx.first_after(back, is_video(rx))
    fresh = await rx.first_after(back, lambda i: rx.sent[i] >= back_wall)
    # Within the resume grace window a reconnection completes, or the session ends.
    connected = await peer.pulse.until(
        lambda: peer.session.connection is ConnectionState.CONNECTED, WAIT_S
    )
    await trio.sleep(max(0.0, back + AFTER_S - time.monotonic()))
    out.update(
        ok=connected and peer.session.end_reason is None,
        media_ms=(first - back) * 1000,
        video_ms=None if video is None else (video - back) * 1000,
        fresh_ms=None if fresh is None else (fresh - back) * 1000,
        stale=rx.stale(back, back + AFTER_S),
        reconnected=peer.session.reconnects > reconnects,
    )
    return out


async def blackouts_phase(
    stack: Stack,
    nursery: trio.Nursery,
    streams: tuple[str, ...],
    quick: bool,
    figures: dict[str, Any],
) -> None:
    rng = random.Random(SEED)
    n_default, n_reconnect = BLACKOUTS[quick]
    span = (1.0, 2.0) if quick else (2.0, 5.0)
    variants: dict[str, Any] = {
        "default": {"limits": None, "span": span, "n": n_default, "runs": []},
        "reconnect": {"limits": SHORT_IDLE, "span": (2.0, 2.5) if quick else span},
    }
    variants["reconnect"].update(n=n_reconnect, runs=[])
    peers: dict[str, Peer] = {}
    for i in range(max(n_default, n_reconnect)):
        for name, v in variants.items():
            if i >= v["n"]:
                continue
            if name not in peers:
                opener = functools.partial(
                    open_subject, stack, f"subject-{name}", streams, limits=v["limits"]
                )
                peers[name] = await nursery.start(hold, opener)
            duration = rng.uniform(*v["span"])
            run = await blackout(peers[name], duration)
            run["blackout_s"] = duration
            v["runs"].append(run)
            detail(f"blackout ({name})", run)
            if not run["ok"]:
                print(f"  {name} blackout {i}: FAILED ({run.get('why', 'did not reconnect')})")
                peers.pop(name).release.set()
            await trio.sleep(SETTLE_S)
    for peer in peers.values():
        peer.release.set()
    runs = variants["default"]["runs"] + variants["reconnect"]["runs"]
    figures["resume_success_ratio"] = sum(r["ok"] for r in runs) / max(1, len(runs))
    for name, prefix in (("default", "resume"), ("reconnect", "reconnect")):
        rs = variants[name]["runs"]
        if not rs:
            continue
        good = [r for r in rs if r["ok"]]
        figures[f"{prefix}_blackouts"] = len(rs)
        figures[f"{prefix}_ok_ratio"] = len(good) / len(rs)
        figures[f"{prefix}_reconnected_ratio"] = sum(r["reconnected"] for r in rs) / len(rs)
        figures[f"{prefix}_stale_frames"] = sum(r["stale"] for r in good)
        for key in ("media", "video", "fresh"):
            samples = [r[f"{key}_ms"] for r in good if r[f"{key}_ms"] is not None]
            for q, value in percentiles(samples).items():
                figures[f"{prefix}_{key}_{q}_ms"] = value
            figures[f"{prefix}_{key}_max_ms"] = max(samples, default=float("nan"))
        print(
            f"blackouts ({name}): {len(good)}/{len(rs)} came back; first frame after the path "
            f"returned p50 {figures[f'{prefix}_media_p50_ms']:.0f} ms p99 "
            f"{figures[f'{prefix}_media_p99_ms']:.0f} ms max {figures[f'{prefix}_media_max_ms']:.0f}"
            f" ms; first video p99 {figures[f'{prefix}_video_p99_ms']:.0f} ms; reconnected in "
            f"{figures[f'{prefix}_reconnected_ratio']:.0%}",
            flush=True,
        )


# --- 2. rebinds -----------------------------------------------------------------------------
def migrate(peer: Peer) -> None:
    """Move the subject's two QUIC connections to new local sockets (a network switch). No
    public hook on MeetingSession: the session's current connections, from its link."""
    link = peer.session._link
    for conn in (link.media, link.signaling):
        assert isinstance(conn, MediaClient | SignalingClient)
        conn.session.migrate()


async def rebind_once(peer: Peer, witness: Peer, how: str) -> dict[str, Any] | None:
    if not await peer.steady():
        return None
    reconnects = peer.session.reconnects
    t = time.monotonic()
    if how == "nat":
        for proxy in peer.proxies:
            await proxy.rebind()
    else:
        migrate(peer)
    end = t + REBIND_AFTER_S
    await trio.sleep(REBIND_AFTER_S)
    if await peer.rx.first_after(end) is None or await witness.rx.first_after(end) is None:
        return None
    return {
        "gap_ms": peer.rx.max_gap(t - REBIND_BEFORE_S, end) * 1000,
        "base_ms": witness.rx.max_gap(t - REBIND_BEFORE_S, end) * 1000,
        "resumed": peer.session.reconnects > reconnects,
    }


async def rebinds(
    stack: Stack, witness: Peer, streams: tuple[str, ...], hows: list[str], publish: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    name = "rebind" if publish else "rebind-receive-only"
    async with open_subject(stack, name, streams, publish_audio=publish) as peer:
        for how in hows:
            run = await rebind_once(peer, witness, how)
            if run is None:
                print(f"  {name} {how}: media did not flow again")
                break
            run["how"] = how
            out.append(run)
            detail(name, run)
            await trio.sleep(SETTLE_S)
    return out


def rebind_figures(runs: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    groups = {"": runs, "_nat": [r for r in runs if r["how"] == "nat"]}
    groups["_migrate"] = [r for r in runs if r["how"] == "migrate"]
    for suffix, rs in groups.items():
        for q, value in percentiles([r["gap_ms"] for r in rs]).items():
            figures[f"migration_gap{suffix}_{q}_ms"] = value
    for q, value in percentiles([r["base_ms"] for r in runs]).items():
        figures[f"baseline_gap_{q}_ms"] = value
    # What the rebinding added: the subject's longest gap less the witness's, window by window
    # (a stall of the machine shows in both).
    for q, value in percentiles([r["gap_ms"] - r["base_ms"] for r in runs]).items():
        figures[f"migration_gap_excess_{q}_ms"] = value
    figures["migrations"] = len(runs)
    figures["migration_resumes"] = sum(r["resumed"] for r in runs)
    print(
        f"rebinds: {len(runs)}; longest frame gap p50 {figures['migration_gap_p50_ms']:.0f} ms"
        f" p99 {figures['migration_gap_p99_ms']:.0f} ms (NAT {figures['migration_gap_nat_p99_ms']:.0f}"
        f", migrate() {figures['migration_gap_migrate_p99_ms']:.0f}); witness over the same "
        f"windows p99 {figures['baseline_gap_p99_ms']:.0f} ms; excess over it p99 "
        f"{figures['migration_gap_excess_p99_ms']:.0f} ms; resumes {figures['migration_resumes']}",
        flush=True,
    )


# --- 3. stall -------------------------------------------------------------------------------
@attrs.define(eq=False)
class StallReader:
    """Reads a raw media connection's streams, or stops reading them (while ``reading`` is
    clear) so that QUIC flow control backs up to the MH. Records the frames read after the
    stall, each with whether its own stream windows could have held it."""

    reading: trio.Event = attrs.Factory(trio.Event)
    stalled_at: float = float("inf")
    resumed_at: float = float("inf")
    # For each video stream the MH opened after the stall began: whether it starts at a key frame.
    new_streams_start_at_key: list[bool] = attrs.Factory(list)
    # (arrival, kind, age, held: within its stream's window when reading stopped)
    after: list[tuple[float, FrameType, float, bool]] = attrs.Factory(list)

    async def accept(self, session: Any, nursery: trio.Nursery) -> None:
        try:
            while True:
                stream = await session.accept_stream()
                if isinstance(stream, WebTransportReceiveStream):
                    nursery.start_soon(self.read, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def read(self, stream: WebTransportReceiveStream) -> None:
        decoder = FrameDecoder()
        offset = ends = 0
        opened_after_stall = time.monotonic() >= self.stalled_at
        first = True
        held_to: float | None = None  # where the stream's window ended when reading stopped
        try:
            while True:
                if not self.reading.is_set():
                    held_to = offset + STALL_WINDOW
                    await self.reading.wait()
                data = await stream.receive_some(64 * 1024)
                if not data:
                    return
                offset += len(data)
                decoder.receive_data(data)
                now, wall = time.monotonic(), time.time()
                for frame in decoder:
                    ends += frame.raw.nbytes
                    if first and opened_after_stall and frame.frame_type is not FrameType.AUDIO:
                        self.new_streams_start_at_key.append(
                            frame.frame_type is FrameType.VIDEO_KEY
                        )
                    first = False
                    if now >= self.resumed_at:
                        held = held_to is not None and ends <= held_to
                        age = wall - frame.timestamp_us / 1e6
                        self.after.append((now, frame.frame_type, age, held))
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
            return  # the MH reset it (an abandoned send): a new stream carries on


async def mh_drops(stack: Stack) -> dict[str, float]:
    def fetch() -> dict[str, float]:
        text = urllib.request.urlopen(stack.mh_ops + "/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("darktower_mh_frames_dropped_total{"):
                out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        return out

    return await trio.to_thread.run_sync(fetch)


async def stall_phase(stack: Stack, streams: tuple[str, ...], figures: dict[str, Any]) -> None:
    reader = StallReader()
    reader.reading.set()
    limits = TransportLimits(stream_receive_window=STALL_WINDOW)
    async with open_signaling(
        stack.signal_url,
        meeting_id=MEETING,
        join_token=stack.token(),
        participant_name="staller",
        server_certificate_hashes=stack.pins,
    ) as signaling:
        url = media_url(signaling.join_response)
        async with (
            connect_webtransport(url, server_certificate_hashes=stack.pins, limits=limits) as media,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(reader.accept, media, nursery)
            for stream_id in streams:
                await signaling.request(
                    sig.ClientMessage(subscribe=sig.SubscribeStream(stream_id=stream_id))
                )
            await trio.sleep(STALL_WARM_S)
            before = await mh_drops(stack)
            reader.stalled_at = time.monotonic()
            reader.reading = trio.Event()  # the readers stop at their next read
            await trio.sleep(STALL_S)
            reader.resumed_at = time.monotonic()
            reader.reading.set()
            await trio.sleep(STALL_READ_S)
            after = await mh_drops(stack)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(LEAVE_S, shield=True):
            await signaling.leave()
    sent = [f for f in reader.after if not f[3]]
    held = [f for f in reader.after if f[3]]
    starts = reader.new_streams_start_at_key
    figures.update(
        stall_stale_frames=sum(age > bound(kind) for _, kind, age, _ in sent),
        stall_buffered_stale_frames=sum(age > bound(kind) for _, kind, age, _ in held),
        stall_frames_after=len(sent),
        stall_max_age_ms=max((f[2] for f in sent), default=float("nan")) * 1000,
        # Every video stream the MH opened after the stall began starts at a key frame.
        stall_video_restarts_at_key=int(bool(starts) and all(starts)),
        stall_new_video_streams=len(starts),
        stall_resume_ms=(min((f[0] for f in sent), default=float("nan")) - reader.resumed_at)
        * 1000,
        stall_published_frames=int(STALL_S * (VIDEO_FPS + AUDIO_FPS)),
        stall_mh_stale_drops=after.get("stale", 0.0) - before.get("stale", 0.0),
    )
    print(
        f"stall of {STALL_S:.0f} s: {figures['stall_stale_frames']} frames older than the bound"
        f" sent after it (of {len(sent)} in {STALL_READ_S:.0f} s; oldest"
        f" {figures['stall_max_age_ms']:.0f} ms; video restarts at a key frame:"
        f" {bool(figures['stall_video_restarts_at_key'])}); {figures['stall_buffered_stale_frames']}"
        f" old ones its own windows held; the MH dropped {figures['stall_mh_stale_drops']:.0f} as"
        f" stale (published meanwhile: {figures['stall_published_frames']})",
        flush=True,
    )


# --- 4. loss detection ----------------------------------------------------------------------
async def loss_phase(
    stack: Stack, host: Peer, audio: str, samples: int, figures: dict[str, Any]
) -> None:
    async with trio.open_nursery() as nursery:
        peers: list[Peer] = []
        for i in range(samples):
            opener = functools.partial(
                open_subject, stack, f"gone-{i}", (audio,), publish_audio=False
            )
            peers.append(await nursery.start(hold, opener))
        for peer in peers:
            await peer.steady()
        paused: dict[str, float] = {}
        for peer in peers:
            peer.pause()
            paused[peer.session.participant_id] = time.monotonic()
            await trio.sleep(LOSS_STAGGER_S)

        def noticed() -> bool:
            server = all(pid in host.reconnecting_at for pid in paused)
            return server and all(p.first_event(Reconnecting, 0.0) is not None for p in peers)

        await host.pulse.until(noticed, LOSS_WAIT_S)
        server = [
            host.reconnecting_at[pid] - t
            for pid, t in paused.items()
            if pid in host.reconnecting_at
        ]
        client = []
        for peer in peers:
            seen = peer.first_event(Reconnecting, 0.0)
            if seen is not None:
                client.append(seen - paused[peer.session.participant_id])
        for peer in peers:
            peer.release.set()
    for name, got in (("loss_detect", server), ("loss_detect_client", client)):
        for q, value in percentiles(got).items():
            figures[f"{name}_{q}_s"] = value
        figures[f"{name}_max_s"] = max(got, default=float("nan"))
        figures[f"{name}_missed"] = samples - len(got)
    figures["loss_detect_samples"] = samples
    print(
        f"loss detection ({samples} peers gone): the others told p50 "
        f"{figures['loss_detect_p50_s']:.1f} s p99 {figures['loss_detect_p99_s']:.1f} s"
        f" (missed {figures['loss_detect_missed']}); the peer's own Reconnecting p99 "
        f"{figures['loss_detect_client_p99_s']:.1f} s (missed {figures['loss_detect_client_missed']})",
        flush=True,
    )
