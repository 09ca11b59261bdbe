"""Fresh media connection tokens for one participant (docs/protocol.md §13): on its request
(MediaReconnectRequest), on a resume, and unsolicited when its Media Handler reports its media
connection lost while its signaling is up."""

from __future__ import annotations

import logging

from darktower.errors import CapacityExceeded, DarkTowerError, InternalError
from darktower.logs import fields
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._metrics import ControllerMetrics
from ._room import RoomMember, RoomState

logger = logging.getLogger("darktower.meeting_controller")

# The stream task of a participant scope that sends an unsolicited MediaReconnect.
MEDIA_RECONNECT = "media-reconnect"


class MediaReconnection:
    """The media side of ``member``'s reconnection, at ``room``'s Media Handler."""

    __slots__ = ("_due", "member", "metrics", "room")

    def __init__(self, room: RoomState, member: RoomMember, metrics: ControllerMetrics) -> None:
        self.room = room
        self.member = member
        self.metrics = metrics
        self._due = False  # a loss was reported and no MediaReconnect went out for it yet

    async def fresh(self) -> sig.MediaServerInfo:
        """A fresh connection token at the room's Media Handler: RegisterParticipant again,
        which keeps the participant's routes there (docs/protocol.md §13); at most the MH call
        deadline. Raises CapacityExceeded if the MH refuses for room, InternalError if none is
        assigned or it cannot be reached."""
        room = self.room
        if room.mh is None:
            raise InternalError("no media handler is assigned to this meeting")
        try:
            reply = await room.mh.register_participant(
                mh_pb.RegisterParticipant(participant_id=self.member.id, meeting_id=room.id)
            )
        except CapacityExceeded as exc:
            raise CapacityExceeded(f"the media handler's room is full: {exc}") from exc
        except DarkTowerError as exc:
            raise InternalError(f"media handler unavailable: {exc}") from exc
        return sig.MediaServerInfo(
            media_handler_url=reply.media_handler_url, connection_token=reply.connection_token
        )

    async def for_resume(self) -> sig.MediaServerInfo:
        """A fresh token for a resume; empty when the Media Handler is gone or refuses: the
        resume still succeeds (the participant keeps its place; its client asks again with
        MediaReconnectRequest)."""
        try:
            return await self.fresh()
        except DarkTowerError as exc:
            self.metrics.errors.inc(1, "RESUMED_WITHOUT_MEDIA")
            logger.warning(
                "resumed without a media token",
                extra=fields(participant_id=self.member.id, error=str(exc)),
            )
            return sig.MediaServerInfo()

    def lost(self) -> None:
        """The MH lost the member's media connection: send it a fresh token unsolicited
        (MediaReconnect, request_id 0), unless its signaling is down too (its resume brings
        one). One stream task at a time; at most one message per loss reported, never one
        without a loss (the MH reports a loss only of a connection that was up)."""
        participant = self.member.handle
        if participant is None or participant.reason is not None or self.member.reconnecting:
            return
        self._due = True
        if participant.stream(MEDIA_RECONNECT) is None:
            participant.start_stream_soon(MEDIA_RECONNECT, self._send)

    async def _send(self) -> None:
        while self._due:
            self._due = False
            try:
                media = await self.fresh()
            except DarkTowerError as exc:  # the client may still ask (MediaReconnectRequest)
                logger.warning(
                    "no media token for a lost media connection",
                    extra=fields(participant_id=self.member.id, error=str(exc)),
                )
                continue
            message = sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=media))
            self.room.deliver(self.member, message)
