"""The Global Controller's store: meetings, the controller registry and API clients.

One :class:`Store` interface, two backends that pass the same tests: SQLite (the default, a
file) and PostgreSQL (several GC replicas on one database). Open either with
:func:`open_store`; the schema is migrated at open (:data:`MIGRATIONS`).
"""

from typing import TYPE_CHECKING, Any

from ._base import DEFAULT_POOL_SIZE, Clock, SqlStore, utc_now
from ._migrations import LATEST_VERSION, MIGRATIONS, Migration, SchemaTooNewError
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
    MeetingSettings,
    MeetingStatus,
    NewMeeting,
    RateBucket,
    Reconciliation,
    ReportedBlocks,
    WebhookEvent,
    WebhookRecord,
    new_meeting_id,
)
from ._open import open_store, sqlite_path
from ._protocol import MAX_LIST_ROWS, Store
from ._sqlite import SqliteStore
from ._webhook_queries import Fanout, retry_delay_s

if TYPE_CHECKING:
    from ._postgres import PostgresStore


def __getattr__(name: str) -> Any:
    # PostgresStore needs psycopg, an optional dependency: import it only when asked for.
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_POOL_SIZE",
    "LATEST_VERSION",
    "MAX_LIST_ROWS",
    "MIGRATIONS",
    "ClaimedDelivery",
    "ClientRecord",
    "Clock",
    "ControllerCapacity",
    "ControllerRecord",
    "DeliveryAttempt",
    "DeliveryRecord",
    "DeliveryStatus",
    "EndReason",
    "Fanout",
    "HealthStatus",
    "IssuedJoinToken",
    "MeetingRecord",
    "MeetingSettings",
    "MeetingStatus",
    "Migration",
    "NewMeeting",
    "PostgresStore",
    "RateBucket",
    "Reconciliation",
    "ReportedBlocks",
    "SchemaTooNewError",
    "SqlStore",
    "SqliteStore",
    "Store",
    "WebhookEvent",
    "WebhookRecord",
    "new_meeting_id",
    "open_store",
    "retry_delay_s",
    "sqlite_path",
    "utc_now",
]
