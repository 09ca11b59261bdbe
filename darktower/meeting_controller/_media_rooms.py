"""Where each room's media is (docs/architecture.md §4.6): the MC's rooms on its Media
Handlers. A room moves, whole, when its MH is lost or drains; MH telemetry reaches the members
of the room it is about, unless that room has moved away from the MH that sent it."""

from __future__ import annotations

import logging

import trio

from darktower.logs import fields
from darktower.model import MeetingId, ParticipantId
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._metrics import ControllerMetrics
from ._mh import MediaHandlers, MediaLink
from ._room import RoomState

logger = logging.getLogger("darktower.meeting_controller")


class MediaRooms:
    """The rooms' Media Handlers: the pool's hooks (``on_lost``, ``on_usable``, ``counts``)
    and the telemetry it delivers. ``rooms`` is the controller's own dict (shared)."""

    def __init__(
        self, rooms: dict[MeetingId, RoomState], mhs: MediaHandlers, metrics: ControllerMetrics
    ) -> None:
        self.rooms = rooms
        self.mhs = mhs
        self.metrics = metrics
        mhs.on_lost = self.lost
        mhs.on_usable = self.usable
        mhs.counts = self.counts

    def lost(self, link: MediaLink) -> None:
        """``link``'s MH is gone or drains: each of its rooms moves to another MH (nobody
        leaves)."""
        for room in list(self.rooms.values()):
            if room.mh is link:
                self.move(room)

    def usable(self, link: MediaLink) -> None:
        """An MH can take rooms: rooms left without one (no MH was usable when theirs was
        lost) or still on a draining one move there."""
        for room in list(self.rooms.values()):
            if room.members and (room.mh is None or self.mhs.serving(room.mh)):
                self.move(room)

    def counts(self, link: MediaLink, meeting_id: str) -> bool:
        # An MH a room has moved away from may still report on it (its old connections end).
        room = self.rooms.get(MeetingId(meeting_id))
        return room is None or room.mh is link

    def move(self, room: RoomState) -> None:
        """Place ``room`` on the least-loaded usable MH, the whole room at once: each member
        gets a fresh connection token there in a MediaReconnect, after its media state was
        replayed there (registration, streams, routes: ``MediaReconnection``), from a task of
        its own participant scope; a reconnecting member gets it with its resume. No usable
        MH: the room stays on a draining MH while it serves, else waits without one (joins are
        refused), until one can take it (docs/protocol.md §13)."""
        old, new = room.mh, self.mhs.choose(trio.current_time())
        if new is None:
            if room.members:
                logger.warning("no media handler for a room", extra=fields(meeting_id=room.id))
            if old is not None and self.mhs.serving(old):
                return
        if old is not None:
            old.rooms -= 1
        room.mh = new
        if new is None:
            return
        new.rooms += 1
        if old is None and not room.members:
            return  # a first placement
        self.metrics.rooms_moved.inc()
        logger.info(
            "room moved",
            extra=fields(
                meeting_id=room.id,
                from_handler=old.handler_id if old is not None else "",
                to_handler=new.handler_id,
                participants=len(room.members),
            ),
        )
        for member in list(room.members.values()):
            if member.session is not None:
                member.session.media.moved()

    def on_telemetry(self, event: mh_pb.TelemetryEvent) -> None:
        room = self.rooms.get(MeetingId(event.meeting_id))
        if room is None:
            return
        kind = event.WhichOneof("event")
        if kind == "telemetry":
            # The MH's per-stream figures (bitrate it measures, loss): what a path can take is
            # the estimate in subscriber_quality and publisher_feedback (docs/protocol.md §17).
            return
        if kind == "subscriber_quality":
            # The MH's estimate for one subscriber, about one stream it receives
            # (docs/protocol.md §17).
            q = event.subscriber_quality
            member = room.members.get(ParticipantId(q.participant_id))
            if member is not None:
                room.deliver(
                    member,
                    sig.ServerMessage(
                        quality=sig.StreamQualityUpdate(
                            stream_id=q.stream_id,
                            available_bitrate=q.available_bitrate,
                            packet_loss=q.packet_loss,
                            rtt_ms=q.rtt_ms,
                            layer_id=q.layer_id,
                            paused=q.paused,
                        )
                    ),
                )
        elif kind == "publisher_feedback":
            # What the subscribers of one stream can take, each layer's too (dynacast).
            f = event.publisher_feedback
            publisher = room.publisher_of(f.stream_id)
            if publisher is not None:
                room.deliver(
                    publisher,
                    sig.ServerMessage(
                        quality=sig.StreamQualityUpdate(
                            stream_id=f.stream_id,
                            available_bitrate=f.available_bitrate,
                            packet_loss=f.packet_loss,
                            rtt_ms=f.rtt_ms,
                            layers=f.layers,
                        )
                    ),
                )
        elif kind == "active_speakers":
            # At most 2 a second from the MH's speaker detector; members only.
            ids = [p for p in event.active_speakers.participant_ids if p in room.members]
            room.speakers = ids
            room.broadcast(
                sig.ServerMessage(active_speakers=sig.ActiveSpeakers(participant_ids=ids))
            )
        elif kind == "key_frame_request":
            # (RoomState.deliver drops these for a reconnecting publisher: its streams pause.)
            publisher = room.publisher_of(event.key_frame_request.stream_id)
            if publisher is not None:
                room.deliver(
                    publisher, sig.ServerMessage(key_frame_request=event.key_frame_request)
                )
        elif kind == "participant_disconnected":
            # Media gone is not signaling gone: the client gets a fresh token to reconnect its
            # media session with (docs/protocol.md §13).
            participant_id = ParticipantId(event.participant_disconnected.participant_id)
            logger.info(
                "media connection lost",
                extra=fields(meeting_id=event.meeting_id, participant_id=participant_id),
            )
            lost = room.members.get(participant_id)
            if lost is not None and lost.session is not None:
                lost.session.media.lost()
