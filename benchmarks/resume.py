"""Reconnection (docs/protocol.md §13): media after a blackout, the gap of a migration, stale
frames after a stall, and how soon a lost peer is noticed.

The Meeting Controller and the Media Handler run in a child process at their default settings
(15 s idle timeout with a PING every 5 s, 15 s resume and media grace, age bounds 500 ms video
and 200 ms audio); the clients run in this one, all on 127.0.0.1. A host publishes video (30 fps,
a key frame every second and whenever the MH asks for one) and audio (50 fps), small payloads.
A witness subscribes to both on a direct path: the baseline. Each *subject* subscribes to both
through two netfault proxies, one in front of the MC's signaling port and one in front of the
MH's media port, and publishes audio of its own (a participant with its microphone on).

1. **Blackouts**: both proxies paused 2-5 s (``--quick``: 1-2 s). ``resume_media_*``: from
   ``resume()`` to the first frame the subject receives; ``resume_success_ratio``: blackouts
   after which media flows again and the session did not end. At the defaults a blackout this
   short is QUIC's own recovery. Interleaved with it, a subject whose client has a 1 s idle
   timeout, so that every blackout is a full reconnection (a resume and a new media connection):
   ``reconnect_media_*``.
2. **Rebinds**: alternately the proxies' service-side ports change (a NAT rebinding) and the
   client moves its two connections to new sockets (``migrate()``, a network switch). The
   longest gap between frames the subject received from 0.5 s before to 1.5 s after
   (``migration_gap_*``), against the witness's over the same windows (``baseline_gap_*``).
   Apart: a receive-only subject's NAT rebinding (``migration_gap_receive_only_*``).
3. **Stall**: a subscriber stops reading its media streams for 20 s, then reads again. It is a
   raw media connection with an 8 KiB stream receive window, so QUIC flow control backs up to
   the MH within a second. ``stall_stale_frames``: frames read afterwards that its own windows
   could not have held (so the MH sent them after it read again) and that are older than their
   age bound, by the header timestamp the host set (one machine, one clock). Old frames its own
   windows held are counted apart (``stall_buffered_stale_frames``).
4. **Loss detection**, during 3: subjects whose paths are paused for good, at the default 15 s
   idle timeout. ``loss_detect_*``: from the pause to the host's ParticipantUpdated RECONNECTING
   (the MC noticed); ``loss_detect_client_*``: to the subject's own Reconnecting event. Also
   during 3, the receive-only rebinds of 2.

    python benchmarks/resume.py [--quick]
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles
from benchmarks.media_fanout import udp_rcvbuf_errors
from darktower.client import (
    ConnectionState,
    Dialer,
    KeyFrameRequest,
    MediaClient,
    MediaLink,
    MeetingSession,
    ParticipantUpdated,
    Publication,
    Reconnecting,
    SessionEnded,
    SignalingClient,
    SignalingLink,
    Subscription,
    join_meeting_session,
    media_url,
    open_signaling,
)
from darktower.client._join import server_url
from darktower.frames import FrameDecoder, FrameError, FrameType
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.model import MeetingId, Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits, WebTransportReceiveStream, connect_webtransport

MEETING = "resume"
SEED = 14
VIDEO_FPS, AUDIO_FPS, KEY_EVERY = 30, 50, 30
KEY_BYTES, DELTA_BYTES, AUDIO_BYTES = 1200, 300, 80
VIDEO_AGE_S, AUDIO_AGE_S = 0.5, 0.2  # the MH's default age bounds (--max-video-age-s ...)
SHORT_IDLE = TransportLimits(idle_timeout_s=1.0, keepalive_interval_s=1.0 / 3)
BLACKOUTS = {True: (8, 4), False: (50, 50)}  # --quick: (at the defaults, reconnections)
REBIND_BEFORE_S, REBIND_AFTER_S = 0.5, 1.5  # the window of a migration gap
STALL_S, STALL_WARM_S, STALL_READ_S = 20.0, 2.0, 3.0
STALL_WINDOW = 8 * 1024  # the stalled subscriber's stream receive window
AFTER_S = 2.0  # after a blackout: old frames are counted over this long
SETTLE_S = 1.0  # between two events on one subject
STEADY_S = 0.1  # "media flows": a frame within this long
LOSS_STAGGER_S = 0.5
LOSS_WAIT_S = 45.0  # a loss not noticed by then is a miss
WAIT_S = 30.0  # bound on each wait (a resume grace window and then some)
LEAVE_S = 1.0  # bound on a subject's goodbye (its path may be paused)
MAX_FLOWS = 1024  # a subject's reconnections and migrations each open proxy flows


VERBOSE = False  # --verbose: one line per sample


def detail(label: str, sample: dict[str, Any]) -> None:
    if VERBOSE:
        shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in sample.items()}
        print(f"    {label}: {shown}", flush=True)


# --- the server process -------------------------------------------------------------------
def serve(certfile: str, keyfile: str, pubkey: str) -> None:
    from darktower import media_handler, meeting_controller
    from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
    from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
    from darktower.transport.rpc import call, open_rpc_channel, open_rpc_loop

    common: dict[str, Any] = dict(
        host="127.0.0.1", port=0, grpc_port=0, ops_port=0, certfile=certfile, keyfile=keyfile
    )
    common.update(log_level="warning", log_json=False, drain_grace_s=2.0)
    mc_settings = meeting_controller.Settings(**common, join_public_key_file=pubkey)

    async def main() -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            # Drained as python -m darktower drains: the MC first, then the MH.
            stop_mc, stop_mh, mc_done = trio.Event(), trio.Event(), trio.Event()

            async def run_mc(task_status: trio.TaskStatus[Any]) -> None:
                try:
                    await meeting_controller.serve(
                        mc_settings, shutdown=stop_mc, task_status=task_status
                    )
                finally:
                    mc_done.set()

            mc = await nursery.start(run_mc)
            mh_settings = media_handler.Settings(
                **common, mc_grpc=f"127.0.0.1:{mc.grpc_address[1]}"
            )
            mh = await nursery.start(
                lambda task_status: media_handler.serve(
                    mh_settings, shutdown=stop_mh, task_status=task_status
                )
            )
            await mc.controller.mhs.wait_for(mh.handler_id)
            async with open_rpc_channel(*mc.grpc_address) as channel:
                await call(
                    MeetingControlStub(channel).AssignMeeting,
                    mtg_pb.AssignMeeting(
                        meeting_id=MEETING, config=mtg_pb.MeetingConfig(max_participants=100)
                    ),
                )
            info = {"signal": mc.signal_url, "media": mh.media_url, "mh_ops": mh.ops_url}
            print(json.dumps(info), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            stop_mc.set()
            await mc_done.wait()
            stop_mh.set()

    trio.run(main)


# --- what the clients record ----------------------------------------------------------------
class Pulse:
    """Wakes every task waiting for "something changed"."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, predicate: Callable[[], bool], within_s: float) -> bool:
        with trio.move_on_after(within_s):
            while not predicate():
                await self._event.wait()
            return True
        return False


class Rx:
    """The frames one subscriber received: monotonic arrival time, kind, age (arrival by the
    wall clock - the header timestamp the publisher set)."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.kind: list[FrameType] = []
        self.age: list[float] = []
        self.sent: list[float] = []
        self.pulse = Pulse()

    def add(self, frame_type: FrameType, timestamp_us: int) -> None:
        self.at.append(time.monotonic())
        self.kind.append(frame_type)
        self.sent.append(timestamp_us / 1e6)
        self.age.append(time.time() - timestamp_us / 1e6)
        self.pulse.fire()

    def first(self, after: float, where: Callable[[int], bool] = lambda i: True) -> int | None:
        for i in range(bisect.bisect_right(self.at, after), len(self.at)):
            if where(i):
                return i
        return None

    async def first_after(
        self, after: float, where: Callable[[int], bool] = lambda i: True, within_s: float = WAIT_S
    ) -> float | None:
        """Arrival time of the first frame after ``after`` that satisfies ``where``."""
        found: list[int] = []

        def seen() -> bool:
            i = self.first(after, where)
            found[:] = [] if i is None else [i]
            return i is not None

        if await self.pulse.until(seen, within_s):
            return self.at[found[0]]
        return None

    def stale(self, lo: float, hi: float) -> int:
        """Frames that arrived in [lo, hi] older than their age bound."""
        i, j = bisect.bisect_left(self.at, lo), bisect.bisect_right(self.at, hi)
        return sum(self.age[k] > bound(self.kind[k]) for k in range(i, j))

    def max_gap(self, lo: float, hi: float) -> float:
        """The longest time between two frames that arrived from ``lo`` up to the first one
        after ``hi``."""
        i, j = bisect.bisect_left(self.at, lo), bisect.bisect_right(self.at, hi)
        times = self.at[i : j + 1]
        if len(times) < 2:
            return hi - lo
        return max(b - a for a, b in itertools.pairwise(times))


def bound(kind: FrameType) -> float:
    return AUDIO_AGE_S if kind is FrameType.AUDIO else VIDEO_AGE_S


def is_video(rx: Rx) -> Callable[[int], bool]:
    return lambda i: rx.kind[i] is not FrameType.AUDIO


@attrs.define(eq=False)
class Peer:
    """A participant of the benchmark: its session, what it received, what happened to it."""

    session: MeetingSession
    proxies: tuple[UdpProxy, ...] = ()
    rx: Rx = attrs.Factory(Rx)
    events: list[tuple[float, object]] = attrs.Factory(list)
    pulse: Pulse = attrs.Factory(Pulse)
    release: trio.Event = attrs.Factory(trio.Event)  # set: leave and close
    reconnecting_at: dict[str, float] = attrs.Factory(dict)  # others RECONNECTING, first seen
    key_wanted: bool = False

    def pause(self) -> None:
        for proxy in self.proxies:
            proxy.pause()

    def resume(self) -> None:
        for proxy in self.proxies:
            proxy.resume()

    def state(self) -> str:
        """For a failure's message: the session's state, its last events, the last frame."""
        now, s = time.monotonic(), self.session
        last = f"{now - self.rx.at[-1]:.1f} s ago" if self.rx.at else "never"
        events = [f"{type(e).__name__} {now - t:.1f} s ago" for t, e in self.events[-4:]]
        return (
            f"end {s.end_reason} {s.end_message!r}, {s.connection.value}, {s.reconnects} "
            f"reconnects, last frame {last}, last events {events}"
        )

    def first_event(self, kind: type, after: float) -> float | None:
        return next((t for t, e in self.events if t > after and isinstance(e, kind)), None)

    async def steady(self) -> bool:
        """Connected, and media flowing."""

        def flowing() -> bool:
            recent = bool(self.rx.at) and time.monotonic() - self.rx.at[-1] < STEADY_S
            return recent and self.session.connection is ConnectionState.CONNECTED

        return await self.rx.pulse.until(flowing, WAIT_S)


async def follow_events(peer: Peer, video: str) -> None:
    try:
        async for event in peer.session.events:
            now = time.monotonic()
            peer.events.append((now, event))
            if isinstance(event, KeyFrameRequest) and event.stream_id == video:
                peer.key_wanted = True
            elif isinstance(event, ParticipantUpdated):
                p = event.participant
                if p.connection is ConnectionState.RECONNECTING:
                    peer.reconnecting_at.setdefault(p.participant_id, now)
            peer.pulse.fire()
    except SessionEnded:
        pass
    peer.pulse.fire()


async def read_frames(subscription: Subscription, rx: Rx) -> None:
    try:
        async for frame in subscription:
            rx.add(frame.frame_type, frame.timestamp_us)
    except SessionEnded:
        pass


async def send_media(publication: Publication, peer: Peer, kind: str) -> None:
    """Frames at their rate, from now on (a late wake-up does not send a burst)."""
    fps = AUDIO_FPS if kind == "audio" else VIDEO_FPS
    key, delta, audio = bytes(KEY_BYTES), bytes(DELTA_BYTES), bytes(AUDIO_BYTES)
    due = trio.current_time()
    try:
        for i in range(10**12):
            await trio.sleep_until(due)
            due = max(due + 1 / fps, trio.current_time())
            if kind == "audio":
                await publication.send_frame(FrameType.AUDIO, audio)
            elif i % KEY_EVERY == 0 or peer.key_wanted:
                peer.key_wanted = False
                await publication.send_frame(FrameType.VIDEO_KEY, key)
            else:
                await publication.send_frame(FrameType.VIDEO_DELTA, delta)
    except (SessionEnded, trio.BrokenResourceError, trio.ClosedResourceError):
        return


# --- the participants -------------------------------------------------------------------------
@attrs.frozen
class Stack:
    signal_url: str
    media_url: str
    mh_ops: str
    pins: list[bytes]
    issuer: Any

    def token(self, role: Role = Role.GUEST) -> str:
        return str(self.issuer.issue(MeetingId(MEETING), role, time.time()))

    def address(self, url: str) -> tuple[str, int]:
        split = urllib.parse.urlsplit(url)
        assert split.hostname is not None and split.port is not None
        return split.hostname, split.port


@attrs.frozen
class Through:
    """The connector of a subject behind its two proxies (signaling at the MC's, media at the
    MH's): the MC names the MH's own URL, the subject dials the proxy with its token."""

    dialer: Dialer
    media_proxy: UdpProxy

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return self.dialer.signaling(resume_token)

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return self.dialer.media_at(self.media_proxy.via(server_url(server)))


async def subscribe(peer: Peer, nursery: trio.Nursery, streams: tuple[str, ...]) -> None:
    for stream_id in streams:
        nursery.start_soon(read_frames, await peer.session.subscribe(stream_id), peer.rx)


@asynccontextmanager
async def open_subject(
    stack: Stack,
    name: str,
    streams: tuple[str, ...],
    *,
    limits: TransportLimits | None = None,
    publish_audio: bool = True,
) -> AsyncIterator[Peer]:
    """A guest whose signaling and media go through a proxy each (as join_meeting_session
    composes a session, with the dialer's URLs at the proxies)."""
    async with (
        open_udp_proxy(stack.address(stack.signal_url), max_flows=MAX_FLOWS) as signal_proxy,
        open_udp_proxy(stack.address(stack.media_url), max_flows=MAX_FLOWS) as media_proxy,
    ):
        url = signal_proxy.via(stack.signal_url)
        dialer = Dialer(url, MEETING, name, stack.pins, None, limits)
        async with dialer.join(stack.token()) as signaling:
            async with dialer.media_at(media_proxy.via(media_url(signaling.join_response))) as m:
                session = MeetingSession(
                    signaling, m, meeting_id=MEETING, connector=Through(dialer, media_proxy)
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    peer = Peer(session, (signal_proxy, media_proxy))
                    nursery.start_soon(follow_events, peer, "")
                    await subscribe(peer, nursery, streams)
                    if publish_audio:
                        audio = await session.publish(StreamType.AUDIO)
                        nursery.start_soon(send_media, audio, peer, "audio")
                    try:
                        yield peer
                    finally:
                        with trio.move_on_after(LEAVE_S, shield=True):
                            await session.leave()
                        nursery.cancel_scope.cancel()


async def hold(
    open_peer: Callable[[], AbstractAsyncContextManager[Peer]],
    *,
    task_status: trio.TaskStatus[Peer],
) -> None:
    """Own a peer in a task of its own (so peers close in any order): until its release."""
    async with open_peer() as peer:
        task_status.started(peer)
        await peer.release.wait()


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
    resumed_at: float = float("inf")
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
    first_video = next((f for f in sent if f[1] is not FrameType.AUDIO), None)
    figures.update(
        stall_stale_frames=sum(age > bound(kind) for _, kind, age, _ in sent),
        stall_buffered_stale_frames=sum(age > bound(kind) for _, kind, age, _ in held),
        stall_frames_after=len(sent),
        stall_max_age_ms=max((f[2] for f in sent), default=float("nan")) * 1000,
        stall_video_restarts_at_key=int(
            first_video is not None and first_video[1] is FrameType.VIDEO_KEY
        ),
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


# --- the run --------------------------------------------------------------------------------
async def run(stack: Stack, quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        host_cm = join_meeting_session(
            stack.signal_url,
            meeting_id=MEETING,
            join_token=stack.token(Role.HOST),
            participant_name="host",
            server_certificate_hashes=stack.pins,
        )
        witness_cm = join_meeting_session(
            stack.signal_url,
            meeting_id=MEETING,
            join_token=stack.token(),
            participant_name="witness",
            server_certificate_hashes=stack.pins,
        )
        async with host_cm as host_session, witness_cm as witness_session:
            host, witness = Peer(host_session), Peer(witness_session)
            video_pub = await host_session.publish(StreamType.VIDEO_CAMERA)
            audio_pub = await host_session.publish(StreamType.AUDIO)
            streams = (video_pub.stream_id, audio_pub.stream_id)
            nursery.start_soon(follow_events, host, video_pub.stream_id)
            nursery.start_soon(follow_events, witness, "")
            nursery.start_soon(send_media, video_pub, host, "video")
            nursery.start_soon(send_media, audio_pub, host, "audio")
            await subscribe(witness, nursery, streams)
            await witness.steady()

            t0 = time.monotonic()
            await blackouts_phase(stack, nursery, streams, quick, figures)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
            n = 8 if quick else 40
            runs = await rebinds(stack, witness, streams, ["nat", "migrate"] * (n // 2), True)
            rebind_figures(runs, figures)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
            receive_only: list[dict[str, Any]] = []

            async def receive_only_rebinds() -> None:
                hows = ["nat"] * (2 if quick else 6)
                receive_only.extend(await rebinds(stack, witness, streams, hows, False))

            async with trio.open_nursery() as during:
                during.start_soon(stall_phase, stack, streams, figures)
                during.start_soon(
                    loss_phase, stack, host, audio_pub.stream_id, 3 if quick else 10, figures
                )
                during.start_soon(receive_only_rebinds)
            for q, value in percentiles([r["gap_ms"] for r in receive_only]).items():
                figures[f"migration_gap_receive_only_{q}_ms"] = value
            print(
                f"receive-only NAT rebinds: {len(receive_only)}; longest gap p99 "
                f"{figures['migration_gap_receive_only_p99_ms']:.0f} ms"
                f"  ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    return figures


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--serve", nargs=3, help=argparse_hidden())
    p.add_argument("--verbose", action="store_true", help="print every sample")
    args = p.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if args.serve:
        serve(*args.serve)
        return
    from darktower.protocol.tokens import (
        JoinTokenIssuer,
        generate_signing_key,
        public_key_pem,
    )
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-resume-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    overflows = udp_rcvbuf_errors()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(certfile), str(keyfile), str(pubkey)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        stack = Stack(
            info["signal"], info["media"], info["mh_ops"], [cert.sha256], JoinTokenIssuer(key)
        )
        figures = trio.run(run, stack, args.quick)
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    figures.update(
        goal_resume_media_p99_ms=1000,
        goal_migration_gap_p99_ms=200,
        goal_resume_success_ratio=1.0,
        goal_stall_stale_frames=0,
        goal_loss_detect_p99_s=15,
        udp_rcvbuf_overflows=udp_rcvbuf_errors() - overflows,
        load_avg_1m_start=load_start,
        load_avg_1m_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - started,
    )
    emit("resume", figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
