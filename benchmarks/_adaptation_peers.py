"""The adaptation benchmark's participants (benchmarks/adaptation.py): a simulcast publisher
that answers key frame requests, a viewer behind a bandwidth-capped proxy that records which
layer each frame came from, its latency and the MH's estimates, and two speakers with
synthetic audio levels. Times are ``trio.current_time()``; latencies use the wall clock the
publisher stamps frames with (one host)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from darktower.client import (
    ActiveSpeakers,
    Dialer,
    KeyFrameRequest,
    MeetingSession,
    Publication,
    QualityUpdate,
    SessionEnded,
    SimulcastLayer,
    Subscription,
    join_meeting_session,
    media_url,
)
from darktower.frames import FrameType
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.model import Role, StreamType

from ._resume_peers import MEETING, Stack

LAYERS = (
    SimulcastLayer(160, 120, 50_000),
    SimulcastLayer(320, 240, 150_000),
    SimulcastLayer(640, 480, 500_000),
)
FPS = 30
KEY_EVERY_S = 2.0
KEY_SIZE_FACTOR = 4
AUDIO_FRAME_S = 0.02
AUDIO_PAYLOAD = 80  # bytes: Opus at about 32 kbit/s
LOUD, QUIET = 20, 110  # -dBov
# Bounds of one trial's waits, and the capped window after the downswitch.
DOWN_BOUND_S = 5.0
UP_BOUND_S = 8.0
SPEAKER_BOUND_S = 3.0
CAPPED_S = 4.0
# After the downswitch, the MH drains what the path holds of the higher layer first: capped
# delivery is measured from this long after it (as the MH's own test does).
SETTLE_S = 1.0
# The baseline: delivery over this long before each cap, the viewer on the top layer.
BASELINE_S = 2.0
LEAVE_S = 5.0
# Samples kept by the viewer (a bound on a long run).
MAX_SAMPLES = 200_000


@asynccontextmanager
async def join(stack: Stack, name: str, role: Role = Role.GUEST) -> AsyncIterator[MeetingSession]:
    async with join_meeting_session(
        stack.signal_url,
        meeting_id=MEETING,
        join_token=stack.token(role),
        participant_name=name,
        server_certificate_hashes=stack.pins,
    ) as session:
        yield session


def _paced(start: float, period: float, n: int) -> float:
    return start + n * period


@attrs.define(eq=False)
class Publisher:
    """Encodes every layer at its bitrate, key frames every KEY_EVERY_S and when asked."""

    session: MeetingSession
    publication: Publication
    layers: Sequence[SimulcastLayer]
    layer_ids: tuple[str, ...]
    wanted: set[str] = attrs.Factory(set)
    key_requests: int = 0

    @classmethod
    async def start(cls, session: MeetingSession, nursery: trio.Nursery) -> Publisher:
        publication = await session.publish(
            StreamType.VIDEO_CAMERA, codec="VP8", width=640, height=480, simulcast_layers=LAYERS
        )
        self = cls(session, publication, LAYERS, publication.layer_ids)
        nursery.start_soon(self._events)
        nursery.start_soon(self._send)
        return self

    async def _events(self) -> None:
        try:
            async for event in self.session.events:
                if isinstance(event, KeyFrameRequest):
                    self.key_requests += 1
                    if event.stream_id == self.publication.stream_id:
                        self.wanted.update(self.layer_ids)
                    elif event.stream_id in self.layer_ids:
                        self.wanted.add(event.stream_id)
        except SessionEnded:
            return

    async def _send(self) -> None:
        start = trio.current_time()
        every = round(KEY_EVERY_S * FPS)
        n = 0
        while True:
            for layer, layer_id in zip(self.layers, self.layer_ids, strict=True):
                delta = max(1, layer.max_bitrate // FPS // 8)
                key = n % every == 0 or layer_id in self.wanted
                if key:
                    self.wanted.discard(layer_id)
                size = delta * KEY_SIZE_FACTOR if key else delta
                kind = FrameType.VIDEO_KEY if key else FrameType.VIDEO_DELTA
                try:
                    await self.publication.send_frame(kind, bytes(size), layer_id=layer_id)
                except (SessionEnded, trio.ClosedResourceError, trio.BrokenResourceError):
                    return
            n += 1
            await trio.sleep_until(_paced(start, 1 / FPS, n))


@attrs.define(eq=False)
class Viewer:
    """Records, per frame received: when, which layer, its latency; and the MH's estimates."""

    session: MeetingSession
    proxy: UdpProxy
    nursery: trio.Nursery
    layer: int = -1
    frames: list[tuple[float, int, float]] = attrs.Factory(list)  # (time, layer, latency ms)
    estimates: list[tuple[float, int]] = attrs.Factory(list)  # (time, available bit/s)
    speakers: tuple[str, ...] = ()
    changed: trio.Event = attrs.Factory(trio.Event)
    stream_id: str = ""

    async def subscribe(self, stream_id: str, layer_ids: Sequence[str]) -> None:
        self.stream_id = stream_id
        index = {uuid.UUID(layer).bytes: i for i, layer in enumerate(layer_ids)}
        # Pinned: LastN never holds it back (its publisher does not speak, the speakers do).
        subscription = await self.session.subscribe(stream_id, pinned=True)
        self.nursery.start_soon(self._read, subscription, index)

    def _change(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _read(self, subscription: Subscription, index: dict[bytes, int]) -> None:
        try:
            async for frame in subscription:
                now = trio.current_time()
                latency = time.time() * 1000 - frame.timestamp_us / 1000
                layer = index.get(frame.stream_id_bytes, -1)
                if len(self.frames) < MAX_SAMPLES:
                    self.frames.append((now, layer, latency))
                if layer != self.layer:
                    self.layer = layer
                    self._change()
        except SessionEnded:
            return

    async def _events(self) -> None:
        try:
            async for event in self.session.events:
                if isinstance(event, QualityUpdate) and event.stream_id == self.stream_id:
                    if len(self.estimates) < MAX_SAMPLES:
                        self.estimates.append((trio.current_time(), event.available_bitrate))
                elif isinstance(event, ActiveSpeakers):
                    self.speakers = event.participant_ids
                    self._change()
        except SessionEnded:
            return

    async def _wait(self, done: Callable[[], bool], bound_s: float) -> float | None:
        """When ``done`` became true (now if it is), or None after ``bound_s``."""
        with trio.move_on_after(bound_s):
            while not done():
                await self.changed.wait()
            return trio.current_time()
        return None

    async def wait_layer(self, ok: Callable[[int], bool], bound_s: float) -> float | None:
        return await self._wait(lambda: ok(self.layer), bound_s)

    async def wait_speaker(self, participant_id: str, bound_s: float) -> float | None:
        return await self._wait(
            lambda: bool(self.speakers) and self.speakers[0] == participant_id, bound_s
        )

    def latencies(self, start: float, end: float) -> list[float]:
        return [lat for at, _, lat in self.frames if start <= at < end]

    def estimate(self, start: float, end: float) -> int | None:
        """The estimate in effect at ``end``: the last one told after ``start`` (the MH tells
        one when it moved by a fifth or the layer changed, at most once a second)."""
        inside = [bits for at, bits in self.estimates if start <= at < end]
        return inside[-1] if inside else None


@asynccontextmanager
async def open_viewer(stack: Stack) -> AsyncIterator[Viewer]:
    """A guest whose media connection goes through a proxy (signaling direct)."""
    async with open_udp_proxy(stack.address(stack.media_url), seed=1) as proxy:
        dialer = Dialer(stack.signal_url, MEETING, "viewer", stack.pins)
        async with dialer.join(stack.token()) as signaling:
            async with dialer.media_at(proxy.via(media_url(signaling.join_response))) as media:
                session = MeetingSession(signaling, media, meeting_id=MEETING)
                async with trio.open_nursery() as own:
                    await own.start(session.run)
                    viewer = Viewer(session, proxy, own)
                    own.start_soon(viewer._events)
                    try:
                        yield viewer
                    finally:
                        with trio.move_on_after(LEAVE_S, shield=True):
                            await session.leave()
                        own.cancel_scope.cancel()


@attrs.define(eq=False)
class Speakers:
    """Two audio publishers; ``loud`` says which one speaks (the other is near silence)."""

    sessions: Sequence[MeetingSession]
    publications: Sequence[Publication]
    loud: int = 0

    @property
    def ids(self) -> list[str]:
        return [s.participant_id for s in self.sessions]

    @classmethod
    async def start(cls, sessions: Sequence[MeetingSession], nursery: trio.Nursery) -> Speakers:
        publications = [await s.publish(StreamType.AUDIO, codec="opus") for s in sessions]
        self = cls(sessions, publications)
        for i in range(len(sessions)):
            nursery.start_soon(self._send, i)
        return self

    async def _send(self, i: int) -> None:
        start = trio.current_time()
        n = 0
        payload = bytes(AUDIO_PAYLOAD)
        while True:
            level = LOUD if self.loud == i else QUIET
            try:
                await self.publications[i].send_frame(FrameType.AUDIO, payload, audio_level=level)
            except (SessionEnded, trio.ClosedResourceError, trio.BrokenResourceError):
                return
            n += 1
            await trio.sleep_until(_paced(start, AUDIO_FRAME_S, n))
