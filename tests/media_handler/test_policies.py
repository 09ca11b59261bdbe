"""Drop policy for a slow subscriber, simulcast switching, key frame requests, budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from darktower.client import MediaClient
from darktower.frames import Frame, FrameFlags, FrameType
from darktower.media_handler import DropReason
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport.rpc import open_stream_call

from ._harness import (
    NO_AGE_BOUND,
    WAIT_S,
    audio,
    frame_type_for,
    new_id,
    open_harness,
    receive_n,
    video,
)

FRAMES = 600
PAYLOAD = 4000
KEY_EVERY = 30
WINDOW = 8  # frames the publisher may be ahead of the fast subscribers


def _decodable(frames: list[Frame]) -> bool:
    """Every delta follows the frame just before it: nothing undecodable was delivered."""
    previous = None
    for frame in frames:
        if frame.frame_type == FrameType.VIDEO_DELTA and previous != frame.sequence - 1:
            return False
        previous = frame.sequence
    return True


async def test_slow_subscriber_drops_by_policy_while_others_get_everything() -> None:
    meeting, cam = new_id(), new_id()
    # The slow one reads at a tenth of the rate: the full-queue policy, not the age bound.
    async with open_harness(queue_max_frames=32, **NO_AGE_BOUND) as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        urls = {name: await h.register(meeting, name) for name in ("fast1", "fast2", "slow")}
        received: dict[str, list[Frame]] = {name: [] for name in urls}
        progress = {name: trio.Event() for name in urls}
        published = 0
        published_moved = trio.Event()

        async def fast(name: str, media: MediaClient) -> None:
            for _ in range(FRAMES):
                received[name].append(await media.receive_frame())
                progress[name].set()
                progress[name] = trio.Event()

        async def slow(media: MediaClient) -> None:
            # Reads one frame per ten published, paced by the publisher (no clocks).
            nonlocal published_moved
            while True:
                while len(received["slow"]) * 10 >= published and published < FRAMES:
                    await published_moved.wait()
                if published >= FRAMES:
                    return
                received["slow"].append(await media.receive_frame())

        async with (
            h.client(url_p) as p,
            h.client(urls["fast1"]) as f1,
            h.client(urls["fast2"]) as f2,
            h.client(urls["slow"], max_buffered_frames=4) as sl,
            trio.open_nursery() as nursery,
        ):
            for name in ("p", *urls):
                await h.connected(meeting, name)
            await h.route(meeting, cam, list(urls))
            nursery.start_soon(fast, "fast1", f1)
            nursery.start_soon(fast, "fast2", f2)
            nursery.start_soon(slow, sl)
            pub = await p.publish(cam)
            sent = []
            with trio.fail_after(4 * WAIT_S):
                for i in range(FRAMES):
                    for name in ("fast1", "fast2"):
                        while len(received[name]) < i - WINDOW:
                            await progress[name].wait()
                    sent.append(
                        await pub.send_frame(
                            frame_type_for(i, KEY_EVERY), bytes([i % 256]) * PAYLOAD
                        )
                    )
                    published += 1
                    published_moved.set()
                    published_moved = trio.Event()
                await pub.finish()
            with trio.fail_after(WAIT_S):
                while len(received["fast1"]) < FRAMES or len(received["fast2"]) < FRAMES:
                    await progress["fast1"].wait() if len(
                        received["fast1"]
                    ) < FRAMES else await progress["fast2"].wait()
            for name in ("fast1", "fast2"):
                assert [bytes(f.raw) for f in received[name]] == sent
            stats = h.handler.rooms[meeting].publications[cam].stats  # type: ignore[index]
            drops = stats.snapshot(trio.current_time(), timestamp=0).frames_dropped
            assert drops.get(DropReason.QUEUE_FULL_DELTA, 0) > 0, drops
            assert len(received["slow"]) < FRAMES
            assert _decodable(received["slow"])
            nursery.cancel_scope.cancel()
        metrics = h.handler.metrics.registry.render()
        assert 'darktower_mh_frames_dropped_total{reason="queue_full_delta"}' in metrics


async def test_simulcast_switches_only_at_key_frames() -> None:
    meeting, cam, low, high = new_id(), new_id(), new_id(), new_id()
    layers = [(low, 320, 180, 150_000), (high, 1280, 720, 1_500_000)]
    async with open_harness() as h:
        url_p = await h.register(meeting, "p", [video(cam, layers)])
        url_a = await h.register(meeting, "a")
        url_b = await h.register(meeting, "b")
        async with h.client(url_p) as p, h.client(url_a) as a, h.client(url_b) as b:
            for name in ("p", "a", "b"):
                await h.connected(meeting, name)
            await h.route(meeting, cam, ["a"], preferred_layer=high)
            await h.route(meeting, cam, ["b"], preferred_layer=low)
            pl, ph = await p.publish(low), await p.publish(high)

            async def both(n: int, key_at: int | None) -> None:
                for i in range(n):
                    kind = FrameType.VIDEO_KEY if i == key_at else FrameType.VIDEO_DELTA
                    await pl.send_frame(kind, b"L")
                    await ph.send_frame(kind, b"H")

            await both(5, key_at=0)
            got_a, got_b = await receive_n(a, 5), await receive_n(b, 5)
            assert {str(f.stream_id) for f in got_a} == {high}
            assert {str(f.stream_id) for f in got_b} == {low}
            assert got_b[0].frame_type == FrameType.VIDEO_KEY
            # b now wants the high layer: it keeps low until a key frame of high.
            await h.route(meeting, cam, ["b"], preferred_layer=high)
            await both(3, key_at=None)
            await ph.send_frame(FrameType.VIDEO_KEY, b"H")
            await pl.send_frame(FrameType.VIDEO_DELTA, b"L")
            await ph.send_frame(FrameType.VIDEO_DELTA, b"H")
            # Two publish streams: the MH may see them interleaved either way, so check the
            # rule, not one order: low until high's key frame, then high only.
            got = []
            with trio.fail_after(WAIT_S):
                while not got or (str(got[-1].stream_id), got[-1].frame_type) != (
                    high,
                    FrameType.VIDEO_DELTA,
                ):
                    got.append(await b.receive_frame())
            kinds = [(str(f.stream_id), f.frame_type) for f in got]
            first_high = next(i for i, (sid, _) in enumerate(kinds) if sid == high)
            assert kinds[first_high] == (high, FrameType.VIDEO_KEY)
            assert all(sid == low for sid, _ in kinds[:first_high])
            assert all(sid == high for sid, _ in kinds[first_high:])


async def _next_event(events: AsyncIterator[mc_pb.TelemetryEvent]) -> mc_pb.TelemetryEvent:
    """The next event other than the adaptation's quality reports (docs/protocol.md §17)."""
    async for event in events:
        if event.WhichOneof("event") not in ("subscriber_quality", "publisher_feedback"):
            return event
    raise AssertionError("the telemetry stream ended")


async def test_mid_stream_subscriber_waits_for_a_key_frame_and_one_is_requested() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with (
            open_stream_call(
                h.stub.Telemetry, mc_pb.TelemetryRequest(meeting_id=meeting)
            ) as events,
            h.client(url_p) as p,
            h.client(url_s) as s,
        ):
            with trio.fail_after(WAIT_S):
                await h.handler.telemetry_hub.wait_listeners(1)
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            pub = await p.publish(cam)
            await pub.send_frame(FrameType.VIDEO_KEY, b"k0")
            await pub.send_frame(FrameType.VIDEO_DELTA, b"d1")
            await h.route(meeting, cam, ["s"])  # joins mid-stream
            with trio.fail_after(WAIT_S):
                event = await _next_event(events)
            assert event.meeting_id == meeting
            assert event.WhichOneof("event") == "key_frame_request"
            assert event.key_frame_request.stream_id == cam
            await pub.send_frame(FrameType.VIDEO_DELTA, b"d2")  # not decodable: dropped
            await pub.send_frame(FrameType.VIDEO_KEY, b"k3")
            await pub.send_frame(FrameType.VIDEO_DELTA, b"d4")
            got = await receive_n(s, 2)
            assert [bytes(f.payload) for f in got] == [b"k3", b"d4"]
            stats = h.handler.rooms[meeting].publications[cam].stats  # type: ignore[index]
            assert stats.frames_dropped(DropReason.WAITING_FOR_KEYFRAME) == 1
            # Telemetry: one MediaTelemetry per stream per report.
            h.handler.report_once()
            with trio.fail_after(WAIT_S):
                event = await _next_event(events)
            assert event.WhichOneof("event") == "telemetry"
            assert event.telemetry.stream_id == cam
            assert event.telemetry.bytes_received == stats.bytes_received > 0
            assert event.telemetry.frames_dropped == 1


async def test_budget_in_drops_low_priority_first() -> None:
    meeting, cam, mic = new_id(), new_id(), new_id()
    budget = 40_000
    async with open_harness(budget_in_bytes_per_s=budget) as h:
        url_p = await h.register(meeting, "p", [video(cam), audio(mic)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_p) as p, h.client(url_s) as s:
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            await h.route(meeting, mic, ["s"])
            v, a = await p.publish(cam), await p.publish(mic)
            # Far more than a second's budget at once: discardable and deltas go, audio stays.
            await v.send_frame(FrameType.VIDEO_KEY, b"k" * 2000)
            for i in range(40):
                flags = FrameFlags.END_OF_FRAME | (FrameFlags.DISCARDABLE if i % 2 else 0)
                await v.send_frame(FrameType.VIDEO_DELTA, b"d" * 2000, flags=flags)
                await a.send_frame(FrameType.AUDIO, b"a" * 100)
            await v.finish()
            await a.finish()
            room = h.handler.rooms[meeting]  # type: ignore[index]
            vstats, astats = room.publications[cam].stats, room.publications[mic].stats
            assert astats.frames_dropped(DropReason.BUDGET) == 0
            assert vstats.frames_dropped(DropReason.BUDGET) > 0
            delivered = 41 - sum(
                vstats.snapshot(trio.current_time(), timestamp=0).frames_dropped.values()
            )
            got = await receive_n(s, 40 + delivered)
            assert sum(1 for f in got if f.frame_type == FrameType.AUDIO) == 40
            video_got = [f for f in got if f.frame_type != FrameType.AUDIO]
            assert video_got[0].frame_type == FrameType.VIDEO_KEY
            # Decodable: each delta that depends on others (not discardable) follows the one
            # before it in the publisher's chain (keys and the odd, non-discardable deltas).
            chain = [0] + [i + 1 for i in range(40) if not i % 2]
            previous = dict(zip(chain[1:], chain, strict=False))
            kept = {f.sequence for f in video_got}
            for f in video_got:
                if f.frame_type == FrameType.VIDEO_DELTA and not f.flags & FrameFlags.DISCARDABLE:
                    assert previous[f.sequence] in kept, f.sequence
            assert vstats.bytes_received <= 41 * 2046


async def test_budget_out_limits_what_a_subscriber_is_sent() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness(budget_out_bytes_per_s=30_000) as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_p) as p, h.client(url_s) as s:
            await h.connected(meeting, "p")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            v = await p.publish(cam)
            await v.send_frame(FrameType.VIDEO_KEY, b"k" * 1000)
            for _ in range(60):
                await v.send_frame(FrameType.VIDEO_DELTA, b"d" * 1000)
            await v.finish()
            stats = h.handler.rooms[meeting].publications[cam].stats  # type: ignore[index]
            dropped = stats.frames_dropped(DropReason.BUDGET)
            assert 0 < dropped < 61
            assert stats.frames_received == 61
            got = await receive_n(
                s, 61 - sum(stats.snapshot(0, timestamp=0).frames_dropped.values())
            )
            assert _decodable(got)
