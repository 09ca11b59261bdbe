"""The seam between the Global Controller and its database."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from darktower.model import ClientId, ControllerId, MeetingId

from ._models import (
    ClaimedDelivery,
    ClientRecord,
    ControllerCapacity,
    ControllerRecord,
    DeliveryAttempt,
    DeliveryRecord,
    DeliveryStatus,
    EndReason,
    HealthStatus,
    IssuedJoinToken,
    MeetingRecord,
    MeetingStatus,
    NewMeeting,
    RateBucket,
    Reconciliation,
    ReportedBlocks,
    WebhookEvent,
    WebhookRecord,
)

if TYPE_CHECKING:
    from ._webhook_queries import Fanout

# A list call returns at most this many rows (bounded result, newest first); callers that need
# more page with ``before``.
MAX_LIST_ROWS = 1000


class Store(Protocol):
    """GC state: meetings, the controller registry and API clients.

    Every method is a trio coroutine that runs its SQL in a worker thread, so it never blocks
    the event loop. A statement already sent runs to completion when the caller is cancelled
    (threads cannot be interrupted); its transaction then commits or rolls back as usual and
    ``Cancelled`` is raised at the caller's next checkpoint. Each call is one transaction.

    Raises :class:`~darktower.errors.Conflict` on a uniqueness violation,
    :class:`~darktower.errors.NotFound` for a missing row, and ``trio.ClosedResourceError``
    after :meth:`aclose`. Timestamps come from the store's clock (injectable for tests).
    """

    # -- meetings --------------------------------------------------------------------------
    async def create_meeting(
        self, new: NewMeeting, *, max_active_per_owner: int | None = None
    ) -> MeetingRecord:
        """Insert an ACTIVE (and empty) meeting created now; Conflict if its id exists.
        ``RateLimited`` if its owner already has ``max_active_per_owner`` meetings not ended
        (checked atomically: concurrent creates on any replica never overshoot)."""
        ...

    async def get_meeting(self, meeting_id: MeetingId) -> MeetingRecord:
        """NotFound if there is no such meeting (ended meetings are still found)."""
        ...

    async def list_meetings(
        self,
        *,
        owner: ClientId | None = None,
        active: bool | None = None,
        controller_id: ControllerId | None = None,
        before: datetime | None = None,
        limit: int = MAX_LIST_ROWS,
    ) -> list[MeetingRecord]:
        """Meetings matching every given filter, newest first, at most ``limit`` (capped at
        :data:`MAX_LIST_ROWS`). ``active=True`` means not ENDED; ``before`` pages by
        ``created_at``."""
        ...

    async def end_meeting(
        self, meeting_id: MeetingId, reason: EndReason = EndReason.OWNER
    ) -> MeetingRecord:
        """Mark ENDED now, for ``reason``. Idempotent: ending an ended meeting returns it
        unchanged (the first end's time and reason). NotFound if missing."""
        ...

    async def end_empty_meetings(self, empty_before: datetime) -> list[MeetingRecord]:
        """End (reason EMPTY) the ACTIVE meetings empty since before ``empty_before``, at most
        :data:`MAX_LIST_ROWS` per call; returns those this call ended (each meeting is ended
        by one call only, whatever the replicas)."""
        ...

    async def record_join(
        self, meeting_id: MeetingId, token_id: str, identity: str, expires_at: datetime
    ) -> frozenset[str]:
        """A join token is about to be handed to ``identity`` (docs/decisions.md, "A kick
        can ban"): ``Forbidden`` while it is banned from the meeting; else the token's holder
        is recorded until ``expires_at`` and the meeting's emptiness restarts. Returns the
        kinds a host blocked for the identity (:meth:`record_blocks`). An empty identity (the
        host) is never banned, blocked nor recorded."""
        ...

    async def record_blocks(self, controller_id: str, blocks: Sequence[ReportedBlocks]) -> int:
        """An MC's reports, in order, of what a host blocked for a participant: the identity
        that got its join token keeps those blocks in the meeting (docs/protocol.md §18.2).
        Skips a meeting ``controller_id`` neither holds nor held and a token not on record;
        returns how many were kept."""
        ...

    async def ban_token_holder(
        self, meeting_id: MeetingId, token_id: str, until: datetime
    ) -> str | None:
        """Ban whoever got join token ``token_id`` from the meeting until ``until``; returns
        the identity banned, None if the token is not on record."""
        ...

    async def join_tokens_of(
        self, meeting_id: MeetingId, identity: str, *, limit: int
    ) -> list[IssuedJoinToken]:
        """The unexpired join tokens handed to ``identity`` for the meeting (recorded by
        :meth:`record_join`), newest first, at most ``limit``."""
        ...

    async def purge_expired(self) -> int:
        """Forget expired bans, the blocks of ended meetings, and the expired join-token
        records of meetings no longer active."""
        ...

    async def move_meeting(
        self,
        meeting_id: MeetingId,
        expected: tuple[ControllerId | None, MeetingStatus],
        to: tuple[ControllerId, MeetingStatus],
    ) -> MeetingRecord | None:
        """Place a meeting on another controller (``to``: the controller and the status,
        ACTIVE or CONTROLLER_LOST) if it is still as ``expected`` (its controller and
        status): a compare-and-set, so of two replicas moving it at once one wins. Its
        participant count becomes 0. Returns the meeting moved, None if it had changed
        (read it again); ``ValueError`` for ENDED on either side."""
        ...

    # -- the request rate limit shared by replicas -------------------------------------------
    async def spend_request_token(
        self, key: str, *, now: float, rate_per_s: float, burst: float
    ) -> RateBucket:
        """Count one request of ``key`` at ``now`` (unix seconds, the GC's clock) against its
        token bucket (``burst`` tokens, refilled at ``rate_per_s``; a new key starts full),
        atomically whatever the replicas. Returns whether a token was taken and what is left."""
        ...

    async def purge_rate_limits(self, unused_since: float) -> int:
        """Forget the buckets not counted since ``unused_since`` (unix seconds)."""
        ...

    # -- controller registry --------------------------------------------------------------
    async def register_controller(
        self,
        controller_id: ControllerId,
        region: str,
        endpoint: str,
        capacity: ControllerCapacity,
    ) -> ControllerRecord:
        """Insert or replace a controller (a restarted MC registers again); HEALTHY, with
        ``registered_at`` and ``last_heartbeat`` set to now."""
        ...

    async def record_heartbeat(
        self,
        controller_id: ControllerId,
        capacity: ControllerCapacity,
        health: HealthStatus,
        participant_counts: Mapping[MeetingId, int] | None = None,
        *,
        draining: bool = False,
    ) -> ControllerRecord:
        """Store a heartbeat: capacity, health, whether it drains, ``last_heartbeat = now``,
        and the participant counts of meetings placed on this controller (ids placed
        elsewhere are ignored, so a stale controller cannot overwrite another's counts). A
        CONTROLLER_LOST meeting that the controller still reports becomes ACTIVE again.
        NotFound if not registered."""
        ...

    async def reconcile_controller(
        self, controller_id: ControllerId, listed: Collection[MeetingId]
    ) -> Reconciliation:
        """Compare ``listed``, every meeting live on the controller by its own account, with
        the store: those ended here, placed elsewhere or unknown, and the controller's ACTIVE
        meetings (at most :data:`MAX_LIST_ROWS`, newest first) missing from the list, whose
        participant counts become 0 (docs/protocol.md §14)."""
        ...

    async def get_controller(self, controller_id: ControllerId) -> ControllerRecord:
        """NotFound if not registered."""
        ...

    async def list_controllers(self, *, region: str | None = None) -> list[ControllerRecord]:
        """Registered controllers (at most :data:`MAX_LIST_ROWS`), by id. Use
        ``placement.effective_health`` to judge staleness."""
        ...

    async def expire_controllers(self, older_than: datetime) -> list[ControllerId]:
        """Mark UNHEALTHY every controller not yet so whose last heartbeat is before
        ``older_than``, and mark their ACTIVE meetings CONTROLLER_LOST. Returns the ids
        newly expired. Safe to run from several GC replicas at once."""
        ...

    async def expire_controller(self, controller_id: ControllerId, silent_since: datetime) -> bool:
        """Mark one controller as :meth:`expire_controllers` does (UNHEALTHY, its ACTIVE
        meetings CONTROLLER_LOST) now, if it is not so yet and was not heard from (heartbeat or
        registration) after ``silent_since``: the GC found it unreachable (docs/protocol.md
        §14). Returns whether it was marked; False also for an unknown controller."""
        ...

    # -- API clients ----------------------------------------------------------------------
    async def add_client(self, client: ClientRecord) -> None:
        """Conflict if the id or the name is taken."""
        ...

    async def get_client(self, client_id: ClientId) -> ClientRecord:
        """NotFound if unknown."""
        ...

    async def list_clients(self) -> list[ClientRecord]:
        """Every client (at most :data:`MAX_LIST_ROWS`), by name."""
        ...

    async def remove_client(self, client_id: ClientId) -> None:
        """NotFound if unknown."""
        ...

    # -- webhooks (docs/protocol.md §18.5) ---------------------------------------------------
    async def create_webhook(
        self,
        client_id: ClientId,
        url: str,
        events: Sequence[str],
        *,
        new_secret: str,
        max_per_client: int,
    ) -> tuple[WebhookRecord, str]:
        """Register a webhook of ``client_id``; returns it and the client's signing secret
        (``new_secret`` when it has none yet). ``Conflict`` when it has ``max_per_client``
        webhooks (checked atomically, whatever the replicas)."""
        ...

    async def list_webhooks(self, client_id: ClientId) -> list[WebhookRecord]:
        """The client's webhooks, oldest first."""
        ...

    async def delete_webhook(self, client_id: ClientId, webhook_id: str) -> None:
        """Remove the client's webhook and its deliveries; ``NotFound`` (also for another
        client's)."""
        ...

    async def record_events(
        self,
        events: Sequence[WebhookEvent],
        *,
        max_pending: int,
        keep: int,
        controller_id: str | None = None,
    ) -> Fanout:
        """In one transaction: keep each new event id and queue a delivery per webhook of the
        meeting's owner that takes the event (``dropped`` beyond ``max_pending`` pending);
        an id already kept, an unknown meeting, or a meeting ``controller_id`` (the MC that
        reports; None for the GC's own events) neither holds nor held, does nothing. Each
        webhook keeps its newest ``keep`` deliveries (and every pending one)."""
        ...

    async def purge_webhook_events(self, received_before: datetime) -> int:
        """Forget event ids received before ``received_before``."""
        ...

    async def claim_deliveries(
        self, owner: str, *, limit: int, lease_s: float
    ) -> tuple[list[ClaimedDelivery], datetime | None]:
        """Lease to ``owner`` up to ``limit`` webhooks with a due delivery (one delivery each,
        the oldest due) for ``lease_s``; also when the next delivery not leased is due."""
        ...

    async def finish_delivery(
        self,
        claimed: ClaimedDelivery,
        owner: str,
        attempt: DeliveryAttempt,
        *,
        retry_base_s: float,
        max_attempts: int,
    ) -> DeliveryStatus | None:
        """Record an attempt (delivered; pending again after the backoff; failed after
        ``max_attempts``) and release the webhook's lease; None if the delivery is gone."""
        ...

    async def list_deliveries(
        self, client_id: ClientId, webhook_id: str, *, limit: int
    ) -> tuple[list[DeliveryRecord], bool]:
        """The webhook's deliveries, newest first, at most ``limit``, and whether there are
        more. ``NotFound`` for another client's webhook."""
        ...

    # -- lifecycle ------------------------------------------------------------------------
    async def schema_version(self) -> int:
        """The highest migration applied to this database."""
        ...

    async def aclose(self) -> None:
        """Release the connections. Idempotent; releases them even when cancelled."""
        ...
