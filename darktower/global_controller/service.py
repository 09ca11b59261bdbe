"""What the Global Controller does, independent of HTTP and gRPC.

The REST handlers (``api.py``) and the registry service (``registry.py``) call into
:class:`GlobalController`; it talks to the store, mints tokens, places meetings and tells
Meeting Controllers through the :class:`MeetingControllers` seam (``mc_client.py`` over gRPC,
a fake or a stand-in server in tests).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    Forbidden,
    InternalError,
    NotFound,
    Unauthorized,
)
from darktower.global_controller import credentials, placement, schemas
from darktower.global_controller.store import (
    ControllerRecord,
    EndReason,
    IssuedJoinToken,
    Meeting,
    MeetingStatus,
    NewMeeting,
    Store,
)
from darktower.logs import fields
from darktower.model import ClientId, MeetingId, ParticipantId, Role
from darktower.protocol.addresses import address_key
from darktower.protocol.tokens import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    JoinTokenIssuer,
)

log = logging.getLogger("darktower.gc")

API_SCOPES = ("meetings",)
# How many controllers one create request tries before answering 503: each refusal or
# unreachable MC costs up to one gRPC deadline, so a request stays bounded in time.
MAX_PLACEMENT_ATTEMPTS = 3

Clock = Callable[[], float]  # unix seconds
# The controller list is read from the store at most this often (monotonic seconds) per GC
# process; registrations and expiries made by this process invalidate it. Heartbeats and
# another replica's changes are seen within this delay.
CONTROLLER_CACHE_S = 1.0
# Access tokens already verified, remembered (least recently used evicted when full) so a
# client's every request does not pay for signature checking again; an entry is used only
# until the token's expiry.
MAX_VERIFIED_TOKENS = 10_000
# A removed client (``clients remove``, possibly run by another process or on another replica)
# loses its access tokens within this many seconds of the GC's clock: a client is read from
# the store again at most this often, whether it was found present or removed (so a removed
# client's still-valid tokens cost one read per this time, whatever the requests; at most
# MAX_VERIFIED_TOKENS clients remembered).
CLIENT_RECHECK_S = 5.0
# A kick with ban revokes at most this many of the banned identity's other join tokens for
# the meeting at its MC, the newest (the MC takes no more per kick; docs/protocol.md). Older
# ones stay usable until they expire: the rate limit bounds how many one identity can hold.
MAX_REVOKED_TOKENS = 100
# Telling MCs about the meetings housekeeping ended as empty: their controllers are told
# concurrently, at most this many at once, each one's meetings in turn; a controller that
# fails a call is not asked again this round; and the whole round of calls stops after
# END_EMPTY_NOTIFY_S. So a slow or unreachable MC delays the rest of housekeeping (controller
# expiry, purges, gauges) by at most that long. An MC not told ends the meeting itself (its
# own empty timer, docs/decisions.md "A kick can ban; GC quotas").
MAX_CONCURRENT_END_CALLS = 8
END_EMPTY_NOTIFY_S = 10.0


def pack_endpoint(grpc_endpoint: str, signaling_url: str) -> str:
    """The store's ``endpoint`` column holds both addresses an MC registers (host:port of its
    gRPC service, then its signaling URL, space-separated: neither contains a space)."""
    return f"{grpc_endpoint} {signaling_url}".strip()


def unpack_endpoint(stored: str) -> tuple[str, str]:
    """``(grpc_endpoint, signaling_url)``; an old record without a URL gives ``""`` for it."""
    grpc_endpoint, _, url = stored.partition(" ")
    return grpc_endpoint, url


def signaling_url(controller: ControllerRecord) -> str:
    return unpack_endpoint(controller.endpoint)[1]


def grpc_endpoint(controller: ControllerRecord) -> str:
    return unpack_endpoint(controller.endpoint)[0]


class MeetingControllers(Protocol):
    """How the GC reaches a Meeting Controller (gRPC ``MeetingControl`` in production).

    Each method raises a :class:`DarkTowerError` when the MC refuses (its wire error) or
    cannot be reached (``RpcUnavailable``, an ``InternalError``).
    """

    async def assign_meeting(self, controller: ControllerRecord, meeting: Meeting) -> None: ...

    async def end_meeting(self, controller: ControllerRecord, meeting_id: MeetingId) -> None: ...

    async def kick(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        revoked: Sequence[IssuedJoinToken] = (),
    ) -> str:
        """Returns the join-token id (``jti``) the kicked session joined with, "" if the MC
        does not say. The MC refuses the ``revoked`` join tokens from now on (and ends a
        session using one), also when the participant has already left (then ``NotFound``)."""
        ...


@attrs.frozen
class Tokens:
    join: JoinTokenIssuer
    access: AccessTokenIssuer
    access_verifier: AccessTokenVerifier


def token_id(token: str) -> str:
    """The ``jti`` of a JWT this GC has just signed (its payload read without verifying)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


def join_identity(
    meeting: Meeting, caller: AccessClaims | None, address: str, participant_name: str
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


def to_view(record: ControllerRecord) -> placement.ControllerView:
    """A store record as placement sees it (``last_heartbeat`` in unix seconds)."""
    return placement.ControllerView(
        controller_id=record.controller_id,
        region=record.region,
        health=record.health,
        max_meetings=record.capacity.max_meetings,
        current_meetings=record.capacity.current_meetings,
        max_participants=record.capacity.max_participants,
        current_participants=record.capacity.current_participants,
        last_heartbeat=record.last_heartbeat.timestamp(),
    )


class GlobalController:
    """The GC's operations. Owns no task; every method is one request's work."""

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
        kick_ban_s: float = 3600.0,
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
        self._verified: collections.OrderedDict[str, AccessClaims] = collections.OrderedDict()
        # client id -> (GC time it was last read from the store, whether it was there)
        self._clients_seen: collections.OrderedDict[str, tuple[float, bool]] = (
            collections.OrderedDict()
        )
        self._controllers: dict[str, ControllerRecord] = {}
        self._controllers_read_at = -float("inf")

    def controllers_changed(self) -> None:
        """Forget the cached controller list (a registration or an expiry was stored)."""
        self._controllers_read_at = -float("inf")

    async def _controller_records(self) -> dict[str, ControllerRecord]:
        if trio.current_time() - self._controllers_read_at > CONTROLLER_CACHE_S:
            read_at = trio.current_time()
            records = await self.store.list_controllers()
            self._controllers = {r.controller_id: r for r in records}
            self._controllers_read_at = read_at
        return self._controllers

    def now(self) -> float:
        return self.clock()

    # -- auth ---------------------------------------------------------------------------------
    async def issue_access_token(self, request: schemas.TokenRequest) -> dict[str, Any]:
        """Client credentials → access token. ``Unauthorized`` for an unknown client or a
        wrong secret (same answer and about the same time for both)."""
        try:
            client = await self.store.get_client(ClientId(request.client_id))
        except NotFound:
            client = None
        # Verify even for unknown clients, so timing does not reveal which ids exist.
        encoded = client.secret_hash if client is not None else credentials.DUMMY_HASH
        try:
            ok = await credentials.verify_secret_async(request.client_secret, encoded)
        except ValueError:
            log.error("corrupt secret hash", extra=fields(client=request.client_id))
            ok = False
        if client is None or not ok:
            raise Unauthorized("unknown client or wrong secret")
        token = self.tokens.access.issue(client.client_id, API_SCOPES, self.now())
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.tokens.access.ttl_s),
        }

    async def authenticate(self, authorization: str | None) -> AccessClaims:
        """The claims of an ``Authorization: Bearer`` header whose client still exists;
        ``Unauthorized`` otherwise (a removed client's tokens within ``CLIENT_RECHECK_S``)."""
        claims = self.verify_access_token(authorization)
        now = self.now()
        seen = self._clients_seen.get(claims.client_id)
        if seen is None or not 0 <= now - seen[0] < CLIENT_RECHECK_S:
            try:
                await self.store.get_client(claims.client_id)
            except NotFound:
                seen = (now, False)
            else:
                seen = (now, True)
            self._clients_seen[claims.client_id] = seen
            self._clients_seen.move_to_end(claims.client_id)
            if len(self._clients_seen) > MAX_VERIFIED_TOKENS:
                self._clients_seen.popitem(last=False)
        if not seen[1]:
            raise Unauthorized("the client of this access token has been removed")
        return claims

    def verify_access_token(self, authorization: str | None) -> AccessClaims:
        """The claims of an ``Authorization: Bearer`` header (signature, expiry); the client's
        existence is :meth:`authenticate`'s. ``Unauthorized`` otherwise."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <access token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <access token>'")
        token = token.strip()
        now = self.now()
        claims = self._verified.get(token)
        if claims is not None and now < claims.expires_at:
            self._verified.move_to_end(token)
            return claims
        self._verified.pop(token, None)
        claims = self.tokens.access_verifier.verify(token, now=now)  # raises Unauthorized
        self._verified[token] = claims
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return claims

    # -- meetings -----------------------------------------------------------------------------
    async def create_meeting(
        self, owner: ClientId, request: schemas.CreateMeeting, region: str | None = None
    ) -> dict[str, Any]:
        """Place the meeting, record it, tell its MC (before answering), mint the host token.

        An MC that refuses or cannot be reached is skipped (its meeting row ended) and the next
        one tried, at most :data:`MAX_PLACEMENT_ATTEMPTS`; then ``CapacityExceeded`` (503).
        """
        views = await self._controller_records()
        records = list(views.values())
        tried: set[str] = set()
        errors: list[str] = []
        while True:
            candidates = [to_view(r) for r in records if r.controller_id not in tried]
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

    async def _controller_of(self, meeting: Meeting) -> ControllerRecord:
        if meeting.controller_id is None:
            raise InternalError(f"meeting {meeting.meeting_id} has no meeting controller")
        cached = (await self._controller_records()).get(meeting.controller_id)
        if cached is not None:
            return cached
        return await self.store.get_controller(meeting.controller_id)

    async def meeting_info(self, meeting_id: MeetingId) -> dict[str, Any]:
        """Contract §1.2 plus ``status`` (active, ended, controller_lost). ``NotFound``."""
        meeting = await self.store.get_meeting(meeting_id)
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
                controller = await self._controller_of(meeting)
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
        access token (``Unauthorized``); an ended meeting is ``Conflict``; a meeting whose
        controller is lost is ``CapacityExceeded`` (503: try again later)."""
        meeting = await self.store.get_meeting(meeting_id)
        if not meeting.is_active:
            raise Conflict(f"meeting {meeting_id} has ended", details={"status": "ended"})
        if meeting.settings.require_auth and caller is None:
            raise Unauthorized(f"meeting {meeting_id} requires an access token to join")
        if meeting.status is MeetingStatus.CONTROLLER_LOST:
            raise CapacityExceeded(
                f"the meeting controller of meeting {meeting_id} is not responding",
                details={"status": meeting.status.value},
            )
        controller = await self._controller_of(meeting)
        role = Role.HOST if caller is not None and caller.client_id == meeting.owner else Role.GUEST
        now = self.now()
        token = self.tokens.join.issue(
            meeting.meeting_id,
            role,
            now,
            participant_name=request.participant_name or None,
        )
        # Forbidden while this identity is banned; else its token is on record (and the
        # meeting's emptiness restarts: someone is on the way in).
        await self.store.record_join(
            meeting_id,
            token_id(token),
            join_identity(meeting, caller, address, request.participant_name),
            datetime.fromtimestamp(now + self.tokens.join.ttl_s, UTC),
        )
        return {
            "meeting_id": meeting.meeting_id,
            "join_token": token,
            "role": role.value,
            "meeting_controller_url": signaling_url(controller),
        }

    async def _owned(self, meeting_id: MeetingId, caller: AccessClaims) -> Meeting:
        meeting = await self.store.get_meeting(meeting_id)
        if meeting.owner != caller.client_id:
            raise Forbidden(f"only the owner of meeting {meeting_id} may do this")
        return meeting

    async def end_meeting(self, meeting_id: MeetingId, caller: AccessClaims) -> None:
        """Owner only (``Forbidden``). Tells the MC, then records the end; idempotent. If the
        MC is unreachable the meeting is still recorded as ended (the MC learns of it when it
        comes back: its heartbeat lists a meeting the GC no longer has active)."""
        meeting = await self._owned(meeting_id, caller)
        if not meeting.is_active:
            return
        try:
            controller = await self._controller_of(meeting)
            await self.controllers.end_meeting(controller, meeting_id)
        except DarkTowerError as exc:
            log.warning(
                "could not tell the meeting controller to end a meeting",
                extra=fields(meeting=meeting_id, error=exc.message),
            )
        await self.store.end_meeting(meeting_id)

    async def end_empty_meetings(self) -> list[MeetingId]:
        """End every meeting nobody has been in for ``empty_meeting_timeout_s`` (reason
        ``empty``: not joined since its creation or its last join token, or reported empty by
        its controller since), and tell each one's controller. Returns the meetings ended.
        Safe with several replicas (each meeting is ended by one of them)."""
        if self.empty_meeting_timeout_s <= 0:
            return []
        cutoff = datetime.fromtimestamp(self.now() - self.empty_meeting_timeout_s, UTC)
        ended = await self.store.end_empty_meetings(cutoff)
        by_controller: dict[str, list[MeetingId]] = collections.defaultdict(list)
        controllers: dict[str, ControllerRecord] = {}
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
                controller = await self._controller_of(meeting)
            except DarkTowerError as exc:
                log.warning(
                    "could not tell the meeting controller to end an empty meeting",
                    extra=fields(meeting=meeting.meeting_id, error=exc.message),
                )
                continue
            controllers[controller.controller_id] = controller
            by_controller[controller.controller_id].append(meeting.meeting_id)
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_END_CALLS)
        with trio.move_on_after(END_EMPTY_NOTIFY_S) as scope:
            async with trio.open_nursery() as nursery:
                for controller_id, meeting_ids in by_controller.items():
                    nursery.start_soon(
                        self._tell_ended, controllers[controller_id], meeting_ids, limiter
                    )
        if scope.cancelled_caught:
            log.warning(
                "meeting controllers not all told of the empty meetings ended",
                extra=fields(meetings=len(ended), deadline_s=END_EMPTY_NOTIFY_S),
            )
        return [m.meeting_id for m in ended]

    async def _tell_ended(
        self,
        controller: ControllerRecord,
        meeting_ids: list[MeetingId],
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Tell one controller its meetings ended, one call at a time; stop at its first
        failure (the rest would likely wait as long for nothing)."""
        async with limiter:
            for told, meeting_id in enumerate(meeting_ids):
                try:
                    await self.controllers.end_meeting(controller, meeting_id)
                except DarkTowerError as exc:
                    log.warning(
                        "could not tell the meeting controller to end an empty meeting",
                        extra=fields(
                            controller=controller.controller_id,
                            meeting=meeting_id,
                            untold=len(meeting_ids) - told,
                            error=exc.message,
                        ),
                    )
                    return

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
        meeting = await self._owned(meeting_id, caller)
        if not meeting.is_active:
            raise Conflict(f"meeting {meeting_id} has ended", details={"status": "ended"})
        controller = await self._controller_of(meeting)
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
