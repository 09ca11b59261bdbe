"""Input a database or protobuf cannot carry is refused at the edge with the contract's error,
on both store backends (PostgreSQL refuses NUL in text; no driver takes a lone surrogate)."""

from __future__ import annotations

import pathlib

import pytest

from tests.global_controller._harness import Api, Stack, gc_stack

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


async def _hostile_requests(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    for path in ("/api/v1/meetings/%00", "/api/v1/meetings/a%00b/join"):
        method = "GET" if path.endswith("%00") else "POST"
        reply = await api.request(method, path, token=token)
        assert (reply.status, reply.error_code) == (404, "NOT_FOUND"), reply.body
    for raw in (b'{"display_name": "a\\u0000b"}', b'{"display_name": "\\ud800"}'):
        reply = await api.request("POST", "/api/v1/meetings", body=raw, token=token)
        assert (reply.status, reply.error_code) == (400, "INVALID_REQUEST"), reply.body
    reply = await api.request(
        "POST",
        "/api/v1/auth/token",
        body=b'{"grant_type": "client_credentials", "client_id": "\\u0000", "client_secret": "x"}',
    )
    assert (reply.status, reply.error_code) == (400, "INVALID_REQUEST"), reply.body
    assert (await api.request("GET", "/healthz")).status == 200


@pytest.mark.parametrize("backend", BACKENDS)
async def test_text_no_store_can_hold_is_refused(
    tmp_path: pathlib.Path, backend: str, request: pytest.FixtureRequest
) -> None:
    overrides = {"database": request.getfixturevalue("postgres_dsn")} if backend != "sqlite" else {}
    async with gc_stack(tmp_path / "data", **overrides) as stack, stack.api("h1") as api:
        await _hostile_requests(api, stack)
