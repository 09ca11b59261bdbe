"""One publisher to many subscribers over real QUIC: byte-identical, in order, per stream."""

from __future__ import annotations

import pytest
import trio

from darktower.frames import FrameType
from darktower.transport import StreamReset

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

SUBSCRIBERS = 4
FRAMES = 120


async def test_one_publisher_many_subscribers_byte_identical_in_order() -> None:
    meeting, cam, mic = new_id(), new_id(), new_id()
    # The subscribers read only once everything was published.
    # Nobody removes the subscribers when they leave: the media grace (short here) does.
    async with open_harness(media_grace_s=0.5, **NO_AGE_BOUND) as h:
        pub_url = await h.register(meeting, "pub", [video(cam), audio(mic)])
        sub_urls = [await h.register(meeting, f"sub{i}") for i in range(SUBSCRIBERS)]
        async with h.client(pub_url) as publisher, trio.open_nursery() as nursery:
            subs = []
            for i, url in enumerate(sub_urls):
                subs.append(await nursery.start(_hold, h, url))
                await h.connected(meeting, f"sub{i}")
            dests = [f"sub{i}" for i in range(SUBSCRIBERS)]
            await h.route(meeting, cam, dests)
            await h.route(meeting, mic, dests)
            camera, microphone = await publisher.publish(cam), await publisher.publish(mic)
            room = h.handler.rooms[meeting]  # type: ignore[index]
            stats = room.publications[cam].stats  # type: ignore[index]
            sent = {cam: [], mic: []}
            with trio.fail_after(WAIT_S):
                for i in range(FRAMES):
                    payload = bytes([i % 251]) * (100 + 37 * i)
                    sent[cam].append(await camera.send_frame(frame_type_for(i, 30), payload))
                    sent[mic].append(await microphone.send_frame(FrameType.AUDIO, payload[:120]))
            for media in subs:
                got = await receive_n(media, 2 * FRAMES)
                by_stream: dict[str, list[bytes]] = {cam: [], mic: []}
                for frame in got:
                    by_stream[str(frame.stream_id)].append(bytes(frame.raw))
                assert by_stream == sent
            # Each frame's residence (arrival → last byte sent) was measured once for each
            # subscriber (docs/architecture.md §5.1).
            residence = h.handler.metrics.frame_residence
            assert residence.count() == SUBSCRIBERS * 2 * FRAMES
            nursery.cancel_scope.cancel()
        with trio.fail_after(WAIT_S):
            await room.scope.wait_closed()  # everyone left: the room ended
        assert h.handler.rooms == {}
        assert stats.frames_received == FRAMES
        assert stats.frames_sent == FRAMES * SUBSCRIBERS
        assert sum(stats.snapshot(trio.current_time(), timestamp=0).frames_dropped.values()) == 0


async def _hold(h, url, *, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
    async with h.client(url) as media:
        task_status.started(media)
        await trio.sleep_forever()


async def test_routes_made_before_the_subscriber_connects_apply_on_connect() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "pub", [video(cam)])
        url_s = await h.register(meeting, "sub")
        await h.route(meeting, cam, ["sub"])  # the MC's usual order: route, then clients connect
        async with h.client(url_s) as s, h.client(url_p) as p:
            await h.connected(meeting, "sub")
            pub = await p.publish(cam)
            sent = [await pub.send_frame(frame_type_for(i, 5), b"x" * i) for i in range(10)]
            got = await receive_n(s, 10)
            assert [bytes(f.raw) for f in got] == sent


async def test_unroute_stops_the_subscription_and_route_again_resumes_at_a_key_frame() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "pub", [video(cam)])
        url_s = await h.register(meeting, "sub")
        async with h.client(url_s) as s, h.client(url_p) as p:
            await h.connected(meeting, "pub")
            await h.connected(meeting, "sub")
            await h.route(meeting, cam, ["sub"])
            pub = await p.publish(cam)
            await pub.send_frame(FrameType.VIDEO_KEY, b"k0")
            assert [bytes(f.payload) for f in await receive_n(s, 1)] == [b"k0"]
            await h.route(meeting, cam, ["sub"], unroute=True)
            await h.route(meeting, cam, ["sub"])  # at once: the old task may still be exiting
            publication = h.handler.rooms[meeting].publications[cam]  # type: ignore[index]
            assert list(publication.subscriptions) == ["sub"]
            await pub.send_frame(FrameType.VIDEO_DELTA, b"d1")  # no reference: not delivered
            await pub.send_frame(FrameType.VIDEO_KEY, b"k2")
            assert [bytes(f.payload) for f in await receive_n(s, 1)] == [b"k2"]


async def test_an_unregistered_stream_routed_ahead_is_claimed_by_its_first_frame() -> None:
    # The MC may route a stream published on signaling without registering it with the MH.
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "pub")
        url_o = await h.register(meeting, "other")
        url_s = await h.register(meeting, "sub")
        await h.route(meeting, cam, ["sub"])  # nobody publishes it yet
        async with h.client(url_s) as s, h.client(url_p) as p, h.client(url_o) as o:
            for name in ("sub", "pub", "other"):
                await h.connected(meeting, name)
            pub = await p.publish(cam)
            sent = [await pub.send_frame(frame_type_for(i, 5), b"y" * i) for i in range(6)]
            got = await receive_n(s, 6)
            assert [bytes(f.raw) for f in got] == sent
            publication = h.handler.rooms[meeting].publications[cam]  # type: ignore[index]
            assert publication.publisher.id == "pub"
            # Claimed: another participant sending that stream id is reset, nothing else.
            thief = await o.publish(cam)
            await thief.send_frame(FrameType.VIDEO_KEY, b"stolen")
            with trio.fail_after(WAIT_S), pytest.raises(StreamReset):
                await thief.finish()
            sent.append(await pub.send_frame(FrameType.VIDEO_DELTA, b"more"))
            assert bytes((await receive_n(s, 1))[0].raw) == sent[-1]
