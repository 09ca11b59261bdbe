"""The store's SQL for meetings: create (with the owner's cap), read, list, place, move, end, and
their participant counts and emptiness (see ``_rows.py`` for how queries run)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from darktower.errors import RateLimited
from darktower.global_controller._limits import ACTIVE_CAP_RETRY_AFTER_S
from darktower.model import ClientId, ControllerId, MeetingId

from ._dialect import Tx
from ._models import EndReason, MeetingRecord, MeetingStatus, NewMeeting
from ._protocol import MAX_LIST_ROWS
from ._rows import MEETING_COLS, bounded, get_controller, get_meeting, meeting_record


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
) -> MeetingRecord:
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
        f"INSERT INTO meetings ({MEETING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    if new.controller_id is not None:
        _placed_on(tx, new.meeting_id, new.controller_id)
    # The row as stored, without reading it back (a query per create saved): both backends
    # keep every column exactly, timestamps to the microsecond.
    return meeting_record(tx, row)


def list_meetings(
    tx: Tx,
    owner: ClientId | None,
    active: bool | None,
    controller_id: ControllerId | None,
    before: datetime | None,
    limit: int,
) -> list[MeetingRecord]:
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
    params.append(bounded(limit))
    rows = tx.all(
        f"SELECT {MEETING_COLS} FROM meetings {clause} "
        "ORDER BY created_at DESC, meeting_id DESC LIMIT ?",
        params,
    )
    return [meeting_record(tx, row) for row in rows]


def end_meeting(tx: Tx, meeting_id: MeetingId, now: datetime, reason: EndReason) -> MeetingRecord:
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


def end_empty_meetings(tx: Tx, empty_before: datetime, now: datetime) -> list[MeetingRecord]:
    # Only ACTIVE meetings: a CONTROLLER_LOST one's count is stale. The guards are checked
    # again by each UPDATE, so with several replicas sweeping each meeting ends once, and a
    # meeting joined (or reported busy) since the SELECT is left alone.
    cutoff = tx.dialect.ts_in(empty_before)
    candidates = tx.all(
        "SELECT meeting_id FROM meetings WHERE status = ? AND empty_since < ? "
        "ORDER BY empty_since, meeting_id LIMIT ?",
        (MeetingStatus.ACTIVE.value, cutoff, MAX_LIST_ROWS),
    )
    ended: list[MeetingRecord] = []
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


def touch_meeting(tx: Tx, meeting_id: MeetingId, now: datetime) -> None:
    """Someone is about to join: an empty meeting's emptiness starts again from ``now``."""
    tx.run(
        "UPDATE meetings SET empty_since = ? WHERE meeting_id = ? AND empty_since IS NOT NULL",
        (tx.dialect.ts_in(now), meeting_id),
    )


# Emptiness as reported: cleared by a count above zero, started (kept if already) at zero.
# Parameters: the count, then now.
_EMPTY_SINCE = "empty_since = CASE WHEN ? > 0 THEN NULL ELSE COALESCE(empty_since, ?) END"


def set_counts(
    tx: Tx,
    counts: Mapping[MeetingId, int],
    controller_id: ControllerId,
    now: datetime,
) -> int:
    """The participant counts ``controller_id`` reports for its meetings (and their emptiness:
    a count of zero starts it, above zero clears it); meetings placed elsewhere, ended or
    unknown are left alone. Returns the rows updated."""
    changed = 0
    stamp = tx.dialect.ts_in(now)
    for meeting_id, count in sorted(counts.items()):  # sorted: same lock order on every replica
        if count < 0:
            raise ValueError(f"negative participant count {count} for meeting {meeting_id}")
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


def move_meeting(
    tx: Tx,
    meeting_id: MeetingId,
    expected: tuple[ControllerId | None, MeetingStatus],
    to: tuple[ControllerId, MeetingStatus],
    now: datetime,
) -> MeetingRecord | None:
    """Place the meeting on controller ``to[0]`` with status ``to[1]`` if it is still on
    ``expected[0]`` with status ``expected[1]`` (a compare-and-set: of two replicas moving it
    at once, one wins). Nobody is in it there yet: its count is 0 and its emptiness starts
    unless it had. Returns the meeting moved, None if it had changed meanwhile."""
    (old_controller, old_status), (new_controller, new_status) = expected, to
    if MeetingStatus.ENDED in (old_status, new_status):
        raise ValueError("an ended meeting is not moved")
    changed = tx.run(
        "UPDATE meetings SET controller_id = ?, status = ?, participant_count = 0, "
        "empty_since = COALESCE(empty_since, ?) "
        "WHERE meeting_id = ? AND COALESCE(controller_id, '') = ? AND status = ?",
        (
            new_controller,
            new_status.value,
            tx.dialect.ts_in(now),
            meeting_id,
            old_controller or "",
            old_status.value,
        ),
    )
    if not changed:
        return None
    _placed_on(tx, meeting_id, new_controller)
    return get_meeting(tx, meeting_id)


def held_by(tx: Tx, meeting_id: MeetingId, controller_id: str) -> bool:
    """Whether the meeting is or was on ``controller_id`` (its current controller, or one it
    was placed on before a move): what that MC reports of it counts."""
    row = tx.one(
        "SELECT 1 FROM meetings WHERE meeting_id = ? AND controller_id = ? "
        "UNION ALL SELECT 1 FROM meeting_controllers "
        "WHERE meeting_id = ? AND controller_id = ?",
        (meeting_id, controller_id, meeting_id, controller_id),
    )
    return row is not None


def _placed_on(tx: Tx, meeting_id: MeetingId, controller_id: ControllerId) -> None:
    """Remember that the meeting was on ``controller_id`` (its reports count for it)."""
    tx.run(
        "INSERT INTO meeting_controllers (meeting_id, controller_id) VALUES (?, ?) "
        "ON CONFLICT (meeting_id, controller_id) DO NOTHING",
        (meeting_id, controller_id),
    )
