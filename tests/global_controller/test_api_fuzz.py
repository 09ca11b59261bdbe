"""Live fuzz of the GC's REST API over the real TLS stack (HTTP/1.1 and HTTP/3): random and
mutated JSON bodies, paths, methods and header values. Every answer is below 500 and, when an
error, the contract's body; afterwards the service still answers well-formed requests."""

from __future__ import annotations

import json
import pathlib
import random
import string
from typing import Any

import pytest

from tests._fuzz import fuzz_cases, fuzz_rng
from tests.global_controller._harness import Api, Stack, gc_stack

pytestmark = pytest.mark.fuzz

VALID_BODIES: list[dict[str, Any]] = [
    {"display_name": "Standup", "max_participants": 5, "settings": {"require_auth": False}},
    {"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    {"participant_name": "Ann"},
]
ROUTES = [
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/meetings"),
    ("GET", "/api/v1/meetings"),
    ("GET", "/api/v1/meetings/{m}"),
    ("POST", "/api/v1/meetings/{m}/join"),
    ("DELETE", "/api/v1/meetings/{m}"),
    ("DELETE", "/api/v1/meetings/{m}/participants/{p}"),
    ("GET", "/api/v1/dev/credentials"),
]
NASTY_TEXT = ["", "\u0000", "\ud800", "\n", "é", "🙂", "x" * 300, "%", "../", "\\", '"', "'"]
PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, 2**63, 10**30, 1.5, -0.0, 1e308])
    if kind in (2, 3, 4):
        return rng.choice([*NASTY_TEXT, "client_credentials", "Standup"])
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["display_name", "max_participants", "settings", "region", "require_auth"]
    keys += ["grant_type", "client_id", "client_secret", "participant_name", "ban"]
    return {
        rng.choice(keys + NASTY_TEXT): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))
    }


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(3)
        where = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[where % len(out)] = rng.randrange(256)
        elif op == 1:
            out[where:where] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif out:
            del out[where : where + rng.randrange(1, 8)]
    return bytes(out)


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return json.dumps(_json_value(rng), ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass"
        )
    if kind == 1:
        return _mutate(rng, json.dumps(rng.choice(VALID_BODIES)).encode())
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if kind == 3:
        return rng.choice([b"[" * 5000, b"9" * 5000, b"{}" * 3000, b'"\\ud800"', b"\x00"])
    return b""


def _segment(rng: random.Random, real: str) -> str:
    return rng.choice(
        [
            real,
            real[:-1],
            "%00",
            "%ff",
            "%ED%A0%80",
            "x" * 200,
            "..",
            "%2F",
            "a%20b",
            "-",
            "%F0%9F%99%82",
        ]
    )


def _headers(rng: random.Random, token: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    auth = rng.randrange(6)
    if auth == 1:
        headers["authorization"] = f"Bearer {token}"
    elif auth == 2:
        mutated = _mutate(rng, token.encode()).decode("ascii", "replace")
        headers["authorization"] = "Bearer " + "".join(c for c in mutated if c in PRINTABLE)
    elif auth == 3:
        headers["authorization"] = "".join(rng.choice(PRINTABLE) for _ in range(rng.randrange(40)))
    elif auth == 4:
        headers["authorization"] = rng.choice(["Bearer", "Bearer ", "Basic eDp5", "bearer  x.y.z"])
    if rng.random() < 0.3:
        headers["content-type"] = rng.choice(
            ["text/plain", "application/json; charset=latin-1", "multipart/form-data", "x/y;;"]
        )
    if rng.random() < 0.3:
        name = "x-" + "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
        headers[name] = "".join(rng.choice(PRINTABLE) for _ in range(rng.randrange(200)))
    # Leading or trailing whitespace is not a header value (RFC 9110 5.5); clients refuse it.
    return {name: value.strip(" \t") for name, value in headers.items()}


async def _fuzz(api: Api, stack: Stack, rng: random.Random, cases: int) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    created = await api.request(
        "POST", "/api/v1/meetings", json_body={"display_name": "fuzz"}, token=token
    )
    meeting_id = created.json()["meeting_id"]
    statuses: dict[int, int] = {}
    for _ in range(cases):
        method, path = rng.choice(ROUTES)
        if rng.random() < 0.2:
            method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        path = path.format(m=_segment(rng, meeting_id), p=_segment(rng, "p-1"))
        if rng.random() < 0.2:
            path += rng.choice(["?active=maybe", "?user_id=%00", "?ban=%ff", "?" + "a=1&" * 50])
        body, headers = _body(rng), _headers(rng, token)
        reply = await api.request(method, path, body=body, headers=headers)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        assert reply.status < 500, (method, path, reply.status, reply.body[:300])
        if reply.status >= 400:
            assert reply.error_code, reply.body  # the contract's shape, checked by error_code
    print(f"{api.kind}: statuses {sorted(statuses.items())}")
    # Still serving, well-formed requests still work.
    assert (await api.request("GET", "/healthz")).status == 200
    again = await api.request(
        "POST", "/api/v1/meetings", json_body={"display_name": "after"}, token=token
    )
    assert again.status == 201, again.body
    joined = await api.request("POST", f"/api/v1/meetings/{again.json()['meeting_id']}/join")
    assert joined.status == 200, joined.body


@pytest.mark.parametrize("kind", ["h1", "h3"])
async def test_random_and_mutated_requests(tmp_path: pathlib.Path, kind: str) -> None:
    rng = fuzz_rng(f"gc rest {kind}")
    async with (
        gc_stack(
            tmp_path / "data", rate_limit_per_min=10**9, max_active_meetings_per_client=0
        ) as stack,
        stack.api(kind) as api,
    ):
        await _fuzz(api, stack, rng, fuzz_cases(150))
