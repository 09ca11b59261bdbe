"""A session's connection state across outages (docs/protocol.md §13): which of its two
connections are down, since when, and the events that say so; and the backoff between
attempts to bring them back. Nothing here does I/O.
"""

from __future__ import annotations

import random

import trio

from darktower.model import LeaveReason

from ._events import (
    RECONNECT_FIRST_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    Reconnecting,
    Rejoined,
    Rejoining,
    Resumed,
)
from ._seams import LinkOwner

SIGNALING = "signaling"
MEDIA = "media"


def backoff_delay(retry: int, rng: random.Random) -> float:
    """The wait before retry ``retry`` (1, 2, ...): full jitter, a uniform draw in
    [0, min(RECONNECT_MAX_DELAY_S, RECONNECT_FIRST_DELAY_S * 2**(retry - 1))]."""
    ceiling = RECONNECT_FIRST_DELAY_S * 2.0 ** min(retry - 1, 32)
    return rng.uniform(0.0, min(RECONNECT_MAX_DELAY_S, ceiling))


class Outage:
    """Which connections of ``owner``'s session are down. The first to go puts
    :class:`Reconnecting`; :meth:`rejoining` puts :class:`Rejoining`; once none is down,
    :class:`Resumed` — or :class:`Rejoined` when the session rejoined meanwhile — and the
    outage counts in ``reconnects`` (and ``rejoins``)."""

    def __init__(self, owner: LinkOwner) -> None:
        self._owner = owner
        self.down: set[str] = set()
        self.since = 0.0  # when the first connection of the current outage went down
        self.media_only = True
        self.reconnects = 0
        self.rejoins = 0
        self._rejoined_from: str | None = None  # the old participant id, until all are up

    def went_down(self, which: str) -> bool:
        """``which`` (SIGNALING or MEDIA) went down; False if it already was."""
        if which in self.down:
            return False
        first = not self.down
        self.down.add(which)
        if which == MEDIA:
            self._owner.on_media_down()
        else:
            self.media_only = False
        if first:
            self.since = trio.current_time()
            self.media_only = which == MEDIA
            self._owner.put_event(Reconnecting(media_only=self.media_only))
        return True

    def rejoining(self, reason: LeaveReason, message: str) -> None:
        self._owner.put_event(Rejoining(reason, message))

    def rejoined(self, old_participant_id: str) -> None:
        """The session joined again as a new participant: Rejoined once all is up."""
        self._rejoined_from = old_participant_id

    def came_up(self, which: str) -> None:
        self.down.discard(which)
        if self.down:
            return
        self.reconnects += 1
        outage = trio.current_time() - self.since
        if self._rejoined_from is not None:
            self.rejoins += 1
            old, self._rejoined_from = self._rejoined_from, None
            self._owner.put_event(Rejoined(old, self._owner.participant_id, outage))
        else:
            self._owner.put_event(Resumed(media_only=self.media_only, outage_s=outage))


__all__ = ["MEDIA", "SIGNALING", "Outage", "backoff_delay"]
