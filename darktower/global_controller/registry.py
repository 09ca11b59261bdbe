"""The ``ControllerRegistry`` gRPC service (proto/darktower/v1/registry.proto) and the heartbeat
sweeper.

MCs register (getting the join-token public key, the heartbeat interval and the token
audience) and heartbeat (capacity, health, per-meeting participant counts, meetings that ended
on them, whether they drain), each only as the controller id its cluster certificate names: a
controller id cannot be taken over by another certificate (docs/architecture.md §8). A
heartbeat that lists every meeting live on its MC is reconciled with the store: the reply
names the listed meetings the GC has ended or moved, and the GC's active meetings on that MC
that it lacks (docs/protocol.md §14). The sweeper marks controllers that stopped heartbeating
UNHEALTHY and their meetings CONTROLLER_LOST (moved to a live MC at their next join), never
within one heartbeat timeout of the GC's own start.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from darktower.errors import InvalidRequest, NotFound
from darktower.global_controller._controllers import pack_endpoint
from darktower.global_controller._limits import (
    MAX_CONTROLLER_ID_LENGTH,
    MAX_ENDPOINT_LENGTH,
    MAX_MEETINGS_PER_HEARTBEAT,
)
from darktower.global_controller._moderation import reported_blocks
from darktower.global_controller.mc_client import END_MESSAGE, meeting_config
from darktower.global_controller.service import GlobalController
from darktower.global_controller.store import ControllerCapacity, EndReason, HealthStatus
from darktower.logs import fields
from darktower.model import ControllerId, MeetingId
from darktower.protocol.pb.v1 import registry_pb2 as pb
from darktower.servicekit import ServiceRole, require_peer

log = logging.getLogger("darktower.gc.registry")

# Why a heartbeat reply tells an MC to end a meeting it listed (``EndedMeeting.reason``):
# the store's end reason, or one of these two; and what its participants are told.
MOVED = "moved"  # the GC placed it on another MC (its own was lost or drained): it goes on
UNKNOWN = "unknown"  # the GC has no such meeting
END_MESSAGES = {
    EndReason.OWNER.value: END_MESSAGE,
    EndReason.EMPTY.value: "the meeting stayed empty",
    EndReason.CONTROLLER.value: "the meeting has ended",
    EndReason.NOT_PLACED.value: "the meeting could not be placed",
    MOVED: "the meeting moved to another meeting controller: join it again",
    UNKNOWN: "the meeting does not exist",
}


def _capacity(msg: pb.ControllerCapacity) -> ControllerCapacity:
    return ControllerCapacity(
        max_meetings=msg.max_meetings,
        current_meetings=msg.current_meetings,
        max_participants=msg.max_participants,
        current_participants=msg.current_participants,
    )


def _check_id(controller_id: str) -> ControllerId:
    """The id, if well formed and the caller's own (Forbidden for another certificate's)."""
    if not controller_id or len(controller_id) > MAX_CONTROLLER_ID_LENGTH:
        raise InvalidRequest(f"controller_id must be 1 to {MAX_CONTROLLER_ID_LENGTH} characters")
    require_peer(ServiceRole.MC, controller_id)
    return ControllerId(controller_id)


class ControllerRegistry:
    """The trio implementation served with ``rpc_service(ControllerRegistryBase, ...)``."""

    def __init__(
        self,
        gc: GlobalController,
        *,
        heartbeat_interval_s: float,
        token_audience: str,
    ) -> None:
        self._gc = gc
        self._interval_ms = int(heartbeat_interval_s * 1000)
        self._audience = token_audience

    async def RegisterMeetingController(
        self, request: pb.RegisterMeetingController
    ) -> pb.RegisterMeetingControllerResponse:
        controller_id = _check_id(request.controller_id)
        if not request.endpoint or len(request.endpoint) > MAX_ENDPOINT_LENGTH:
            raise InvalidRequest("endpoint (host:port of MeetingControl) is required")
        if " " in request.endpoint or " " in request.signaling_url:
            raise InvalidRequest("endpoint and signaling_url must not contain spaces")
        if len(request.signaling_url) > MAX_ENDPOINT_LENGTH or (
            request.signaling_url and not request.signaling_url.startswith("https://")
        ):
            raise InvalidRequest("signaling_url must be an https:// URL")
        await self._gc.store.register_controller(
            controller_id,
            request.region,
            pack_endpoint(request.endpoint, request.signaling_url),
            _capacity(request.capacity),
        )
        self._gc.directory.changed()
        log.info(
            "meeting controller registered",
            extra=fields(
                controller=controller_id, region=request.region, endpoint=request.endpoint
            ),
        )
        return pb.RegisterMeetingControllerResponse(
            join_token_public_key_pem=self._gc.tokens.join.public_key_pem,
            heartbeat_interval_ms=self._interval_ms,
            token_audience=self._audience,
            join_token_keys=self._join_keys(),
        )

    def _join_keys(self) -> list[pb.JoinTokenKey]:
        # The current key and those retired less than the overlap ago (keys.py).
        return [
            pb.JoinTokenKey(
                kid=key.kid,
                public_key_pem=key.public_key_pem,
                not_after=0 if key.not_after is None else int(key.not_after * 1_000_000),
            )
            for key in self._gc.tokens.join.verification_keys(self._gc.now())
        ]

    async def ReportEvents(self, request: pb.MeetingEventBatch) -> pb.MeetingEventBatchResponse:
        """The MC's events, kept for the webhooks once per ``event_id`` (docs/protocol.md
        §18.5): answered once they are in the store, so a repeated batch is a no-op.
        ``InvalidRequest`` beyond 500 events; a malformed event, one of a meeting the GC
        does not have, or one of a meeting this MC never held, is skipped. A
        ``participant_moderated`` event is no webhook's: it keeps a host's blocks (§18.2)."""
        controller_id = _check_id(request.controller_id)
        fan = await self._gc.webhooks.report(controller_id, request.events, self._gc.now())
        if fan.unknown_meeting:
            log.info(
                "reported events of unknown meetings skipped",
                extra=fields(controller=controller_id, events=fan.unknown_meeting),
            )
        if fan.foreign:
            log.warning(
                "reported events of meetings never on this controller skipped",
                extra=fields(controller=controller_id, events=fan.foreign),
            )
        # A host's blocks, kept for the participant's join identity (docs/protocol.md §18.2).
        blocks = reported_blocks(request.events)
        if blocks:
            kept = await self._gc.store.record_blocks(controller_id, blocks)
            if kept < len(blocks):
                log.info(
                    "reported blocks skipped (a meeting not this controller's, a token not "
                    "on record)",
                    extra=fields(controller=controller_id, skipped=len(blocks) - kept),
                )
        return pb.MeetingEventBatchResponse()

    async def Heartbeat(self, request: pb.Heartbeat) -> pb.HeartbeatResponse:
        """NotFound for an unregistered controller (the MC then registers again)."""
        controller_id = _check_id(request.controller_id)
        if len(request.meetings) + len(request.ended_meeting_ids) > MAX_MEETINGS_PER_HEARTBEAT:
            raise InvalidRequest(f"more than {MAX_MEETINGS_PER_HEARTBEAT} meetings listed")
        try:
            health = HealthStatus(int(request.health))
        except ValueError:
            raise InvalidRequest(f"unknown health status {request.health}") from None
        counts = {MeetingId(m.meeting_id): m.participant_count for m in request.meetings}
        cached = (await self._gc.directory.records()).get(controller_id)
        await self._gc.store.record_heartbeat(
            controller_id, _capacity(request.capacity), health, counts, draining=request.draining
        )
        # The GC's controller cache is not invalidated for every heartbeat: they come all the
        # time, and placement on figures up to CONTROLLER_CACHE_S old is good enough. A
        # controller that starts draining must get nothing new from now on, though.
        if cached is None or cached.draining != request.draining:
            self._gc.directory.changed()
            if request.draining:
                log.info("meeting controller draining", extra=fields(controller=controller_id))
        # A draining MC's meetings go on elsewhere: what it ends while draining, it ends for
        # itself (its participants rejoin through us).
        if not request.draining:
            for meeting_id in request.ended_meeting_ids:
                await self._end_reported(controller_id, MeetingId(meeting_id))
        reply = pb.HeartbeatResponse(join_token_keys=self._join_keys())
        if request.lists_all_meetings:
            await self._reconcile(controller_id, list(counts), reply)
        return reply

    async def _reconcile(
        self, controller_id: ControllerId, listed: list[MeetingId], reply: pb.HeartbeatResponse
    ) -> None:
        view = await self._gc.store.reconcile_controller(controller_id, listed)
        ends = [(m.meeting_id, (m.end_reason or EndReason.OWNER).value) for m in view.ended]
        ends += [(m.meeting_id, MOVED) for m in view.elsewhere]
        ends += [(meeting_id, UNKNOWN) for meeting_id in view.unknown]
        reply.reconciled = True
        reply.ended_meetings.extend(
            pb.EndedMeeting(
                meeting_id=meeting_id,
                reason=reason,
                message=END_MESSAGES.get(reason, END_MESSAGES[EndReason.CONTROLLER.value]),
            )
            for meeting_id, reason in ends
        )
        reply.unlisted_meetings.extend(
            pb.AssignedMeeting(meeting_id=m.meeting_id, config=meeting_config(m))
            for m in view.unlisted
        )
        if ends or view.unlisted:
            log.info(
                "meeting controller reconciled",
                extra=fields(
                    controller=controller_id,
                    ended=",".join(f"{m}:{r}" for m, r in ends),
                    unlisted=len(view.unlisted),
                ),
            )

    async def _end_reported(self, controller_id: ControllerId, meeting_id: MeetingId) -> None:
        # Only the meeting's own controller may end it this way.
        try:
            meeting = await self._gc.store.get_meeting(meeting_id)
        except NotFound:
            return
        if meeting.controller_id == controller_id and meeting.is_active:
            await self._gc.store.end_meeting(meeting_id, EndReason.CONTROLLER)


async def sweep_once(gc: GlobalController) -> list[ControllerId]:
    """One sweep; returns the controllers newly expired. Within one heartbeat timeout of the
    GC's start it expires nothing: an MC heard before a restart of the GC has that long to be
    heard again (docs/protocol.md §14)."""
    now = gc.now()
    if now < gc.started_at + gc.heartbeat_timeout_s:
        return []
    cutoff = datetime.fromtimestamp(now - gc.heartbeat_timeout_s, UTC)
    expired = await gc.store.expire_controllers(cutoff)
    if expired:
        gc.directory.changed()
    for controller_id in expired:
        log.warning(
            "meeting controller missed its heartbeats; its meetings are CONTROLLER_LOST",
            extra=fields(controller=controller_id),
        )
    return expired
