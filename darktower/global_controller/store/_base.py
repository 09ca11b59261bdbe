"""The async face shared by both SQL backends: each method is one transaction in a thread."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from darktower.errors import Conflict
from darktower.model import ClientId, ControllerId, MeetingId

from . import (
    _client_queries,
    _controller_queries,
    _join_queries,
    _limit_queries,
    _meeting_queries,
    _migrations,
    _rows,
    _webhook_queries,
)
from ._dialect import Dialect, Tx
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
from ._protocol import MAX_LIST_ROWS
from ._webhook_queries import Fanout

T = TypeVar("T")
# Connections (and worker threads) per PostgreSQL store. A call beyond this waits for a free
# connection: backpressure, never an unbounded queue of threads.
DEFAULT_POOL_SIZE = 4
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SqlStore(abc.ABC):
    """Implements :class:`~darktower.global_controller.store.Store` over a backend's
    :meth:`_transact`, which runs a function in one transaction in a worker thread."""

    dialect: Dialect

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or utc_now

    @abc.abstractmethod
    async def _transact(self, fn: Callable[[Tx], T], *, single_read: bool = False) -> T:
        """Run ``fn`` in a worker thread inside one transaction: commit on return, roll
        back on error. ``single_read``: ``fn`` runs exactly one statement, which is atomic on
        its own, so the backend may skip BEGIN/COMMIT (two round trips on PostgreSQL, the
        write lock on SQLite for a SELECT): a SELECT, or a write that may run again harmlessly
        when the connection broke under it (PostgreSQL then retries it on a fresh one).
        Raises ``trio.ClosedResourceError`` once the store is closed."""

    @abc.abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(
        self, fn: Callable[..., T], *args: Any, conflict: str = "", single_read: bool = False
    ) -> T:
        try:
            return await self._transact(lambda tx: fn(tx, *args), single_read=single_read)
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise Conflict(conflict or "already exists") from exc
            raise

    # -- meetings ---------------------------------------------------------------------------
    async def create_meeting(
        self, new: NewMeeting, *, max_active_per_owner: int | None = None
    ) -> MeetingRecord:
        return await self._call(
            _meeting_queries.create_meeting,
            new,
            self._clock(),
            max_active_per_owner,
            conflict=f"meeting {new.meeting_id} already exists",
        )

    async def get_meeting(self, meeting_id: MeetingId) -> MeetingRecord:
        return await self._call(_rows.get_meeting, meeting_id, single_read=True)

    async def list_meetings(
        self,
        *,
        owner: ClientId | None = None,
        active: bool | None = None,
        controller_id: ControllerId | None = None,
        before: datetime | None = None,
        limit: int = MAX_LIST_ROWS,
    ) -> list[MeetingRecord]:
        return await self._call(
            _meeting_queries.list_meetings,
            owner,
            active,
            controller_id,
            before,
            limit,
            single_read=True,
        )

    async def end_meeting(
        self, meeting_id: MeetingId, reason: EndReason = EndReason.OWNER
    ) -> MeetingRecord:
        return await self._call(_meeting_queries.end_meeting, meeting_id, self._clock(), reason)

    async def end_empty_meetings(self, empty_before: datetime) -> list[MeetingRecord]:
        return await self._call(_meeting_queries.end_empty_meetings, empty_before, self._clock())

    async def record_join(
        self, meeting_id: MeetingId, token_id: str, identity: str, expires_at: datetime
    ) -> frozenset[str]:
        return await self._call(
            _join_queries.record_join, meeting_id, token_id, identity, expires_at, self._clock()
        )

    async def record_blocks(self, controller_id: str, blocks: Sequence[ReportedBlocks]) -> int:
        return await self._call(_join_queries.record_blocks, controller_id, list(blocks))

    async def ban_token_holder(
        self, meeting_id: MeetingId, token_id: str, until: datetime
    ) -> str | None:
        return await self._call(_join_queries.ban_token_holder, meeting_id, token_id, until)

    async def join_tokens_of(
        self, meeting_id: MeetingId, identity: str, *, limit: int
    ) -> list[IssuedJoinToken]:
        return await self._call(
            _join_queries.join_tokens_of,
            meeting_id,
            identity,
            self._clock(),
            limit,
            single_read=True,
        )

    async def purge_expired(self) -> int:
        return await self._call(_join_queries.purge_expired, self._clock())

    async def move_meeting(
        self,
        meeting_id: MeetingId,
        expected: tuple[ControllerId | None, MeetingStatus],
        to: tuple[ControllerId, MeetingStatus],
    ) -> MeetingRecord | None:
        return await self._call(
            _meeting_queries.move_meeting, meeting_id, expected, to, self._clock()
        )

    # -- the shared request rate limit -------------------------------------------------------
    async def spend_request_token(
        self, key: str, *, now: float, rate_per_s: float, burst: float
    ) -> RateBucket:
        # One statement: on PostgreSQL one round trip, no BEGIN/COMMIT. Run again after a
        # broken connection, it counts the request twice at worst.
        return await self._call(
            _limit_queries.spend_token, key, now, rate_per_s, burst, single_read=True
        )

    async def purge_rate_limits(self, unused_since: float) -> int:
        return await self._call(_limit_queries.purge_rate_limits, unused_since)

    # -- controllers ------------------------------------------------------------------------
    async def register_controller(
        self,
        controller_id: ControllerId,
        region: str,
        endpoint: str,
        capacity: ControllerCapacity,
    ) -> ControllerRecord:
        return await self._call(
            _controller_queries.register_controller,
            controller_id,
            region,
            endpoint,
            capacity,
            self._clock(),
        )

    async def record_heartbeat(
        self,
        controller_id: ControllerId,
        capacity: ControllerCapacity,
        health: HealthStatus,
        participant_counts: Mapping[MeetingId, int] | None = None,
        *,
        draining: bool = False,
    ) -> ControllerRecord:
        return await self._call(
            _controller_queries.record_heartbeat,
            controller_id,
            capacity,
            health,
            dict(participant_counts or {}),
            draining,
            self._clock(),
        )

    async def reconcile_controller(
        self, controller_id: ControllerId, listed: Collection[MeetingId]
    ) -> Reconciliation:
        return await self._call(
            _controller_queries.reconcile_controller, controller_id, listed, self._clock()
        )

    async def get_controller(self, controller_id: ControllerId) -> ControllerRecord:
        return await self._call(_rows.get_controller, controller_id, single_read=True)

    async def list_controllers(self, *, region: str | None = None) -> list[ControllerRecord]:
        return await self._call(_controller_queries.list_controllers, region, single_read=True)

    async def expire_controllers(self, older_than: datetime) -> list[ControllerId]:
        return await self._call(_controller_queries.expire_controllers, older_than, self._clock())

    async def expire_controller(self, controller_id: ControllerId, silent_since: datetime) -> bool:
        return await self._call(
            _controller_queries.expire_controller, controller_id, silent_since, self._clock()
        )

    # -- clients ----------------------------------------------------------------------------
    async def add_client(self, client: ClientRecord) -> None:
        await self._call(
            _client_queries.add_client,
            client,
            conflict=f"a client with id {client.client_id} or name {client.name!r} exists",
        )

    async def get_client(self, client_id: ClientId) -> ClientRecord:
        return await self._call(_rows.get_client, client_id, single_read=True)

    async def list_clients(self) -> list[ClientRecord]:
        return await self._call(_client_queries.list_clients, single_read=True)

    async def remove_client(self, client_id: ClientId) -> None:
        await self._call(_client_queries.remove_client, client_id)

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
        return await self._call(
            _webhook_queries.create_webhook,
            client_id,
            url,
            tuple(events),
            new_secret,
            self._clock(),
            max_per_client,
        )

    async def list_webhooks(self, client_id: ClientId) -> list[WebhookRecord]:
        return await self._call(_webhook_queries.list_webhooks, client_id, single_read=True)

    async def delete_webhook(self, client_id: ClientId, webhook_id: str) -> None:
        await self._call(_webhook_queries.delete_webhook, client_id, webhook_id)

    async def record_events(
        self,
        events: Sequence[WebhookEvent],
        *,
        max_pending: int,
        keep: int,
        controller_id: str | None = None,
    ) -> Fanout:
        return await self._call(
            _webhook_queries.record_events,
            list(events),
            self._clock(),
            max_pending,
            keep,
            controller_id,
        )

    async def purge_webhook_events(self, received_before: datetime) -> int:
        return await self._call(_webhook_queries.purge_webhook_events, received_before)

    async def claim_deliveries(
        self, owner: str, *, limit: int, lease_s: float
    ) -> tuple[list[ClaimedDelivery], datetime | None]:
        return await self._call(
            _webhook_queries.claim_deliveries, owner, self._clock(), limit, lease_s
        )

    async def finish_delivery(
        self,
        claimed: ClaimedDelivery,
        owner: str,
        attempt: DeliveryAttempt,
        *,
        retry_base_s: float,
        max_attempts: int,
    ) -> DeliveryStatus | None:
        return await self._call(
            _webhook_queries.finish_delivery,
            claimed,
            owner,
            attempt,
            self._clock(),
            retry_base_s,
            max_attempts,
        )

    async def list_deliveries(
        self, client_id: ClientId, webhook_id: str, *, limit: int
    ) -> tuple[list[DeliveryRecord], bool]:
        return await self._call(_webhook_queries.list_deliveries, client_id, webhook_id, limit)

    # -- lifecycle --------------------------------------------------------------------------
    async def schema_version(self) -> int:
        return await self._call(_migrations.current_version)

    async def _migrate(self) -> list[int]:
        """Apply pending migrations (the backend's ``_transact`` supplies the lock)."""
        now = self._clock()
        # Not through _call: a uniqueness error here is a broken migration, not a Conflict.
        return await self._transact(lambda tx: _migrations.apply_migrations(tx, now))
