"""What happened in this MC's meetings, for the GC's webhooks (docs/protocol.md §18.5).

The meeting code calls :meth:`EventOutbox.emit` (never blocks, never fails); the registration
runs :meth:`EventOutbox.run`, which sends the events to the GC in batches
(``ControllerRegistry.ReportEvents``), oldest first, at least once: a batch leaves the outbox
only once the GC has answered it, and is sent again (with backoff) until then. The outbox is
bounded: when it is full the oldest event is dropped and counted (:attr:`dropped`), so a GC
that is away for long costs the MC at most ``capacity`` events of memory.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.protocol.pb.v1 import registry_pb2 as pb

logger = logging.getLogger("darktower.meeting_controller.events")

# Events held while the GC does not take them; the oldest is dropped beyond.
OUTBOX_CAPACITY = 10_000
# Events per ReportEvents call (the GC refuses more).
MAX_BATCH = 500
# After a failed call: wait this long, doubled after each failure up to the maximum.
RETRY_S = 0.5
RETRY_MAX_S = 5.0
# At a drain: how long the MC waits for the GC to take the outbox's last events (the sessions'
# SERVER_SHUTDOWN leaves) before it stops.
DRAIN_FLUSH_S = 3.0


def new_event(meeting_id: str, **kind: object) -> pb.MeetingEvent:
    """A ``MeetingEvent`` of ``meeting_id`` with a fresh id, stamped now; ``kind`` is its one
    oneof field, e.g. ``participant_joined=pb.ParticipantEvent(...)``."""
    return pb.MeetingEvent(
        event_id=str(uuid.uuid4()),
        meeting_id=meeting_id,
        occurred_at=int(time.time() * 1_000_000),
        **kind,  # type: ignore[arg-type]
    )


class EventOutbox:
    """A bounded queue of events for the GC. Owns no task: :meth:`run` is run by its owner
    (the registration, while it has a channel to the GC)."""

    def __init__(self, capacity: int = OUTBOX_CAPACITY) -> None:
        self._events: collections.deque[pb.MeetingEvent] = collections.deque()
        self._capacity = capacity
        self._waiting = trio.Event()
        self._emptied = trio.Event()  # set (and replaced) whenever a send empties the outbox
        self.dropped = 0  # events lost because the outbox was full
        self.sent = 0  # events the GC has answered for

    def __len__(self) -> int:
        return len(self._events)

    def emit(self, event: pb.MeetingEvent) -> None:
        """Queue ``event``; drops the oldest one when full."""
        if len(self._events) >= self._capacity:
            self._events.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "event outbox full: oldest event dropped", extra=fields(dropped=self.dropped)
                )
        self._events.append(event)
        self._waiting.set()

    async def run(self, send: Callable[[list[pb.MeetingEvent]], Awaitable[None]]) -> None:
        """Send batches with ``send`` until cancelled; a batch is removed once ``send``
        returns. ``send`` raising a ``DarkTowerError`` (the GC refused, or is away) is retried
        after a backoff; events emitted meanwhile wait behind it."""
        delay = RETRY_S
        while True:
            if not self._events:
                self._waiting = trio.Event()
                await self._waiting.wait()
            batch = [self._events[i] for i in range(min(MAX_BATCH, len(self._events)))]
            try:
                await send(batch)
            except DarkTowerError as exc:
                logger.info(
                    "event report failed; will retry",
                    extra=fields(events=len(batch), error=str(exc), retry_s=delay),
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_S
            # What was sent is still at the front, unless emit dropped some of it meanwhile.
            sent = {e.event_id for e in batch}
            while self._events and self._events[0].event_id in sent:
                self._events.popleft()
            self.sent += len(batch)
            if not self._events:
                self._emptied.set()
                self._emptied = trio.Event()

    async def wait_empty(self) -> None:
        """Return once every event emitted so far has been sent (at once when there is none):
        the GC has answered for them. Only :meth:`run` empties the outbox: bound the wait."""
        while self._events:
            await self._emptied.wait()
