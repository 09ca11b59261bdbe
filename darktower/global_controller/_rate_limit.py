"""The REST API's request rate limit (docs/protocol.md §1.3), kept in the store so that it
holds across GC replicas: each replica counting a client's requests against the same token
bucket, one row per client (or address) updated in one statement (``store/_limit_queries.py``).

The bucket is the one of ``darktower/protocol/ratelimit.py`` (a minute's requests, refilled
over the minute); the headers' values are computed the same way.
"""

from __future__ import annotations

import math
from typing import Protocol

from darktower.global_controller.store import Store
from darktower.protocol.ratelimit import KeyedRateLimiter, RateLimitDecision

# A bucket fills again within this long of its last request (it holds a minute's requests,
# refilled over the minute): a row unused for longer is a full bucket and is purged.
RATE_WINDOW_S = 60.0


class RequestLimiter(Protocol):
    """What the API asks of a rate limiter: count one request of ``key`` at ``now`` (unix
    seconds) and decide."""

    @property
    def limit(self) -> int: ...

    async def hit(self, key: str, now: float) -> RateLimitDecision: ...


class SharedRateLimiter:
    """``per_minute`` requests a minute per key, counted in ``store`` (shared by every
    replica on it). Owns no task; a store error propagates (the request fails with it)."""

    def __init__(self, store: Store, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError(f"the rate limit must be at least 1 a minute, got {per_minute}")
        self._store = store
        self._limit = per_minute
        self._rate_per_s = per_minute / RATE_WINDOW_S

    @property
    def limit(self) -> int:
        return self._limit

    async def hit(self, key: str, now: float) -> RateLimitDecision:
        bucket = await self._store.spend_request_token(
            key, now=now, rate_per_s=self._rate_per_s, burst=float(self._limit)
        )
        retry = 0
        if not bucket.allowed:
            retry = max(1, math.ceil((1 - bucket.tokens) / self._rate_per_s))
        return RateLimitDecision(
            allowed=bucket.allowed,
            limit=self._limit,
            remaining=int(bucket.tokens),
            reset_at=math.ceil(now + (self._limit - bucket.tokens) / self._rate_per_s),
            retry_after_s=retry,
        )

    async def purge(self, now: float) -> int:
        """Forget the buckets full again at ``now``; returns how many."""
        return await self._store.purge_rate_limits(now - RATE_WINDOW_S)


class LocalRateLimiter:
    """A :class:`KeyedRateLimiter` of this process alone (tests of the app without a store)."""

    def __init__(self, keyed: KeyedRateLimiter) -> None:
        self._keyed = keyed

    @property
    def limit(self) -> int:
        return self._keyed.limit

    async def hit(self, key: str, now: float) -> RateLimitDecision:
        return self._keyed.hit(key, now)
