"""The rate limit at the API: headers on every /api/ response, 429 + Retry-After, per client."""

from __future__ import annotations

import pathlib

import pytest

from tests.global_controller._harness import gc_stack

LIMIT = 5


@pytest.mark.parametrize("kind", ["h1", "h3"])
async def test_limit_headers_429_and_refill(tmp_path: pathlib.Path, kind: str) -> None:
    async with gc_stack(tmp_path / "data", rate_limit_per_min=LIMIT) as stack:
        async with stack.api(kind) as api:
            remaining = []
            for _ in range(LIMIT):
                reply = await api.request("GET", "/api/v1/meetings/unknown")
                assert reply.status == 404
                assert reply.headers["x-ratelimit-limit"] == str(LIMIT)
                assert int(reply.headers["x-ratelimit-reset"]) >= int(stack.clock())
                remaining.append(int(reply.headers["x-ratelimit-remaining"]))
            assert remaining == [4, 3, 2, 1, 0]
            refused = await api.request("GET", "/api/v1/meetings/unknown")
            assert refused.status == 429 and refused.error_code == "RATE_LIMITED"
            # one request per 60/LIMIT = 12 s comes back
            assert refused.headers["retry-after"] == "12"
            assert refused.headers["x-ratelimit-remaining"] == "0"
            assert refused.json()["error"]["details"]["retry_after_s"] == "12.0"
            # operations endpoints are not limited
            assert (await api.request("GET", "/healthz")).status == 200
            stack.clock.advance(12)
            again = await api.request("GET", "/api/v1/meetings/unknown")
            assert again.status == 404 and again.headers["x-ratelimit-remaining"] == "0"


async def test_authenticated_clients_have_their_own_budget(tmp_path: pathlib.Path) -> None:
    async with gc_stack(tmp_path / "data", rate_limit_per_min=LIMIT) as stack:
        async with stack.api("h1") as api:
            token = await api.token(stack.client_id, stack.client_secret)  # 1 from the address
            for _ in range(LIMIT - 1):
                await api.request("GET", "/api/v1/meetings/unknown")
            assert (await api.request("GET", "/api/v1/meetings/x")).status == 429
            # the same address with a valid token counts against the client, not the address
            reply = await api.request("GET", "/api/v1/meetings", token=token)
            assert reply.status == 200
            assert reply.headers["x-ratelimit-remaining"] == str(LIMIT - 1)
            # an invalid token is counted against the address (still exhausted)
            bad = await api.request("GET", "/api/v1/meetings", token="not-a-token")
            assert bad.status == 429
