"""Every error the API can answer, in the contract's shape, over HTTP/1.1 and HTTP/3."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from quart_trio import QuartTrio

from darktower.errors import CapacityExceeded
from darktower.global_controller import GcMetrics
from darktower.global_controller.api import create_app
from darktower.global_controller.clients import add_client
from darktower.metrics import Registry
from darktower.protocol.ratelimit import KeyedRateLimiter
from tests.global_controller._harness import (
    Api,
    Stack,
    StandInMC,
    register_mc,
    running_stand_in_mc,
)

MISSING = "00000000-0000-4000-8000-000000000000"


@attrs.frozen
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    fragment: str  # the message must say what is wrong
    auth: str = "alice"  # alice | bob | none | a raw Authorization header value
    body: Any = None  # JSON-encoded unless bytes


def _cases(meeting_id: str, private_id: str, ended_id: str) -> list[Case]:
    create = "/api/v1/meetings"
    return [
        # INVALID_REQUEST
        Case(
            "malformed json", "POST", create, 400, "INVALID_REQUEST", "not valid JSON", body=b"{x"
        ),
        Case("empty body", "POST", create, 400, "INVALID_REQUEST", "empty", body=b""),
        Case("not an object", "POST", create, 400, "INVALID_REQUEST", "JSON object", body=[1]),
        Case(
            "region too long",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "'region' is longer than 64",
            body={"display_name": "a", "region": "r" * 65},
        ),
        Case(
            "region not a string",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "'region' must be a string",
            body={"display_name": "a", "region": 7},
        ),
        Case(
            "unknown field",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "unknown field(s) in the body: colour",
            body={"display_name": "a", "colour": "red"},
        ),
        Case(
            "missing name",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "'display_name' is required",
            body={},
        ),
        Case(
            "wrong type",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "'max_participants' must be an integer",
            body={"display_name": "a", "max_participants": "10"},
        ),
        Case(
            "out of range",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "between 1 and",
            body={"display_name": "a", "max_participants": 0},
        ),
        Case(
            "too long",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "longer than 200",
            body={"display_name": "x" * 201},
        ),
        Case(
            "bad setting",
            "POST",
            create,
            400,
            "INVALID_REQUEST",
            "settings.require_auth",
            body={"display_name": "a", "settings": {"require_auth": "yes"}},
        ),
        Case(
            "too large body",
            "POST",
            create,
            413,
            "INVALID_REQUEST",
            "larger than",
            body=b"{" + b" " * 20_000 + b"}",
        ),
        Case(
            "grant type",
            "POST",
            "/api/v1/auth/token",
            400,
            "INVALID_REQUEST",
            "grant_type",
            auth="none",
            body={"grant_type": "password", "client_id": "a", "client_secret": "b"},
        ),
        Case("active param", "GET", create + "?active=maybe", 400, "INVALID_REQUEST", "'active'"),
        Case("wrong method", "PUT", create, 405, "INVALID_REQUEST", "method PUT is not allowed"),
        Case(
            "join body",
            "POST",
            f"/api/v1/meetings/{meeting_id}/join",
            400,
            "INVALID_REQUEST",
            "participant_name",
            auth="none",
            body={"participant_name": 5},
        ),
        # UNAUTHORIZED
        Case(
            "no token",
            "POST",
            create,
            401,
            "UNAUTHORIZED",
            "Bearer",
            auth="none",
            body={"display_name": "a"},
        ),
        Case("basic auth", "GET", create, 401, "UNAUTHORIZED", "Bearer", auth="Basic YTpi"),
        Case("garbage token", "GET", create, 401, "UNAUTHORIZED", "token", auth="Bearer abc.def"),
        Case(
            "unknown client",
            "POST",
            "/api/v1/auth/token",
            401,
            "UNAUTHORIZED",
            "unknown client or wrong secret",
            auth="none",
            body={"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
        ),
        Case(
            "require_auth join",
            "POST",
            f"/api/v1/meetings/{private_id}/join",
            401,
            "UNAUTHORIZED",
            "requires an access token",
            auth="none",
        ),
        # FORBIDDEN
        Case(
            "end by another",
            "DELETE",
            f"/api/v1/meetings/{meeting_id}",
            403,
            "FORBIDDEN",
            "only the owner",
            auth="bob",
        ),
        Case(
            "kick by another",
            "DELETE",
            f"/api/v1/meetings/{meeting_id}/participants/p-1",
            403,
            "FORBIDDEN",
            "only the owner",
            auth="bob",
        ),
        Case("list another's", "GET", create + "?user_id=someone", 403, "FORBIDDEN", "your own"),
        # NOT_FOUND
        Case("unknown meeting", "GET", f"/api/v1/meetings/{MISSING}", 404, "NOT_FOUND", MISSING),
        Case("end unknown", "DELETE", f"/api/v1/meetings/{MISSING}", 404, "NOT_FOUND", MISSING),
        Case("long id", "GET", "/api/v1/meetings/" + "x" * 300, 404, "NOT_FOUND", "does not exist"),
        Case("unknown api route", "GET", "/api/v1/nope", 404, "NOT_FOUND", "no route"),
        Case("unknown route", "GET", "/favicon.ico", 404, "NOT_FOUND", "no route", auth="none"),
        Case(
            "kick unknown participant",
            "DELETE",
            f"/api/v1/meetings/{meeting_id}/participants/nobody",
            404,
            "NOT_FOUND",
            "participant nobody",
        ),
        # CONFLICT: the meeting exists but has ended
        Case(
            "join ended",
            "POST",
            f"/api/v1/meetings/{ended_id}/join",
            409,
            "CONFLICT",
            f"meeting {ended_id} has ended",
            auth="none",
        ),
        Case(
            "kick in ended",
            "DELETE",
            f"/api/v1/meetings/{ended_id}/participants/p-1",
            409,
            "CONFLICT",
            "has ended",
        ),
    ]


async def _send(api: Api, case: Case, tokens: dict[str, str]) -> Any:
    headers: dict[str, str] = {}
    if case.auth in tokens:
        headers["authorization"] = f"Bearer {tokens[case.auth]}"
    elif case.auth != "none":
        headers["authorization"] = case.auth
    body = case.body
    data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return await api.request(case.method, case.path, body=data, headers=headers)


async def test_every_error_is_in_the_contract_shape(api: Api, stack: Stack) -> None:
    bob_id, bob_secret = await add_client(stack.settings, "bob")
    tokens = {
        "alice": await api.token(stack.client_id, stack.client_secret),
        "bob": await api.token(bob_id, bob_secret),
    }
    created = await api.request(
        "POST", "/api/v1/meetings", token=tokens["alice"], json_body={"display_name": "m"}
    )
    private = await api.request(
        "POST",
        "/api/v1/meetings",
        token=tokens["alice"],
        json_body={"display_name": "p", "settings": {"require_auth": True}},
    )
    ended = await api.request(
        "POST", "/api/v1/meetings", token=tokens["alice"], json_body={"display_name": "e"}
    )
    ended_id = ended.json()["meeting_id"]
    gone = await api.request("DELETE", f"/api/v1/meetings/{ended_id}", token=tokens["alice"])
    assert gone.status == 204
    failures = []
    for case in _cases(created.json()["meeting_id"], private.json()["meeting_id"], ended_id):
        reply = await _send(api, case, tokens)
        try:
            assert reply.status == case.status, reply.body
            assert reply.headers["content-type"].startswith("application/json")
            assert reply.error_code == case.code
            assert case.fragment in reply.json()["error"]["message"], reply.json()
        except (AssertionError, KeyError, ValueError) as exc:
            failures.append(f"{case.name}: {exc!r}")
    assert failures == []
    # the owner's join of a require_auth meeting works with a token
    ok = await api.request(
        "POST", f"/api/v1/meetings/{private.json()['meeting_id']}/join", token=tokens["bob"]
    )
    assert ok.status == 200 and ok.json()["role"] == "guest"


async def test_wrong_secret_is_unauthorized(h1: Api, stack: Stack) -> None:
    reply = await h1.request(
        "POST",
        "/api/v1/auth/token",
        json_body={
            "grant_type": "client_credentials",
            "client_id": stack.client_id,
            "client_secret": stack.client_secret + "x",
        },
    )
    assert reply.status == 401 and reply.error_code == "UNAUTHORIZED"
    assert reply.json()["error"]["message"] == "unknown client or wrong secret"


async def test_refusing_mc_gives_503_naming_it(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    stack.mc.refuse = CapacityExceeded("mc-1 is full")
    reply = await api.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
    )
    assert reply.status == 503 and reply.error_code == "CAPACITY_EXCEEDED"
    assert "mc-1: mc-1 is full" in reply.json()["error"]["message"]
    # the refused meeting is not left active
    listed = await api.request("GET", "/api/v1/meetings?active=true", token=token)
    assert listed.json()["total"] == 0


async def test_unreachable_mc_is_skipped_for_the_next(h1: Api, stack: Stack) -> None:
    # mc-0 sorts first among equally loaded controllers, and nothing listens at its endpoint.
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    await register_mc(stack.running.grpc_port, "mc-0", dead)
    token = await h1.token(stack.client_id, stack.client_secret)
    reply = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
    )
    assert reply.status == 201, reply.body
    assert reply.json()["meeting_controller_url"].endswith("mc=mc-1")
    # with the good one refusing too, the answer is a clear 503 naming both
    stack.mc.refuse = CapacityExceeded("full")
    reply = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
    )
    assert reply.status == 503
    message = reply.json()["error"]["message"]
    assert "mc-0" in message and "unreachable" in message and "mc-1: full" in message


async def test_no_controller_is_503(h1: Api, stack: Stack) -> None:
    stack.clock.advance(stack.settings.heartbeat_timeout_s + 1)  # mc-1 falls silent
    token = await h1.token(stack.client_id, stack.client_secret)
    reply = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
    )
    assert reply.status == 503 and reply.error_code == "CAPACITY_EXCEEDED"
    assert "no healthy meeting controller" in reply.json()["error"]["message"]


async def test_unexpected_exception_is_internal_error_without_traceback() -> None:
    class Broken:
        def now(self) -> float:
            return 0.0

        async def meeting_info(self, meeting_id: str) -> Any:
            raise RuntimeError("secret detail")

    app: QuartTrio = create_app(
        Broken(),  # type: ignore[arg-type]
        limiter=KeyedRateLimiter(),
        metrics=GcMetrics(Registry()),
    )
    client = app.test_client()
    response = await client.get("/api/v1/meetings/x")
    assert response.status_code == 500
    body = await response.get_json()
    assert body == {"error": {"code": "INTERNAL_ERROR", "message": "internal error", "details": {}}}


async def test_oversize_bodies_over_http3_do_not_take_the_listener_down(stack: Stack) -> None:
    # The 413 goes out before the whole body has arrived; the rest of the body then arrives
    # for a stream hypercorn has forgotten (this used to kill the QUIC listener).
    async with stack.api("h3") as api:
        for _ in range(10):
            reply = await api.request("POST", "/api/v1/auth/token", body=b"x" * 200_000)
            assert reply.status == 413 and reply.error_code == "INVALID_REQUEST"
        assert (await api.request("GET", "/healthz")).status == 200
    async with stack.api("h3") as fresh:
        assert (await fresh.request("GET", "/healthz")).status == 200


async def test_readyz_is_503_when_the_store_fails() -> None:
    class DeadStore:
        async def schema_version(self) -> int:
            raise OSError("database is gone")

    class Gc:
        store = DeadStore()

        def now(self) -> float:
            return 0.0

    app: QuartTrio = create_app(
        Gc(),  # type: ignore[arg-type]
        limiter=KeyedRateLimiter(),
        metrics=GcMetrics(Registry()),
    )
    response = await app.test_client().get("/readyz")
    assert response.status_code == 503
    assert await response.get_json() == {"status": "store unavailable", "error": "OSError"}


async def test_requested_region_places_the_meeting_there(h1: Api, stack: Stack) -> None:
    async with running_stand_in_mc(StandInMC(), "mc-eu") as eu_endpoint:
        await _placed_by_region(h1, stack, eu_endpoint)


async def _placed_by_region(h1: Api, stack: Stack, eu_endpoint: str) -> None:
    await register_mc(stack.running.grpc_port, "mc-eu", eu_endpoint, region="eu-west-1")
    token = await h1.token(stack.client_id, stack.client_secret)

    async def placed(body: dict[str, Any]) -> str:
        reply = await h1.request("POST", "/api/v1/meetings", token=token, json_body=body)
        assert reply.status == 201, reply.body
        info = await h1.request("GET", f"/api/v1/meetings/{reply.json()['meeting_id']}")
        region: str = info.json()["meeting_controller_region"]
        assert reply.json()["meeting_controller_url"].endswith(
            "mc=mc-eu" if region == "eu-west-1" else "mc=mc-1"
        )
        return region

    assert await placed({"display_name": "a", "region": "eu-west-1"}) == "eu-west-1"
    assert await placed({"display_name": "b", "region": "eu-central-1"}) == "eu-west-1"  # nearest
    assert await placed({"display_name": "c", "region": "local"}) == "local"
