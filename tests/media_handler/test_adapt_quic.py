"""Adaptive media over real QUIC on 127.0.0.1 (docs/protocol.md §17.2, §17.3): a subscriber
behind the netfault proxy, capped at 300 kbit/s, moves to a lower simulcast layer and its
estimate tracks the cap; the cap lifts and it climbs back; 5 % loss keeps the estimate; a layer
nobody receives is reported inactive to its publisher and resumes with a key frame request.

The test plays the MC (Telemetry: it answers key frame requests by having the publisher send
one) and both clients. The publisher paces real-time media (15 fps per layer, 25 audio frames
a second) with trio.sleep: that is the traffic, the waits are on what arrives."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from darktower.client import MediaClient, MediaPublisher
from darktower.frames import FrameType
from darktower.loadtest import UdpProxy, open_udp_proxy
from darktower.media_handler import MediaHandler
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport.rpc import open_stream_call

from ._harness import Harness, audio, new_id, open_harness, video

FPS = 15  # per layer (a low rate keeps this process's own load down)
AUDIO_FPS = 25
AUDIO_BYTES = 250  # ~60 kbit/s with the header
KEY_EVERY_S = 3.0  # periodic key frames of every layer (requests come on top)
CAP_BPS = 300_000
WAIT_S = 15.0


@attrs.define
class Layers:
    low: str
    mid: str
    high: str

    def table(self) -> list[tuple[str, int, int, int]]:
        return [
            (self.low, 160, 120, 60_000),
            (self.mid, 320, 240, 160_000),
            (self.high, 640, 480, 500_000),
        ]

    def rate(self, layer: str) -> int:
        return {lid: bps for lid, _, _, bps in self.table()}[layer]


@attrs.define
class Room:
    h: Harness
    meeting: str
    cam: str
    mic: str
    layers: Layers
    proxy: UdpProxy
    events: list[mc_pb.TelemetryEvent] = attrs.Factory(list)
    key_wanted: set[str] = attrs.Factory(set)
    key_requested: dict[str, int] = attrs.Factory(dict)
    # What the subscriber received: (arrival, stream id, frame type, delay in s).
    received: list[tuple[float, str, FrameType, float]] = attrs.Factory(list)
    changed: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    sent_video_frames: int = 0
    # The subscriber's estimator every tick: (time, estimate, queuing delay, probing,
    # congested, layers now and aimed at, loss, what it found congested), printed by a failing
    # test (pytest shows what it printed).
    trace: list[tuple[float, int, int, bool, bool, str, float, str]] = attrs.Factory(list)
    # When this process stalled (a sampler's tick came late by more than 30 ms) and how long.
    stalls: list[tuple[float, float]] = attrs.Factory(list)

    def stalled(self, start: float, end: float) -> float:
        """The longest stall of this process between ``start`` and ``end`` (0.0: none): the
        publisher, the MH, the proxy and the subscriber all wait while it lasts, so a frame
        then is late by as much whatever the path."""
        return max((d for t, d in self.stalls if start <= t <= end + d), default=0.0)

    def lost(self, start: float, end: float) -> float:
        """The time this process lost to stalls between ``start`` and ``end``."""
        return sum(d for t, d in self.stalls if start <= t <= end + d)

    @property
    def handler(self) -> MediaHandler:
        return self.h.handler

    def estimate(self) -> float:
        member = self.handler.rooms[self.meeting].members["s"]  # type: ignore[index]
        assert member.link is not None
        return member.link.estimate

    async def wait(self, predicate: object) -> None:
        assert callable(predicate)
        while not predicate():
            await self.changed.park()

    def video_since(self, t: float) -> list[tuple[float, str, FrameType, float]]:
        return [r for r in self.received if r[0] >= t and r[1] != self.mic]


def _payload(size: int) -> bytes:
    return struct.pack("!d", trio.current_time()) + bytes(max(0, size - 8))


async def _publish(room: Room, pubs: dict[str, MediaPublisher], mic: MediaPublisher) -> None:
    """FPS per layer at its bitrate (key frames 3 x a delta), audio at AUDIO_FPS."""
    start = trio.current_time()
    tick = 0
    last_key = -math.inf
    while True:
        now = trio.current_time()
        periodic = now - last_key >= KEY_EVERY_S
        if periodic:
            last_key = now
        for lid, pub in pubs.items():
            size = room.layers.rate(lid) // 8 // FPS
            if periodic or lid in room.key_wanted:
                room.key_wanted.discard(lid)
                await pub.send_frame(FrameType.VIDEO_KEY, _payload(3 * size))
            else:
                await pub.send_frame(FrameType.VIDEO_DELTA, _payload(size))
        room.sent_video_frames += 1
        room.changed.unpark_all()
        # Audio between video frames: 5 every 3 video frames, AUDIO_FPS a second.
        for _ in range(round(AUDIO_FPS / FPS) if tick % 3 else 1):
            await mic.send_frame(FrameType.AUDIO, _payload(AUDIO_BYTES))
        tick += 1
        await trio.sleep_until(start + tick / FPS)


async def _subscribe(room: Room, s: MediaClient) -> None:
    async for frame in s:
        now = trio.current_time()
        (sent,) = struct.unpack("!d", bytes(frame.payload[:8]))
        room.received.append((now, str(frame.stream_id), frame.frame_type, now - sent))
        room.changed.unpark_all()


async def _trace(room: Room) -> None:
    member = room.handler.rooms[room.meeting].members["s"]  # type: ignore[index]
    publication = room.handler.rooms[room.meeting].publications[room.cam]  # type: ignore[index]
    names = {room.layers.low: "L", room.layers.mid: "M", room.layers.high: "H", None: "-"}
    while True:
        before = trio.current_time()
        link = member.link
        sub = publication.subscriptions.get("s")  # type: ignore[call-overload]
        switcher = None if sub is None else sub.switcher
        layers = "" if switcher is None else names[switcher.current] + names[switcher.target]
        if link is not None:
            room.trace.append(
                (
                    trio.current_time(),
                    round(link.estimate),
                    round(link.queuing_delay_s * 1000),
                    link.probing,
                    link.congested,
                    layers,
                    link.loss,
                    link.cause,
                )
            )
        await trio.sleep(0.1)  # a sampler of the state, not a wait
        late = trio.current_time() - before - 0.1
        if late > 0.03:
            room.stalls.append((trio.current_time(), late))


def _print_trace(room: Room, since: float) -> None:
    for t, estimate, delay, probing, congested, layers, loss, cause in room.trace:
        flags = ("P" if probing else "-") + ("C" if congested else "-") + " " + layers
        print(f"{t - since:6.2f} {estimate:9d} {delay:4d} ms {flags} loss {loss:.3f} {cause}")


async def _listen(room: Room, events: AsyncIterator[mc_pb.TelemetryEvent]) -> None:
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "key_frame_request":
            sid = event.key_frame_request.stream_id
            room.key_wanted.add(sid)
            room.key_requested[sid] = room.key_requested.get(sid, 0) + 1
        elif kind in ("subscriber_quality", "publisher_feedback"):
            room.events.append(event)
        room.changed.unpark_all()


@asynccontextmanager
async def open_room(
    *, subscribe: bool = True, mh_core: str | None = None, **proxy: object
) -> AsyncIterator[Room]:
    """The room, its MH on QUIC core ``mh_core`` (None: the default; the clients stay on
    the default core, with the client library's media ACK policy on aioquic)."""
    meeting, cam, mic = new_id(), new_id(), new_id()
    layers = Layers(new_id(), new_id(), new_id())
    async with open_harness(**({} if mh_core is None else {"quic_core": mh_core})) as h:
        url_p = await h.register(meeting, "p", [video(cam, layers.table()), audio(mic)])
        url_s = await h.register(meeting, "s")
        async with (
            open_udp_proxy(h.running.media_address, seed=1, **proxy) as udp,  # type: ignore[arg-type]
            open_stream_call(
                h.stub.Telemetry, mc_pb.TelemetryRequest(meeting_id=meeting)
            ) as events,
            h.client(url_p) as p,
            h.client(udp.via(url_s)) as s,
            trio.open_nursery() as nursery,
        ):
            room = Room(h, meeting, cam, mic, layers, udp)
            with trio.fail_after(WAIT_S):
                await h.handler.telemetry_hub.wait_listeners(1)
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            nursery.start_soon(_listen, room, events)
            if subscribe:
                await h.route(meeting, cam, ["s"])
                await h.route(meeting, mic, ["s"])
            pubs = {lid: await p.publish(lid) for lid, *_ in layers.table()}
            nursery.start_soon(_publish, room, pubs, await p.publish(mic))
            nursery.start_soon(_subscribe, room, s)
            nursery.start_soon(_trace, room)
            yield room
            nursery.cancel_scope.cancel()


def _layer_of(room: Room, since: float) -> str | None:
    """The layer of the last video frame received after ``since``."""
    video_frames = room.video_since(since)
    return video_frames[-1][1] if video_frames else None


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def _frames(room: Room, seconds: float) -> None:
    """Let the publisher send ``seconds`` more of video (its own pace)."""
    target = room.sent_video_frames + round(seconds * FPS)
    with trio.fail_after(seconds + WAIT_S):
        await room.wait(lambda: room.sent_video_frames >= target)


# On qh3 too: the MH's estimate reads that core's RTT samples and bytes in flight.
@pytest.mark.parametrize("mh_core", [None, "qh3"])
async def test_a_capped_subscriber_goes_down_tracks_the_cap_and_climbs_back(
    mh_core: str | None,
) -> None:
    if mh_core == "qh3":
        pytest.importorskip("qh3")
    async with open_room(mh_core=mh_core) as room:
        layers = room.layers
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, 0.0) == layers.high)
        await _frames(room, 1.0)
        assert _layer_of(room, 0.0) == layers.high
        # The cap: a lower layer within 2 s.
        room.proxy.rate_bps = CAP_BPS
        capped_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, capped_at) not in (None, layers.high))
        down_s = trio.current_time() - capped_at
        # Capped for a while: the estimate tracks the cap, the delivery delay stays low.
        await _frames(room, 1.0)
        settled = trio.current_time()
        estimates = []
        for _ in range(8):
            await _frames(room, 0.5)
            estimates.append(room.estimate())
        delays = [d for t, _, _, d in room.received if t >= settled]
        stall = room.stalled(settled, trio.current_time())
        assert _layer_of(room, settled) != layers.high
        print(f"down {down_s:.2f} s, estimates {[round(e) for e in estimates]}")
        print(f"capped p99 {_p99(delays) * 1000:.0f} ms over {len(delays)} frames")
        print(f"(this process stalled up to {stall * 1000:.0f} ms meanwhile)")
        names = {layers.low: "low", layers.mid: "mid", layers.high: "high", room.mic: "mic"}
        for t, sid, _, d in room.received:
            if t >= settled and d > 0.15:
                print(f"slow: {t - capped_at:6.2f} {names.get(sid)} {d * 1000:.0f} ms")
        # The cap lifts: back to the top layer within 5 s.
        room.proxy.rate_bps = None
        lifted_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, lifted_at) == layers.high)
        up_s = trio.current_time() - lifted_at
        lost = room.lost(lifted_at, trio.current_time())
        print(f"up {up_s:.2f} s (this process lost {lost:.2f} s to stalls meanwhile)")
        _print_trace(room, capped_at)
        # Time this very process did not run (a loaded machine) is no property of the MH's:
        # it is allowed for.
        assert down_s <= 2.0 + room.lost(capped_at, capped_at + down_s)
        # Within 30 % of the cap (the median, as issue 18's benchmark takes it; no reading
        # beyond 45 %: a probe's success or a key frame's burst moves it for a while).
        errors = sorted(abs(e - CAP_BPS) / CAP_BPS for e in estimates)
        assert errors[len(errors) // 2] <= 0.3
        assert errors[-1] <= 0.45
        assert _p99(delays) <= 0.2 + stall
        assert up_s <= 5.0 + lost
        # What the estimate was fed: QUIC's own figures of the connection.
        member = room.handler.rooms[room.meeting].members["s"]  # type: ignore[index]
        assert member.session is not None
        stats = member.session.transport_stats()
        assert 0 < stats.bytes_acked <= stats.bytes_sent
        assert stats.rtt_recent_ms > 0 and stats.rtt_min_ms > 0 and stats.congestion_window > 0
        # The subscriber heard of it: SubscriberQuality with the layer it receives.
        quality = [e.subscriber_quality for e in room.events if e.HasField("subscriber_quality")]
        cam_layers = {q.layer_id for q in quality if q.stream_id == room.cam}
        assert {layers.high} < cam_layers
        assert all(q.participant_id == "s" and not q.paused for q in quality)


async def test_random_loss_keeps_the_estimate() -> None:
    async with open_room() as room:
        layers = room.layers
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, 0.0) == layers.high)
        # A cap first, so that the estimate is a measure of the path (it starts at the budget).
        room.proxy.rate_bps = CAP_BPS
        capped_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, capped_at) not in (None, layers.high))
        assert room.estimate() < 2 * CAP_BPS
        # The cap lifts but 5 % of the datagrams are lost each way: the estimate climbs back
        # all the same, and holds.
        room.proxy.rate_bps = None
        room.proxy.drop_ratio = 0.05
        lifted_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, lifted_at) == layers.high)
        up_s = trio.current_time() - lifted_at
        lost = room.lost(lifted_at, trio.current_time())
        start = trio.current_time()
        estimates = []
        for _ in range(8):
            await _frames(room, 0.5)
            estimates.append(room.estimate())
        dropped = room.proxy.stats.to_client.dropped_random
        member = room.handler.rooms[room.meeting].members["s"]  # type: ignore[index]
        assert member.link is not None
        print(f"up {up_s:.2f} s under loss {member.link.loss:.3f}, estimates {estimates}")
        _print_trace(room, capped_at)
        assert dropped > 10  # the loss was real
        assert up_s <= 5.0 + lost
        assert min(estimates) >= layers.rate(layers.high)
        # It kept the top layer all along.
        assert {sid for _, sid, _, _ in room.video_since(start)} == {layers.high}


def _feedback(room: Room) -> list[mc_pb.PublisherFeedback]:
    return [
        e.publisher_feedback
        for e in room.events
        if e.HasField("publisher_feedback") and e.publisher_feedback.stream_id == room.cam
    ]


def _active(feedback: mc_pb.PublisherFeedback) -> dict[str, bool]:
    return {la.layer_id: la.active for la in feedback.layers}


async def test_a_layer_nobody_receives_is_reported_inactive_and_resumes_with_a_key_frame() -> None:
    async with open_room() as room:
        layers, h = room.layers, room.h
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, 0.0) == layers.high)
            await room.wait(lambda: any(_active(f).get(layers.high) for f in _feedback(room)))
        feedback = _feedback(room)[-1]
        assert _active(feedback) == {layers.low: False, layers.mid: False, layers.high: True}
        assert [la.subscribers for la in feedback.layers] == [0, 0, 1]
        assert feedback.available_bitrate > 0
        # The subscriber asks for the low layer: once it receives it, nobody receives high.
        await h.route(room.meeting, room.cam, ["s"], preferred_layer=layers.low)
        sub = room.handler.rooms[room.meeting].publications[room.cam].subscriptions["s"]  # type: ignore[index]
        assert sub.switcher is not None
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: sub.switcher is not None and sub.switcher.current == layers.low)
        left_at = trio.current_time()
        count = len(_feedback(room))
        with trio.fail_after(WAIT_S):
            await room.wait(
                lambda: any(
                    _active(f) == {layers.low: True, layers.mid: False, layers.high: False}
                    for f in _feedback(room)[count:]
                )
            )
        assert trio.current_time() - left_at <= 1.0
        # The publisher keeps sending the paused layer: it reaches nobody, without an error.
        await _frames(room, 0.5)
        resumed_from = trio.current_time()
        assert {sid for _, sid, _, _ in room.video_since(resumed_from - 0.3)} <= {layers.low}
        # Back to high: the layer is active again and its key frame is asked for.
        asked = room.key_requested.get(layers.high, 0)
        count = len(_feedback(room))
        await h.route(room.meeting, room.cam, ["s"], preferred_layer=layers.high)
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: any(_active(f)[layers.high] for f in _feedback(room)[count:]))
            await room.wait(lambda: room.key_requested.get(layers.high, 0) > asked)
            await room.wait(lambda: _layer_of(room, resumed_from) == layers.high)


async def test_a_held_video_is_paused_and_resumes_at_a_key_frame() -> None:
    async with open_room() as room:
        layers = room.layers
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: _layer_of(room, 0.0) == layers.high)
        pub = room.handler.rooms[room.meeting].publications[room.cam]  # type: ignore[index]
        sub = pub.subscriptions["s"]  # type: ignore[index]
        sub.hold(True)
        held_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(
                lambda: any(
                    e.subscriber_quality.paused
                    for e in room.events
                    if e.HasField("subscriber_quality")
                    and e.subscriber_quality.stream_id == room.cam
                )
            )
        await _frames(room, 0.5)
        # Nothing of the video after the hold (but what was in flight); the audio goes on.
        late = [r for r in room.video_since(held_at + 0.3)]
        assert late == []
        assert any(sid == room.mic for t, sid, _, _ in room.received if t > held_at + 0.3)
        asked = room.key_requested.get(layers.high, 0)
        sub.hold(False)
        released_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            await room.wait(lambda: room.key_requested.get(layers.high, 0) > asked)
            await room.wait(lambda: _layer_of(room, released_at) == layers.high)
        first = room.video_since(released_at)[0]
        assert first[2] == FrameType.VIDEO_KEY


async def test_a_video_released_while_another_receives_its_layer_asks_for_a_key_frame() -> None:
    """The layer stays active (another subscriber receives it), so no dynacast change asks for
    the key frame: the released subscription does, within a tick."""
    async with open_room() as room:
        layers, h = room.layers, room.h
        url_t = await h.register(room.meeting, "t")
        async with h.client(url_t):  # connected, never reading: its queue fills
            await h.connected(room.meeting, "t")
            await h.route(room.meeting, room.cam, ["t"])
            with trio.fail_after(WAIT_S):
                await room.wait(lambda: _layer_of(room, 0.0) == layers.high)
            pub = room.handler.rooms[room.meeting].publications[room.cam]  # type: ignore[index]
            sub = pub.subscriptions["s"]  # type: ignore[index]
            other = pub.subscriptions["t"]  # type: ignore[index]
            with trio.fail_after(WAIT_S):
                await room.wait(lambda: other.switcher.current == layers.high)
            sub.hold(True)
            await _frames(room, 0.3)
            asked = room.key_requested.get(layers.high, 0)
            sub.hold(False)
            released_at = trio.current_time()
            with trio.fail_after(KEY_EVERY_S / 2):  # sooner than the periodic key frame
                await room.wait(lambda: room.key_requested.get(layers.high, 0) > asked)
            with trio.fail_after(WAIT_S):
                await room.wait(lambda: _layer_of(room, released_at) == layers.high)
            assert room.video_since(released_at)[0][2] == FrameType.VIDEO_KEY
