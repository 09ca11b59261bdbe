"""The store's SQL for webhooks (docs/protocol.md §18.5): registrations and their client's
signing secret, events received (each id once), and the queue of deliveries with its log
(see ``_rows.py`` for how queries run).

A fan-out writes the event's id and one delivery per webhook in the transaction of the
request or report that made the event. Replicas sharing a database never both send one
webhook's deliveries: a replica leases the webhook's row (``lease_until``, ``lease_owner``)
for its attempt, with a compare-and-set, and gives it back with the attempt's outcome.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from darktower.errors import Conflict, NotFound
from darktower.global_controller._webhook_limits import MAX_DELIVERY_ERROR, MAX_RETRY_DELAY_S
from darktower.model import ClientId, MeetingId

from ._dialect import Row, Tx
from ._meeting_queries import held_by
from ._models import (
    ClaimedDelivery,
    DeliveryAttempt,
    DeliveryRecord,
    DeliveryStatus,
    WebhookEvent,
    WebhookRecord,
)
from ._protocol import MAX_LIST_ROWS

WEBHOOK_COLS = "webhook_id, client_id, url, events, created_at"
DELIVERY_COLS = (
    "delivery_id, webhook_id, event_id, event, status, attempts, response_status, error, "
    "created_at, next_attempt_at, delivered_at"
)
_PENDING = DeliveryStatus.PENDING.value
BACKLOG_FULL = "backlog full"


@attrs.frozen
class Fanout:
    """What :func:`record_events` did with a batch."""

    stored: int = 0  # events new to the store (and taken by a webhook)
    repeated: int = 0  # ids already received: nothing done
    unknown_meeting: int = 0  # of no meeting the store has: skipped
    foreign: int = 0  # of a meeting the reporting controller never held: skipped
    enqueued: int = 0  # deliveries pending
    dropped: int = 0  # deliveries recorded dropped (a backlog was full)


def _webhook(tx: Tx, row: Row) -> WebhookRecord:
    return WebhookRecord(
        webhook_id=str(row[0]),
        client_id=ClientId(row[1]),
        url=str(row[2]),
        events=tuple(e for e in str(row[3]).split(",") if e),
        created_at=tx.dialect.ts_out(row[4]),
    )


def _delivery(tx: Tx, row: Row) -> DeliveryRecord:
    return DeliveryRecord(
        delivery_id=str(row[0]),
        webhook_id=str(row[1]),
        event_id=str(row[2]),
        event=str(row[3]),
        status=DeliveryStatus(row[4]),
        attempts=int(row[5]),
        response_status=None if row[6] is None else int(row[6]),
        error=str(row[7]),
        created_at=tx.dialect.ts_out(row[8]),
        next_attempt_at=tx.dialect.ts_out_opt(row[9]),
        delivered_at=tx.dialect.ts_out_opt(row[10]),
    )


# -- registrations ------------------------------------------------------------------------------
def create_webhook(
    tx: Tx,
    client_id: ClientId,
    url: str,
    events: Sequence[str],
    new_secret: str,
    now: datetime,
    max_per_client: int,
) -> tuple[WebhookRecord, str]:
    """Register a webhook; returns it and the client's signing secret (``new_secret`` if this
    is the client's first webhook ever). ``Conflict`` when the client has ``max_per_client``."""
    if tx.dialect.owner_lock_sql:  # serialises one client's registrations (count, then insert)
        tx.one(tx.dialect.owner_lock_sql, (client_id,))
    row = tx.one("SELECT COUNT(*) FROM webhooks WHERE client_id = ?", (client_id,))
    if row is not None and int(row[0]) >= max_per_client:
        raise Conflict(
            f"client {client_id} has {max_per_client} webhooks, the most allowed: delete one first",
            details={"max_webhooks": str(max_per_client)},
        )
    stamp = tx.dialect.ts_in(now)
    tx.run(
        "INSERT INTO webhook_secrets (client_id, secret, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT (client_id) DO NOTHING",
        (client_id, new_secret, stamp),
    )
    found = tx.one("SELECT secret FROM webhook_secrets WHERE client_id = ?", (client_id,))
    if found is None:  # inserted just above, or there already
        raise RuntimeError(f"no signing secret for client {client_id}")
    webhook_id = str(uuid.uuid4())
    names = ",".join(sorted(set(events)))
    tx.run(
        f"INSERT INTO webhooks ({WEBHOOK_COLS}, next_seq) VALUES (?, ?, ?, ?, ?, 0)",
        (webhook_id, client_id, url, names, stamp),
    )
    record = WebhookRecord(webhook_id, client_id, url, tuple(sorted(set(events))), now)
    return record, str(found[0])


def list_webhooks(tx: Tx, client_id: ClientId) -> list[WebhookRecord]:
    rows = tx.all(
        f"SELECT {WEBHOOK_COLS} FROM webhooks WHERE client_id = ? "
        "ORDER BY created_at, webhook_id LIMIT ?",
        (client_id, MAX_LIST_ROWS),
    )
    return [_webhook(tx, row) for row in rows]


def _owned(tx: Tx, client_id: ClientId, webhook_id: str) -> None:
    row = tx.one(
        "SELECT 1 FROM webhooks WHERE webhook_id = ? AND client_id = ?", (webhook_id, client_id)
    )
    if row is None:  # another client's is not found either: ids are not disclosed
        raise NotFound(f"webhook {webhook_id} not found", details={"webhook_id": webhook_id})


def delete_webhook(tx: Tx, client_id: ClientId, webhook_id: str) -> None:
    """Remove the client's webhook and its deliveries (the pending ones are never sent; one in
    flight finishes, and its outcome is recorded nowhere). ``NotFound``."""
    _owned(tx, client_id, webhook_id)
    # The webhook's row first: a fan-out locks it before its deliveries (no cycle of waits).
    tx.run("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,))
    tx.run("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))


def remove_client_webhooks(tx: Tx, client_id: ClientId) -> None:
    """A client removed takes its webhooks, their deliveries and its secret with it."""
    rows = tx.all("SELECT webhook_id FROM webhooks WHERE client_id = ?", (client_id,))
    tx.run("DELETE FROM webhooks WHERE client_id = ?", (client_id,))
    for (webhook_id,) in rows:
        tx.run("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
    tx.run("DELETE FROM webhook_secrets WHERE client_id = ?", (client_id,))


# -- fan-out --------------------------------------------------------------------------------------
class _Fanning:
    """One transaction's fan-out: owners and webhooks read once, pending counts kept."""

    def __init__(self, tx: Tx, now: datetime, max_pending: int) -> None:
        self.tx = tx
        self.stamp = tx.dialect.ts_in(now)
        self.max_pending = max_pending
        self.owners: dict[MeetingId, ClientId | None] = {}
        self.holders: dict[tuple[MeetingId, str], bool] = {}
        self.webhooks: dict[ClientId, list[WebhookRecord]] = {}
        self.pending: dict[str, int] = {}
        self.seq: dict[str, int] = {}  # the next delivery number reserved, per webhook
        self.touched: set[str] = set()

    def owner(self, meeting_id: MeetingId) -> ClientId | None:
        if meeting_id not in self.owners:
            row = self.tx.one(
                "SELECT owner_client_id FROM meetings WHERE meeting_id = ?", (meeting_id,)
            )
            self.owners[meeting_id] = None if row is None else ClientId(row[0])
        return self.owners[meeting_id]

    def held(self, meeting_id: MeetingId, controller_id: str) -> bool:
        """Whether the meeting is or was on ``controller_id`` (its current controller, or
        one it was placed on before a move)."""
        key = (meeting_id, controller_id)
        if key not in self.holders:
            self.holders[key] = held_by(self.tx, meeting_id, controller_id)
        return self.holders[key]

    def subscribed(self, owner: ClientId, event: str) -> list[WebhookRecord]:
        if owner not in self.webhooks:
            self.webhooks[owner] = list_webhooks(self.tx, owner)
        return [w for w in self.webhooks[owner] if event in w.events]

    def lock(self, wanted: Counter[str]) -> None:
        """Reserve ``wanted[w]`` delivery numbers of each webhook ``w``. Updating a row locks
        it until the end of the transaction: one fan-out to a webhook at a time, so its
        pending count stays true (PostgreSQL; SQLite holds the database's write lock). The
        rows are locked in webhook id order, as :func:`claim_deliveries` does: two
        transactions never wait for each other in a cycle."""
        for webhook_id in sorted(wanted):
            rows = self.tx.all(
                "UPDATE webhooks SET next_seq = next_seq + ? WHERE webhook_id = ? "
                "RETURNING next_seq",
                (wanted[webhook_id], webhook_id),
            )
            if rows:  # else deleted meanwhile: nothing for it
                self.seq[webhook_id] = int(rows[0][0]) - wanted[webhook_id] + 1

    def enqueue(self, webhook_id: str, event: WebhookEvent) -> DeliveryStatus | None:
        tx = self.tx
        if webhook_id not in self.seq:
            return None
        seq = self.seq[webhook_id]
        self.seq[webhook_id] += 1
        if webhook_id not in self.pending:
            row = tx.one(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ? AND status = ?",
                (webhook_id, _PENDING),
            )
            self.pending[webhook_id] = 0 if row is None else int(row[0])
        full = self.pending[webhook_id] >= self.max_pending
        status = DeliveryStatus.DROPPED if full else DeliveryStatus.PENDING
        tx.run(
            f"INSERT INTO webhook_deliveries ({DELIVERY_COLS}, seq, body) "
            "VALUES (?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, NULL, ?, ?)",
            (
                str(uuid.uuid4()),
                webhook_id,
                event.event_id,
                event.event,
                status.value,
                BACKLOG_FULL if full else "",
                self.stamp,
                None if full else self.stamp,
                seq,
                event.body,
            ),
        )
        if not full:
            self.pending[webhook_id] += 1
        self.touched.add(webhook_id)
        return status


def record_events(
    tx: Tx,
    events: Sequence[WebhookEvent],
    now: datetime,
    max_pending: int,
    keep: int,
    controller_id: str | None,
) -> Fanout:
    """Keep each new event's id and queue one delivery of it per webhook of its meeting's
    owner that takes its name (an event no webhook takes is not kept): pending, or dropped
    when that webhook already has ``max_pending`` pending. An id already received, an event
    of a meeting the store does not have, or one reported by a controller (``controller_id``;
    None: the GC's own event) the meeting never was on, does nothing. Then each webhook
    written to keeps its newest ``keep`` deliveries and the pending ones."""
    fan = _Fanning(tx, now, max_pending)
    stored = repeated = unknown = foreign = enqueued = dropped = 0
    planned: list[tuple[WebhookEvent, list[WebhookRecord]]] = []
    for event in events:
        owner = fan.owner(event.meeting_id)
        if owner is None:
            unknown += 1
            continue
        if controller_id is not None and not fan.held(event.meeting_id, controller_id):
            foreign += 1
            continue
        webhooks = fan.subscribed(owner, event.event)
        if webhooks:  # else nobody takes it: its id need not be kept either
            planned.append((event, webhooks))
    fan.lock(Counter(w.webhook_id for _, webhooks in planned for w in webhooks))
    for event, webhooks in planned:
        new = tx.run(
            "INSERT INTO webhook_events (event_id, meeting_id, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (event.event_id, event.meeting_id, fan.stamp),
        )
        if not new:
            repeated += 1
            continue
        stored += 1
        for webhook in webhooks:
            status = fan.enqueue(webhook.webhook_id, event)
            if status is DeliveryStatus.PENDING:
                enqueued += 1
            elif status is DeliveryStatus.DROPPED:
                dropped += 1
    for webhook_id in sorted(fan.touched):
        _prune(tx, webhook_id, keep)
    return Fanout(stored, repeated, unknown, foreign, enqueued, dropped)


def _prune(tx: Tx, webhook_id: str, keep: int) -> None:
    row = tx.one(
        "SELECT seq FROM webhook_deliveries WHERE webhook_id = ? "
        "ORDER BY seq DESC LIMIT 1 OFFSET ?",
        (webhook_id, keep - 1),
    )
    if row is not None:
        tx.run(
            "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND seq < ? AND status <> ?",
            (webhook_id, int(row[0]), _PENDING),
        )


def purge_webhook_events(tx: Tx, received_before: datetime) -> int:
    """Forget the ids of events received before ``received_before``; returns how many."""
    return tx.run(
        "DELETE FROM webhook_events WHERE received_at < ?", (tx.dialect.ts_in(received_before),)
    )


# -- the delivery task ----------------------------------------------------------------------------
_UNLEASED = "(w.lease_until IS NULL OR w.lease_until < ?)"


def claim_deliveries(
    tx: Tx, owner: str, now: datetime, limit: int, lease_s: float
) -> tuple[list[ClaimedDelivery], datetime | None]:
    """Lease up to ``limit`` webhooks with a due pending delivery to ``owner`` (a replica)
    for ``lease_s`` and return the oldest due delivery of each; also when the next pending
    delivery of a webhook not leased is due (None: none is pending)."""
    stamp = tx.dialect.ts_in(now)
    claimed: list[ClaimedDelivery] = []
    if limit > 0:
        candidates = tx.all(
            "SELECT d.webhook_id, MIN(d.next_attempt_at) FROM webhook_deliveries d "
            "JOIN webhooks w ON w.webhook_id = d.webhook_id "
            f"WHERE d.status = ? AND d.next_attempt_at <= ? AND {_UNLEASED} "
            "GROUP BY d.webhook_id ORDER BY MIN(d.next_attempt_at), d.webhook_id LIMIT ?",
            (_PENDING, stamp, stamp, limit),
        )
        until = tx.dialect.ts_in(now + timedelta(seconds=lease_s))
        # Leased in webhook id order, as a fan-out locks them (no cycle of waits).
        for webhook_id in sorted(str(c[0]) for c in candidates):
            found = _claim_one(tx, webhook_id, owner, stamp, until)
            if found is not None:
                claimed.append(found)
    row = tx.one(
        "SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d "
        "JOIN webhooks w ON w.webhook_id = d.webhook_id "
        f"WHERE d.status = ? AND {_UNLEASED}",
        (_PENDING, stamp),
    )
    return claimed, None if row is None else tx.dialect.ts_out_opt(row[0])


def _claim_one(
    tx: Tx, webhook_id: str, owner: str, stamp: object, until: object
) -> ClaimedDelivery | None:
    # A compare-and-set: of two replicas claiming the webhook at once, one gets it.
    leased = tx.run(
        "UPDATE webhooks SET lease_until = ?, lease_owner = ? "
        "WHERE webhook_id = ? AND (lease_until IS NULL OR lease_until < ?)",
        (until, owner, webhook_id, stamp),
    )
    if not leased:
        return None
    row = tx.one(
        "SELECT d.delivery_id, d.event, d.body, d.attempts, w.url, s.secret "
        "FROM webhook_deliveries d JOIN webhooks w ON w.webhook_id = d.webhook_id "
        "JOIN webhook_secrets s ON s.client_id = w.client_id "
        "WHERE d.webhook_id = ? AND d.status = ? AND d.next_attempt_at <= ? "
        "ORDER BY d.next_attempt_at, d.seq LIMIT 1",
        (webhook_id, _PENDING, stamp),
    )
    if row is None:  # sent meanwhile by the replica whose lease had just ended
        _release(tx, webhook_id, owner)
        return None
    return ClaimedDelivery(
        delivery_id=str(row[0]),
        webhook_id=webhook_id,
        event=str(row[1]),
        body=str(row[2]),
        attempts=int(row[3]),
        url=str(row[4]),
        secret=str(row[5]),
    )


def _release(tx: Tx, webhook_id: str, owner: str) -> None:
    tx.run(
        "UPDATE webhooks SET lease_until = NULL, lease_owner = NULL "
        "WHERE webhook_id = ? AND lease_owner = ?",
        (webhook_id, owner),
    )


def retry_delay_s(attempts: int, base_s: float) -> float:
    """The wait after the ``attempts``-th failed attempt: base, 2·base, 4·base, ... capped."""
    return min(base_s * 2.0 ** min(attempts - 1, 62), MAX_RETRY_DELAY_S)


def finish_delivery(
    tx: Tx,
    claimed: ClaimedDelivery,
    owner: str,
    attempt: DeliveryAttempt,
    now: datetime,
    retry_base_s: float,
    max_attempts: int,
) -> DeliveryStatus | None:
    """Record an attempt's outcome and give the webhook's lease back. Returns the delivery's
    status now; None when it is gone (its webhook deleted) or no longer pending."""
    row = tx.one(
        "SELECT attempts FROM webhook_deliveries WHERE delivery_id = ? AND status = ?",
        (claimed.delivery_id, _PENDING),
    )
    _release(tx, claimed.webhook_id, owner)
    if row is None:
        return None
    attempts = int(row[0]) + 1
    stamp = tx.dialect.ts_in(now)
    next_at: object = None
    if attempt.delivered:
        status = DeliveryStatus.DELIVERED
    elif attempts >= max_attempts:
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
        delay = retry_delay_s(attempts, retry_base_s)
        next_at = tx.dialect.ts_in(now + timedelta(seconds=delay))
    tx.run(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, response_status = ?, "
        "error = ?, next_attempt_at = ?, delivered_at = ? WHERE delivery_id = ?",
        (
            status.value,
            attempts,
            attempt.response_status,
            "" if attempt.delivered else attempt.error[:MAX_DELIVERY_ERROR],
            next_at,
            stamp if attempt.delivered else None,
            claimed.delivery_id,
        ),
    )
    return status


def list_deliveries(
    tx: Tx, client_id: ClientId, webhook_id: str, limit: int
) -> tuple[list[DeliveryRecord], bool]:
    """The webhook's deliveries, newest first, at most ``limit``, and whether there are more.
    ``NotFound`` for another client's webhook or none."""
    _owned(tx, client_id, webhook_id)
    rows = tx.all(
        f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE webhook_id = ? "
        "ORDER BY seq DESC LIMIT ?",
        (webhook_id, limit + 1),
    )
    return [_delivery(tx, row) for row in rows[:limit]], len(rows) > limit
