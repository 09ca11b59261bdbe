"""Rate limiters on explicit times: refill, header values, eviction bound, disconnect verdict."""

from __future__ import annotations

import math

import pytest

from darktower.protocol import ratelimit as rl

T0 = 1_705_411_200.0  # a unix time, as the GC passes


# --- token bucket -----------------------------------------------------------------------------
def test_bucket_starts_full_and_empties() -> None:
    bucket = rl.TokenBucket(rate_per_s=1.0, burst=3)
    assert [bucket.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate_up_to_burst() -> None:
    bucket = rl.TokenBucket(rate_per_s=2.0, burst=4)
    for _ in range(4):
        assert bucket.try_acquire(10.0)
    assert not bucket.try_acquire(10.0)
    assert bucket.tokens(10.25) == pytest.approx(0.5)
    assert not bucket.try_acquire(10.25)
    assert bucket.try_acquire(10.5)  # one token after 0.5 s at 2/s
    assert bucket.tokens(100.0) == 4.0  # capped at burst


def test_bucket_retry_after() -> None:
    bucket = rl.TokenBucket(rate_per_s=0.5, burst=2)
    assert bucket.retry_after(0.0) == 0.0
    bucket.try_acquire(0.0, 2)
    assert bucket.retry_after(0.0) == pytest.approx(2.0)
    assert bucket.retry_after(1.5) == pytest.approx(0.5)
    assert bucket.retry_after(1.5, n=3) == math.inf  # more than burst never fits


def test_bucket_failed_acquire_takes_nothing() -> None:
    bucket = rl.TokenBucket(rate_per_s=1.0, burst=5)
    assert not bucket.try_acquire(0.0, 6)
    assert bucket.tokens(0.0) == 5.0


def test_bucket_ignores_a_clock_stepping_back() -> None:
    bucket = rl.TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.try_acquire(100.0)
    assert not bucket.try_acquire(50.0)  # no refill from a backwards step
    assert not bucket.try_acquire(100.5)
    assert bucket.try_acquire(101.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        rl.TokenBucket(rate, burst)


# --- GC keyed limiter -------------------------------------------------------------------------
def test_gc_allows_100_then_429_with_headers() -> None:
    limiter = rl.KeyedRateLimiter()
    key = rl.client_key("client-1", "10.0.0.1")
    decisions = [limiter.hit(key, T0) for _ in range(101)]
    assert all(d.allowed for d in decisions[:100])
    first, last_ok, refused = decisions[0], decisions[99], decisions[100]
    assert first.headers() == {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "99",
        "X-RateLimit-Reset": str(int(T0) + 1),  # one request refills in 0.6 s
    }
    assert last_ok.remaining == 0
    assert last_ok.reset_at == int(T0) + 60  # the whole minute's budget is back in 60 s
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "1"  # 0.6 s rounded up to whole seconds
    assert refused.reset_at == int(T0) + 60


def test_gc_refills_over_the_minute() -> None:
    limiter = rl.KeyedRateLimiter()
    for _ in range(100):
        limiter.hit("k", T0)
    assert not limiter.hit("k", T0 + 0.5).allowed
    decision = limiter.hit("k", T0 + 30.0)  # 50 tokens back
    assert decision.allowed
    assert decision.remaining == 49
    assert decision.reset_at == math.ceil(T0 + 30.0 + 51 * 0.6)


def test_gc_retry_after_is_whole_seconds_to_the_next_token() -> None:
    limiter = rl.KeyedRateLimiter(per_minute=6)  # one every 10 s
    for _ in range(6):
        limiter.hit("k", T0)
    refused = limiter.hit("k", T0 + 2.5)
    assert not refused.allowed
    assert refused.retry_after_s == 8  # 7.5 s rounded up
    assert refused.remaining == 0


def test_gc_keys_are_independent() -> None:
    limiter = rl.KeyedRateLimiter(per_minute=1)
    assert limiter.hit(rl.client_key(None, "10.0.0.1"), T0).allowed
    assert not limiter.hit(rl.client_key(None, "10.0.0.1"), T0).allowed
    assert limiter.hit(rl.client_key(None, "10.0.0.2"), T0).allowed
    assert limiter.hit(rl.client_key("c", "10.0.0.1"), T0).allowed


def test_client_key_prefers_the_client_id() -> None:
    assert rl.client_key("abc", "10.0.0.1") == "client:abc"
    assert rl.client_key(None, "10.0.0.1") == "addr:10.0.0.1"
    assert rl.client_key("", "10.0.0.1") == "addr:10.0.0.1"


def test_gc_tracked_keys_are_bounded_least_recently_seen_evicted() -> None:
    limiter = rl.KeyedRateLimiter(per_minute=1, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.hit(key, T0)
    limiter.hit("a", T0 + 1)  # "a" seen again: "b" is now the least recently seen
    limiter.hit("d", T0 + 2)  # a fourth key: "b" is forgotten
    # The evicted key is forgotten: it starts with a fresh budget (documented policy); a
    # remembered key has spent its one request per minute. "b" back evicts "c", then the
    # least recently seen.
    assert limiter.hit("b", T0 + 3).allowed
    assert [limiter.hit(k, T0 + 4).allowed for k in ("a", "d", "b")] == [False] * 3
    assert limiter.hit("c", T0 + 5).allowed  # forgotten when "b" came back; evicts "a"
    assert limiter.hit("a", T0 + 6).allowed


def test_gc_default_key_bound_is_the_named_constant() -> None:
    assert rl.KeyedRateLimiter().max_keys == rl.GC_MAX_TRACKED_KEYS == 100_000


# --- MC per-participant policy ----------------------------------------------------------------
def test_mc_allows_burst_then_rejects_then_recovers() -> None:
    limiter = rl.MessageRateLimiter()
    verdicts = [limiter.check(0.0) for _ in range(rl.MC_BURST + 1)]
    assert verdicts[:-1] == [rl.Verdict.ALLOW] * rl.MC_BURST
    assert verdicts[-1] is rl.Verdict.REJECT
    assert limiter.retry_after(0.0) == pytest.approx(60 / rl.MC_MESSAGES_PER_MIN)
    assert limiter.check(0.06) is rl.Verdict.ALLOW  # 1000/min = one per 60 ms


def test_mc_sustained_rate_is_1000_per_minute() -> None:
    # (The abuse threshold is lifted: this measures the rate alone.)
    limiter = rl.MessageRateLimiter(burst=1, abuse_rejections=10**6)
    allowed = sum(limiter.check(i * 0.01) is rl.Verdict.ALLOW for i in range(6000))  # 60 s
    assert allowed == pytest.approx(1000, abs=2)


def test_mc_sustained_abuse_disconnects_and_stays_disconnected() -> None:
    limiter = rl.MessageRateLimiter(burst=1, abuse_rejections=5, abuse_window_s=10.0)
    assert limiter.check(0.0) is rl.Verdict.ALLOW
    verdicts = [limiter.check(0.001 * i) for i in range(1, 6)]
    assert verdicts == [rl.Verdict.REJECT] * 4 + [rl.Verdict.DISCONNECT]
    assert limiter.check(1000.0) is rl.Verdict.DISCONNECT


def test_mc_rejections_spread_out_do_not_disconnect() -> None:
    limiter = rl.MessageRateLimiter(burst=1, abuse_rejections=3, abuse_window_s=10.0)
    now = 0.0
    for _ in range(20):
        # Two messages every 6 s: the second is refused, but 3 refusals span 12 s > window.
        assert limiter.check(now) is rl.Verdict.ALLOW
        assert limiter.check(now) is rl.Verdict.REJECT
        now += 6.0


def test_gc_counts_unauthenticated_ipv6_peers_by_their_64() -> None:
    # A host picks any address of its /64: counting full addresses would give it 2**64 budgets.
    assert rl.client_key(None, "2001:db8:1:2::1") == rl.client_key(None, "2001:db8:1:2:ffff::9")
    assert rl.client_key(None, "2001:db8:1:2::1") != rl.client_key(None, "2001:db8:1:3::1")
    assert rl.client_key(None, "::ffff:192.0.2.7") == rl.client_key(None, "192.0.2.7")
    assert rl.client_key(None, "192.0.2.7") != rl.client_key(None, "192.0.2.8")
    # An authenticated request is its client's, wherever it comes from.
    assert rl.client_key("c-1", "192.0.2.7") == rl.client_key("c-1", "2001:db8::1")
