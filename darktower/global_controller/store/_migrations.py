"""Versioned schema migrations, applied in order at open, each recorded in ``schema_version``.

A migration is never edited once released: a schema change is a new entry at the end. The
backend runs :func:`apply_migrations` in one transaction under a lock (SQLite's write lock,
a PostgreSQL advisory lock), so two GC processes opening one database at once apply each
migration once: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from ._dialect import Tx


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer Dark Tower than this one; refuse to touch it."""


@attrs.frozen
class Migration:
    version: int
    description: str
    # DDL with ``{timestamp}`` standing for the dialect's timestamp type.
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "api clients",
        (
            """CREATE TABLE clients (
                client_id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                secret_hash TEXT NOT NULL,
                created_at {timestamp} NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "controller registry",
        (
            """CREATE TABLE controllers (
                controller_id TEXT PRIMARY KEY,
                region TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                max_meetings INTEGER NOT NULL,
                current_meetings INTEGER NOT NULL,
                max_participants INTEGER NOT NULL,
                current_participants INTEGER NOT NULL,
                health INTEGER NOT NULL,
                last_heartbeat {timestamp} NOT NULL,
                registered_at {timestamp} NOT NULL,
                expired_at {timestamp}
            )""",
            "CREATE INDEX controllers_region ON controllers (region)",
        ),
    ),
    Migration(
        3,
        "meetings",
        (
            """CREATE TABLE meetings (
                meeting_id TEXT PRIMARY KEY,
                display_name TEXT NOT NULL,
                max_participants INTEGER NOT NULL,
                enable_e2e_encryption BOOLEAN NOT NULL,
                require_auth BOOLEAN NOT NULL,
                recording_enabled BOOLEAN NOT NULL,
                owner_client_id TEXT NOT NULL,
                controller_id TEXT,
                status TEXT NOT NULL,
                participant_count INTEGER NOT NULL,
                created_at {timestamp} NOT NULL,
                ended_at {timestamp}
            )""",
            "CREATE INDEX meetings_owner ON meetings (owner_client_id, created_at)",
            "CREATE INDEX meetings_controller ON meetings (controller_id, status)",
            "CREATE INDEX meetings_created ON meetings (created_at)",
        ),
    ),
    Migration(
        4,
        "meeting quotas: empty since, end reason",
        (
            # NULL while someone is in the meeting (as its controller last reported).
            "ALTER TABLE meetings ADD COLUMN empty_since {timestamp}",
            "ALTER TABLE meetings ADD COLUMN end_reason TEXT",
            "UPDATE meetings SET empty_since = created_at "
            "WHERE participant_count = 0 AND status <> 'ended'",
            "CREATE INDEX meetings_owner_status ON meetings (owner_client_id, status)",
            "CREATE INDEX meetings_empty ON meetings (status, empty_since)",
        ),
    ),
    Migration(
        5,
        "join tokens issued and bans",
        (
            # Who asked for each join token (its identity), so a kick can ban that identity;
            # kept until the token expires.
            """CREATE TABLE join_tokens (
                token_id TEXT PRIMARY KEY,
                meeting_id TEXT NOT NULL,
                identity TEXT NOT NULL,
                expires_at {timestamp} NOT NULL
            )""",
            "CREATE INDEX join_tokens_expiry ON join_tokens (expires_at)",
            """CREATE TABLE meeting_bans (
                meeting_id TEXT NOT NULL,
                identity TEXT NOT NULL,
                until {timestamp} NOT NULL,
                PRIMARY KEY (meeting_id, identity)
            )""",
            "CREATE INDEX meeting_bans_expiry ON meeting_bans (until)",
        ),
    ),
    Migration(
        6,
        "join tokens by holder",
        # A kick with ban revokes the banned identity's other join tokens for the meeting.
        ("CREATE INDEX join_tokens_holder ON join_tokens (meeting_id, identity, expires_at)",),
    ),
    Migration(
        7,
        "draining controllers, shared request rate limits",
        (
            # A draining MC gets no new meeting; its meetings move at their next join.
            "ALTER TABLE controllers ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE",
            # One token bucket per API client (or address), shared by every GC replica
            # (docs/protocol.md §1.3). Times are unix seconds of the GC's clock; a row unused
            # for a minute is a full bucket and is purged.
            """CREATE TABLE rate_limits (
                bucket_key TEXT PRIMARY KEY,
                tokens DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                rate_per_s DOUBLE PRECISION NOT NULL,
                burst DOUBLE PRECISION NOT NULL,
                allowed BOOLEAN NOT NULL
            )""",
            "CREATE INDEX rate_limits_updated ON rate_limits (updated_at)",
        ),
    ),
    Migration(
        8,
        "webhooks: registrations, signing secrets, events received, deliveries",
        (
            # One signing secret per API client, made with its first webhook (docs/protocol.md
            # §18.5).
            """CREATE TABLE webhook_secrets (
                client_id TEXT PRIMARY KEY,
                secret TEXT NOT NULL,
                created_at {timestamp} NOT NULL
            )""",
            # ``events``: the names it takes, comma-separated. ``next_seq`` numbers its
            # deliveries (updating it locks the row: one fan-out to a webhook at a time).
            # ``lease_until``/``lease_owner``: the replica sending its delivery in flight.
            """CREATE TABLE webhooks (
                webhook_id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                url TEXT NOT NULL,
                events TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                next_seq BIGINT NOT NULL,
                lease_until {timestamp},
                lease_owner TEXT
            )""",
            "CREATE INDEX webhooks_client ON webhooks (client_id, created_at)",
            # Every event id received, so an MC's repeated report is a no-op; purged after a
            # day.
            """CREATE TABLE webhook_events (
                event_id TEXT PRIMARY KEY,
                meeting_id TEXT NOT NULL,
                received_at {timestamp} NOT NULL
            )""",
            "CREATE INDEX webhook_events_received ON webhook_events (received_at)",
            """CREATE TABLE webhook_deliveries (
                delivery_id TEXT PRIMARY KEY,
                webhook_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                event_id TEXT NOT NULL,
                event TEXT NOT NULL,
                body TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                response_status INTEGER,
                error TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                next_attempt_at {timestamp},
                delivered_at {timestamp}
            )""",
            "CREATE UNIQUE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, seq)",
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
            "CREATE INDEX webhook_deliveries_pending "
            "ON webhook_deliveries (webhook_id, status, next_attempt_at)",
        ),
    ),
    Migration(
        9,
        "the controllers each meeting was on",
        (
            # Every controller a meeting was placed on (at its creation, at each move): an
            # MC's reported events count only for meetings it holds or held (docs/protocol.md
            # §18.5). Kept as long as the meeting's row.
            """CREATE TABLE meeting_controllers (
                meeting_id TEXT NOT NULL,
                controller_id TEXT NOT NULL,
                PRIMARY KEY (meeting_id, controller_id)
            )""",
        ),
    ),
    Migration(
        10,
        "a host's blocks by join identity",
        (
            # The kinds a host blocked (``audio``, ``video``, ``screen``, comma-separated) for
            # an identity of a meeting (as join_tokens names it): its next join tokens do not
            # grant them (docs/protocol.md §18.2). Gone when the meeting ends.
            """CREATE TABLE meeting_blocks (
                meeting_id TEXT NOT NULL,
                identity TEXT NOT NULL,
                kinds TEXT NOT NULL,
                PRIMARY KEY (meeting_id, identity)
            )""",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(tx: Tx) -> int:
    row = tx.one("SELECT MAX(version) FROM schema_version")
    return 0 if row is None or row[0] is None else int(row[0])


def apply_migrations(
    tx: Tx, now: datetime, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Bring the schema up to date inside the caller's locked transaction.

    Returns the versions applied (empty when already current). Raises
    :class:`SchemaTooNewError` when the database is ahead of ``migrations``.
    """
    if tx.dialect.migration_lock_sql:
        tx.one(tx.dialect.migration_lock_sql)
    tx.run(
        tx.dialect.ddl(
            """CREATE TABLE IF NOT EXISTS schema_version (
                version INTEGER PRIMARY KEY,
                description TEXT NOT NULL,
                applied_at {timestamp} NOT NULL
            )"""
        )
    )
    current = current_version(tx)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaTooNewError(
            f"database schema is version {current}, this Dark Tower knows up to {latest}"
        )
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            tx.run(tx.dialect.ddl(statement))
        tx.run(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.description, tx.dialect.ts_in(now)),
        )
        applied.append(migration.version)
    return applied
