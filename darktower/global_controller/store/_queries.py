"""The store's SQL, once for both backends: synchronous functions over one open transaction.

Each function runs inside a worker thread in the transaction the backend opened for it (a
read of one SELECT, ``single_read``, may run as that statement alone).
Uniqueness violations surface as the driver's integrity error; the async layer maps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from darktower.errors import Conflict, Forbidden, NotFound, RateLimited
from darktower.model import ClientId, ControllerId, MeetingId

from ._dialect import Row, Tx
from ._models import (
    ClientRecord,
    ControllerCapacity,
    ControllerRecord,
    EndReason,
    HealthStatus,
    IssuedJoinToken,
    Meeting,
    MeetingSettings,
    MeetingStatus,
    NewMeeting,
)
from ._protocol import MAX_LIST_ROWS

_MEETING_COLS = (
    "meeting_id, display_name, max_participants, enable_e2e_encryption, require_auth, "
    "recording_enabled, owner_client_id, controller_id, status, participant_count, "
    "created_at, ended_at, empty_since, end_reason"
)
_CONTROLLER_COLS = (
    "controller_id, region, endpoint, max_meetings, current_meetings, max_participants, "
    "current_participants, health, last_heartbeat, registered_at"
)
_CLIENT_COLS = "client_id, name, secret_hash, created_at"


def _meeting(tx: Tx, row: Row) -> Meeting:
    return Meeting(
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


def _controller(tx: Tx, row: Row) -> ControllerRecord:
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
    )


def _client(tx: Tx, row: Row) -> ClientRecord:
    return ClientRecord(
        client_id=ClientId(row[0]),
        name=row[1],
        secret_hash=row[2],
        created_at=tx.dialect.ts_out(row[3]),
    )


def _bounded(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return min(limit, MAX_LIST_ROWS)


# -- meetings -------------------------------------------------------------------------------


def get_meeting(tx: Tx, meeting_id: MeetingId) -> Meeting:
    row = tx.one(f"SELECT {_MEETING_COLS} FROM meetings WHERE meeting_id = ?", (meeting_id,))
    if row is None:
        raise NotFound(f"meeting {meeting_id} not found", details={"meeting_id": meeting_id})
    return _meeting(tx, row)


# A client over its cap of active meetings is told to retry after this long: a meeting has to
# end first, and a client retrying blindly is kept to one attempt a minute.
ACTIVE_CAP_RETRY_AFTER_S = 60.0


def _check_owner_cap(tx: Tx, owner: ClientId, cap: int) -> None:
    if tx.dialect.owner_lock_sql:
        tx.one(tx.dialect.owner_lock_sql, (owner,))
    row = tx.one(
        "SELECT COUNT(*) FROM meetings WHERE owner_client_id = ? AND status <> ?",
        (owner, MeetingStatus.ENDED.value),
    )
    active = 0 if row is None else int(row[0])
    if active >= cap:
        raise RateLimited(
            f"client {owner} has {active} active meetings, the most allowed: end one first",
            retry_after_s=ACTIVE_CAP_RETRY_AFTER_S,
            details={"active_meetings": str(active), "max_active_meetings": str(cap)},
        )


def create_meeting(
    tx: Tx, new: NewMeeting, now: datetime, max_active_per_owner: int | None = None
) -> Meeting:
    if new.controller_id is not None:
        get_controller(tx, new.controller_id)
    if max_active_per_owner is not None:
        _check_owner_cap(tx, new.owner, max_active_per_owner)
    stamp = tx.dialect.ts_in(now)
    row = (
        new.meeting_id,
        new.display_name,
        new.max_participants,
        new.settings.enable_e2e_encryption,
        new.settings.require_auth,
        new.settings.recording_enabled,
        new.owner,
        new.controller_id,
        MeetingStatus.ACTIVE.value,
        0,
        stamp,
        None,
        stamp,  # empty from the start
        None,
    )
    tx.run(
        f"INSERT INTO meetings ({_MEETING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    # The row as stored, without reading it back (a query per create saved): both backends
    # keep every column exactly, timestamps to the microsecond.
    return _meeting(tx, row)


def list_meetings(
    tx: Tx,
    owner: ClientId | None,
    active: bool | None,
    controller_id: ControllerId | None,
    before: datetime | None,
    limit: int,
) -> list[Meeting]:
    where: list[str] = []
    params: list[object] = []
    if owner is not None:
        where.append("owner_client_id = ?")
        params.append(owner)
    if active is not None:
        where.append("status <> ?" if active else "status = ?")
        params.append(MeetingStatus.ENDED.value)
    if controller_id is not None:
        where.append("controller_id = ?")
        params.append(controller_id)
    if before is not None:
        where.append("created_at < ?")
        params.append(tx.dialect.ts_in(before))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    params.append(_bounded(limit))
    rows = tx.all(
        f"SELECT {_MEETING_COLS} FROM meetings {clause} "
        "ORDER BY created_at DESC, meeting_id DESC LIMIT ?",
        params,
    )
    return [_meeting(tx, row) for row in rows]


def assign_meeting(tx: Tx, meeting_id: MeetingId, controller_id: ControllerId) -> Meeting:
    meeting = get_meeting(tx, meeting_id)
    get_controller(tx, controller_id)
    if not meeting.is_active:
        raise Conflict(f"meeting {meeting_id} has ended", details={"meeting_id": meeting_id})
    tx.run(
        "UPDATE meetings SET controller_id = ?, status = ? WHERE meeting_id = ?",
        (controller_id, MeetingStatus.ACTIVE.value, meeting_id),
    )
    return get_meeting(tx, meeting_id)


def end_meeting(tx: Tx, meeting_id: MeetingId, now: datetime, reason: EndReason) -> Meeting:
    get_meeting(tx, meeting_id)
    # The status guard keeps the first ending's time when two replicas end it at once.
    tx.run(
        "UPDATE meetings SET status = ?, ended_at = ?, end_reason = ? "
        "WHERE meeting_id = ? AND status <> ?",
        (
            MeetingStatus.ENDED.value,
            tx.dialect.ts_in(now),
            reason.value,
            meeting_id,
            MeetingStatus.ENDED.value,
        ),
    )
    return get_meeting(tx, meeting_id)


def end_empty_meetings(tx: Tx, empty_before: datetime, now: datetime) -> list[Meeting]:
    # Only ACTIVE meetings: a CONTROLLER_LOST one's count is stale. The guards are checked
    # again by each UPDATE, so with several replicas sweeping each meeting ends once, and a
    # meeting joined (or reported busy) since the SELECT is left alone.
    cutoff = tx.dialect.ts_in(empty_before)
    candidates = tx.all(
        "SELECT meeting_id FROM meetings WHERE status = ? AND empty_since < ? "
        "ORDER BY empty_since, meeting_id LIMIT ?",
        (MeetingStatus.ACTIVE.value, cutoff, MAX_LIST_ROWS),
    )
    ended: list[Meeting] = []
    for (meeting_id,) in candidates:
        changed = tx.run(
            "UPDATE meetings SET status = ?, ended_at = ?, end_reason = ? "
            "WHERE meeting_id = ? AND status = ? AND empty_since < ?",
            (
                MeetingStatus.ENDED.value,
                tx.dialect.ts_in(now),
                EndReason.EMPTY.value,
                meeting_id,
                MeetingStatus.ACTIVE.value,
                cutoff,
            ),
        )
        if changed:
            ended.append(get_meeting(tx, MeetingId(meeting_id)))
    return ended


def record_join(
    tx: Tx,
    meeting_id: MeetingId,
    token_id: str,
    identity: str,
    expires_at: datetime,
    now: datetime,
) -> None:
    """A join token for ``identity`` is about to be handed out: ``Forbidden`` while that
    identity is banned from the meeting; else remember who got the token and restart the
    meeting's emptiness."""
    if identity:
        row = tx.one(
            "SELECT until FROM meeting_bans WHERE meeting_id = ? AND identity = ? AND until > ?",
            (meeting_id, identity, tx.dialect.ts_in(now)),
        )
        if row is not None:
            until = tx.dialect.ts_out(row[0])
            raise Forbidden(
                f"you were removed from meeting {meeting_id} and may not join it again before "
                f"{until.isoformat(timespec='seconds')}",
                details={"banned_until": until.isoformat(timespec="seconds")},
            )
        tx.run(
            "INSERT INTO join_tokens (token_id, meeting_id, identity, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (token_id, meeting_id, identity, tx.dialect.ts_in(expires_at)),
        )
    touch_meeting(tx, meeting_id, now)


def ban_token_holder(tx: Tx, meeting_id: MeetingId, token_id: str, until: datetime) -> str | None:
    """Ban the identity that got join token ``token_id`` from the meeting until ``until`` (a
    longer ban already there is kept). Returns that identity; None for a token this store
    has no record of (another deployment's, expired and purged, or the host's)."""
    row = tx.one(
        "SELECT identity FROM join_tokens WHERE token_id = ? AND meeting_id = ?",
        (token_id, meeting_id),
    )
    if row is None:
        return None
    identity = str(row[0])
    stamp = tx.dialect.ts_in(until)
    tx.run(
        "INSERT INTO meeting_bans (meeting_id, identity, until) VALUES (?, ?, ?) "
        "ON CONFLICT (meeting_id, identity) DO UPDATE SET until = excluded.until "
        "WHERE meeting_bans.until < excluded.until",
        (meeting_id, identity, stamp),
    )
    return identity


def join_tokens_of(
    tx: Tx, meeting_id: MeetingId, identity: str, now: datetime, limit: int
) -> list[IssuedJoinToken]:
    """The unexpired join tokens ``identity`` got for the meeting, newest first, at most
    ``limit``."""
    rows = tx.all(
        "SELECT token_id, expires_at FROM join_tokens "
        "WHERE meeting_id = ? AND identity = ? AND expires_at > ? "
        "ORDER BY expires_at DESC, token_id LIMIT ?",
        (meeting_id, identity, tx.dialect.ts_in(now), limit),
    )
    return [IssuedJoinToken(str(r[0]), tx.dialect.ts_out(r[1])) for r in rows]


def purge_expired(tx: Tx, now: datetime) -> int:
    """Forget join tokens and bans that have expired; returns the rows removed."""
    stamp = tx.dialect.ts_in(now)
    removed = tx.run("DELETE FROM join_tokens WHERE expires_at < ?", (stamp,))
    return removed + tx.run("DELETE FROM meeting_bans WHERE until < ?", (stamp,))


def touch_meeting(tx: Tx, meeting_id: MeetingId, now: datetime) -> None:
    """Someone is about to join: an empty meeting's emptiness starts again from ``now``."""
    tx.run(
        "UPDATE meetings SET empty_since = ? WHERE meeting_id = ? AND empty_since IS NOT NULL",
        (tx.dialect.ts_in(now), meeting_id),
    )


# Emptiness as reported: cleared by a count above zero, started (kept if already) at zero.
# Parameters: the count, then now.
_EMPTY_SINCE = "empty_since = CASE WHEN ? > 0 THEN NULL ELSE COALESCE(empty_since, ?) END"


def _set_counts(
    tx: Tx,
    counts: Mapping[MeetingId, int],
    controller_id: ControllerId | None,
    now: datetime,
) -> int:
    changed = 0
    stamp = tx.dialect.ts_in(now)
    for meeting_id, count in sorted(counts.items()):  # sorted: same lock order on every replica
        if count < 0:
            raise ValueError(f"negative participant count {count} for meeting {meeting_id}")
        if controller_id is None:
            changed += tx.run(
                f"UPDATE meetings SET participant_count = ?, {_EMPTY_SINCE} "
                "WHERE meeting_id = ? AND status <> ?",
                (count, count, stamp, meeting_id, MeetingStatus.ENDED.value),
            )
        else:
            # Still listed by its controller: a meeting reported lost is alive after all.
            changed += tx.run(
                f"UPDATE meetings SET participant_count = ?, status = ?, {_EMPTY_SINCE} "
                "WHERE meeting_id = ? AND controller_id = ? AND status <> ?",
                (
                    count,
                    MeetingStatus.ACTIVE.value,
                    count,
                    stamp,
                    meeting_id,
                    controller_id,
                    MeetingStatus.ENDED.value,
                ),
            )
    return changed


def update_participant_counts(tx: Tx, counts: Mapping[MeetingId, int], now: datetime) -> int:
    return _set_counts(tx, counts, None, now)


# -- controllers ----------------------------------------------------------------------------


def get_controller(tx: Tx, controller_id: ControllerId) -> ControllerRecord:
    row = tx.one(
        f"SELECT {_CONTROLLER_COLS} FROM controllers WHERE controller_id = ?", (controller_id,)
    )
    if row is None:
        raise NotFound(
            f"controller {controller_id} is not registered",
            details={"controller_id": controller_id},
        )
    return _controller(tx, row)


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
        f"INSERT INTO controllers ({_CONTROLLER_COLS}, expired_at) "
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
    _set_counts(tx, counts, controller_id, now)
    return get_controller(tx, controller_id)


def list_controllers(tx: Tx, region: str | None) -> list[ControllerRecord]:
    clause, params = ("WHERE region = ?", [region]) if region is not None else ("", [])
    rows = tx.all(
        f"SELECT {_CONTROLLER_COLS} FROM controllers {clause} ORDER BY controller_id LIMIT ?",
        [*params, MAX_LIST_ROWS],
    )
    return [_controller(tx, row) for row in rows]


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


# -- clients --------------------------------------------------------------------------------


def add_client(tx: Tx, client: ClientRecord) -> None:
    tx.run(
        f"INSERT INTO clients ({_CLIENT_COLS}) VALUES (?, ?, ?, ?)",
        (client.client_id, client.name, client.secret_hash, tx.dialect.ts_in(client.created_at)),
    )


def get_client(tx: Tx, client_id: ClientId) -> ClientRecord:
    row = tx.one(f"SELECT {_CLIENT_COLS} FROM clients WHERE client_id = ?", (client_id,))
    if row is None:
        raise NotFound(f"client {client_id} not found", details={"client_id": client_id})
    return _client(tx, row)


def list_clients(tx: Tx) -> list[ClientRecord]:
    rows = tx.all(f"SELECT {_CLIENT_COLS} FROM clients ORDER BY name LIMIT ?", (MAX_LIST_ROWS,))
    return [_client(tx, row) for row in rows]


def remove_client(tx: Tx, client_id: ClientId) -> None:
    if tx.run("DELETE FROM clients WHERE client_id = ?", (client_id,)) == 0:
        raise NotFound(f"client {client_id} not found", details={"client_id": client_id})
