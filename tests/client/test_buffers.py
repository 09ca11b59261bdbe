"""The streams of a session without a network or a session: a subscription's drop policy and
the event stream's drop-oldest, how each ends, and that closing one only calls its ``close``
callback."""

from __future__ import annotations

import uuid

import pytest
import trio

from darktower.client import (
    EventStream,
    KeyFrameRequest,
    Publication,
    SessionEnded,
    Subscription,
)
from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType
from darktower.model import LeaveReason, StreamType

STREAM = uuid.uuid4()


class FakeSession:
    """What the buffers ask of their session: whether and why it ended."""

    def __init__(self) -> None:
        self.end_reason: LeaveReason | None = None
        self.ended = trio.Event()

    def ended_error(self) -> SessionEnded:
        assert self.end_reason is not None
        return SessionEnded(self.end_reason, "", session=self)


def frame(kind: FrameType, seq: int, flags: FrameFlags = FrameFlags.END_OF_FRAME) -> Frame:
    header = FrameHeader(
        frame_type=kind,
        stream_id=STREAM,
        timestamp_us=0,
        sequence=seq,
        payload_length=0,
        flags=flags,
    )
    return Frame.build(header, bytes([seq % 256]))


async def never_closed(stream: object) -> None:
    raise AssertionError("closed")


def subscription(size: int) -> tuple[FakeSession, Subscription]:
    session = FakeSession()
    return session, Subscription(session, str(STREAM), [STREAM.bytes], size, close=never_closed)


def buffered(sub: Subscription) -> list[int]:
    out = []
    while True:
        try:
            out.append(sub._receive.receive_nowait().sequence)
        except trio.WouldBlock:
            return out


def test_video_drops_deltas_until_the_next_key_frame() -> None:
    _, sub = subscription(3)
    sub._deliver(frame(FrameType.VIDEO_KEY, 0))
    for seq in (1, 2, 3, 4):  # 3 overflows; 4 depends on it
        sub._deliver(frame(FrameType.VIDEO_DELTA, seq))
    assert sub.dropped == 2
    sub._deliver(frame(FrameType.VIDEO_KEY, 5))  # full: the oldest goes to make room
    sub._deliver(frame(FrameType.VIDEO_DELTA, 6))  # full again, but a new key: plain drop
    assert buffered(sub) == [1, 2, 5]
    assert sub.dropped == 4
    sub._deliver(frame(FrameType.VIDEO_DELTA, 7))  # still waiting for a key frame
    sub._deliver(frame(FrameType.VIDEO_KEY, 8))
    sub._deliver(frame(FrameType.VIDEO_DELTA, 9))
    assert buffered(sub) == [8, 9]
    assert (sub.dropped, sub.received) == (5, 6)


def test_audio_drops_the_oldest_and_discardable_frames_go_first() -> None:
    _, sub = subscription(2)
    for seq in range(4):
        sub._deliver(frame(FrameType.AUDIO, seq))
    assert sub.dropped == 2
    sub._deliver(frame(FrameType.AUDIO, 4, FrameFlags.END_OF_FRAME | FrameFlags.DISCARDABLE))
    assert buffered(sub) == [2, 3]
    assert sub.dropped == 3


async def test_a_subscription_stops_on_its_end_and_raises_on_a_server_end() -> None:
    session, sub = subscription(4)
    sub._deliver(frame(FrameType.AUDIO, 0))
    sub._end()
    assert [f.sequence async for f in sub] == [0]  # buffered frames first, then the end

    session, sub = subscription(4)
    sub._deliver(frame(FrameType.AUDIO, 0))
    session.end_reason = LeaveReason.KICKED
    sub._end()
    assert (await sub.receive()).sequence == 0
    with pytest.raises(SessionEnded) as ended:
        await sub.receive()
    assert ended.value.reason is LeaveReason.KICKED
    assert ended.value.session is session
    sub._deliver(frame(FrameType.AUDIO, 1))  # after the end: ignored
    assert sub.received == 1


async def test_events_drop_the_oldest_and_end_like_the_session() -> None:
    session = FakeSession()
    events = EventStream(session, 2)
    for i in range(3):
        events._put(KeyFrameRequest(str(i)))
    assert events.dropped == 1
    assert await events.receive() == KeyFrameRequest("1")
    session.end_reason = LeaveReason.VOLUNTARY
    events._close()
    events._put(KeyFrameRequest("late"))
    assert [e async for e in events] == [KeyFrameRequest("2")]

    session = FakeSession()
    events = EventStream(session, 2)
    session.end_reason = LeaveReason.CONNECTION_LOST
    events._close()
    with pytest.raises(SessionEnded) as ended:
        await events.receive()
    assert ended.value.reason is LeaveReason.CONNECTION_LOST


async def test_closing_a_subscription_or_a_publication_calls_its_close_callback_once() -> None:
    closed: list[object] = []

    async def close(stream: object) -> None:
        closed.append(stream)

    session = FakeSession()
    sub = Subscription(session, str(STREAM), [STREAM.bytes], 4, close=close)
    sub._deliver(frame(FrameType.AUDIO, 0))
    async with sub:
        pass
    await sub.aclose()
    assert closed == [sub]
    assert sub.closed
    assert [f.sequence async for f in sub] == [0]  # ended locally: what was buffered, then stop

    publication = Publication(session, str(STREAM), StreamType.AUDIO, {}, close=close)
    async with publication:
        pass
    await publication.aclose()
    assert closed == [sub, publication]
    with pytest.raises(trio.ClosedResourceError):
        await publication.send_frame(FrameType.AUDIO, b"late")
    session.end_reason = LeaveReason.MEETING_ENDED  # the session's end wins over the close
    with pytest.raises(SessionEnded) as ended:
        await publication.send_frame(FrameType.AUDIO, b"late")
    assert (ended.value.reason, ended.value.session) == (LeaveReason.MEETING_ENDED, session)
