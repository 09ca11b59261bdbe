"""The store's SQL for the controller registry: registrations, heartbeats (with the counts
of their meetings) and expiry of silent controllers (see ``_rows.py`` for how queries run)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from darktower.model import ControllerId, MeetingId

from ._dialect import Tx
from ._meeting_queries import set_counts
from ._models import ControllerCapacity, ControllerRecord, HealthStatus, MeetingStatus
from ._protocol import MAX_LIST_ROWS
from ._rows import CONTROLLER_COLS, controller_record, get_controller


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
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
        "ON CONFLICT (controller_id) DO UPDATE SET region = excluded.region, "
        "endpoint = excluded.endpoint, max_meetings = excluded.max_meetings, "
        "current_meetings = excluded.current_meetings, "
        "max_participants = excluded.max_participants, "
        "current_participants = excluded.current_participants, health = excluded.health, "
        "last_heartbeat = excluded.last_heartbeat, registered_at = excluded.registered_at, "
        "expired_at = NULL",
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
    now: datetime,
) -> ControllerRecord:
    changed = tx.run(
        "UPDATE controllers SET max_meetings = ?, current_meetings = ?, max_participants = ?, "
        "current_participants = ?, health = ?, last_heartbeat = ?, expired_at = NULL "
        "WHERE controller_id = ?",
        (
            capacity.max_meetings,
            capacity.current_meetings,
            capacity.max_participants,
            capacity.current_participants,
            int(health),
            tx.dialect.ts_in(now),
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
        tx.run(
            "UPDATE meetings SET status = ? WHERE controller_id = ? AND status = ?",
            (MeetingStatus.CONTROLLER_LOST.value, controller_id, MeetingStatus.ACTIVE.value),
        )
    return expired
