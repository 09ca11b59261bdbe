"""The reconnection benchmark's clients (benchmarks/resume.py): its constants, what a peer records
(the frames it receives, its events, its gaps), and the participants: the host, the witness and
the subjects that reach the MC and the MH through netfault proxies."""

from __future__ import annotations

import bisect
import itertools
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from darktower.client import (
    ConnectionState,
    Dialer,
    KeyFrameRequest,
    MediaLink,
    MeetingSession,
    ParticipantUpdated,
    Publication,
    SessionEnded,
    SignalingLink,
    Subscription,
    media_url,
)
from darktower.client._join import server_url
from darktower.frames import FrameType
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.model import MeetingId, Role, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits

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


def set_verbose(on: bool) -> None:
    """--verbose: every sample is printed (detail())."""
    global VERBOSE
    VERBOSE = on


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
