"""The MeetingControl gRPC methods (trio), called by the GC and by Media Handlers, each only by
the role :data:`CALLERS` names; an MH registers and heartbeats only as the handler id its
certificate names (docs/architecture.md §8)."""

from __future__ import annotations

import trio

from darktower.errors import NotFound
from darktower.model import MeetingId, ParticipantId
from darktower.protocol.heartbeats import MH_HEARTBEAT_INTERVAL_S
from darktower.protocol.pb.v1 import meeting_control_pb2 as pb
from darktower.servicekit import ServiceRole, require_peer

from ._controller import MeetingController

# Who may call each method (``servicekit.callers``): meetings are the GC's to assign, end and
# kick from; registrations are the MHs'.
CALLERS = {
    "AssignMeeting": ServiceRole.GC,
    "EndMeeting": ServiceRole.GC,
    "KickParticipant": ServiceRole.GC,
    "ModerateParticipant": ServiceRole.GC,
    "RegisterMediaHandler": ServiceRole.MH,
    "MediaHandlerHeartbeat": ServiceRole.MH,
}


class MeetingControl:
    def __init__(self, controller: MeetingController) -> None:
        self._ctl = controller

    async def AssignMeeting(self, request: pb.AssignMeeting) -> pb.AssignMeetingResponse:
        await self._ctl.assign(MeetingId(request.meeting_id), request.config)
        return pb.AssignMeetingResponse()

    async def EndMeeting(self, request: pb.EndMeetingRequest) -> pb.EndMeetingResponse:
        await trio.lowlevel.checkpoint()
        # The GC's empty-meeting timeout says "empty"; the owner's end "ended" or nothing.
        reason = "empty" if request.reason == "empty" else "ended"
        count = self._ctl.end(MeetingId(request.meeting_id), request.message, reason)
        return pb.EndMeetingResponse(participant_count=count)

    async def ModerateParticipant(
        self, request: pb.ModerateParticipantRequest
    ) -> pb.ModerateParticipantResponse:
        """The owner's moderation through the REST API (docs/protocol.md §18.2): answered once
        every stream it ends is removed at the Media Handler."""
        publication = await self._ctl.moderate(
            MeetingId(request.meeting_id),
            ParticipantId(request.participant_id),
            list(request.actions),
            request.message,
        )
        return pb.ModerateParticipantResponse(publication=publication)

    async def KickParticipant(
        self, request: pb.KickParticipantRequest
    ) -> pb.KickParticipantResponse:
        await trio.lowlevel.checkpoint()
        token_id = self._ctl.kick(
            MeetingId(request.meeting_id),
            ParticipantId(request.participant_id),
            request.message,
            [(t.token_id, t.expires_at_us / 1_000_000) for t in request.revoked_tokens],
        )
        return pb.KickParticipantResponse(token_id=token_id)

    async def RegisterMediaHandler(
        self, request: pb.RegisterMediaHandler
    ) -> pb.RegisterMediaHandlerResponse:
        require_peer(ServiceRole.MH, request.handler_id)
        await self._ctl.mhs.register(request, trio.current_time())
        return pb.RegisterMediaHandlerResponse(
            heartbeat_interval_ms=round(MH_HEARTBEAT_INTERVAL_S * 1000)
        )

    async def MediaHandlerHeartbeat(
        self, request: pb.MediaHandlerHeartbeat
    ) -> pb.MediaHandlerHeartbeatResponse:
        require_peer(ServiceRole.MH, request.handler_id)
        await trio.lowlevel.checkpoint()
        if not self._ctl.mhs.heartbeat(request, trio.current_time()):
            # The MH registers again on NOT_FOUND (e.g. after this MC restarted).
            raise NotFound(f"media handler {request.handler_id} is not registered")
        return pb.MediaHandlerHeartbeatResponse()
