"""What one participant can make the MH hold: publish streams beyond
``max_streams_per_participant`` are refused before anything is buffered, and the bytes of
partial frames count against ``max_buffered_bytes_per_participant`` as they arrive. Another
participant of the room keeps receiving meanwhile."""

from __future__ import annotations

import uuid

import trio

from darktower.client import MediaPublisher
from darktower.errors import ErrorCode
from darktower.frames import FrameType
from darktower.transport import StreamReset

from ._harness import WAIT_S, new_id, open_harness, receive_n, video

KIB = 1024


def _header(stream_id: str, payload_length: int) -> bytes:
    """A valid video key frame header announcing ``payload_length`` bytes."""
    return (
        bytes([1, int(FrameType.VIDEO_KEY)])
        + uuid.UUID(stream_id).bytes
        + bytes(16)
        + payload_length.to_bytes(4, "big")
        + bytes(8)
    )


async def _reset_code(pub: MediaPublisher) -> int | None:
    """Wait until the MH resets ``pub``'s stream; its error code."""
    with trio.fail_after(WAIT_S):
        try:
            while True:
                if not await pub.stream.receive_some():
                    raise AssertionError("the MH finished the stream instead of resetting it")
        except StreamReset as exc:
            return exc.code


async def _send(pub: MediaPublisher, data: bytes) -> None:
    try:
        await pub.send_raw(data)
    except StreamReset:  # refused already: the reset is read by _reset_code
        pass


async def test_publish_streams_beyond_the_limit_are_refused_before_anything_is_buffered() -> None:
    meeting, cam1, cam2 = new_id(), new_id(), new_id()
    async with open_harness(max_streams_per_participant=2) as h:
        url_a = await h.register(meeting, "a", [video(cam1), video(cam2)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_a) as a, h.client(url_s) as s:
            await h.connected(meeting, "a")
            await h.connected(meeting, "s")
            await h.route(meeting, cam1, ["s"])
            await h.route(meeting, cam2, ["s"])
            held = [await a.publish(cam1), await a.publish(cam2)]
            for pub in held:
                await pub.send_frame(FrameType.VIDEO_KEY, b"k")
            await receive_n(s, 2)  # both publish streams run at the MH
            member = h.handler.rooms[meeting].members["a"]  # type: ignore[index]
            extra = [await a.publish(new_id()) for _ in range(3)]
            for pub in extra:
                await _send(pub, _header(str(pub.stream_id), 64 * KIB) + bytes(8 * KIB))
            for pub in extra:
                assert await _reset_code(pub) == ErrorCode.CAPACITY_EXCEEDED
            # Nothing of the refused streams was buffered, and the two allowed ones carry on.
            assert member.ingress.held == 0 and member.ingress.peak == 0
            errors = h.handler.metrics.stream_errors
            assert errors.value("TooManyPublishStreams") == 3
            for pub in held:
                await pub.send_frame(FrameType.VIDEO_DELTA, b"d")
            assert [f.frame_type for f in await receive_n(s, 2)] == [FrameType.VIDEO_DELTA] * 2
            assert not a.session.is_closed


async def test_partial_frames_of_one_participant_are_capped_and_others_keep_receiving() -> None:
    cap = 512 * KIB
    meeting, cam = new_id(), new_id()
    async with open_harness(
        max_frame_payload=256 * KIB, max_buffered_bytes_per_participant=cap
    ) as h:
        url_x = await h.register(meeting, "x")
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_x) as x, h.client(url_p) as p, h.client(url_s) as s:
            for who in ("x", "p", "s"):
                await h.connected(meeting, who)
            await h.route(meeting, cam, ["s"])
            good = await p.publish(cam)
            sent = [await good.send_frame(FrameType.VIDEO_KEY, b"before")]
            attacker = h.handler.rooms[meeting].members["x"]  # type: ignore[index]
            # Four streams, each a frame announcing 256 KiB of which 200 KiB arrive and the
            # rest never: 800 KiB of partial frames, never completed, never finished. At most
            # two fit under the cap, so exactly two streams are reset, whatever the order.
            pubs = [await x.publish(new_id()) for _ in range(4)]
            for pub in pubs:
                await _send(pub, _header(str(pub.stream_id), 256 * KIB) + bytes(200 * KIB))
                sent.append(await good.send_frame(FrameType.VIDEO_DELTA, b"during"))
            codes: list[int | None] = []
            async with trio.open_nursery() as nursery:

                async def watch(pub: MediaPublisher) -> None:
                    codes.append(await _reset_code(pub))
                    if len(codes) == 2:
                        nursery.cancel_scope.cancel()

                for pub in pubs:
                    nursery.start_soon(watch, pub)
            assert codes == [ErrorCode.CAPACITY_EXCEEDED] * 2
            # The MH's own accounting: never more than the cap held for this participant.
            assert 0 < attacker.ingress.peak <= cap
            assert attacker.ingress.held <= cap
            assert h.handler.metrics.stream_errors.value("PublishBufferFull") == 2
            h.handler.refresh_gauges()
            assert h.handler.metrics.publish_buffered.value() == attacker.ingress.held
            sent.append(await good.send_frame(FrameType.VIDEO_DELTA, b"after"))
            got = await receive_n(s, len(sent))
            assert [bytes(f.raw) for f in got] == sent
            assert not x.session.is_closed and not p.session.is_closed
            scope = attacker.scope
            assert scope is not None
            await x.aclose()
            with trio.fail_after(WAIT_S):
                await scope.wait_closed()
            assert attacker.ingress.held == 0  # every stream released what it held


async def test_a_refused_stream_does_not_count_against_the_limit() -> None:
    """Refusing a stream frees its slot at once: after the allowed stream ends, a new one is
    accepted."""
    meeting, cam = new_id(), new_id()
    async with open_harness(max_streams_per_participant=1) as h:
        url_a = await h.register(meeting, "a", [video(cam)])
        url_s = await h.register(meeting, "s")
        async with h.client(url_a) as a, h.client(url_s) as s:
            await h.connected(meeting, "a")
            await h.connected(meeting, "s")
            await h.route(meeting, cam, ["s"])
            first = await a.publish(cam)
            await first.send_frame(FrameType.VIDEO_KEY, b"1")
            await receive_n(s, 1)
            refused = await a.publish(cam)
            await _send(refused, _header(cam, 4))
            assert await _reset_code(refused) == ErrorCode.CAPACITY_EXCEEDED
            scope = h.handler.rooms[meeting].members["a"].scope  # type: ignore[index]
            assert scope is not None
            task = scope.stream("pub:1")
            assert task is not None
            with trio.fail_after(WAIT_S):
                await first.finish()  # the MH routed it all and ends the publish task
                await task.wait_closed()
            again = await a.publish(cam)
            await again.send_frame(FrameType.VIDEO_KEY, b"2")
            assert [bytes(f.payload) for f in await receive_n(s, 1)] == [b"2"]
