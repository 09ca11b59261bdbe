"""A frame routed to a parked subscription is written from the publisher's task
(docs/architecture.md §4.3, ``_direct.py``): only in the plain case, keeping its age bound, and
a transport error stays the subscription's.

The writer is tested on a fake stream; the whole path on real QUIC through the MH."""

from __future__ import annotations

import math
from typing import Any

import trio

from darktower.frames import FrameType
from darktower.media_handler import MediaKind, MediaMetrics, QueuedFrame, SubscriptionQueue
from darktower.media_handler._credit import SendWindow
from darktower.media_handler._direct import UNI_PREFIX_MAX, DirectWriter
from darktower.media_handler._stats import StreamStats
from darktower.metrics import Registry
from darktower.model import StreamId

from ._harness import audio, new_id, open_harness, receive_n

MAX_AGE = 0.2


class FakeStream:
    """What the writer uses of a uni stream: credit, an all-or-nothing write, a watch."""

    def __init__(self, credit: int = 1 << 20) -> None:
        self.send_credit = credit
        self.accept = True  # try_send takes what it is given
        self.error: Exception | None = None
        self.data = bytearray()

    def try_send(self, data: Any) -> bool:
        if self.error is not None:
            raise self.error
        if not self.accept:
            return False
        self.data += data
        return True

    def when_sent(self, callback: Any) -> bool:
        return True


def frame(at: float, size: int = 100) -> QueuedFrame[memoryview]:
    return QueuedFrame(FrameType.AUDIO, 0, size, memoryview(bytes(size)), at)


def writer(stream: FakeStream, parked: trio.CancelScope, written: int = 500) -> DirectWriter:
    metrics = MediaMetrics(Registry())
    queue: SubscriptionQueue[memoryview] = SubscriptionQueue(MediaKind.AUDIO)
    window = SendWindow()
    window.open(stream.send_credit, 0.0)
    direct = DirectWriter(queue, window, StreamStats(StreamId("s")), metrics, MAX_AGE)
    direct.arm(stream, written, parked)  # type: ignore[arg-type]
    return direct


def test_a_lone_frame_that_fits_goes_and_its_age_bound_arms_the_deadline() -> None:
    stream, parked = FakeStream(), trio.CancelScope()  # (the task's scope, not entered here)
    direct = writer(stream, parked)
    direct.queue.push(frame(1.0))
    assert direct.write(1.0)
    assert direct.queue.empty and len(stream.data) == 100
    assert direct.written == 600 and [end for end, _ in direct.sent] == [600]
    assert parked.deadline == 1.0 + MAX_AGE
    direct.queue.push(frame(1.05))
    assert direct.write(1.05)  # a later frame never moves the deadline later
    assert parked.deadline == 1.0 + MAX_AGE
    assert [end for end, _ in direct.sent] == [600, 700]
    assert direct.metrics.frames_direct.value() == 2
    direct.disarm()
    direct.queue.push(frame(1.1))
    assert not direct.write(1.1)  # the task woke: nothing more goes from here


def test_anything_but_the_plain_case_wakes_the_task() -> None:
    parked = trio.CancelScope()
    full = FakeStream()
    full.accept = False  # the transport's send buffer is at its mark
    cases = [
        (FakeStream(), 2),  # two frames queued: the task batches them
        (FakeStream(credit=500 + UNI_PREFIX_MAX + 99), 1),  # beyond the subscriber's credit
        (full, 1),
    ]
    for stream, queued in cases:
        direct = writer(stream, parked)
        for _ in range(queued):
            direct.queue.push(frame(1.0))
        assert not direct.write(1.0)
        assert len(direct.queue) == queued and not direct.sent and not stream.data
    assert parked.deadline == math.inf


def test_a_transport_error_is_kept_for_the_subscription_task() -> None:
    stream = FakeStream()
    stream.error = trio.ClosedResourceError("the subscriber stopped the stream")
    direct = writer(stream, trio.CancelScope())
    direct.queue.push(frame(1.0))
    assert not direct.write(1.0)  # the publisher's call returns
    assert direct.failed is stream.error and len(direct.queue) == 1
    stream.error = None
    assert not direct.write(1.0)  # nothing more from here until the task has it


async def test_frames_to_a_subscriber_that_keeps_up_go_from_the_publishers_task() -> None:
    """Each frame is sent once the previous one arrived, so the subscription's task is parked
    whenever one is routed: all but the stream's first (its task writes that) go directly."""
    meeting, mic = new_id(), new_id()
    n = 30
    async with open_harness() as h:
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
