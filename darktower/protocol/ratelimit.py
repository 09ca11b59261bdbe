"""Rate limiters for the three services (sans-IO: time is always a parameter).

* :class:`TokenBucket`: the primitive. ``rate_per_s`` tokens flow in, at most ``burst`` are kept.
* GC: :class:`KeyedRateLimiter`, 100 requests/min per client (client id when authenticated, else
  the peer's address: IPv4 address, IPv6 /64; see :func:`client_key`), answering with what the ``X-RateLimit-*`` and
  ``Retry-After`` headers need. ``now`` is unix seconds there, because ``X-RateLimit-Reset`` is.
* MC: :class:`MessageRateLimiter`, 1000 messages/min per participant; over the limit the caller
  replies ``RATE_LIMITED``; sustained abuse turns the verdict into ``DISCONNECT``.

The MH's byte budgets are its own (``darktower.media_handler._budget``: priority-aware).

A clock that steps backwards (``now`` smaller than last time) refills nothing; it never raises.
"""

from __future__ import annotations

import collections
import enum
import math

import attrs

from darktower.protocol.addresses import address_key

# --- GC ----------------------------------------------------------------------------------------
# The whole minute may be spent at once (the bucket holds a minute's requests): the contract
# states a per-minute budget, and a page load fires a handful of requests together.
GC_REQUESTS_PER_MIN = 100  # contract: "Global Controller: 100 req/min per client"
# Tracked keys are bounded; when full, the least recently seen key is evicted (forgotten: it
# starts again with a full bucket). An attacker spraying addresses can thus only reset the
# budget of keys idle longer than every one of its own, which by then had refilled anyway.
GC_MAX_TRACKED_KEYS = 100_000

# --- MC ----------------------------------------------------------------------------------------
MC_MESSAGES_PER_MIN = 1000  # contract: "Meeting Controller: 1000 messages/min per participant"
# Joining a large meeting subscribes to many streams at once; 200 covers that without letting
# one participant take a whole minute's budget in one second.
MC_BURST = 200
# Abuse: this many rejections within MC_ABUSE_WINDOW_S means the client ignores RATE_LIMITED;
# the verdict becomes DISCONNECT and stays so. The rejection history is a deque of this length.
MC_ABUSE_REJECTIONS = 50
MC_ABUSE_WINDOW_S = 10.0

# Refill is floating-point arithmetic: a token that is due at exactly ``now`` may be short by a
# rounding error; this much shortfall still counts as available.
_EPSILON = 1e-9


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` stored; starts full."""

    __slots__ = ("_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        if self._last is None or now > self._last:
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def try_acquire(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens if available; ``False`` (taking nothing) if not."""
        self._refill(now)
        if self._tokens + _EPSILON >= n:
            self._tokens = max(0.0, self._tokens - n)
            return True
        return False

    def retry_after(self, now: float, n: float = 1) -> float:
        """Seconds from ``now`` until ``n`` tokens are available (``inf`` if ``n > burst``)."""
        self._refill(now)
        if n > self.burst:
            return math.inf
        return max(0.0, (n - self._tokens) / self.rate_per_s)

    def full_at(self, now: float) -> float:
        """The time at which the bucket is full again."""
        self._refill(now)
        return now + (self.burst - self._tokens) / self.rate_per_s


# --- GC: keyed limiter with header values ------------------------------------------------------
def client_key(client_id: str | None, address: str) -> str:
    """The key a GC request is counted under: its client when authenticated, else its
    address's :func:`~darktower.protocol.addresses.address_key` (an IPv6 peer picks any
    address of its /64, so it is counted by the /64)."""
    return f"client:{client_id}" if client_id else f"addr:{address_key(address)}"


@attrs.frozen
class RateLimitDecision:
    """The outcome of one request and the values of its rate-limit headers."""

    allowed: bool
    limit: int  # X-RateLimit-Limit
    remaining: int  # X-RateLimit-Remaining (after this request)
    reset_at: int  # X-RateLimit-Reset: unix seconds when the full budget is back
    retry_after_s: int  # Retry-After (whole seconds, >= 1) when refused, else 0

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class KeyedRateLimiter:
    """One token bucket per key holding a minute's requests, at most ``max_keys`` of them
    (least recently seen evicted)."""

    def __init__(
        self, per_minute: int = GC_REQUESTS_PER_MIN, *, max_keys: int = GC_MAX_TRACKED_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.limit = per_minute
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def hit(self, key: str, now: float) -> RateLimitDecision:
        """Count one request of ``key`` at ``now`` (unix seconds) and decide."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.limit / 60.0, self.limit)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        allowed = bucket.try_acquire(now)
        retry = 0 if allowed else max(1, math.ceil(bucket.retry_after(now)))
        return RateLimitDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=int(bucket.tokens(now)),
            reset_at=math.ceil(bucket.full_at(now)),
            retry_after_s=retry,
        )


# --- MC: per-participant message policy --------------------------------------------------------
class Verdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"  # reply RATE_LIMITED to this message
    DISCONNECT = "disconnect"  # sustained abuse: close the session


class MessageRateLimiter:
    """One participant's signaling budget; ``check(now)`` once per received message."""

    def __init__(
        self,
        per_minute: int = MC_MESSAGES_PER_MIN,
        *,
        burst: int = MC_BURST,
        abuse_rejections: int = MC_ABUSE_REJECTIONS,
        abuse_window_s: float = MC_ABUSE_WINDOW_S,
    ) -> None:
        self._bucket = TokenBucket(per_minute / 60.0, burst)
        self._window_s = abuse_window_s
        # Bounded: only the last ``abuse_rejections`` rejection times matter for the verdict.
        self._rejections: collections.deque[float] = collections.deque(maxlen=abuse_rejections)
        self._disconnect = False

    def check(self, now: float) -> Verdict:
        if self._disconnect:
            return Verdict.DISCONNECT
        if self._bucket.try_acquire(now):
            return Verdict.ALLOW
        self._rejections.append(now)
        full = len(self._rejections) == self._rejections.maxlen
        if full and now - self._rejections[0] <= self._window_s:
            self._disconnect = True
            return Verdict.DISCONNECT
        return Verdict.REJECT

    def retry_after(self, now: float) -> float:
        """Seconds until the next message would be allowed (for ``RateLimited.retry_after_s``)."""
        return self._bucket.retry_after(now)
