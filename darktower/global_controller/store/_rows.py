"""Reading the store's rows: each table's columns, its record built from a row, and the
lookup of one row by id (``NotFound`` when missing), shared by the queries of every table.

The queries (``_meeting_queries.py``, ``_join_queries.py``, ``_controller_queries.py``,
``_client_queries.py``) are the store's SQL, once for both backends: synchronous functions
over one open transaction, each run inside a worker thread in the transaction the backend
opened for it (a read of one SELECT, ``single_read``, may run as that statement alone).
Uniqueness violations surface as the driver's integrity error; the async layer maps them.
"""

from __future__ import annotations

from darktower.errors import NotFound
from darktower.model import ClientId, ControllerId, MeetingId

from ._dialect import Row, Tx
from ._models import (
    ClientRecord,
    ControllerCapacity,
    ControllerRecord,
    EndReason,
    HealthStatus,
    MeetingRecord,
    MeetingSettings,
    MeetingStatus,
)
from ._protocol import MAX_LIST_ROWS

MEETING_COLS = (
    "meeting_id, display_name, max_participants, enable_e2e_encryption, require_auth, "
    "recording_enabled, owner_client_id, controller_id, status, participant_count, "
    "created_at, ended_at, empty_since, end_reason"
)
CONTROLLER_COLS = (
    "controller_id, region, endpoint, max_meetings, current_meetings, max_participants, "
    "current_participants, health, last_heartbeat, registered_at, draining"
)
CLIENT_COLS = "client_id, name, secret_hash, created_at"


def meeting_record(tx: Tx, row: Row) -> MeetingRecord:
    return MeetingRecord(
        meeting_id=MeetingId(row[0]),
        display_name=row[1],
        max_participants=int(row[2]),
        settings=MeetingSettings(
            enable_e2e_encryption=bool(row[3]),
            require_auth=bool(row[4]),
            recording_enabled=bool(row[5]),
        ),
        owner=ClientId(row[6]),
        controller_id=None if row[7] is None else ControllerId(row[7]),
        status=MeetingStatus(row[8]),
        participant_count=int(row[9]),
        created_at=tx.dialect.ts_out(row[10]),
        ended_at=tx.dialect.ts_out_opt(row[11]),
        empty_since=tx.dialect.ts_out_opt(row[12]),
        end_reason=None if row[13] is None else EndReason(row[13]),
    )


def controller_record(tx: Tx, row: Row) -> ControllerRecord:
    return ControllerRecord(
        controller_id=ControllerId(row[0]),
        region=row[1],
        endpoint=row[2],
        capacity=ControllerCapacity(
            max_meetings=int(row[3]),
            current_meetings=int(row[4]),
            max_participants=int(row[5]),
            current_participants=int(row[6]),
        ),
        health=HealthStatus(int(row[7])),
        last_heartbeat=tx.dialect.ts_out(row[8]),
        registered_at=tx.dialect.ts_out(row[9]),
        draining=bool(row[10]),
    )


def client_record(tx: Tx, row: Row) -> ClientRecord:
    return ClientRecord(
        client_id=ClientId(row[0]),
        name=row[1],
        secret_hash=row[2],
        created_at=tx.dialect.ts_out(row[3]),
    )


def bounded(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return min(limit, MAX_LIST_ROWS)


def get_meeting(tx: Tx, meeting_id: MeetingId) -> MeetingRecord:
    row = tx.one(f"SELECT {MEETING_COLS} FROM meetings WHERE meeting_id = ?", (meeting_id,))
    if row is None:
        raise NotFound(f"meeting {meeting_id} not found", details={"meeting_id": meeting_id})
    return meeting_record(tx, row)


def get_controller(tx: Tx, controller_id: ControllerId) -> ControllerRecord:
    row = tx.one(
        f"SELECT {CONTROLLER_COLS} FROM controllers WHERE controller_id = ?", (controller_id,)
    )
    if row is None:
        raise NotFound(
            f"controller {controller_id} is not registered",
            details={"controller_id": controller_id},
        )
    return controller_record(tx, row)


def get_client(tx: Tx, client_id: ClientId) -> ClientRecord:
    row = tx.one(f"SELECT {CLIENT_COLS} FROM clients WHERE client_id = ?", (client_id,))
    if row is None:
        raise NotFound(f"client {client_id} not found", details={"client_id": client_id})
    return client_record(tx, row)
