"""RemoveParticipant: when it returns, nothing of the participant can be sent or received."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from darktower.frames import FrameType
from darktower.model import LeaveReason
from darktower.protocol import close_code_for
from darktower.transport import SessionClosed

from ._harness import WAIT_S, new_id, open_harness, receive_n, video

AFTER = 1_000_000  # sequence numbers of frames sent after RemoveParticipant returned


async def test_removed_publisher_delivers_nothing_after_the_call_returns() -> None:
    meeting, cam1, cam2 = new_id(), new_id(), new_id()
    async with open_harness() as h:
        url1 = await h.register(meeting, "p1", [video(cam1)])
        url2 = await h.register(meeting, "p2", [video(cam2)])
        url_s = await h.register(meeting, "s")
        async with h.client(url1) as p1, h.client(url2) as p2, h.client(url_s) as s:
            for p in ("p1", "p2", "s"):
                await h.connected(meeting, p)
            await h.route(meeting, cam1, ["s"])
            await h.route(meeting, cam2, ["s"])
            pub1, pub2 = await p1.publish(cam1), await p2.publish(cam2)
            for i in range(20):
                await pub1.send_frame(
                    FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA, b"x" * 500
                )
            member = h.handler.rooms[meeting].members["p1"]  # type: ignore[index]
            scope = member.scope
            await h.remove(meeting, "p1", LeaveReason.KICKED)
            # Returned: the scope closed, every task of it exited, its session is closed.
            assert scope is not None and scope.closed and not scope.streams
            assert "p1" not in h.handler.rooms[meeting].members  # type: ignore[index]
            assert cam1 not in h.handler.rooms[meeting].publications  # type: ignore[index]
            with pytest.raises((SessionClosed, trio.ClosedResourceError)):
                with trio.fail_after(WAIT_S):
                    for i in range(100):
                        await pub1.send_frame(FrameType.VIDEO_DELTA, b"late", sequence=AFTER + i)
                        await trio.lowlevel.checkpoint()
            with trio.fail_after(WAIT_S):
                await p1.session.wait_closed()
            assert p1.session.peer_close_code == close_code_for(LeaveReason.KICKED)
            assert p1.session.peer_close_reason == "KICKED"
            # A marker from the other publisher, sent after: everything before it has arrived.
            await pub2.send_frame(FrameType.VIDEO_KEY, b"marker")
            with trio.fail_after(WAIT_S):
                while True:
                    frame = await s.receive_frame()
                    assert frame.sequence < AFTER, "a frame sent after the removal was delivered"
                    if bytes(frame.payload) == b"marker":
                        break


async def test_removed_subscriber_gets_nothing_after_the_call_returns() -> None:
    meeting, cam = new_id(), new_id()
    async with open_harness() as h:
        url_p = await h.register(meeting, "p", [video(cam)])
        url_s = await h.register(meeting, "s")
        url_t = await h.register(meeting, "t")
        async with h.client(url_p) as p, h.client(url_s) as s, h.client(url_t) as t:
            for x in ("p", "s", "t"):
                await h.connected(meeting, x)
            await h.route(meeting, cam, ["s", "t"])
            pub = await p.publish(cam)
            await pub.send_frame(FrameType.VIDEO_KEY, b"k")
            await receive_n(s, 1)
            await h.remove(meeting, "s", LeaveReason.MEETING_ENDED)
            publication = h.handler.rooms[meeting].publications[cam]  # type: ignore[index]
            assert "s" not in publication.subscriptions
            for i in range(10):
                await pub.send_frame(FrameType.VIDEO_DELTA, b"d", sequence=AFTER + i)
            got = await receive_n(t, 11)
            assert [f.sequence for f in got] == [0] + [AFTER + i for i in range(10)]
            # s received nothing after the removal: its channel ends without another frame.
            with trio.fail_after(WAIT_S):
                rest = [f async for f in s]
            assert all(f.sequence < AFTER for f in rest)
            assert s.session.peer_close_code == close_code_for(LeaveReason.MEETING_ENDED)


async def test_remove_unknown_or_pending_participant() -> None:
    meeting = new_id()
    async with open_harness() as h:
        await h.remove(meeting, "nobody")
        await h.register(meeting, "pending")
        room = h.handler.rooms[meeting]  # type: ignore[index]
        await h.remove(meeting, "pending")
        with trio.fail_after(WAIT_S):
            await room.scope.wait_closed()
        assert h.handler.rooms == {}
        assert h.handler.tree.snapshot()["counts"] == {
            "meetings": 0,
            "participants": 0,
            "streams": 0,
        }
