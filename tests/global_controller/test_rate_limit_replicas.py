"""The request rate limit holds across GC replicas (docs/protocol.md §1.3): two real GCs on one
store (a SQLite file, or a real PostgreSQL), a client's requests alternating between them over
HTTP/1.1 and HTTP/3, counted against one budget. The GCs share a hand-moved clock."""

from __future__ import annotations

import pathlib

from darktower.global_controller import keys
from tests.global_controller._harness import ManualClock, gc_settings, open_api, running_gc

LIMIT = 6  # one request back every 10 s


async def test_the_limit_holds_across_two_replicas(tmp_path: pathlib.Path, store_url: str) -> None:
    shared = tmp_path / "keys"
    keys.load_or_create_signing_key(shared / "join.pem")
    keys.load_or_create_signing_key(shared / "access.pem")
    common = {
        "database": store_url,
        "join_key_file": str(shared / "join.pem"),
        "access_key_file": str(shared / "access.pem"),
        "rate_limit_per_min": LIMIT,
    }
    clock = ManualClock()
    async with (
        running_gc(gc_settings(tmp_path / "a", **common), clock) as (a, _),
        running_gc(gc_settings(tmp_path / "b", **common), clock) as (b, _),
        open_api("h1", a.url, a.certificate_sha256) as api_a,
        open_api("h3", b.url, b.certificate_sha256) as api_b,
    ):
        replies = [
            await (api_a if i % 2 == 0 else api_b).request("GET", "/api/v1/meetings/unknown")
            for i in range(LIMIT + 2)
        ]
        assert [r.status for r in replies] == [404] * LIMIT + [429, 429]
        assert [int(r.headers["x-ratelimit-remaining"]) for r in replies] == [
            5, 4, 3, 2, 1, 0, 0, 0
        ]  # fmt: skip
        assert {r.headers["retry-after"] for r in replies[LIMIT:]} == {"10"}
        assert replies[-1].error_code == "RATE_LIMITED"
        # Ten seconds give one request back, to whichever replica takes it first.
        clock.advance(10)
        assert (await api_b.request("GET", "/api/v1/meetings/unknown")).status == 404
        assert (await api_a.request("GET", "/api/v1/meetings/unknown")).status == 429
        # Each replica purges the buckets that are full again (a minute unused).
        clock.advance(61)
        assert await a.controller.store.purge_rate_limits(clock() - 60) == 1
        fresh = await api_a.request("GET", "/api/v1/meetings/unknown")
        assert fresh.headers["x-ratelimit-remaining"] == str(LIMIT - 1)
