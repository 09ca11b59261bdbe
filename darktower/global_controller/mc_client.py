"""``MeetingControllers`` over gRPC: the GC calling each MC's ``MeetingControl`` service, over
mutual TLS, each channel checking that the MC it reaches holds the certificate of the controller
id it registered with (docs/architecture.md §8)."""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from darktower.errors import CapacityExceeded, DarkTowerError
from darktower.global_controller._controllers import grpc_endpoint
from darktower.global_controller._limits import MAX_MC_CHANNELS, MODERATION_CALL_TIMEOUT_S
from darktower.global_controller.store import ControllerRecord, IssuedJoinToken, MeetingRecord
from darktower.logs import fields
from darktower.model import MeetingId, ParticipantId
from darktower.protocol.addresses import split_host_port
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mc_pb
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.servicekit import ClusterTls, ServiceRole, expect_peer
from darktower.transport.rpc import (
    RpcDeadlineExceeded,
    RpcError,
    RpcUnavailable,
    call,
    open_rpc_channel,
)

log = logging.getLogger("darktower.gc.mc")

END_MESSAGE = "The meeting was ended by its host."
EMPTY_MESSAGE = "The meeting stayed empty."
# EndMeetingRequest.reason (docs/protocol.md §18.5): the owner's end, or the GC's empty
# timeout (docs/protocol.md §6).
END_REASON_ENDED = "ended"
END_REASON_EMPTY = "empty"
KICK_MESSAGE = "You were removed from the meeting by its host."
# A probe's own deadline beyond its call's: getting the channel, and the call's reply crossing
# back from the asyncio loop.
PROBE_SLACK_S = 0.25


def meeting_config(meeting: MeetingRecord) -> mc_pb.MeetingConfig:
    """What an MC needs to hold ``meeting`` (``AssignMeeting``, a heartbeat reply's
    ``unlisted_meetings``)."""
    return mc_pb.MeetingConfig(
        display_name=meeting.display_name,
        max_participants=meeting.max_participants,
        enable_e2e_encryption=meeting.settings.enable_e2e_encryption,
        recording_enabled=meeting.settings.recording_enabled,
    )


def _split(endpoint: str) -> tuple[str, int]:
    try:
        return split_host_port(endpoint)
    except ValueError as exc:  # the MC registered an endpoint we cannot call: as unreachable
        raise CapacityExceeded(f"meeting controller endpoint: {exc}") from None


class GrpcMeetingControllers:
    """Channels to MCs, cached per controller and endpoint (at most
    ``_limits.MAX_MC_CHANNELS``), over mutual TLS with the GC's cluster certificate ``tls``.

    Construct with :meth:`open`, which owns the channels and closes them all on exit. An MC
    that cannot be reached, or whose certificate is not the controller's, raises
    ``CapacityExceeded`` (503: the caller may retry); an MC's own refusal comes back as its
    ``DarkTowerError`` subclass.
    """

    def __init__(self, *, timeout_s: float, tls: ClusterTls | None) -> None:
        self._timeout_s = timeout_s
        self._context: ssl.SSLContext | None = tls.client_context() if tls else None
        self._channels: collections.OrderedDict[tuple[str, str], tuple[MeetingControlStub, Any]] = (
            collections.OrderedDict()
        )
        self._lock = trio.Lock()  # one task opens or evicts channels at a time

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, *, timeout_s: float = 5.0, tls: ClusterTls | None = None) -> Any:
        """Yield the client; on exit (also when cancelled) close every channel. Without
        ``tls`` the channels are plaintext (tests of the client alone)."""
        client = cls(timeout_s=timeout_s, tls=tls)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client._close_all()

    async def _close_all(self) -> None:
        while self._channels:
            _, (_, channel_cm) = self._channels.popitem(last=False)
            await channel_cm.__aexit__(None, None, None)

    async def _stub(self, controller_id: str, endpoint: str) -> MeetingControlStub:
        key = (controller_id, endpoint)
        async with self._lock:
            entry = self._channels.get(key)
            if entry is not None:
                self._channels.move_to_end(key)
                return entry[0]
            host, port = _split(endpoint)
            check = expect_peer(ServiceRole.MC, controller_id) if self._context else None
            channel_cm = open_rpc_channel(host, port, tls=self._context, check_peer=check)
            channel = await channel_cm.__aenter__()
            self._channels[key] = (MeetingControlStub(channel), channel_cm)
            if len(self._channels) > MAX_MC_CHANNELS:
                _, (_, old_cm) = self._channels.popitem(last=False)
                with trio.CancelScope(shield=True):
                    await old_cm.__aexit__(None, None, None)
            return self._channels[key][0]

    async def _call(
        self,
        controller: ControllerRecord,
        name: str,
        request: Any,
        deadline_s: float | None = None,
    ) -> Any:
        endpoint = grpc_endpoint(controller)
        stub = await self._stub(controller.controller_id, endpoint)
        deadline = self._timeout_s if deadline_s is None else deadline_s
        try:
            return await call(getattr(stub, name), request, deadline_s=deadline)
        except RpcError as exc:
            log.warning(
                "meeting controller unreachable",
                extra=fields(controller=controller.controller_id, rpc=name, error=exc.message),
            )
            raise CapacityExceeded(
                f"meeting controller {controller.controller_id} is unreachable ({exc.message})",
                details={"controller_id": str(controller.controller_id)},
            ) from exc

    async def assign_meeting(self, controller: ControllerRecord, meeting: MeetingRecord) -> None:
        await self._call(
            controller,
            "AssignMeeting",
            mc_pb.AssignMeeting(meeting_id=meeting.meeting_id, config=meeting_config(meeting)),
        )

    async def probe(
        self, controller: ControllerRecord, meeting: MeetingRecord, *, deadline_s: float
    ) -> bool:
        """See ``MeetingControllers.probe``. A trio deadline a little past the call's bounds the
        whole probe (getting the channel too)."""
        request = mc_pb.AssignMeeting(meeting_id=meeting.meeting_id, config=meeting_config(meeting))
        why = f"no answer within {deadline_s} s"
        with trio.move_on_after(deadline_s + PROBE_SLACK_S):
            try:
                stub = await self._stub(controller.controller_id, grpc_endpoint(controller))
            except CapacityExceeded as exc:  # it registered an endpoint we cannot call
                why = exc.message
            else:
                try:
                    await call(stub.AssignMeeting, request, deadline_s=deadline_s)
                except (RpcUnavailable, RpcDeadlineExceeded) as exc:
                    why = exc.message
                except DarkTowerError:
                    return True  # its refusal (full, draining) or another status: it answered
                else:
                    return True
        log.warning(
            "meeting controller does not answer",
            extra=fields(controller=controller.controller_id, rpc="AssignMeeting", error=why),
        )
        return False

    async def end_meeting(
        self, controller: ControllerRecord, meeting_id: MeetingId, reason: str = END_REASON_ENDED
    ) -> None:
        message = EMPTY_MESSAGE if reason == END_REASON_EMPTY else END_MESSAGE
        await self._call(
            controller,
            "EndMeeting",
            mc_pb.EndMeetingRequest(meeting_id=meeting_id, message=message, reason=reason),
        )

    async def kick(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        revoked: Sequence[IssuedJoinToken] = (),
    ) -> str:
        reply = await self._call(
            controller,
            "KickParticipant",
            mc_pb.KickParticipantRequest(
                meeting_id=meeting_id,
                participant_id=participant_id,
                message=KICK_MESSAGE,
                revoked_tokens=[
                    mc_pb.RevokedToken(
                        token_id=t.token_id,
                        expires_at_us=int(t.expires_at.timestamp() * 1_000_000),
                    )
                    for t in revoked
                ],
            ),
        )
        # The kicked session's join-token id ("" from an MC that does not report it).
        return str(reply.token_id)

    async def moderate(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        actions: Sequence[int],
        message: str,
    ) -> common_pb2.PublicationState:
        reply: mc_pb.ModerateParticipantResponse = await self._call(
            controller,
            "ModerateParticipant",
            mc_pb.ModerateParticipantRequest(
                meeting_id=meeting_id,
                participant_id=participant_id,
                actions=[common_pb2.ModerationAction.ValueType(a) for a in actions],
                message=message,
            ),
            # The MC may take its own moderation deadline: never cut before it answers.
            deadline_s=max(self._timeout_s, MODERATION_CALL_TIMEOUT_S),
        )
        return reply.publication
