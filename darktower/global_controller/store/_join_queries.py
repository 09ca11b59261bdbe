"""The store's SQL for join tokens on record, bans (docs/decisions.md, "A kick can ban") and a
host's blocks (docs/protocol.md §18.2): who got which join token, who is banned from a meeting
until when, which kinds a host blocked for whom (see ``_rows.py`` for how queries run)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from darktower.errors import Forbidden
from darktower.model import MeetingId

from ._dialect import Tx
from ._meeting_queries import held_by, touch_meeting
from ._models import IssuedJoinToken, MeetingStatus, ReportedBlocks


def record_join(
    tx: Tx,
    meeting_id: MeetingId,
    token_id: str,
    identity: str,
    expires_at: datetime,
    now: datetime,
) -> frozenset[str]:
    """A join token for ``identity`` is about to be handed out: ``Forbidden`` while that
    identity is banned from the meeting; else remember who got the token and restart the
    meeting's emptiness. Returns the kinds a host blocked for the identity (none for "",
    the owner)."""
    blocked: frozenset[str] = frozenset()
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
        row = tx.one(
            "SELECT kinds FROM meeting_blocks WHERE meeting_id = ? AND identity = ?",
            (meeting_id, identity),
        )
        if row is not None:
            blocked = frozenset(k for k in str(row[0]).split(",") if k)
    touch_meeting(tx, meeting_id, now)
    return blocked


def record_blocks(tx: Tx, controller_id: str, blocks: Sequence[ReportedBlocks]) -> int:
    """Keep, in order, what an MC reports a host blocked for a participant: for the identity
    that got the participant's join token, the meeting's blocks become ``kinds`` (none: the
    row goes). A report of a meeting ``controller_id`` never held, or of a token not on
    record (the owner's, or purged), does nothing. Returns how many were kept."""
    kept = 0
    for block in blocks:
        if not held_by(tx, block.meeting_id, controller_id):
            continue
        row = tx.one(
            "SELECT identity FROM join_tokens WHERE token_id = ? AND meeting_id = ?",
            (block.token_id, block.meeting_id),
        )
        if row is None or not row[0]:
            continue
        identity = str(row[0])
        if block.kinds:
            tx.run(
                "INSERT INTO meeting_blocks (meeting_id, identity, kinds) VALUES (?, ?, ?) "
                "ON CONFLICT (meeting_id, identity) DO UPDATE SET kinds = excluded.kinds",
                (block.meeting_id, identity, ",".join(sorted(block.kinds))),
            )
        else:
            tx.run(
                "DELETE FROM meeting_blocks WHERE meeting_id = ? AND identity = ?",
                (block.meeting_id, identity),
            )
        kept += 1
    return kept


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
    """Forget bans that have expired, the blocks of ended meetings and the expired join
    tokens of meetings no longer active; returns the rows removed. A token's record outlives
    the token while its meeting goes on: a host may ban or block its holder (who may still be
    in the meeting) at any time (docs/protocol.md §11, §18.2)."""
    stamp = tx.dialect.ts_in(now)
    removed = tx.run(
        "DELETE FROM join_tokens WHERE expires_at < ? AND NOT EXISTS ("
        "SELECT 1 FROM meetings m WHERE m.meeting_id = join_tokens.meeting_id "
        "AND m.status <> ?)",
        (stamp, MeetingStatus.ENDED.value),
    )
    removed += tx.run(
        "DELETE FROM meeting_blocks WHERE meeting_id IN "
        "(SELECT meeting_id FROM meetings WHERE status = ?)",
        (MeetingStatus.ENDED.value,),
    )
    return removed + tx.run("DELETE FROM meeting_bans WHERE until < ?", (stamp,))
