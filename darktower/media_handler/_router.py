"""Subscriptions: one task per (subscriber, routed stream) that writes its queue to a uni
stream of its own, and the key frame requests and drop counts of the routing hot path.

Who owns which task: docs/architecture.md §4.3 (a subscription is a stream task of its
subscriber's participant scope).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Sequence

import trio

from darktower.errors import CapacityExceeded
from darktower.model import StreamId
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
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
from ._metrics import MediaMetrics
from ._queue import Dropped, DropReason, MediaKind, QueuedFrame, SubscriptionQueue
from ._room import (
    MediaMember,
    MediaPublication,
    MediaRoom,
    MediaSubscription,
    RouteOptions,
    request_key_frame,
)
from ._settings import Settings
from ._simulcast import LayerSwitcher
from ._telemetry import TelemetryHub


class MediaRouter:
    """Starts and retargets subscriptions; asks the MC for key frames (via telemetry) and
    counts what the queues drop. Every publication's ``on_drops`` is :meth:`count_drops`."""

    def __init__(self, settings: Settings, metrics: MediaMetrics, telemetry: TelemetryHub) -> None:
        self.settings = settings
        self.metrics = metrics
        self.telemetry = telemetry
        # Asks the media processor whose job publishes ``stream_id`` (a transcode's output)
        # for a key frame; False for a participant's stream (docs/architecture.md §10).
        self.derived_key_frame: Callable[[MediaRoom, StreamId], bool] = _not_derived
        # Tests only: called with each published frame's wire bytes as it is routed (a view
        # valid during the call: copy it to keep it). None, the default, costs one check.
        self.tap: Callable[[memoryview], None] | None = None

    async def subscribe(
        self, publication: MediaPublication, member: MediaMember, options: RouteOptions
    ) -> None:
        """Start (or retarget) the subscription of ``member`` (connected) to ``publication``;
        returns once its task runs."""
        # What its connection can take (the adaptation refines the layer at its next tick).
        link = member.link
        available = int(member.budget_out.rate * 8 if link is None else link.estimate)
        sub = publication.subscriptions.get(member.id)
        if sub is not None:
            sub.options = options
            target = publication.choose(options, available)
            if sub.switcher is not None and target is not None:
                sub.switcher.set_target(target)
                self._request(sub)
            return
        target = publication.choose(options, available)
        queue: SubscriptionQueue[memoryview] = SubscriptionQueue(
            publication.kind,
            max_frames=self.settings.queue_max_frames,
            max_bytes=self.settings.queue_max_bytes,
        )
        switcher = LayerSwitcher(target) if target is not None else None
        sub = MediaSubscription(member, publication, options, queue, switcher)
        scope, session = member.scope, member.session
        assert scope is not None and session is not None
        name = f"sub:{publication.stream_id}"
        old = scope.stream(name)
        if old is not None:  # unrouted a moment ago and still exiting: a route again waits
            old.cancel()
            await old.wait_closed()
        publication.subscriptions[member.id] = sub
        try:
            sub.task = await scope.start_stream(name, self._run, sub, session)
        except BaseException:
            if publication.subscriptions.get(member.id) is sub:
                del publication.subscriptions[member.id]
            raise
        self._request(sub)

    def _request(self, sub: MediaSubscription) -> None:
        room = sub.subscriber.room
        request_key_frame(sub, trio.current_time(), functools.partial(self.key_frame, room))

    def key_frame(self, room: MediaRoom, stream_id: StreamId, now: float) -> bool:
        """Ask the MC (telemetry) for a key frame of ``stream_id``, at most once per interval;
        False if the interval held it back."""
        if not room.key_frames.should_request(stream_id, now):
            return False
        if self.derived_key_frame(room, stream_id):
            return True
        self.metrics.key_frame_requests.inc()
        self.telemetry.publish(
            mc_pb.TelemetryEvent(
                meeting_id=room.id,
                key_frame_request=common_pb2.KeyFrameRequest(stream_id=stream_id),
            )
        )
        return True

    def count_drops(
        self, publication: MediaPublication, drops: Sequence[Dropped[memoryview]]
    ) -> None:
        publication.stats.on_drops(drops)
        for dropped in drops:
            self.metrics.frames_dropped.inc(1, dropped.reason.value)

    async def _run(self, sub: MediaSubscription, session: WebTransportSession) -> None:
        """Write the subscription's queued frames, unchanged, to a uni stream of its own.

        Frames older than their age bound when they would be sent are dropped (``stale``),
        and so is a stream whose oldest frame the subscriber has not acknowledged within the
        bound, whether the send blocks or the transport holds the bytes back (flow or
        congestion control): the uni stream is reset (what the transport held of it goes too)
        and a new one carries on, video from a key frame. Nothing is written beyond the
        subscriber's flow-control credit (_credit.py): a slow subscriber's frames wait, and
        are dropped, in its queue, and a stream whose credit stays still for long while
        frames wait (CREDIT_STALL_S) is abandoned the same way. Past MAX_ABANDONED_SENDS abandoned
        sends in a row, without uni-stream credit, or at the session's stream limit, the next
        stream waits; the count restarts only on evidence that the subscriber reads
        (_limits.py)."""
        stream: WebTransportSendStream | None = None
        publication = sub.publication
        stats = publication.stats
        metrics = self.metrics
        queue = sub.queue
        settings = self.settings
        if publication.kind is MediaKind.AUDIO:
            max_age = settings.max_audio_age_s
        else:
            max_age = settings.max_video_age_s
        if sub.subscriber.send_delay_s:  # not live (a recording): it keeps late frames
            max_age = max(max_age, NOT_LIVE_MAX_AGE_S)
        abandoned = 0  # streams abandoned in a row (evidence of reading restarts it)
        retry_at = -math.inf  # no new stream before this
        # Batches written to the stream and not yet acknowledged by the subscriber, oldest
        # first: (stream offset where the batch ends, the batch); bytes written so far.
        unacked: deque[tuple[int, list[QueuedFrame[memoryview]]]] = deque()
        written = 0
        credit = -1  # the peer's credit on the stream after its first write (-1: none yet)
        first_at = 0.0  # when the stream's first frame was received from the publisher
        due = math.inf  # when the oldest unacknowledged frame passes the age bound
        window = SendWindow()  # what the subscriber's credit lets go now
        # Writes for the publisher's task while the subscription is parked (_direct.py).
        direct = DirectWriter(queue, sub.wake, window, stats, metrics, max_age)
        direct_write = direct.write
        try:
            stream = await _open(session)
            now = trio.current_time()  # one clock read per batch (and per wake-up)
            if stream is not None:
                window.open(stream.send_credit, now)
            # A parked subscription wakes by ``parked``'s deadline to check what is still
            # unacknowledged: one scope kept across parks (a scope per park took a third of the
            # routing's CPU), its deadline only ever moved earlier (a wake before ``due`` parks
            # again), set off before any other wait, and a fresh scope after one that fired.
            while True:
                with trio.CancelScope() as parked:
                    while True:
                        if stream is None:
                            # Held off (see MAX_ABANDONED_SENDS): frames age out of the bounded
                            # queue meanwhile and the stream opens at retry_at, if it can.
                            if now < retry_at:
                                if _disarm(parked):
                                    break
                                await trio.sleep_until(retry_at)
                                now = trio.current_time()
                            if session.unidirectional_stream_credit > 0:
                                if _disarm(parked):
                                    break
                                stream = await _open(session)
                                now = trio.current_time()
                            if stream is None:
                                retry_at = now + max(max_age, _hold_off(abandoned, max_age))
                                continue
                            written = 0
                            window.open(stream.send_credit, now)
                        if unacked:
                            # Frames handed to the transport keep their age bound until
                            # acknowledged.
                            acked = written - stream.unacknowledged
                            while unacked and unacked[0][0] <= acked:
                                _, done = unacked.popleft()
                                if abandoned and (
                                    stream.send_credit > credit
                                    or done[-1].received_at - first_at >= READ_EVIDENCE_S
                                ):
                                    abandoned = 0  # the subscriber reads what is sent
                            due = unacked[0][1][0].received_at + max_age if unacked else math.inf
                            if due <= now:  # the subscriber does not take them: start afresh
                                self._abandon(sub, stream, unacked, (), now)
                                stream, due, abandoned = None, math.inf, abandoned + 1
                                retry_at = now + _hold_off(abandoned, max_age)
                                continue
                        stale = queue.drop_stale(now - max_age)
                        if stale:
                            self._lost(sub, stale, now)
                        raises = window.raises
                        if queue.empty and not sub.blocked:
                            _raise_failed(direct)
                            if due < parked.deadline:
                                parked.deadline = due
                            if not abandoned and written:  # (a stream's first write is here)
                                direct.arm(stream, written, parked)
                                sub.direct = direct_write
                            try:
                                await sub.wake.park()  # parked: the next frame routed wakes it
                            finally:
                                sub.direct = None
                                direct.disarm()
                                if direct.sent:  # written by the publisher's task meanwhile
                                    if not unacked:
                                        due = direct.sent[0][1][0].received_at + max_age
                                    unacked.extend(direct.sent)
                                    direct.sent.clear()
                                    written = direct.written
                            _raise_failed(direct)
                            now = trio.current_time()
                            continue
                        room = window.room(stream.send_credit, written + UNI_PREFIX_MAX, now)
                        if abandoned and window.raises > raises:
                            abandoned = 0  # the subscriber reads what is sent
                        if queue.empty and room >= window.straddle:  # it waited for credit:
                            sub.blocked = False  # there is some again, and the key frame its
                            self._lost(sub, (), now)  # video may wait for is asked
                            continue
                        # (An empty queue without credit stays blocked below: routed frames
                        # neither wake it nor ask for a key frame, and a stall still abandons
                        # the stream.) Frames leave in batches: one write per wake-up costs far
                        # less than one per frame. Popped frames are committed (beyond the drop
                        # policy's reach), so the batch is bounded by SEND_BATCH_BYTES, and by
                        # the credit: whole frames that fit (a frame larger than half the window
                        # alone, once that much is free). A fired deadline is taken first.
                        if parked.cancel_called:
                            break
                        batch: list[QueuedFrame[memoryview]] = []
                        size = 0
                        straddle = room >= window.straddle  # a frame larger than that may go
                        while size < SEND_BATCH_BYTES and (item := queue.peek()) is not None:
                            if size + item.size > room and (
                                batch or not straddle or item.size <= window.straddle
                            ):
                                break
                            batch.append(item)
                            size += item.size
                            queue.pop()
                        if not batch:
                            # Frames wait for credit in the queue (dropped there by the policy):
                            # the subscription sleeps, routed frames do not wake it (not parked).
                            if window.stalled(now):  # the subscriber does not read: start afresh
                                self._abandon(sub, stream, unacked, (), now)
                                stream, due, abandoned = None, math.inf, abandoned + 1
                                retry_at = now + _hold_off(abandoned, max_age)
                                continue
                            sub.blocked = True
                            parked.deadline = math.inf  # (not fired: checked above)
                            await trio.sleep_until(min(due, window.block(now)))
                            now = trio.current_time()
                            continue
                        if sub.blocked:  # it writes again: the key frame its video may wait for
                            sub.blocked = False
                            self._lost(sub, (), now)
                        data = (
                            batch[0].payload
                            if len(batch) == 1
                            else b"".join([i.payload for i in batch])
                        )
                        if not stream.try_send(data):  # (no checkpoint: the loop parks once done)
                            parked.deadline = math.inf  # (not fired: checked above)
                            with trio.move_on_at(min(now + max_age, due)) as sending:
                                await stream.send_all(data)
                            now = trio.current_time()
                            timed_out = sending.cancelled_caught
                        else:
                            timed_out = False
                        if timed_out:  # the subscriber does not read: start afresh
                            self._abandon(sub, stream, unacked, batch, now)
                            stream, due, abandoned = None, math.inf, abandoned + 1
                            retry_at = now + _hold_off(abandoned, max_age)
                            continue
                        window.wrote()
                        if not written:
                            credit = stream.send_credit
                            first_at = batch[0].received_at
                        written += size
                        unacked.append((written, batch))
                        if due == math.inf:
                            due = batch[0].received_at + max_age
                        for item in batch:
                            stats.on_sent(item.size, now)
                        residence = functools.partial(metrics.sent, batch)
                        if not stream.when_sent(residence):
                            metrics.residence_unmeasured.inc(len(batch))
                        metrics.frames_forwarded.inc(len(batch))
                        metrics.bytes_forwarded.inc(size)
                now = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the subscriber stopped the stream or its session is gone
        finally:
            if publication.subscriptions.get(sub.subscriber.id) is sub:
                del publication.subscriptions[sub.subscriber.id]
            if stream is not None:
                _reset(stream)

    def _abandon(
        self,
        sub: MediaSubscription,
        stream: WebTransportSendStream,
        unacked: deque[tuple[int, list[QueuedFrame[memoryview]]]],
        unsent: Sequence[QueuedFrame[memoryview]],
        now: float,
    ) -> None:
        """Reset a stream the subscriber does not take within the age bound (what the
        transport held of it goes too) and count as stale what it held (``unacked``, emptied
        here, and ``unsent``, a batch whose write gave up); the subscription goes on over a
        new stream, video from the next key frame."""
        lost = [Dropped(i, DropReason.STALE) for _, batch in unacked for i in batch]
        lost.extend(Dropped(i, DropReason.STALE) for i in unsent)
        unacked.clear()
        sub.blocked = False
        _reset(stream)
        lost.extend(sub.queue.lose_sent())
        self._lost(sub, lost, now)

    def _lost(
        self, sub: MediaSubscription, drops: Sequence[Dropped[memoryview]], now: float
    ) -> None:
        """Count frames a subscription lost and ask for the key frame its video now waits for
        (not while it waits for credit: a key frame it could not take would cost the publisher
        and every other subscriber, and it is asked for once the subscription writes again)."""
        if drops:
            self.count_drops(sub.publication, drops)
        if not sub.blocked:
            request_key_frame(sub, now, functools.partial(self.key_frame, sub.subscriber.room))


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


def _not_derived(room: MediaRoom, stream_id: StreamId) -> bool:
    return False
