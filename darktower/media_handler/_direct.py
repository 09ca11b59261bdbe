"""A parked subscription's frames written from the publisher's task (docs/architecture.md §4.3).

A subscription's task writes its queue to its uni stream and parks when the queue is empty;
each frame routed to it would wake it again, one task switch per frame and subscriber. While
it is parked, and only in the plain case, the publisher's task writes the frame itself, in
the same call that routes it: the task is still parked (not woken, nor cancelled, since),
its queue holds that frame alone, it fits the subscriber's credit, and the transport takes it
at once (``try_send``, all or nothing, no checkpoint).
Anything else (a full send buffer, no credit, a stream being replaced) wakes the task, which
does what it always did. What was written here is handed back to the task when it wakes,
which keeps each frame's age bound until the subscriber acknowledges it: the park's deadline
is moved to the first such frame's bound. An error the transport raises here is raised again
in the subscription's task, so a fault stays its subscriber's, never the publisher's.
"""

from __future__ import annotations

import functools

import trio

from darktower.transport import WebTransportSendStream

from ._credit import SendWindow
from ._metrics import MediaMetrics
from ._queue import QueuedFrame, SubscriptionQueue
from ._stats import StreamStats

# The bytes a uni stream starts with before its frames (its type and session id, two
# varints), which count against the subscriber's credit but not in ``written``.
UNI_PREFIX_MAX = 10

Batches = list[tuple[int, list[QueuedFrame[memoryview]]]]


class DirectWriter:
    """One subscription's writer for the publisher's task, armed by the subscription's task
    each time it parks (:meth:`arm`) and read back when it wakes (``sent``, ``written``,
    ``failed``). Called as ``write(item, now)`` right after ``item`` was queued: True if it
    went (the task stays parked), False if the task must be woken."""

    __slots__ = (
        "failed",
        "lot",
        "max_age",
        "metrics",
        "parked",
        "queue",
        "sent",
        "stats",
        "stream",
        "window",
        "written",
    )

    def __init__(
        self,
        queue: SubscriptionQueue[memoryview],
        lot: trio.lowlevel.ParkingLot,
        window: SendWindow,
        stats: StreamStats,
        metrics: MediaMetrics,
        max_age: float,
    ) -> None:
        self.queue = queue
        self.lot = lot  # where the task parks: it is there only while parked
        self.window = window
        self.stats = stats
        self.metrics = metrics
        self.max_age = max_age
        self.stream: WebTransportSendStream | None = None
        self.parked: trio.CancelScope | None = None
        self.written = 0  # bytes written to the stream so far, as the task counts them
        self.sent: Batches = []  # (stream offset where the batch ends, the batch), oldest first
        self.failed: BaseException | None = None

    def arm(self, stream: WebTransportSendStream, written: int, parked: trio.CancelScope) -> None:
        """The task parks in ``parked``, ``written`` bytes into ``stream``."""
        self.stream = stream
        self.written = written
        self.parked = parked

    def write(self, item: QueuedFrame[memoryview], now: float) -> bool:
        """Write ``item``, just queued at ``now``, if the case is plain (the module's doc)."""
        queue, stream, parked = self.queue, self.stream, self.parked
        if stream is None or parked is None or self.failed is not None or not self.lot:
            return False
        if len(queue) != 1 or queue.peek() is not item:
            return False
        window = self.window
        if item.size > window.room(stream.send_credit, self.written + UNI_PREFIX_MAX, now):
            return False
        try:
            if not stream.try_send(item.payload):
                return False
        except Exception as exc:  # the task raises it (or ends, as for a closed stream)
            self.failed = exc
            return False
        queue.pop()
        window.wrote()
        self.written += item.size
        batch = [item]
        self.sent.append((self.written, batch))
        due = item.received_at + self.max_age
        if due < parked.deadline:
            parked.deadline = due
        self.stats.on_sent(item.size, now)
        metrics = self.metrics
        if not stream.when_sent(functools.partial(metrics.sent, batch)):
            metrics.residence_unmeasured.inc(1)
        metrics.frames_forwarded.inc(1)
        metrics.frames_direct.inc(1)
        metrics.bytes_forwarded.inc(item.size)
        return True

    def disarm(self) -> None:
        """The task woke: nothing is written here until it parks again."""
        self.stream = None
        self.parked = None
