"""Subscriptions: each (subscriber, routed stream) gets a task that writes its queue to a uni
stream of its own (``SubscriptionWriter``, _writer.py); here they are started and retargeted,
and the routing hot path's key frame requests and drop counts are made.

Who owns which task: docs/architecture.md §4.3 (a subscription is a stream task of its
subscriber's participant scope).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import trio

from darktower.model import StreamId
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._metrics import MediaMetrics
from ._queue import Dropped, SubscriptionQueue
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
from ._writer import SubscriptionWriter


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
                self.request_key_frame(sub)
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
            sub.task = await scope.start_stream(name, SubscriptionWriter(self, sub, session).run)
        except BaseException:
            if publication.subscriptions.get(member.id) is sub:
                del publication.subscriptions[member.id]
            raise
        self.request_key_frame(sub)

    def request_key_frame(self, sub: MediaSubscription, now: float | None = None) -> None:
        """The key frame ``sub`` waits for, if any, asked of its publisher (_room.py)."""
        when = trio.current_time() if now is None else now
        request_key_frame(sub, when, functools.partial(self.key_frame, sub.subscriber.room))

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


def _not_derived(room: MediaRoom, stream_id: StreamId) -> bool:
    return False
