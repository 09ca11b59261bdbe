"""Registration with the GC's ControllerRegistry and the heartbeat that follows it.

The MC learns the keys verifying join tokens from the GC: at registration, and again from every
heartbeat reply, so a rotated GC join key reaches it within one heartbeat interval while the
previous key keeps verifying until its ``not_after`` (docs/decisions.md, "Join keys rotate
with an overlap"). An MC configured with a join key (``--join-public-key-file``) keeps it: a
reply never replaces it (docs/decisions.md, "A configured join key is pinned"). The channel
to the GC is mutual TLS and must reach a GC's certificate (docs/architecture.md §8).

Each heartbeat lists every meeting live here and says whether the MC drains; the GC's reply is
its view (docs/protocol.md §14): the MC ends the listed meetings the GC has ended (with the
GC's reason and message) or moved to another MC (SERVER_SHUTDOWN: the meeting goes on there),
and keeps the GC's active meetings it does not hold, so that a join for one re-creates it.
The first heartbeat follows a registration at once (an MC restarted with its id reconciles at
once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.model import LEAVE_MESSAGES, LeaveReason, MeetingId
from darktower.protocol.addresses import netloc
from darktower.protocol.heartbeats import MC_HEARTBEAT_INTERVAL_S
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import registry_pb2 as pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import (
    DEFAULT_LEEWAY_S,
    MAX_JOIN_KEYS,
    JoinKey,
    JoinTokenVerifier,
    key_id,
    load_public_key_pem,
)
from darktower.servicekit import ClusterTls, KeepRegistered, ServiceRole, expect_peer
from darktower.transport.rpc import call, open_rpc_channel

from ._controller import MeetingController
from ._limits import (
    DEGRADED_LOAD,
    GC_CALL_DEADLINE_S,
    KEY_REFRESH_MIN_INTERVAL_S,
    REGISTER_BACKOFF_MAX_S,
    REGISTER_BACKOFF_S,
)

logger = logging.getLogger("darktower.meeting_controller.registration")

# A heartbeat reply's EndedMeeting.reason for a meeting the GC placed on another MC.
MOVED = "moved"
# Of a heartbeat reply, at most this many ended and unlisted meetings each are read (the GC
# sends at most 1,000 unlisted; an MC holds at most MAX_MEETINGS); the rest is ignored.
MAX_RECONCILED = 10_000
# Longer ids name no meeting (the GC's are UUIDs); longer messages are cut.
MAX_MEETING_ID = 128
MAX_END_MESSAGE = 200


def join_keys_from_pb(keys: Sequence[pb.JoinTokenKey]) -> tuple[JoinKey, ...]:
    """The GC's published join keys; ``ValueError`` for more than ``MAX_JOIN_KEYS``, a key
    that is not Ed25519 or a ``kid`` that is not its key's."""
    if len(keys) > MAX_JOIN_KEYS:
        raise ValueError(f"the GC sent {len(keys)} join keys (at most {MAX_JOIN_KEYS})")
    return tuple(
        JoinKey.from_pem(k.kid, k.public_key_pem, not_after=(k.not_after / 1e6) or None)
        for k in keys
    )


class Registration:
    """What the MC tells the GC, the keys it learns back, and whether the GC heard it
    recently (for /readyz). As the :class:`~darktower.servicekit.Peer` of its
    :class:`~darktower.servicekit.KeepRegistered` loop it makes the two registry calls."""

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
        leeway_s: float = DEFAULT_LEEWAY_S,
        gc: tuple[str, int] | None = None,
        cluster: ClusterTls | None = None,
        pinned: bool = False,
    ) -> None:
        """``gc``: the host and port of the GC's registry, which :meth:`run` needs;
        ``cluster``: the MC's credentials for it (None: plaintext, for tests of the loop);
        ``pinned``: the controller's verifier is the configured key, never replaced."""
        self.controller = controller
        self.controller_id = controller_id
        self.region = region
        self.endpoint = endpoint
        self.signaling_url = signaling_url
        self.max_meetings = max_meetings
        self.max_participants = max_participants
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.draining = False  # every heartbeat says so once set (the service's drain sets it)
        self._drain_told = trio.Event()  # the GC answered a heartbeat that said so
        # The GC's active meetings on this MC that the MC did not hold, as of its last reply.
        self._unlisted: dict[MeetingId, mtg_pb.MeetingConfig] = {}
        self._gc = gc
        self._cluster = cluster
        self.pinned = pinned
        self._pinned_warned: frozenset[str] = frozenset()  # the GC's signing kids, last told
        self.keeper = KeepRegistered(
            peer_name="GC",
            address=netloc(*gc) if gc else "",
            default_interval_s=MC_HEARTBEAT_INTERVAL_S,  # until the GC says
            backoff_s=REGISTER_BACKOFF_S,
            backoff_max_s=REGISTER_BACKOFF_MAX_S,
            retry_on=(DarkTowerError, ValueError),
            log=logger,
        )
        self._stub: ControllerRegistryStub | None = None  # while run() runs
        # What the last registration reply said, used with each heartbeat's keys.
        self._legacy_pem = b""
        self._audience = controller.token_audience
        # What the current verifier was built from, so an unchanged heartbeat reply is cheap.
        self._keys_seen: tuple[tuple[str, bytes, int], ...] = ()
        # refresh_keys() wakes the heartbeat loop and waits until the keys of a reply to a
        # call sent after it asked are in use; callers meanwhile share that one refresh.
        self._refresh: trio.Event | None = None
        self._refreshed_at = -float("inf")

    async def refresh_keys(self) -> None:
        """Heartbeat now and wait (at most ``GC_CALL_DEADLINE_S``) until its reply's join keys
        are in use: a key the GC started signing with is learnt at once, not within a
        heartbeat interval, so a key rotation breaks no join. Callers while a refresh is
        pending wait for that one; a new one starts at most ``KEY_REFRESH_MIN_INTERVAL_S``
        after the last one ended (otherwise this returns at once)."""
        done = self._refresh
        if done is None:
            if trio.current_time() - self._refreshed_at < KEY_REFRESH_MIN_INTERVAL_S:
                return
            done = self._refresh = trio.Event()
            self.keeper.beat_now()
        with trio.move_on_after(GC_CALL_DEADLINE_S):
            await done.wait()

    def _keys_in_use(self, asked: trio.Event | None) -> None:
        """The keys of a reply to a call sent after ``asked`` was created are in use."""
        if asked is not None:
            asked.set()
            if self._refresh is asked:
                self._refresh = None
            self._refreshed_at = trio.current_time()

    def fresh(self, now: float) -> bool:
        """The GC answered within its last few heartbeat intervals (see KeepRegistered)."""
        return self.keeper.fresh(now)

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

    def heartbeat_message(self) -> pb.Heartbeat:
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
            lists_all_meetings=True,
            draining=self.draining,
        )

    def use_keys(self, keys: Sequence[pb.JoinTokenKey], legacy_pem: bytes, audience: str) -> None:
        """Verify join tokens with the GC's key set from now on (``legacy_pem``: the single
        key an older GC sends, used when ``keys`` is empty). ``ValueError`` for an unusable
        set; the verifier in use stays."""
        seen = tuple((k.kid, k.public_key_pem, k.not_after) for k in keys)
        if seen and seen == self._keys_seen and self.controller.verifier is not None:
            return
        if self.pinned:
            self._keep_pinned(keys, legacy_pem)
            return
        verifier = JoinTokenVerifier(
            # The single key only when the GC sends no set: it is the set's current key
            # anyway, and it must not outlive its retirement.
            load_public_key_pem(legacy_pem) if legacy_pem and not keys else None,
            keys=join_keys_from_pb(keys),
            issuer=self.issuer,
            audience=audience,
            leeway_s=self.leeway_s,
        )
        if self._keys_seen and seen != self._keys_seen:
            logger.info(
                "join-token keys changed",
                extra=fields(kids=",".join(k.kid for k in verifier.keys)),
            )
        self.controller.verifier = verifier
        self._keys_seen = seen

    def _keep_pinned(self, keys: Sequence[pb.JoinTokenKey], legacy_pem: bytes) -> None:
        """The configured key stays the only one; a GC signing with another is logged once
        per key it signs with (its tokens are refused here)."""
        verifier = self.controller.verifier
        pinned = {k.kid for k in verifier.keys} if verifier is not None else set()
        if keys:
            signing = frozenset(k.kid for k in keys if not k.not_after)
        else:
            signing = frozenset({key_id(load_public_key_pem(legacy_pem))} if legacy_pem else ())
        if signing != self._pinned_warned and not signing <= pinned:
            logger.warning(
                "the GC signs join tokens with a key other than the configured one; keeping "
                "the configured key (--join-public-key-file)",
                extra=fields(gc_kids=",".join(sorted(signing)), kids=",".join(sorted(pinned))),
            )
        self._pinned_warned = signing

    async def run(self) -> None:
        """Register, take the join-token keys, heartbeat; register again after failures
        (:class:`~darktower.servicekit.KeepRegistered`).

        Runs until cancelled; owns its gRPC channel. Never raises for an unreachable GC (it
        retries with backoff and the MC is not ready meanwhile). ``RuntimeError`` without a
        GC address.
        """
        if self._gc is None:
            raise RuntimeError("no GC address to register with")
        cluster = self._cluster
        async with open_rpc_channel(
            *self._gc,
            tls=cluster.client_context() if cluster is not None else None,
            check_peer=expect_peer(ServiceRole.GC) if cluster is not None else None,
        ) as channel:
            self._stub = ControllerRegistryStub(channel)
            self.controller.meeting_from_gc = self.meeting_to_recreate
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.controller.events.run, self.report_events)
                    await self.keeper.run(self)
            finally:
                self._stub = None
                self.controller.meeting_from_gc = None

    async def register(self) -> float:
        """``RegisterMeetingController``; its join keys are in use on return. Returns the
        heartbeat interval the GC asks for (0: unsaid). The first heartbeat follows at once:
        its reply, with the GC's view, ends a pending :meth:`refresh_keys`."""
        reply = await call(
            self._registry().RegisterMeetingController,
            pb.RegisterMeetingController(
                controller_id=self.controller_id,
                region=self.region,
                endpoint=self.endpoint,
                capacity=self.capacity(),
                signaling_url=self.signaling_url,
            ),
            deadline_s=GC_CALL_DEADLINE_S,
        )
        self._audience = reply.token_audience or self.controller.token_audience
        self._legacy_pem = reply.join_token_public_key_pem
        self.use_keys(reply.join_token_keys, self._legacy_pem, self._audience)
        self.keeper.beat_now()  # reconcile at once (docs/protocol.md §14)
        return reply.heartbeat_interval_ms / 1000

    async def heartbeat(self) -> None:
        """One ``Heartbeat``: our load and the meetings that ended; the reply's join keys
        are in use on return."""
        asked = self._refresh
        beat = self.heartbeat_message()
        answer = await call(self._registry().Heartbeat, beat, deadline_s=GC_CALL_DEADLINE_S)
        if answer.join_token_keys:  # an older GC sends none: keep ours
            self.use_keys(answer.join_token_keys, self._legacy_pem, self._audience)
        # Reported ends are dropped only once the GC has them.
        reported = set(beat.ended_meeting_ids)
        ended = self.controller.ended
        ended[:] = [m for m in ended if m not in reported]
        if answer.reconciled:  # an older GC sends no view
            self.reconcile(answer)
        self._keys_in_use(asked)  # (and the view: a join waiting for it goes on)
        if beat.draining:
            self._drain_told.set()

    async def report_events(self, events: list[pb.MeetingEvent]) -> None:
        """One ``ReportEvents`` call: the GC keeps them for its webhooks (docs/protocol.md
        §18.5). Raises a ``DarkTowerError`` when the GC did not take them."""
        batch = pb.MeetingEventBatch(controller_id=self.controller_id, events=events)
        await call(self._registry().ReportEvents, batch, deadline_s=GC_CALL_DEADLINE_S)

    def reconcile(self, answer: pb.HeartbeatResponse) -> None:
        """Apply the GC's view (docs/protocol.md §14): end the meetings it has ended or moved,
        and remember its active meetings this MC does not hold."""
        ctl = self.controller
        for gone in answer.ended_meetings[:MAX_RECONCILED]:
            room = ctl.rooms.get(MeetingId(gone.meeting_id))
            if room is None or room.scope.ending:
                continue
            moved = gone.reason == MOVED
            reason = LeaveReason.SERVER_SHUTDOWN if moved else LeaveReason.MEETING_ENDED
            message = gone.message[:MAX_END_MESSAGE] or LEAVE_MESSAGES[reason]
            logger.info(
                "meeting ended: the GC has it ended or elsewhere",
                extra=fields(
                    meeting_id=room.id, reason=gone.reason, participants=len(room.members)
                ),
            )
            room.end_message = message
            if moved:  # it goes on at another MC: everyone rejoins it through the GC
                for member in list(room.members.values()):
                    member.end_message = member.end_message or message
            room.scope.end(reason)
        self._unlisted = {
            MeetingId(m.meeting_id): m.config
            for m in answer.unlisted_meetings[:MAX_RECONCILED]
            if 0 < len(m.meeting_id) <= MAX_MEETING_ID
        }

    async def meeting_to_recreate(self, meeting_id: MeetingId) -> mtg_pb.MeetingConfig | None:
        """The config of a meeting this MC does not hold that the GC has active here (it
        restarted), for a join to re-create it; None if the GC says no such thing. Not in the
        GC's last reply: asks again first (a heartbeat now, as :meth:`refresh_keys`: at most
        one a second, waited for at most ``GC_CALL_DEADLINE_S``). A meeting that ended here
        and that the GC has not heard of yet is not re-created."""
        if meeting_id in self.controller.ended:
            return None
        if meeting_id not in self._unlisted:
            await self.refresh_keys()
        return self._unlisted.pop(meeting_id, None)

    async def tell_draining(self) -> bool:
        """Say in every heartbeat from now on that this MC drains, send one at once and wait
        (at most ``GC_CALL_DEADLINE_S``) until the GC has answered one; returns whether it
        did. The GC then places nothing new here and moves our meetings at their next join
        (docs/protocol.md §14)."""
        self.draining = True
        self.keeper.beat_now()
        with trio.move_on_after(GC_CALL_DEADLINE_S):
            await self._drain_told.wait()
        return self._drain_told.is_set()

    def _registry(self) -> ControllerRegistryStub:
        if self._stub is None:
            raise RuntimeError("the registration is not running")
        return self._stub
