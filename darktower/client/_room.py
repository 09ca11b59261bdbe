"""The room as a meeting session follows it (docs/protocol.md §4, §13, §18.1): the MC's
participant and stream messages, and the room a resume or a rejoin brings.

A :class:`Room` applies them to the session's :class:`~darktower.client._roster.Roster` and
hands on what changed: the subscriptions of streams that went end, the keys follow the joins
and leaves (docs/protocol.md §16), this session's own publication state goes to its
:class:`~darktower.client._controls.Controls`, and the application gets the events.
"""

from __future__ import annotations

from collections.abc import Callable

from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._controls import Controls
from ._e2ee import Encryption
from ._events import ParticipantLeft, SessionEvent, StreamUnpublished
from ._meeting_models import PublicationChanged, PublicationState
from ._roster import Roster
from ._subscribing import Subscribing


class Room:
    """The handlers of the room's messages (:meth:`handlers`) and its catch-ups."""

    def __init__(
        self,
        roster: Roster,
        subscribing: Subscribing,
        e2ee: Encryption,
        controls: Controls,
        put: Callable[[SessionEvent], None],
    ) -> None:
        self._roster = roster
        self._subscribing = subscribing
        self._e2ee = e2ee
        self._controls = controls
        self._put = put

    def handlers(self) -> dict[str, Callable[[sig.ServerMessage], None]]:
        return {
            "participant_joined": self._on_joined,
            "participant_left": self._on_left,
            "stream_published": self._on_published,
            "stream_unpublished": self._on_unpublished,
            "participant_updated": self._on_updated,
        }

    def _tell(self, event: SessionEvent) -> None:
        """A change of the room: the keys follow it, and the application hears of it."""
        if not isinstance(event, PublicationChanged):
            self._e2ee.on_event(event)
        self._put(event)

    def resumed(self, join: sig.JoinResponse) -> None:
        """Catch up with what happened while the signaling connection was lost."""
        own_id = self._roster.own_id
        own = (p for p in join.existing_participants if p.participant_id == own_id)
        self._controls.resumed(next(own, None))
        for event in self._roster.resync(join.existing_participants):
            if isinstance(event, ParticipantLeft):
                self._subscribing.drop_streams(s.stream_id for s in event.participant.streams)
            elif isinstance(event, StreamUnpublished):
                self._subscribing.drop_streams([event.stream.stream_id])
            self._tell(event)
        self._subscribing.changed()

    def rejoined(self, join: sig.JoinResponse, old_id: str, reason: LeaveReason) -> None:
        """Joined again as a new participant (the roster's ``own_id`` is the new one): the room
        as the new MC has it; the old room's participants left with ``reason``."""
        room = [p for p in join.existing_participants if p.participant_id != old_id]
        for event in self._roster.resync(room, left_reason=reason):
            self._put(event)  # the subscriptions stay: their streams may come back

    def _on_joined(self, m: sig.ServerMessage) -> None:
        if (event := self._roster.joined(m.participant_joined)) is not None:
            self._tell(event)

    def _on_left(self, m: sig.ServerMessage) -> None:
        event = self._roster.left(m.participant_left)
        self._subscribing.drop_streams(s.stream_id for s in event.participant.streams)
        self._tell(event)

    def _on_updated(self, m: sig.ServerMessage) -> None:
        update = m.participant_updated
        if update.participant_id == self._roster.own_id:
            if update.HasField("publication"):
                self._controls.changed(PublicationState.from_pb(update.publication))
            return
        for event in self._roster.updated(update):
            self._tell(event)

    def _on_published(self, m: sig.ServerMessage) -> None:
        if (event := self._roster.published(m.stream_published)) is not None:
            self._tell(event)
            self._subscribing.changed()

    def _on_unpublished(self, m: sig.ServerMessage) -> None:
        event = self._roster.unpublished(m.stream_unpublished)
        if event is None:
            return
        self._subscribing.drop_streams([event.stream.stream_id])
        self._tell(event)


__all__ = ["Room"]
