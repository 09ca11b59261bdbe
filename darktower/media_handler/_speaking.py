"""Active speakers and LastN of every room (docs/protocol.md §17.4): the wiring of each room's
:class:`~darktower.media_handler._speaker.SpeakerTracker`.

Every audio frame a member publishes feeds its room's tracker (``MediaPlane._on_frame``: the
level byte, docs/protocol.md §17.1). One task of the service (:meth:`Speaking.run`, owned by
the service's nursery like the adaptation tick, docs/architecture.md §4.3) ticks every
``TICK_S``: a room whose speaker list changed sends it to the MCs (``TelemetryEvent.
active_speakers``, at most 2 a second: the tracker's own limit), and its LastN holds are
recomputed then and at least every ``HOLDS_INTERVAL_S`` (so a route, a pin or a member that
came since is held or released within that long). A camera video is held back; a screen share
and audio never are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final

import trio

from darktower.model import StreamType
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._room import MediaRoom, MediaSubscription
from ._speaker import VideoRoute, last_n_holds
from ._telemetry import TelemetryHub

logger = logging.getLogger("darktower.media_handler")

# How often the trackers tick while a level was heard within BUSY_S, seconds (a louder speaker
# takes over 0.25-0.5 s after it starts, docs/protocol.md §17.4; a slower tick adds to that),
# and otherwise: an MH where nobody sends levels wakes four times a second only.
TICK_S: Final = 0.05
IDLE_TICK_S: Final = 0.25
BUSY_S: Final = 2.0
# LastN holds are recomputed at least this often, seconds, besides on a new speaker list.
HOLDS_INTERVAL_S: Final = 1.0


class Speaking:
    """The speaker tick. ``last_n`` videos per subscriber in rooms of more than ``room_size``
    members; ``last_n`` 0: LastN is off (the speakers are still followed and sent)."""

    def __init__(self, telemetry: TelemetryHub, *, last_n: int, room_size: int) -> None:
        self.telemetry = telemetry
        self.last_n = last_n
        self.room_size = room_size
        self._holds_at: dict[MediaRoom, float] = {}  # when each room's holds were computed
        self.busy = False  # a level was heard within BUSY_S (at the last tick)

    async def run(self, rooms: Callable[[], Iterable[MediaRoom]]) -> None:
        """Tick every TICK_S (IDLE_TICK_S while nobody sends levels) until cancelled."""
        while True:
            await trio.sleep(TICK_S if self.busy else IDLE_TICK_S)
            self.tick(rooms(), trio.current_time())

    def tick(self, rooms: Iterable[MediaRoom], now: float) -> None:
        """One tick. An error in one room is logged and skips that room only."""
        holds_at, self._holds_at = self._holds_at, {}
        self.busy = False
        for room in list(rooms):
            try:
                if not self.busy:
                    heard = map(room.speakers.heard_at, room.members)
                    self.busy = any(at is not None and now - at < BUSY_S for at in heard)
                changed = room.speakers.tick(now)
                if changed is not None:
                    self.telemetry.publish(
                        mc_pb.TelemetryEvent(
                            meeting_id=room.id,
                            active_speakers=mc_pb.SpeakerList(participant_ids=changed),
                        )
                    )
                last = holds_at.get(room)
                if self.last_n and (
                    changed is not None or last is None or now - last >= HOLDS_INTERVAL_S
                ):
                    self.hold(room)
                    last = now
                if last is not None:
                    self._holds_at[room] = last
            except Exception:
                logger.exception("speakers of room %s failed", room.id)

    def hold(self, room: MediaRoom) -> None:
        """Apply LastN to ``room``'s camera videos: hold those it leaves out, release the
        others (a released video restarts at a key frame)."""
        subs: dict[VideoRoute, MediaSubscription] = {}
        for publication in room.publications.values():
            # A camera's video; not a job's output (a transcode: its publisher is the MH's own,
            # counted as removed, docs/architecture.md §10).
            if publication.stream_type != StreamType.VIDEO_CAMERA or publication.publisher.removed:
                continue
            for sub in publication.subscriptions.values():
                route = VideoRoute(
                    sub.subscriber.id,
                    publication.publisher.id,
                    publication.stream_id,
                    sub.options.pinned,
                )
                subs[route] = sub
        held = last_n_holds(
            subs,
            room.speakers.last_n(self.last_n + 1),
            n=self.last_n,
            members=len(room.members),
            room_size=self.room_size,
        )
        for route, sub in subs.items():
            sub.hold(route in held)
