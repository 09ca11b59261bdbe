"""What differs between SQLite and PostgreSQL, so the SQL itself is written once.

The SQL is written with ``?`` placeholders and without ``%``; PostgreSQL's dialect turns ``?``
into psycopg's ``%s``. Everything here is synchronous: it runs inside a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store only takes aware datetimes")
    return value.astimezone(UTC)


@attrs.frozen
class Dialect:
    name: str
    placeholder: str
    timestamp_type: str
    text_timestamps: bool  # SQLite keeps fixed-width ISO 8601 text, which sorts by time
    # Serialises schema migrations between processes, held until the transaction ends.
    # Empty for SQLite, whose transactions begin with BEGIN IMMEDIATE (the write lock).
    migration_lock_sql: str
    # Serialises the meeting creations of one owner (its argument), held until the transaction
    # ends, so a count-then-insert never overshoots a cap. Empty for SQLite (write lock).
    owner_lock_sql: str

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def ddl(self, text: str) -> str:
        return text.format(timestamp=self.timestamp_type)

    def ts_in(self, value: datetime) -> object:
        utc = _require_aware(value)
        return utc.isoformat(timespec="microseconds") if self.text_timestamps else utc

    def ts_out(self, value: Any) -> datetime:
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(UTC)
        if isinstance(value, datetime):
            return _require_aware(value)
        raise TypeError(f"unexpected timestamp {value!r} from {self.name}")

    def ts_out_opt(self, value: Any) -> datetime | None:
        return None if value is None else self.ts_out(value)


# Any fixed 64-bit number, the same in every Dark Tower release ("dtgcmigr").
MIGRATION_LOCK_KEY = 0x6474_6763_6D69_6772
# The first half of the two-key advisory lock of an owner's creations ("dtow"); the second is
# the hash of the owner's id.
OWNER_LOCK_CLASS = 0x6474_6F77

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    timestamp_type="TEXT",
    text_timestamps=True,
    migration_lock_sql="",
    owner_lock_sql="",
)
POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    timestamp_type="TIMESTAMPTZ",
    text_timestamps=False,
    migration_lock_sql=f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})",
    owner_lock_sql=f"SELECT pg_advisory_xact_lock({OWNER_LOCK_CLASS}, hashtext(?))",
)

Row = tuple[Any, ...]


class Tx:
    """One open transaction on a DB-API connection (``sqlite3`` or ``psycopg``), seen through
    its dialect. The backend begins and ends the transaction around the function using it."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self._raw = raw
        self.dialect = dialect

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        """Execute a statement; return the number of rows it changed."""
        cursor = self._raw.execute(self.dialect.sql(sql), tuple(params))
        return int(cursor.rowcount)

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row = self._raw.execute(self.dialect.sql(sql), tuple(params)).fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        rows = self._raw.execute(self.dialect.sql(sql), tuple(params)).fetchall()
        return [tuple(row) for row in rows]
