"""The other participants of a meeting session, as this session last heard of them.

A :class:`Roster` starts from the JoinResponse's participant list and applies the MC's
participant and stream events (docs/protocol.md §4), turning each into the
:data:`~darktower.client.SessionEvent` the application sees. After a resume it derives what it
missed from the room as the MC sends it then (docs/protocol.md §13). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

from darktower.errors import InvalidRequest
from darktower.model import LeaveReason
from darktower.protocol import leave_reason_from_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import (
    CONNECTION_STATES,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    StreamInfo,
    StreamPublished,
    StreamUnpublished,
)
from ._meeting_models import PublicationChanged, PublicationState


class Roster:
    """The participants other than ``own_id``, always exact: ``participants`` maps their ids to
    :class:`ParticipantInfo` (a read-only view that follows every change)."""

    def __init__(self, own_id: str, existing: Iterable[sig.Participant]) -> None:
        self.own_id = own_id
        self._participants = {
            p.participant_id: ParticipantInfo.from_pb(p)
            for p in existing
            if p.participant_id != own_id
        }
        self.participants: Mapping[str, ParticipantInfo] = MappingProxyType(self._participants)

    def stream(self, stream_id: str) -> StreamInfo | None:
        """The stream ``stream_id`` of any participant, if one publishes it."""
        for participant in self._participants.values():
            found = participant.stream(stream_id)
            if found is not None:
                return found
        return None

    def joined(self, joined: sig.ParticipantJoined) -> ParticipantJoined | None:
        """None for this session's own join."""
        info = ParticipantInfo.from_pb(joined.participant)
        if info.participant_id == self.own_id:
            return None
        self._participants[info.participant_id] = info
        return ParticipantJoined(info)

    def left(self, left: sig.ParticipantLeft) -> ParticipantLeft:
        """The participant as last known (with the streams it took along); its id alone if it
        was not known."""
        info = self._participants.pop(left.participant_id, None) or ParticipantInfo(
            left.participant_id, ""
        )
        try:
            reason = leave_reason_from_pb(left.reason)
        except InvalidRequest:  # a newer MC's reason: gone all the same
            reason = LeaveReason.CONNECTION_LOST
        return ParticipantLeft(info, reason)

    def published(self, published: sig.StreamPublished) -> StreamPublished | None:
        """None for a stream of an unknown participant or of a type this version does not
        know."""
        stream = StreamInfo.from_pb(published.participant_id, published.stream)
        info = self._participants.get(published.participant_id)
        if stream is None or info is None:
            return None
        self._participants[info.participant_id] = attrs.evolve(
            info, streams=(*info.streams, stream)
        )
        return StreamPublished(stream)

    def unpublished(self, gone: sig.StreamUnpublished) -> StreamUnpublished | None:
        """None for a stream this session did not know of."""
        info = self._participants.get(gone.participant_id)
        stream = info.stream(gone.stream_id) if info else None
        if info is None or stream is None:
            return None
        self._participants[info.participant_id] = attrs.evolve(
            info, streams=tuple(s for s in info.streams if s is not stream)
        )
        return StreamUnpublished(stream)

    def updated(
        self, update: sig.ParticipantUpdated
    ) -> list[ParticipantUpdated | PublicationChanged]:
        """What changed of another participant: its connection (ParticipantUpdated), its
        publication (PublicationChanged, docs/protocol.md §18.1; an update without one, from an
        MC before it, changes none). Nothing for an unknown participant (this session's own
        included), a connection state this version does not know, or no change."""
        info = self._participants.get(update.participant_id)
        if info is None:
            return []
        connection = CONNECTION_STATES.get(update.connection, info.connection)
        publication = info.publication
        if update.HasField("publication"):
            publication = PublicationState.from_pb(update.publication)
        return self._adopt(info, attrs.evolve(info, connection=connection, publication=publication))

    def _adopt(
        self, before: ParticipantInfo, now: ParticipantInfo
    ) -> list[ParticipantUpdated | PublicationChanged]:
        """Keep ``now`` for a participant that was ``before``; the events that say what
        changed of its connection and publication."""
        self._participants[now.participant_id] = now
        events: list[ParticipantUpdated | PublicationChanged] = []
        if now.connection is not before.connection:
            events.append(ParticipantUpdated(now))
        if now.publication != before.publication:
            events.append(
                PublicationChanged(now.participant_id, now.publication, before.publication)
            )
        return events

    def resync(
        self,
        existing: Iterable[sig.Participant],
        left_reason: LeaveReason = LeaveReason.VOLUNTARY,
    ) -> list[ResyncEvent]:
        """Adopt the room as a resumed (or rejoined) JoinResponse lists it and return what
        changed since, as the events that would have said so: first the leaves (with
        ``left_reason``: after a resume the reason is not known, VOLUNTARY; after a rejoin,
        the rejoin's), then in the list's order a join followed by its streams' StreamPublished,
        or the stream changes of one who stayed, then its connection and publication changes
        (docs/protocol.md §18.1: the list carries both)."""
        now = {
            p.participant_id: ParticipantInfo.from_pb(p)
            for p in existing
            if p.participant_id != self.own_id
        }
        events: list[ResyncEvent] = []
        for pid in [pid for pid in self._participants if pid not in now]:
            events.append(ParticipantLeft(self._participants.pop(pid), left_reason))
        for pid, info in now.items():
            before = self._participants.get(pid)
            if before is None:
                self._participants[pid] = info
                events.append(ParticipantJoined(info))
                events.extend(StreamPublished(s) for s in info.streams)
                continue
            kept = {s.stream_id for s in info.streams}
            had = {s.stream_id for s in before.streams}
            events.extend(StreamUnpublished(s) for s in before.streams if s.stream_id not in kept)
            self._participants[pid] = info
            events.extend(StreamPublished(s) for s in info.streams if s.stream_id not in had)
            events.extend(self._adopt(before, info))
        return events


ResyncEvent = (
    ParticipantJoined
    | ParticipantLeft
    | StreamPublished
    | StreamUnpublished
    | ParticipantUpdated
    | PublicationChanged
)


__all__ = ["ResyncEvent", "Roster"]
