"""A frame routed to a parked subscription is written from the publisher's task
(docs/architecture.md §4.3, ``_direct.py``): only in the plain case, keeping its age bound, and
a transport error stays the subscription's.

The writer is tested on a fake stream; the hand-back to the subscription's task with the MH on
in-memory sessions (virtual time); the whole path on real QUIC through the MH."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from darktower.frames import FrameType
from darktower.media_handler import (
    DropReason,
    MediaHandler,
    MediaKind,
    MediaMetrics,
    QueuedFrame,
    Settings,
    SubscriptionQueue,
)
from darktower.media_handler._credit import SendWindow
from darktower.media_handler._direct import UNI_PREFIX_MAX, DirectWriter
from darktower.media_handler._stats import StreamStats
from darktower.metrics import Registry
from darktower.model import StreamId
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._harness import audio, new_id, open_harness, receive_n
from .test_stale import MEETING, MIC, PublishStream, _encode

MAX_AGE = 0.2


class FakeStream:
    """What the writer uses of a uni stream: credit, an all-or-nothing write, a watch."""

    def __init__(self, credit: int = 1 << 20) -> None:
        self.send_credit = credit
        self.accept = True  # try_send takes what it is given
        self.error: Exception | None = None  # raised by the next try_send
        self.data = bytearray()

    def try_send(self, data: Any) -> bool:
        if self.error is not None:
            error, self.error = self.error, None  # once
            raise error
        if not self.accept:
            return False
        self.data += data
        return True

    def when_sent(self, callback: Any) -> bool:
        return True


class FakeLot:
    """Where the subscription's task parks: there until woken or cancelled."""

    parked = True

    def __len__(self) -> int:
        return int(self.parked)


def frame(at: float, size: int = 100) -> QueuedFrame[memoryview]:
    return QueuedFrame(FrameType.AUDIO, 0, size, memoryview(bytes(size)), at)


def writer(
    stream: FakeStream, parked: trio.CancelScope, written: int = 500, lot: Any = None
) -> DirectWriter:
    metrics = MediaMetrics(Registry())
    queue: SubscriptionQueue[memoryview] = SubscriptionQueue(MediaKind.AUDIO)
    window = SendWindow()
    window.open(stream.send_credit, 0.0)
    lot = FakeLot() if lot is None else lot
    direct = DirectWriter(queue, lot, window, StreamStats(StreamId("s")), metrics, MAX_AGE)
    direct.arm(stream, written, parked)  # type: ignore[arg-type]
    return direct


def queued(direct: DirectWriter, at: float) -> QueuedFrame[memoryview]:
    item = frame(at)
    assert direct.queue.push(item) == ()
    return item


def test_a_lone_frame_that_fits_goes_and_its_age_bound_arms_the_deadline() -> None:
    stream, parked = FakeStream(), trio.CancelScope()  # (the task's scope, not entered here)
    direct = writer(stream, parked)
    assert direct.write(queued(direct, 1.0), 1.0)
    assert direct.queue.empty and len(stream.data) == 100
    assert direct.written == 600 and [end for end, _ in direct.sent] == [600]
    assert parked.deadline == 1.0 + MAX_AGE
    assert direct.write(queued(direct, 1.05), 1.05)  # a later frame never moves it later
    assert parked.deadline == 1.0 + MAX_AGE
    assert [end for end, _ in direct.sent] == [600, 700]
    assert direct.metrics.frames_direct.value() == 2
    direct.disarm()
    assert not direct.write(queued(direct, 1.1), 1.1)  # the task woke: nothing goes from here


def test_anything_but_the_plain_case_wakes_the_task() -> None:
    parked = trio.CancelScope()
    full = FakeStream()
    full.accept = False  # the transport's send buffer is at its mark
    woken = FakeLot()
    woken.parked = False  # unparked, or cancelled, and not yet run
    cases = [
        (FakeStream(), 2, None),  # two frames queued: the task batches them
        (FakeStream(credit=500 + UNI_PREFIX_MAX + 99), 1, None),  # beyond the credit
        (full, 1, None),
        (FakeStream(), 1, woken),
    ]
    for stream, count, lot in cases:
        direct = writer(stream, parked, lot=lot)
        items = [queued(direct, 1.0) for _ in range(count)]
        assert not direct.write(items[-1], 1.0)
        assert len(direct.queue) == count and not direct.sent and not stream.data
    # A frame routed but dropped on its way in (budget, key frame gate) leaves an older one
    # queued: that one is the task's to judge (it may be stale).
    stream = FakeStream()
    direct = writer(stream, parked)
    older = queued(direct, 0.5)
    assert not direct.write(frame(1.0), 1.0)
    assert list(direct.queue) == [older] and not stream.data
    assert parked.deadline == math.inf


def test_a_transport_error_is_kept_for_the_subscription_task() -> None:
    stream = FakeStream()
    stream.error = trio.ClosedResourceError("the subscriber stopped the stream")
    direct = writer(stream, trio.CancelScope())
    item = queued(direct, 1.0)
    assert not direct.write(item, 1.0)  # the publisher's call returns
    assert isinstance(direct.failed, trio.ClosedResourceError) and len(direct.queue) == 1
    assert not direct.write(item, 1.0)  # nothing more from here until the task has it


# -- the hand-back to the subscription's task (in-memory sessions, virtual time) ---------------


class UnackedUniStream(FakeStream):
    """A uni stream whose peer acknowledges nothing: every write is taken and held."""

    def __init__(self) -> None:
        super().__init__()
        self.reset_code: int | None = None

    @property
    def unacknowledged(self) -> int:
        return len(self.data)

    def try_send(self, data: Any) -> bool:
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        return super().try_send(data)

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.try_send(data)

    def reset(self, code: int = 0) -> None:
        self.reset_code = code
        self.data.clear()


class Session:
    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[PublishStream](4)
        self.end = None
        self.uni: list[UnackedUniStream] = []
        self.unidirectional_stream_credit = 1 << 30

    def publish(self) -> PublishStream:
        stream = PublishStream()
        self._send.send_nowait(stream)
        return stream

    async def accept_stream(self) -> PublishStream:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("session closed") from None

    async def open_unidirectional_stream(self) -> UnackedUniStream:
        await trio.lowlevel.checkpoint()
        self.uni.append(UnackedUniStream())
        return self.uni[-1]

    def close_nowait(self, code: int = 0, reason: str = "") -> None:
        self._recv.close()


@asynccontextmanager
async def routed(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[MediaHandler, PublishStream, Session]]:
    """The MH on in-memory sessions, the publisher's audio routed to one subscriber."""
    tree = TaskTree()
    await nursery.start(tree.run)
    handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
    for pid, streams in (("p", [audio(MIC)]), ("s", [])):
        await handler.register_participant(
            mc_pb.RegisterParticipant(participant_id=pid, meeting_id=MEETING, streams=streams)
        )
    room = handler.rooms[MEETING]  # type: ignore[index]
    pub, sub = Session(), Session()
    for pid, session in (("p", pub), ("s", sub)):
        nursery.start_soon(handler.handle_session, session, room.members[pid])
    await trio.testing.wait_all_tasks_blocked()
    await handler.route_media(
        mc_pb.RouteMediaCommand(
            meeting_id=MEETING, source_stream_id=MIC, destination_participant_ids=["s"]
        )
    )
    await trio.testing.wait_all_tasks_blocked()
    yield handler, pub.publish(), sub
    nursery.cancel_scope.cancel()


async def test_frames_written_directly_keep_their_age_bound_until_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten audio frames 20 ms apart to a subscriber that acknowledges none: the task writes
    the first, the publisher's task the nine others; at the first one's age bound the stream
    is abandoned and all ten count as stale, not only the task's own."""
    async with trio.open_nursery() as nursery, routed(nursery) as (handler, mic, sub):
        for seq in range(10):
            mic.feed(_encode(MIC, FrameType.AUDIO, seq))
            await trio.sleep(0.02)
        metrics = handler.metrics
        assert metrics.frames_direct.value() == 9 and sub.uni[0].reset_code is None
        await trio.sleep(Settings().max_audio_age_s)  # past the first frame's bound
        await trio.testing.wait_all_tasks_blocked()
        assert sub.uni[0].reset_code is not None
        assert metrics.frames_dropped.value(DropReason.STALE.value) == 10


async def test_an_error_on_a_direct_write_ends_the_subscription_not_the_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery, routed(nursery) as (handler, mic, sub):
        publication = handler.rooms[MEETING].publications[MIC]  # type: ignore[index]
        mic.feed(_encode(MIC, FrameType.AUDIO, 0))  # the task's own write
        await trio.testing.wait_all_tasks_blocked()
        # Once: the task's own write would go; it raises what the direct write met.
        sub.uni[0].error = trio.ClosedResourceError("the subscriber stopped the stream")
        mic.feed(_encode(MIC, FrameType.AUDIO, 1))
        await trio.testing.wait_all_tasks_blocked()
        mic.feed(_encode(MIC, FrameType.AUDIO, 2))
        await trio.testing.wait_all_tasks_blocked()
        assert "s" not in publication.subscriptions
        assert publication.stats.frames_received == 3  # the publisher's stream goes on
        assert handler.metrics.frames_direct.value() == 0


async def test_frames_to_a_subscriber_that_keeps_up_go_from_the_publishers_task() -> None:
    """Each frame is sent once the previous one arrived, so the subscription's task is parked
    whenever one is routed: all but the stream's first (its task writes that) go directly."""
    meeting, mic = new_id(), new_id()
    n = 30
    async with open_harness(max_audio_age_s=5.0) as h:  # no abandon on a slow machine
        url_p = await h.register(meeting, "pub", [audio(mic)])
        url_s = await h.register(meeting, "sub")
        async with h.client(url_s) as s, h.client(url_p) as p:
            await h.connected(meeting, "pub")
            await h.connected(meeting, "sub")
            await h.route(meeting, mic, ["sub"])
            publication = await p.publish(mic)
            sent, got = [], []
            for i in range(n):
                sent.append(await publication.send_frame(FrameType.AUDIO, b"%d" % i))
                got.extend(bytes(f.raw) for f in await receive_n(s, 1))
            assert got == sent
            metrics = h.handler.metrics
            assert metrics.frames_forwarded.value() == n
            assert metrics.frames_direct.value() == n - 1
