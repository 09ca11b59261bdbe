"""What the Global Controller does with meetings, independent of HTTP and gRPC.

The REST handlers (``api.py``) and the registry service (``registry.py``) call into
:class:`GlobalController`; it talks to the store, mints join tokens, places meetings and tells
Meeting Controllers through the :class:`MeetingControllers` seam (``mc_client.py`` over gRPC,
a fake or a stand-in server in tests). Access tokens are its :class:`AccessGate`'s
(``_tokens.py``); the registered controllers its :class:`ControllerDirectory`'s
(``_controllers.py``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    Forbidden,
    NotFound,
    Unauthorized,
)
from darktower.global_controller import placement, schemas
from darktower.global_controller._controllers import (
    ControllerDirectory,
    MeetingControllers,
    signaling_url,
    tell_meetings_ended,
)
from darktower.global_controller._limits import (
    END_EMPTY_NOTIFY_S,
    KICK_BAN_S,
    MAX_PLACEMENT_ATTEMPTS,
    MAX_REVOKED_TOKENS,
)
from darktower.global_controller._moves import controller_for_join, ended
from darktower.global_controller._probes import ControllerProbes, check_unreachable
from darktower.global_controller._tokens import AccessGate, Tokens, token_id
from darktower.global_controller.store import (
    ControllerRecord,
    EndReason,
    MeetingRecord,
    NewMeeting,
    Store,
)
from darktower.global_controller.webhooks import Webhooks
from darktower.logs import fields
from darktower.model import ClientId, ControllerId, MeetingId, ParticipantId, Role
from darktower.protocol.addresses import address_key
from darktower.protocol.tokens import PUBLISH_KINDS, AccessClaims

__all__ = ["Clock", "GlobalController", "MeetingControllers", "Tokens", "iso", "join_identity"]

log = logging.getLogger("darktower.gc")

Clock = Callable[[], float]  # unix seconds


def join_identity(
    meeting: MeetingRecord, caller: AccessClaims | None, address: str, participant_name: str
) -> str:
    """Who asks for a join token, as a kick's ban sees it (docs/decisions.md, "A kick can
    ban"): "" for the meeting's owner (its host is never banned); an API client vouches for
    a user by name, so ``client:ID/name:NAME``; an anonymous guest is only its network
    address, ``addr:`` + :func:`address_key` (IPv4 address, IPv6 /64)."""
    if caller is not None and caller.client_id == meeting.owner:
        return ""
    if caller is not None:
        return f"client:{caller.client_id}/name:{participant_name}"
    return f"addr:{address_key(address)}"


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class GlobalController:
    """The GC's operations on meetings. Owns no task; every method is one request's work.

    ``access`` checks access tokens and hands them out; ``directory`` is the registered
    controllers (call ``directory.changed()`` after storing a registration or an expiry);
    ``started_at`` is when it was made (the clock's seconds).
    """

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        controllers: MeetingControllers,
        *,
        public_url: str,
        heartbeat_timeout_s: float,
        default_region: str = "",
        clock: Clock = time.time,
        max_active_meetings_per_client: int = 0,
        empty_meeting_timeout_s: float = 0.0,
        kick_ban_s: float = KICK_BAN_S,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.controllers = controllers
        self.public_url = public_url.rstrip("/")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.default_region = default_region
        self.clock = clock
        self.max_active_meetings_per_client = max_active_meetings_per_client  # 0: no cap
        self.empty_meeting_timeout_s = empty_meeting_timeout_s  # 0: never
        self.kick_ban_s = kick_ban_s  # what ?ban=true means
        self.access = AccessGate(store, tokens, self.now)
        self.directory = ControllerDirectory(store)
        self.probes = ControllerProbes(self)  # a caller's word that an MC is gone, checked
        self.webhooks = Webhooks(store)  # events to deliveries (docs/protocol.md §18.5)
        # No controller is declared lost before one heartbeat timeout from here: an MC that
        # heartbeated while this GC was down (restarting) gets the time to do it again
        # (``registry.sweep_once``; docs/protocol.md §14).
        self.started_at = self.now()

    def now(self) -> float:
        return self.clock()

    # -- meetings -----------------------------------------------------------------------------
    async def create_meeting(
        self, owner: ClientId, request: schemas.CreateMeeting, region: str | None = None
    ) -> dict[str, Any]:
        """Place the meeting, record it, tell its MC (before answering), mint the host token.

        An MC that refuses or cannot be reached is skipped (its meeting row ended) and the next
        one tried, at most :data:`MAX_PLACEMENT_ATTEMPTS`; then ``CapacityExceeded`` (503).
        """
        views = await self.directory.records()
        records = list(views.values())
        tried: set[str] = set()
        errors: list[str] = []
        while True:
            candidates = [placement.to_view(r) for r in records if r.controller_id not in tried]
            try:
                if len(tried) >= MAX_PLACEMENT_ATTEMPTS:
                    raise CapacityExceeded("placement attempts exhausted")
                choice = placement.place_meeting(
                    candidates,
                    region=region or request.region or self.default_region,
                    now=self.now(),
                    heartbeat_expiry_s=self.heartbeat_timeout_s,
                )
            except CapacityExceeded as exc:
                if errors:
                    raise CapacityExceeded(
                        "no meeting controller accepted the meeting: " + "; ".join(errors),
                        details={"tried": str(len(tried))},
                    ) from exc
                raise
            controller = views[choice.controller_id]
            tried.add(controller.controller_id)
            meeting = await self.store.create_meeting(
                NewMeeting(
                    display_name=request.display_name,
                    max_participants=request.max_participants,
                    owner=owner,
                    settings=request.settings,
                    controller_id=controller.controller_id,
                ),
                # RateLimited past the cap: checked before any controller hears of it.
                max_active_per_owner=self.max_active_meetings_per_client or None,
            )
            try:
                await self.controllers.assign_meeting(controller, meeting)
            except DarkTowerError as exc:
                log.warning(
                    "meeting controller did not take a meeting",
                    extra=fields(controller=controller.controller_id, error=exc.message),
                )
                await self.store.end_meeting(meeting.meeting_id, EndReason.NOT_PLACED)
                errors.append(f"{controller.controller_id}: {exc.message}")
                continue
            break
        token = self.tokens.join.issue(meeting.meeting_id, Role.HOST, self.now())
        try:
            await self.webhooks.meeting_created(meeting, str(uuid.uuid4()))
        except Exception as exc:  # the meeting is placed: its creation stands without the event
            log.error(
                "meeting_created not queued for webhooks",
                extra=fields(meeting=meeting.meeting_id, error=repr(exc)),
            )
        log.info(
            "meeting created",
            extra=fields(meeting=meeting.meeting_id, controller=controller.controller_id),
        )
        return {
            "meeting_id": meeting.meeting_id,
            "meeting_url": f"{self.public_url}/m/{meeting.meeting_id}",
            "join_token": token,
            "meeting_controller_url": signaling_url(controller),
            "created_at": iso(meeting.created_at),
        }

    async def meeting_info(
        self, meeting_id: MeetingId, unreachable_controller: str = ""
    ) -> dict[str, Any]:
        """``GET /api/v1/meetings/{id}`` (docs/protocol.md §1.1), with ``status`` (active, ended,
        controller_lost). ``unreachable_controller``: the caller could not reach that MC
        (``_probes.py``; it may be lost, never moved, by this). ``NotFound``."""
        meeting = await self.store.get_meeting(meeting_id)
        meeting = await check_unreachable(self, meeting, unreachable_controller)
        info: dict[str, Any] = {
            "meeting_id": meeting.meeting_id,
            "display_name": meeting.display_name,
            "participant_count": meeting.participant_count,
            "max_participants": meeting.max_participants,
            "created_at": iso(meeting.created_at),
            "status": meeting.status.value,
            "meeting_controller_region": "",
            "meeting_controller_url": "",
        }
        if meeting.end_reason is not None:
            info["end_reason"] = meeting.end_reason.value  # our addition: why it ended
        if meeting.controller_id is not None:
            try:
                controller = await self.directory.controller_of(meeting)
            except NotFound:
                pass
            else:
                info["meeting_controller_region"] = controller.region
                info["meeting_controller_url"] = signaling_url(controller)
        return info

    async def list_meetings(self, owner: ClientId, active: bool | None) -> dict[str, Any]:
        meetings = await self.store.list_meetings(owner=owner, active=active)
        return {
            "meetings": [
                {
                    "meeting_id": m.meeting_id,
                    "display_name": m.display_name,
                    "participant_count": m.participant_count,
                    "created_at": iso(m.created_at),
                    "status": m.status.value,
                }
                for m in meetings
            ],
            "total": len(meetings),
        }

    async def join_meeting(
        self,
        meeting_id: MeetingId,
        request: schemas.JoinMeeting,
        caller: AccessClaims | None,
        address: str = "",
    ) -> dict[str, Any]:
        """A join token: host for the owner, else guest. ``require_auth`` meetings need an
        access token (``Unauthorized``); an ended meeting is ``Conflict``. A meeting whose
        controller is lost, draining or gone is first moved to a live one (``_moves.py``;
        ``CapacityExceeded``, 503, when none takes it: try again later); so is one whose
        controller the request says it could not reach, if the GC cannot reach it either
        (``request.unreachable_controller``, ``_probes.py``)."""
        meeting = await self.store.get_meeting(meeting_id)
        if not meeting.is_active:
            raise ended(meeting)
        if meeting.settings.require_auth and caller is None:
            raise Unauthorized(f"meeting {meeting_id} requires an access token to join")
        meeting = await check_unreachable(self, meeting, request.unreachable_controller)
        owner = caller is not None and caller.client_id == meeting.owner
        if not owner and (request.may_publish is not None or request.role):
            # The owner's grant at join (docs/protocol.md §18.2).
            raise Forbidden("only the meeting's owner sets may_publish or role")
        meeting, controller = await controller_for_join(self, meeting)
        role = Role(request.role) if request.role else Role.HOST if owner else Role.GUEST
        now = self.now()
        # A guest token the owner mints is an end user's: banned (and blocked) like any
        # client's.
        identity = (
            join_identity(meeting, caller, address, request.participant_name)
            if role == Role.HOST or not owner or caller is None
            else f"client:{caller.client_id}/name:{request.participant_name}"
        )
        expires = datetime.fromtimestamp(now + self.tokens.join.ttl_s, UTC)
        may_publish = request.may_publish
        token = self._join_token(meeting.meeting_id, role, now, request, may_publish)
        # Forbidden while this identity is banned; else its token is on record (and the
        # meeting's emptiness restarts: someone is on the way in). A host's blocks of this
        # identity stay across its rejoins (docs/protocol.md §18.2): its token then grants
        # the kinds asked for (or all) but those; the first token is never handed out.
        blocked = await self.store.record_join(meeting_id, token_id(token), identity, expires)
        granted = PUBLISH_KINDS if may_publish is None else may_publish
        if blocked & granted:
            token = self._join_token(meeting.meeting_id, role, now, request, granted - blocked)
            await self.store.record_join(meeting_id, token_id(token), identity, expires)
        return {
            "meeting_id": meeting.meeting_id,
            "join_token": token,
            "role": role.value,
            "meeting_controller_url": signaling_url(controller),
        }

    def _join_token(
        self,
        meeting_id: MeetingId,
        role: Role,
        now: float,
        request: schemas.JoinMeeting,
        may_publish: frozenset[str] | None,
    ) -> str:
        return self.tokens.join.issue(
            meeting_id,
            role,
            now,
            participant_name=request.participant_name or None,
            may_publish=may_publish,
        )

    async def owned(self, meeting_id: MeetingId, caller: AccessClaims) -> MeetingRecord:
        """The meeting if ``caller`` created it; ``NotFound``, or ``Forbidden`` for anyone
        else."""
        meeting = await self.store.get_meeting(meeting_id)
        if meeting.owner != caller.client_id:
            raise Forbidden(f"only the owner of meeting {meeting_id} may do this")
        return meeting

    async def end_meeting(self, meeting_id: MeetingId, caller: AccessClaims) -> None:
        """Owner only (``Forbidden``). Tells the MC, then records the end; idempotent. If the
        MC is unreachable the meeting is still recorded as ended (the MC learns of it when it
        comes back: its heartbeat lists a meeting the GC no longer has active)."""
        meeting = await self.owned(meeting_id, caller)
        if not meeting.is_active:
            return
        try:
            controller = await self.directory.controller_of(meeting)
            await self.controllers.end_meeting(controller, meeting_id, reason="ended")
        except DarkTowerError as exc:
            log.warning(
                "could not tell the meeting controller to end a meeting",
                extra=fields(meeting=meeting_id, error=exc.message),
            )
        await self.store.end_meeting(meeting_id)

    async def end_empty_meetings(self) -> list[MeetingId]:
        """End every meeting nobody has been in for ``empty_meeting_timeout_s`` (reason
        ``empty``: not joined since its creation or its last join token, or reported empty by
        its controller since), and tell each one's controller (``tell_meetings_ended``: a slow
        or unreachable one delays this by at most ``END_EMPTY_NOTIFY_S``). Returns the
        meetings ended. Safe with several replicas (each meeting is ended by one of them)."""
        if self.empty_meeting_timeout_s <= 0:
            return []
        cutoff = datetime.fromtimestamp(self.now() - self.empty_meeting_timeout_s, UTC)
        ended = await self.store.end_empty_meetings(cutoff)
        by_controller: dict[ControllerId, tuple[ControllerRecord, list[MeetingId]]] = {}
        for meeting in ended:
            log.info(
                "meeting ended: nobody in it",
                extra=fields(
                    meeting=meeting.meeting_id,
                    reason=EndReason.EMPTY.value,
                    empty_s=self.empty_meeting_timeout_s,
                ),
            )
            try:
                controller = await self.directory.controller_of(meeting)
            except DarkTowerError as exc:
                log.warning(
                    "could not tell the meeting controller to end an empty meeting",
                    extra=fields(meeting=meeting.meeting_id, error=exc.message),
                )
                continue
            _, meeting_ids = by_controller.setdefault(controller.controller_id, (controller, []))
            meeting_ids.append(meeting.meeting_id)
        if not await tell_meetings_ended(self.controllers, by_controller):
            log.warning(
                "meeting controllers not all told of the empty meetings ended",
                extra=fields(meetings=len(ended), deadline_s=END_EMPTY_NOTIFY_S),
            )
        return [m.meeting_id for m in ended]

    async def kick(
        self,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        caller: AccessClaims,
        ban_s: float = 0.0,
    ) -> None:
        """Owner only; ``Conflict`` once the meeting has ended; the MC answers ``NotFound``
        for an unknown participant. ``ban_s > 0``: the identity that got the kicked session's
        join token gets no new one for this meeting for that long, and the MC refuses the
        tokens it already holds (when the MC reports which token the session used; logged
        when it cannot be applied).

        Only the MC knows which join token a participant used, and says so in its kick reply:
        so the ban is stored after the kick, then the identity's other tokens (any it got
        before the ban, newest first, at most :data:`MAX_REVOKED_TOKENS`) go to the MC in a
        second ``KickParticipant`` for the same participant, which revokes them whether or not
        the participant is still there."""
        meeting = await self.owned(meeting_id, caller)
        if not meeting.is_active:
            raise Conflict(f"meeting {meeting_id} has ended", details={"status": "ended"})
        controller = await self.directory.controller_of(meeting)
        kicked_token = await self.controllers.kick(controller, meeting_id, participant_id)
        if ban_s <= 0:
            return
        identity = None
        if kicked_token:
            until = datetime.fromtimestamp(self.now() + ban_s, UTC)
            identity = await self.store.ban_token_holder(meeting_id, kicked_token, until)
        if identity is None:
            log.warning(
                "kick with ban: the participant's join token is not known, no ban applied",
                extra=fields(meeting=meeting_id, participant=participant_id),
            )
            return
        held = await self.store.join_tokens_of(meeting_id, identity, limit=MAX_REVOKED_TOKENS + 1)
        revoked = [t for t in held if t.token_id != kicked_token][:MAX_REVOKED_TOKENS]
        if revoked:
            try:
                await self.controllers.kick(controller, meeting_id, participant_id, revoked)
            except NotFound:
                pass  # the participant has left: the tokens are revoked all the same
            except DarkTowerError as exc:
                log.warning(
                    "kick with ban: the banned identity's other join tokens were not revoked",
                    extra=fields(meeting=meeting_id, tokens=len(revoked), error=exc.message),
                )
        log.info(
            "participant kicked and banned",
            extra=fields(
                meeting=meeting_id, participant=participant_id, ban_s=ban_s, revoked=len(revoked)
            ),
        )
