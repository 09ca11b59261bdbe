"""The store's SQL for the controller registry: registrations, heartbeats (with the counts
of their meetings and whether they drain), reconciliation of the meetings a controller lists
with the store's, and expiry of silent or unreachable controllers (see ``_rows.py`` for how queries run)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from darktower.model import ControllerId, MeetingId

from ._dialect import Tx
from ._meeting_queries import set_counts
from ._models import (
    ControllerCapacity,
    ControllerRecord,
    HealthStatus,
    MeetingRecord,
    MeetingStatus,
    Reconciliation,
)
from ._protocol import MAX_LIST_ROWS
from ._rows import CONTROLLER_COLS, MEETING_COLS, controller_record, get_controller, meeting_record


def register_controller(
    tx: Tx,
    controller_id: ControllerId,
    region: str,
    endpoint: str,
    capacity: ControllerCapacity,
    now: datetime,
) -> ControllerRecord:
    stamp = tx.dialect.ts_in(now)
    tx.run(
        f"INSERT INTO controllers ({CONTROLLER_COLS}, expired_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE, NULL) "
        "ON CONFLICT (controller_id) DO UPDATE SET region = excluded.region, "
        "endpoint = excluded.endpoint, max_meetings = excluded.max_meetings, "
        "current_meetings = excluded.current_meetings, "
        "max_participants = excluded.max_participants, "
        "current_participants = excluded.current_participants, health = excluded.health, "
        "last_heartbeat = excluded.last_heartbeat, registered_at = excluded.registered_at, "
        "draining = FALSE, expired_at = NULL",
        (
            controller_id,
            region,
            endpoint,
            capacity.max_meetings,
            capacity.current_meetings,
            capacity.max_participants,
            capacity.current_participants,
            int(HealthStatus.HEALTHY),
            stamp,
            stamp,
        ),
    )
    return get_controller(tx, controller_id)


def record_heartbeat(
    tx: Tx,
    controller_id: ControllerId,
    capacity: ControllerCapacity,
    health: HealthStatus,
    counts: Mapping[MeetingId, int],
    draining: bool,
    now: datetime,
) -> ControllerRecord:
    changed = tx.run(
        "UPDATE controllers SET max_meetings = ?, current_meetings = ?, max_participants = ?, "
        "current_participants = ?, health = ?, last_heartbeat = ?, draining = ?, "
        "expired_at = NULL WHERE controller_id = ?",
        (
            capacity.max_meetings,
            capacity.current_meetings,
            capacity.max_participants,
            capacity.current_participants,
            int(health),
            tx.dialect.ts_in(now),
            draining,
            controller_id,
        ),
    )
    if changed == 0:
        get_controller(tx, controller_id)  # raises NotFound
    set_counts(tx, counts, controller_id, now)
    return get_controller(tx, controller_id)


def list_controllers(tx: Tx, region: str | None) -> list[ControllerRecord]:
    clause, params = ("WHERE region = ?", [region]) if region is not None else ("", [])
    rows = tx.all(
        f"SELECT {CONTROLLER_COLS} FROM controllers {clause} ORDER BY controller_id LIMIT ?",
        [*params, MAX_LIST_ROWS],
    )
    return [controller_record(tx, row) for row in rows]


def expire_controllers(tx: Tx, older_than: datetime, now: datetime) -> list[ControllerId]:
    # ``expired_at IS NULL`` makes this report each loss once, even with several replicas
    # sweeping: PostgreSQL re-checks the condition after waiting for a concurrent update.
    rows = tx.all(
        "UPDATE controllers SET health = ?, expired_at = ? "
        "WHERE last_heartbeat < ? AND expired_at IS NULL RETURNING controller_id",
        (int(HealthStatus.UNHEALTHY), tx.dialect.ts_in(now), tx.dialect.ts_in(older_than)),
    )
    expired = sorted(ControllerId(row[0]) for row in rows)
    for controller_id in expired:
        _lose_meetings(tx, controller_id)
    return expired


def expire_controller(
    tx: Tx, controller_id: ControllerId, silent_since: datetime, now: datetime
) -> bool:
    # The same state as ``expire_controllers``, for one controller found unreachable, unless it
    # was heard from after ``silent_since`` (a heartbeat or a registration: it is back).
    changed = tx.run(
        "UPDATE controllers SET health = ?, expired_at = ? "
        "WHERE controller_id = ? AND last_heartbeat <= ? AND expired_at IS NULL",
        (
            int(HealthStatus.UNHEALTHY),
            tx.dialect.ts_in(now),
            controller_id,
            tx.dialect.ts_in(silent_since),
        ),
    )
    if changed:
        _lose_meetings(tx, controller_id)
    return changed > 0


def _lose_meetings(tx: Tx, controller_id: ControllerId) -> None:
    tx.run(
        "UPDATE meetings SET status = ? WHERE controller_id = ? AND status = ?",
        (MeetingStatus.CONTROLLER_LOST.value, controller_id, MeetingStatus.ACTIVE.value),
    )


# Listed meeting ids are looked up this many at a time (one IN list each): SQLite allows
# 32,766 parameters per statement, and a heartbeat lists at most 10,000 meetings.
_LOOKUP_CHUNK = 500


def reconcile_controller(
    tx: Tx, controller_id: ControllerId, listed: Collection[MeetingId], now: datetime
) -> Reconciliation:
    """Compare the meetings ``controller_id`` listed as every meeting live on it with the
    store (docs/protocol.md §14). Its ACTIVE meetings that the list lacks get a participant
    count of 0 (their emptiness starts now unless it had started): nobody is in a meeting its
    controller does not hold."""
    wanted = sorted(set(listed))
    found: dict[str, MeetingRecord] = {}
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        for row in tx.all(
            f"SELECT {MEETING_COLS} FROM meetings WHERE meeting_id IN ({marks})", chunk
        ):
            record = meeting_record(tx, row)
            found[record.meeting_id] = record
    ended = [found[m] for m in wanted if m in found and not found[m].is_active]
    elsewhere = [
        found[m]
        for m in wanted
        if m in found and found[m].is_active and found[m].controller_id != controller_id
    ]
    rows = tx.all(
        f"SELECT {MEETING_COLS} FROM meetings WHERE controller_id = ? AND status = ? "
        "ORDER BY created_at DESC, meeting_id DESC LIMIT ?",
        (controller_id, MeetingStatus.ACTIVE.value, MAX_LIST_ROWS),
    )
    present = set(wanted)
    unlisted = [r for r in (meeting_record(tx, row) for row in rows) if r.meeting_id not in present]
    stamp = tx.dialect.ts_in(now)
    for record in unlisted:  # in the SELECT's order, the same on every replica
        tx.run(
            "UPDATE meetings SET participant_count = 0, empty_since = COALESCE(empty_since, ?) "
            "WHERE meeting_id = ? AND controller_id = ? AND status = ? "
            "AND (participant_count <> 0 OR empty_since IS NULL)",
            (stamp, record.meeting_id, controller_id, MeetingStatus.ACTIVE.value),
        )
    return Reconciliation(
        ended=ended,
        elsewhere=elsewhere,
        unknown=[MeetingId(m) for m in wanted if m not in found],
        unlisted=unlisted,
    )
