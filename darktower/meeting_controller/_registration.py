"""Registration with the GC's ControllerRegistry and the heartbeat that follows it."""

from __future__ import annotations

import logging

import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import registry_pb2 as pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import JoinTokenVerifier, load_public_key_pem
from darktower.transport.rpc import call, open_rpc_channel

from ._controller import MeetingController
from ._limits import (
    DEGRADED_LOAD,
    GC_CALL_DEADLINE_S,
    REGISTER_BACKOFF_MAX_S,
    REGISTER_BACKOFF_S,
)
from ._mh import split_address

logger = logging.getLogger("darktower.meeting_controller.registration")

DEFAULT_HEARTBEAT_INTERVAL_S = 5.0


# Shortest staleness window for /readyz, seconds.
READY_FLOOR_S = 2.0


class Registration:
    """What the MC tells the GC, and whether the GC heard it recently (for /readyz)."""

    def __init__(
        self,
        controller: MeetingController,
        *,
        controller_id: str,
        region: str,
        endpoint: str,
        signaling_url: str,
        max_meetings: int,
        max_participants: int,
        issuer: str,
    ) -> None:
        self.controller = controller
        self.controller_id = controller_id
        self.region = region
        self.endpoint = endpoint
        self.signaling_url = signaling_url
        self.max_meetings = max_meetings
        self.max_participants = max_participants
        self.issuer = issuer
        self.draining = False
        self.last_ok = -float("inf")
        self.interval_s = DEFAULT_HEARTBEAT_INTERVAL_S

    def fresh(self, now: float) -> bool:
        # Three missed beats, but never under READY_FLOOR_S: readiness must not flap on
        # scheduling jitter when the GC asks for very short intervals.
        return now - self.last_ok <= max(3 * self.interval_s, READY_FLOOR_S)

    def capacity(self) -> pb.ControllerCapacity:
        return pb.ControllerCapacity(
            max_meetings=self.max_meetings,
            current_meetings=len(self.controller.rooms),
            max_participants=self.max_participants,
            current_participants=self.controller.participant_count,
        )

    def health(self) -> common_pb2.HealthStatus.ValueType:
        if self.draining:
            return common_pb2.UNHEALTHY
        ctl = self.controller
        if (
            len(ctl.rooms) >= DEGRADED_LOAD * self.max_meetings
            or ctl.participant_count >= DEGRADED_LOAD * self.max_participants
        ):
            return common_pb2.DEGRADED
        return common_pb2.HEALTHY

    def heartbeat(self) -> pb.Heartbeat:
        ctl = self.controller
        return pb.Heartbeat(
            controller_id=self.controller_id,
            capacity=self.capacity(),
            health=self.health(),
            meetings=[
                pb.MeetingLoad(meeting_id=room.id, participant_count=len(room.members))
                for room in ctl.rooms.values()
            ],
            ended_meeting_ids=list(ctl.ended),
        )

    async def run(self, gc_address: str) -> None:
        """Register, take the join-token key, heartbeat; re-register after failures.

        Runs until cancelled; owns its gRPC channel. Never raises for an unreachable GC (it
        retries with backoff and the MC is not ready meanwhile).
        """
        backoff = REGISTER_BACKOFF_S
        async with open_rpc_channel(*split_address(gc_address)) as channel:
            stub = ControllerRegistryStub(channel)
            while True:
                try:
                    reply = await call(
                        stub.RegisterMeetingController,
                        pb.RegisterMeetingController(
                            controller_id=self.controller_id,
                            region=self.region,
                            endpoint=self.endpoint,
                            capacity=self.capacity(),
                            signaling_url=self.signaling_url,
                        ),
                        deadline_s=GC_CALL_DEADLINE_S,
                    )
                    key = load_public_key_pem(reply.join_token_public_key_pem)
                    audience = reply.token_audience or self.controller.token_audience
                    self.controller.verifier = JoinTokenVerifier(
                        key, issuer=self.issuer, audience=audience
                    )
                    self.interval_s = (reply.heartbeat_interval_ms / 1000) or self.interval_s
                    self.last_ok = trio.current_time()
                    backoff = REGISTER_BACKOFF_S
                    logger.info("registered with the GC", extra=fields(gc=gc_address))
                    while True:
                        await trio.sleep(self.interval_s)
                        beat = self.heartbeat()
                        await call(stub.Heartbeat, beat, deadline_s=GC_CALL_DEADLINE_S)
                        self.last_ok = trio.current_time()
                        # Reported ends are dropped only once the GC has them.
                        reported = set(beat.ended_meeting_ids)
                        ended = self.controller.ended
                        ended[:] = [m for m in ended if m not in reported]
                except (DarkTowerError, ValueError) as exc:
                    logger.warning(
                        "registration with the GC failed; retrying",
                        extra=fields(gc=gc_address, error=str(exc), retry_s=backoff),
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, REGISTER_BACKOFF_MAX_S)
