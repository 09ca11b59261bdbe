"""The store's SQL for the request rate limit shared by GC replicas (docs/protocol.md §1.3):
one token bucket per key, spent in one statement (see ``_rows.py`` for how queries run).

The statement reads and writes the row under the database's own row lock (PostgreSQL's
``INSERT ... ON CONFLICT DO UPDATE``; SQLite's write lock), so replicas counting the same key
at once never both take its last token. Every ``SET`` expression sees the row as it was, so
the refill is computed once per expression from the old values; ``excluded`` is the row the
caller offered (its time, rate and burst).
"""

from __future__ import annotations

from ._dialect import Tx
from ._models import RateBucket

# A token due at exactly ``now`` may be short by a rounding error; this much shortfall still
# counts as a token (as in darktower/protocol/ratelimit.py).
_ONE_TOKEN = "0.999999999"
# The time elapsed since the row was last counted, in tokens (never negative: a clock that
# stepped back refills nothing).
_GAIN = (
    "(CASE WHEN excluded.updated_at > rate_limits.updated_at "
    "THEN (excluded.updated_at - rate_limits.updated_at) * excluded.rate_per_s ELSE 0 END)"
)
_REFILLED = (
    f"(CASE WHEN rate_limits.tokens + {_GAIN} > excluded.burst THEN excluded.burst "
    f"ELSE rate_limits.tokens + {_GAIN} END)"
)
_SPEND = (
    "INSERT INTO rate_limits (bucket_key, tokens, updated_at, rate_per_s, burst, allowed) "
    "VALUES (?, ?, ?, ?, ?, TRUE) "
    "ON CONFLICT (bucket_key) DO UPDATE SET "
    f"tokens = CASE WHEN {_REFILLED} >= {_ONE_TOKEN} "
    f"THEN (CASE WHEN {_REFILLED} > 1 THEN {_REFILLED} - 1 ELSE 0 END) ELSE {_REFILLED} END, "
    "updated_at = CASE WHEN excluded.updated_at > rate_limits.updated_at "
    "THEN excluded.updated_at ELSE rate_limits.updated_at END, "
    "rate_per_s = excluded.rate_per_s, burst = excluded.burst, "
    f"allowed = ({_REFILLED} >= {_ONE_TOKEN}) "
    "RETURNING tokens, allowed"
)


def spend_token(tx: Tx, key: str, now: float, rate_per_s: float, burst: float) -> RateBucket:
    """Count one request of ``key`` at ``now`` (unix seconds) against a bucket of ``burst``
    tokens refilled at ``rate_per_s`` (a new key starts full); one statement."""
    # all(), not one(): SQLite finishes (and commits) the statement once it is read to its end.
    rows = tx.all(_SPEND, (key, burst - 1, now, rate_per_s, burst))
    if len(rows) != 1:  # RETURNING yields the one row written
        raise RuntimeError(f"the rate-limit statement returned {len(rows)} rows")
    tokens, allowed = rows[0]
    return RateBucket(allowed=bool(allowed), tokens=max(0.0, float(tokens)))


def purge_rate_limits(tx: Tx, unused_since: float) -> int:
    """Forget buckets not counted since ``unused_since`` (full again by then: a new row
    starts full, so nothing changes); returns the rows removed."""
    return tx.run("DELETE FROM rate_limits WHERE updated_at < ?", (unused_since,))
