"""A subscription's writer: the task that writes its queue, unchanged, to a uni stream of its own
(docs/architecture.md §4.3: a subscription is a stream task of its subscriber's participant scope).

Frames older than their age bound when they would be sent are dropped (``stale``), and so is a
stream whose oldest frame the subscriber has not acknowledged within the bound, whether the send
blocks or the transport holds the bytes back (flow or congestion control): the uni stream is
reset (what the transport held of it goes too) and a new one carries on, video from a key frame.
Nothing is written beyond the subscriber's flow-control credit (_credit.py): a slow subscriber's
frames wait, and are dropped, in its queue, and a stream whose credit stays still for long while
frames wait (CREDIT_STALL_S) is abandoned the same way. Past MAX_ABANDONED_SENDS abandoned sends
in a row, without uni-stream credit, or at the session's stream limit, the next stream waits; the
count restarts only on evidence that the subscriber reads (_limits.py).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from darktower.errors import CapacityExceeded
from darktower.transport import WebTransportSendStream, WebTransportSession

from ._credit import SendWindow
from ._direct import UNI_PREFIX_MAX, DirectWriter
from ._limits import (
    MAX_ABANDONED_SENDS,
    NOT_LIVE_MAX_AGE_S,
    READ_EVIDENCE_S,
    SEND_BATCH_BYTES,
    STALLED_RETRY_MAX_S,
)
from ._queue import Dropped, DropReason, MediaKind, QueuedFrame, SubscriptionQueue
from ._room import MediaSubscription

if TYPE_CHECKING:
    from ._router import MediaRouter

# Batches written to the stream and not yet acknowledged by the subscriber, oldest first:
# (stream offset where the batch ends, the batch).
Unacked = deque[tuple[int, list[QueuedFrame[memoryview]]]]


class SubscriptionWriter:
    """One subscription's stream and what it has in flight; :meth:`run` is the subscription's
    task (started by ``MediaRouter.subscribe``), the only one that touches this state, apart
    from the publisher's task writing through ``DirectWriter`` while this one is parked."""

    def __init__(
        self, router: MediaRouter, sub: MediaSubscription, session: WebTransportSession
    ) -> None:
        self.router = router
        self.sub = sub
        self.session = session
        settings = router.settings
        if sub.publication.kind is MediaKind.AUDIO:
            max_age = settings.max_audio_age_s
        else:
            max_age = settings.max_video_age_s
        if sub.subscriber.send_delay_s:  # not live (a recording): it keeps late frames
            max_age = max(max_age, NOT_LIVE_MAX_AGE_S)
        self.max_age = max_age
        self.stream: WebTransportSendStream | None = None
        self.abandoned = 0  # streams abandoned in a row (evidence of reading restarts it)
        self.retry_at = -math.inf  # no new stream before this
        self.unacked: Unacked = deque()
        self.written = 0  # bytes written to the stream so far
        self.credit = -1  # the peer's credit on the stream after its first write (-1: none yet)
        self.first_at = 0.0  # when the stream's first frame was received from the publisher
        self.due = math.inf  # when the oldest unacknowledged frame passes the age bound
        self.window = SendWindow()  # what the subscriber's credit lets go now
        self.now = 0.0  # one clock read per batch (and per wake-up)
        # Writes for the publisher's task while the subscription is parked (_direct.py).
        self.direct = DirectWriter(
            sub.queue, sub.wake, self.window, sub.publication.stats, router.metrics, max_age
        )
        self._direct_write = self.direct.write

    async def run(self) -> None:
        sub = self.sub
        try:
            self.stream = await _open(self.session)
            self.now = trio.current_time()
            if self.stream is not None:
                self.window.open(self.stream.send_credit, self.now)
            # A parked subscription wakes by ``parked``'s deadline to check what is still
            # unacknowledged: one scope kept across parks (a scope per park took a third of the
            # routing's CPU), its deadline only ever moved earlier (a wake before ``due`` parks
            # again), set off before any other wait, and a fresh scope after one that fired.
            while True:
                with trio.CancelScope() as parked:
                    while await self._step(parked):
                        pass
                self.now = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the subscriber stopped the stream or its session is gone
        finally:
            subscriptions = sub.publication.subscriptions
            if subscriptions.get(sub.subscriber.id) is sub:
                del subscriptions[sub.subscriber.id]
            if self.stream is not None:
                _reset(self.stream)

    async def _step(self, parked: trio.CancelScope) -> bool:
        """One turn: a stream opened, what was acknowledged settled, then a park, a wait for
        credit or one batch written. False when ``parked``'s deadline has fired (a fresh scope
        follows)."""
        sub, queue, max_age, now = self.sub, self.sub.queue, self.max_age, self.now
        stream = self.stream
        if stream is None:
            # Held off (see MAX_ABANDONED_SENDS): frames age out of the bounded queue
            # meanwhile and the stream opens at retry_at, if it can.
            if now < self.retry_at:
                if _disarm(parked):
                    return False
                await trio.sleep_until(self.retry_at)
                self.now = now = trio.current_time()
            if self.session.unidirectional_stream_credit > 0:
                if _disarm(parked):
                    return False
                self.stream = stream = await _open(self.session)
                self.now = now = trio.current_time()
            if stream is None:
                self.retry_at = now + max(max_age, _hold_off(self.abandoned, max_age))
                return True
            self.written = 0
            self.window.open(stream.send_credit, now)
        if self.unacked and self._settle(stream, now):
            return True
        stale = queue.drop_stale(now - max_age)
        if stale:
            self._lost(stale, now)
        window = self.window
        raises = window.raises
        if queue.empty and not sub.blocked:
            await self._park(parked, stream)
            return True
        room = window.room(stream.send_credit, self.written + UNI_PREFIX_MAX, now)
        if self.abandoned and window.raises > raises:
            self.abandoned = 0  # the subscriber reads what is sent
        if queue.empty and room >= window.straddle:  # it waited for credit: there is some
            sub.blocked = False  # again, and the key frame its video may wait for is asked
            self._lost((), now)
            return True
        # (An empty queue without credit stays blocked below: routed frames neither wake it nor
        # ask for a key frame, and a stall still abandons the stream.) A fired deadline is
        # taken first.
        if parked.cancel_called:
            return False
        batch, size = _take(queue, room, window.straddle)
        if not batch:
            # Frames wait for credit in the queue (dropped there by the policy): the
            # subscription sleeps, routed frames do not wake it (not parked).
            if window.stalled(now):  # the subscriber does not read: start afresh
                self._abandon(stream, (), now)
                return True
            sub.blocked = True
            parked.deadline = math.inf  # (not fired: checked above)
            await trio.sleep_until(min(self.due, window.block(now)))
            self.now = trio.current_time()
            return True
        if sub.blocked:  # it writes again: the key frame its video may wait for
            sub.blocked = False
            self._lost((), now)
        data = batch[0].payload if len(batch) == 1 else b"".join([i.payload for i in batch])
        if not stream.try_send(data):  # (no checkpoint: the loop parks once done)
            parked.deadline = math.inf  # (not fired: checked above)
            with trio.move_on_at(min(now + max_age, self.due)) as sending:
                await stream.send_all(data)
            self.now = now = trio.current_time()
            if sending.cancelled_caught:  # the subscriber does not read: start afresh
                self._abandon(stream, batch, now)
                return True
        self._sent(stream, batch, size, now)
        return True

    def _settle(self, stream: WebTransportSendStream, now: float) -> bool:
        """Drop what the subscriber acknowledged (frames handed to the transport keep their age
        bound until then); True if the oldest left is past it, and the stream was abandoned."""
        unacked = self.unacked
        acked = self.written - stream.unacknowledged
        while unacked and unacked[0][0] <= acked:
            _, done = unacked.popleft()
            if self.abandoned and (
                stream.send_credit > self.credit
                or done[-1].received_at - self.first_at >= READ_EVIDENCE_S
            ):
                self.abandoned = 0  # the subscriber reads what is sent
        self.due = unacked[0][1][0].received_at + self.max_age if unacked else math.inf
        if self.due <= now:  # the subscriber does not take them: start afresh
            self._abandon(stream, (), now)
            return True
        return False

    async def _park(self, parked: trio.CancelScope, stream: WebTransportSendStream) -> None:
        """Wait for the next frame routed (or ``parked``'s deadline); the publisher's task
        writes it meanwhile when it can (_direct.py), and what it wrote is taken back here."""
        sub, direct = self.sub, self.direct
        _raise_failed(direct)
        if self.due < parked.deadline:
            parked.deadline = self.due
        if not self.abandoned and self.written:  # (a stream's first write is this task's)
            direct.arm(stream, self.written, parked)
            sub.direct = self._direct_write
        try:
            await sub.wake.park()
        finally:
            sub.direct = None
            direct.disarm()
            if direct.sent:  # written by the publisher's task meanwhile
                if not self.unacked:
                    self.due = direct.sent[0][1][0].received_at + self.max_age
                self.unacked.extend(direct.sent)
                direct.sent.clear()
                self.written = direct.written
        _raise_failed(direct)
        self.now = trio.current_time()

    def _sent(
        self,
        stream: WebTransportSendStream,
        batch: list[QueuedFrame[memoryview]],
        size: int,
        now: float,
    ) -> None:
        self.window.wrote()
        if not self.written:
            self.credit = stream.send_credit
            self.first_at = batch[0].received_at
        self.written += size
        self.unacked.append((self.written, batch))
        if self.due == math.inf:
            self.due = batch[0].received_at + self.max_age
        stats = self.sub.publication.stats
        for item in batch:
            stats.on_sent(item.size, now)
        metrics = self.router.metrics
        if not stream.when_sent(functools.partial(metrics.sent, batch)):
            metrics.residence_unmeasured.inc(len(batch))
        metrics.frames_forwarded.inc(len(batch))
        metrics.bytes_forwarded.inc(size)

    def _abandon(
        self,
        stream: WebTransportSendStream,
        unsent: Sequence[QueuedFrame[memoryview]],
        now: float,
    ) -> None:
        """Reset a stream the subscriber does not take within the age bound (what the
        transport held of it goes too) and count as stale what it held (``unacked``, emptied
        here, and ``unsent``, a batch whose write gave up); the subscription goes on over a
        new stream, video from the next key frame, held off after too many in a row."""
        sub = self.sub
        lost = [Dropped(i, DropReason.STALE) for _, batch in self.unacked for i in batch]
        lost.extend(Dropped(i, DropReason.STALE) for i in unsent)
        self.unacked.clear()
        sub.blocked = False
        _reset(stream)
        lost.extend(sub.queue.lose_sent())
        self._lost(lost, now)
        self.stream, self.due = None, math.inf
        self.abandoned += 1
        self.retry_at = now + _hold_off(self.abandoned, self.max_age)

    def _lost(self, drops: Sequence[Dropped[memoryview]], now: float) -> None:
        """Count frames the subscription lost and ask for the key frame its video now waits
        for (not while it waits for credit: a key frame it could not take would cost the
        publisher and every other subscriber, and it is asked for once it writes again)."""
        sub, router = self.sub, self.router
        if drops:
            router.count_drops(sub.publication, drops)
        if not sub.blocked:
            router.request_key_frame(sub, now)


def _take(
    queue: SubscriptionQueue[memoryview], room: int, straddle: int
) -> tuple[list[QueuedFrame[memoryview]], int]:
    """Frames leave in batches: one write per wake-up costs far less than one per frame.
    Popped frames are committed (beyond the drop policy's reach), so a batch is bounded by
    SEND_BATCH_BYTES and by the credit ``room``: whole frames that fit, or a frame larger than
    ``straddle`` (half the window) alone, once that much is free."""
    batch: list[QueuedFrame[memoryview]] = []
    size = 0
    may_straddle = room >= straddle
    while size < SEND_BATCH_BYTES and (item := queue.peek()) is not None:
        if size + item.size > room and (batch or not may_straddle or item.size <= straddle):
            break
        batch.append(item)
        size += item.size
        queue.pop()
    return batch, size


def _raise_failed(direct: DirectWriter) -> None:
    """What the transport raised to a write from the publisher's task is this task's."""
    if direct.failed is not None:
        failed, direct.failed = direct.failed, None
        raise failed


def _disarm(parked: trio.CancelScope) -> bool:
    """Before a wait other than the park: True if ``parked``'s deadline has fired (the loop
    starts afresh, and checks what is unacknowledged), else its deadline is set off."""
    if parked.cancel_called:
        return True
    parked.deadline = math.inf
    return False


def _hold_off(abandoned: int, max_age: float) -> float:
    """How long a subscription waits before its next stream after ``abandoned`` abandoned
    sends in a row: nothing up to MAX_ABANDONED_SENDS, then the age bound doubling up to
    STALLED_RETRY_MAX_S (_limits.py)."""
    past = abandoned - MAX_ABANDONED_SENDS
    if past < 0:
        return 0.0
    return min(max_age * 2.0 ** min(past, 32), max(STALLED_RETRY_MAX_S, max_age))


async def _open(session: WebTransportSession) -> WebTransportSendStream | None:
    """A new uni stream, or None when the session is at its stream limit (the subscription
    waits and tries again); a closed session ends the subscription (ClosedResourceError,
    SessionClosed), never its participant."""
    try:
        return await session.open_unidirectional_stream()
    except CapacityExceeded:
        return None


def _reset(stream: WebTransportSendStream) -> None:
    try:
        stream.reset(0)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
