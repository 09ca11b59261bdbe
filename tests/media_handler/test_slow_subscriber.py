"""A slow subscriber costs the others nothing (docs/architecture.md §4.3): its subscription
writes no further than the subscriber's flow-control credit, so its frames wait, and are
dropped by the policy, in its own queue; the transport never holds what its connection cannot
send, the subscription keeps its one stream, and it wakes far less often than frames are routed
to it. The subscribers that keep up get every frame.

In-memory sessions on virtual time (autojump_clock), as in test_stale.py; the slow stream
models a QUIC stream: its peer's stack takes what fits in the window beyond what its
application read, the rest stays with the sender, unacknowledged."""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio
import trio.testing

from darktower.frames import FrameDecoder, FrameType
from darktower.media_handler import DropReason, MediaHandler, MediaMetrics, Settings
from darktower.media_handler._credit import CREDIT_POLL_MIN_S, SendWindow
from darktower.media_handler._limits import (
    CREDIT_POLL_MAX_S,
    CREDIT_STALL_MAX_S,
    CREDIT_STALL_S,
)
from darktower.metrics import Registry
from darktower.model import ParticipantId
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._harness import video
from .test_stale import CAM, MEETING, Reader, Session, _encode

K, D = FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA
FPS, KEY_EVERY, RUN_S = 100, 100, 20.0  # frames routed to it far outnumber its wake-ups
WINDOW = 8 * 1024  # the slow subscriber's stream receive window
READ_EVERY_S = 0.1
# The slow subscriber's application reads a tenth of what is published (frames of ~350 bytes).
READ_BYTES = int(FPS * 350 / 10 * READ_EVERY_S)


# -- the credit rule (sans-IO) ---------------------------------------------------------------


def test_the_room_is_the_credit_left_and_the_stall_bound_follows_the_readers_pace() -> None:
    w = SendWindow()
    w.open(1000, 0.0)
    assert w.room(1000, 400, 1.0) == 600
    assert w.room(1000, 1000, 1.0) == 0
    # Before its first raise, the subscriber may take half the longest bound.
    assert w.stall_after() == CREDIT_STALL_MAX_S / 2
    assert w.block(5.0) == 5.0 + CREDIT_POLL_MIN_S
    assert w.block(5.1) == 5.1 + 2 * CREDIT_POLL_MIN_S  # looks back later and later...
    for _ in range(10):
        last = w.block(5.2)
    assert last == 5.2 + CREDIT_POLL_MAX_S  # ...up to the bound
    assert w.room(1100, 1000, 6.0) == 100 and w.raises == 1  # it read, 6 s after the open
    assert w.stall_after() == CREDIT_STALL_MAX_S  # three times its pace, at most the bound
    w.open(1000, 7.0)  # a new stream keeps the pace seen
    assert w.room(1100, 1000, 7.5) == 100
    assert w.stall_after() == CREDIT_STALL_S  # a fast reader: the shortest bound
    assert w.block(9.0) == 9.0 + CREDIT_POLL_MIN_S
    assert not w.stalled(9.0 + CREDIT_STALL_S - 0.01) and w.stalled(9.0 + CREDIT_STALL_S)
    w.wrote()
    assert w.room(1100, 1100, 12.0) == 0
    assert w.block(12.0) == 12.0 + CREDIT_POLL_MIN_S
    assert not w.stalled(12.0 + CREDIT_STALL_S - 0.01)


def test_a_stream_without_credit_at_its_open_or_gone_is_not_gated() -> None:
    w = SendWindow()
    w.open(0, 0.0)  # no flow control seen: the transport's own backpressure applies
    assert w.room(0, 10**6, 0.0) > 10**9
    w.open(1000, 0.0)
    assert w.room(0, 1000, 0.0) > 10**9  # the credit fell: the stream is gone, a write says why


# -- over the MediaHandler ---------------------------------------------------------------------


class SlowStream:
    """A uni stream to a subscriber that reads slowly, as QUIC has it: a send returns at once;
    the peer's stack takes (acknowledges) what fits in ``window`` beyond what its application
    read, the rest stays with the sender, unacknowledged; credit grows only with reads; a reset
    drops both."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.decoder = FrameDecoder()
        self.reset_code: int | None = None
        self.read = 0
        self.taken = bytearray()  # acknowledged by the peer's stack, not read yet
        self.held = bytearray()  # beyond the credit: the sender's transport holds it
        self.writes = 0
        self.looks = 0  # reads of the credit: each is one wake-up of the subscription
        self.most_held = 0

    @property
    def unacknowledged(self) -> int:
        return len(self.held)

    @property
    def send_credit(self) -> int:
        self.looks += 1
        return 0 if self.reset_code is not None else self.read + WINDOW

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        self.writes += 1
        self.held += data
        self._take()
        self.most_held = max(self.most_held, len(self.held))

    def _take(self) -> None:
        room = WINDOW - len(self.taken)
        self.taken += self.held[:room]
        del self.held[:room]

    def read_some(self, n: int) -> None:
        if self.reset_code is None and self.taken:
            data = bytes(self.taken[:n])
            del self.taken[:n]
            self.read += len(data)
            self.reader.take(self.decoder, data)
            self._take()

    def reset(self, code: int = 0) -> None:
        self.reset_code = code
        self.taken.clear()
        self.held.clear()

    def when_sent(self, callback: Any) -> bool:
        return False  # no socket: the residence is not measured

    def try_send(self, data: Any) -> bool:
        return False  # every write goes through send_all, as this fake behaves


class SlowSession(Session):
    def __init__(self) -> None:
        super().__init__(Reader())
        self.slow: list[SlowStream] = []

    async def open_unidirectional_stream(self) -> Any:
        await trio.lowlevel.checkpoint()
        stream = SlowStream(self.reader)
        self.slow.append(stream)
        return stream

    async def read_slowly(self) -> None:
        while True:
            await trio.sleep(READ_EVERY_S)
            if self.slow:
                self.slow[-1].read_some(READ_BYTES)


@attrs.define(eq=False)
class Run:
    handler: MediaHandler
    fast: list[Session]
    slow: SlowSession
    sent: list[int]  # sequence numbers published
    largest: int  # the largest frame on the wire


async def _run() -> Run:
    """A publisher's video routed to three subscribers that keep up and one slow one."""
    fast_ids = ["f1", "f2", "f3"]
    async with trio.open_nursery() as nursery:
        tree = TaskTree()
        await nursery.start(tree.run)
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        for pid in ["p", *fast_ids, "s"]:
            streams = [video(CAM)] if pid == "p" else []
            await handler.register_participant(
                mc_pb.RegisterParticipant(participant_id=pid, meeting_id=MEETING, streams=streams)
            )
        room = handler.rooms[MEETING]  # type: ignore[index]
        pub, fast, slow = Session(), [Session() for _ in fast_ids], SlowSession()
        sessions = [("p", pub), *zip(fast_ids, fast, strict=True), ("s", slow)]
        for pid, session in sessions:
            member = room.members[ParticipantId(pid)]
            nursery.start_soon(handler.handle_session, session, member)
        await trio.testing.wait_all_tasks_blocked()
        await handler.route_media(
            mc_pb.RouteMediaCommand(
                meeting_id=MEETING,
                source_stream_id=CAM,
                destination_participant_ids=[*fast_ids, "s"],
            )
        )
        cam = pub.publish()
        nursery.start_soon(slow.read_slowly)
        sent: list[int] = []
        largest = 0
        for seq in range(int(RUN_S * FPS)):
            data = _encode(CAM, K if seq % KEY_EVERY == 0 else D, seq)
            largest = max(largest, len(data))
            cam.feed(data)
            sent.append(seq)
            await trio.sleep(1 / FPS)
        await trio.sleep(1.0)  # what is under way arrives
        nursery.cancel_scope.cancel()
    return Run(handler, fast, slow, sent, largest)


async def test_a_slow_subscriber_drops_at_its_queue_and_the_others_get_every_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = await _run()
    # The subscribers that keep up: every frame, in order.
    for session in run.fast:
        assert [seq for _, _, _, seq in session.reader.got] == run.sent
    slow = run.slow
    # The slow one keeps its one stream: nothing to abandon, no stream churn.
    assert len(slow.slow) == 1
    stream = slow.slow[0]
    # Its transport never held more than one frame beyond the credit: the rest waited, and
    # was dropped, in its queue (counted).
    assert stream.most_held <= run.largest, (stream.most_held, run.largest)
    metrics = run.handler.metrics
    assert metrics.frames_dropped.value(DropReason.STALE.value) > 0
    # While it waits for credit its video asks the publisher for no key frame (one would cost
    # every subscriber): only when it writes again (it asked about once a second before).
    assert metrics.key_frame_requests.value() <= RUN_S / 4, metrics.key_frame_requests.value()
    # It gets what it reads, in order, from a video that stays decodable.
    got = [(ft, seq) for _, _, ft, seq in slow.reader.got]
    assert len(got) > RUN_S * FPS / 20
    assert [seq for _, seq in got] == sorted(seq for _, seq in got)
    assert got[0][0] == K
    # Bounded work for it: at most one write per read of its application (each read raises
    # the credit once) plus the window's first fill; its wake-ups (one look at the credit
    # each) follow the clock, not the frames routed to it: once blocked, a look every
    # CREDIT_POLL_MAX_S, sooner only after a write (three more, the wait doubling).
    reads = math.ceil((RUN_S + 1) / READ_EVERY_S)
    assert stream.writes <= reads + WINDOW // 350, (stream.writes, reads)
    looks = (RUN_S + 1) / CREDIT_POLL_MAX_S + 3 * stream.writes
    assert stream.looks <= looks, (stream.looks, looks)
    assert stream.looks < len(run.sent) / 2, (stream.looks, len(run.sent))
