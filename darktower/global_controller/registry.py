"""The ``ControllerRegistry`` gRPC service (proto/darktower/v1/registry.proto) and the heartbeat
sweeper.

MCs register (getting the join-token public key, the heartbeat interval and the token
audience) and heartbeat (capacity, health, per-meeting participant counts, meetings that ended
on them), each only as the controller id its cluster certificate names: a controller id cannot
be taken over by another certificate (docs/architecture.md §8). The sweeper marks controllers that stopped heartbeating UNHEALTHY and their meetings
CONTROLLER_LOST, so a dead MC's meetings are reported as such, never silently lost.
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
from darktower.global_controller.service import GlobalController
from darktower.global_controller.store import ControllerCapacity, EndReason, HealthStatus
from darktower.logs import fields
from darktower.model import ControllerId, MeetingId
from darktower.protocol.pb.v1 import registry_pb2 as pb
from darktower.servicekit import ServiceRole, require_peer

log = logging.getLogger("darktower.gc.registry")


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
        await self._gc.store.record_heartbeat(
            controller_id, _capacity(request.capacity), health, counts
        )
        # The GC's controller cache is not invalidated here: heartbeats come all the time, and
        # placement on figures up to CONTROLLER_CACHE_S old is good enough.
        for meeting_id in request.ended_meeting_ids:
            await self._end_reported(controller_id, MeetingId(meeting_id))
        return pb.HeartbeatResponse(join_token_keys=self._join_keys())

    async def _end_reported(self, controller_id: ControllerId, meeting_id: MeetingId) -> None:
        # Only the meeting's own controller may end it this way.
        try:
            meeting = await self._gc.store.get_meeting(meeting_id)
        except NotFound:
            return
        if meeting.controller_id == controller_id and meeting.is_active:
            await self._gc.store.end_meeting(meeting_id, EndReason.CONTROLLER)


async def sweep_once(gc: GlobalController) -> list[ControllerId]:
    """One sweep; returns the controllers newly expired."""
    cutoff = datetime.fromtimestamp(gc.now() - gc.heartbeat_timeout_s, UTC)
    expired = await gc.store.expire_controllers(cutoff)
    if expired:
        gc.directory.changed()
    for controller_id in expired:
        log.warning(
            "meeting controller missed its heartbeats; its meetings are CONTROLLER_LOST",
            extra=fields(controller=controller_id),
        )
    return expired
