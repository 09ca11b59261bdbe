"""Token attacks at the API: each forged or misused token is a 401 UNAUTHORIZED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from darktower.model import ClientId, MeetingId, Role
from darktower.protocol.tokens import (
    ACCESS_AUDIENCE,
    DEFAULT_ISSUER,
    AccessTokenIssuer,
    generate_signing_key,
    load_private_key_file,
    public_key_pem,
)
from tests.global_controller._harness import Api, Stack


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, str], claims: dict[str, object]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(stack: Stack, **overrides: object) -> dict[str, object]:
    now = int(stack.clock())
    claims: dict[str, object] = {
        "iss": DEFAULT_ISSUER,
        "aud": ACCESS_AUDIENCE,
        "sub": stack.client_id,
        "scope": "meetings",
        "iat": now,
        "exp": now + 600,
        "jti": "attack",
    }
    claims.update(overrides)
    return claims


def _access_key_pem(stack: Stack) -> bytes:
    key = load_private_key_file(stack.settings.data_path / "access-key.pem")
    return public_key_pem(key)


def _forgeries(stack: Stack) -> dict[str, tuple[str, str]]:
    """name -> (token, a fragment of the expected message)"""
    good_key = load_private_key_file(stack.settings.data_path / "access-key.pem")
    join_key = load_private_key_file(stack.settings.data_path / "join-key.pem")
    now = stack.clock()
    alg_none = _unsigned({"alg": "none", "typ": "JWT"}, _claims(stack)) + "."
    # HS256 keyed with the (public) verification key: the classic algorithm confusion.
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(stack))
    mac = hmac.new(_access_key_pem(stack), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{_b64(mac)}"
    expired = AccessTokenIssuer(good_key, ttl_s=60).issue(
        ClientId(stack.client_id), ["meetings"], now - 3600
    )
    wrong_key = AccessTokenIssuer(generate_signing_key()).issue(
        ClientId(stack.client_id), ["meetings"], now
    )
    # A join token (signed by the GC's join key, audience darktower-mc) used as access token.
    from darktower.protocol.tokens import JoinTokenIssuer

    join_token = JoinTokenIssuer(join_key).issue(MeetingId("m"), Role.HOST, now)
    # An access token signed by the join key (right shape, wrong key).
    join_signed = AccessTokenIssuer(join_key).issue(ClientId(stack.client_id), ["meetings"], now)
    good = AccessTokenIssuer(good_key).issue(ClientId(stack.client_id), ["meetings"], now)
    head, payload, sig = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_claims["sub"] = "someone-else"
    tampered = f"{head}.{_b64(json.dumps(tampered_claims).encode())}.{sig}"
    wrong_audience = jwt.encode(_claims(stack, aud="darktower-mc"), good_key, algorithm="EdDSA")
    return {
        "wrong audience": (wrong_audience, "audience invalid"),
        "alg none": (alg_none, "algorithm 'none' not allowed"),
        "HS256 confusion": (confused, "algorithm 'HS256' not allowed"),
        "expired": (expired, "expired"),
        "wrong key": (wrong_key, "signature invalid"),
        "join token as access token": (join_token, "signature invalid"),
        "signed by the join key": (join_signed, "signature invalid"),
        "tampered payload": (tampered, "signature invalid"),
        "truncated": (good[:-10], "access token"),
    }


async def test_forged_access_tokens_are_rejected(api: Api, stack: Stack) -> None:
    failures = []
    for name, (token, fragment) in _forgeries(stack).items():
        reply = await api.request("GET", "/api/v1/meetings", token=token)
        if reply.status != 401 or reply.error_code != "UNAUTHORIZED":
            failures.append(f"{name}: {reply.status} {reply.body!r}")
        elif fragment not in reply.json()["error"]["message"]:
            failures.append(f"{name}: message {reply.json()['error']['message']!r}")
    assert failures == []
    # the genuine article works, so the failures above are the forgeries' fault
    good = await api.token(stack.client_id, stack.client_secret)
    assert (await api.request("GET", "/api/v1/meetings", token=good)).status == 200


@pytest.mark.parametrize("advance", [3600 + 60])
async def test_access_token_expires_with_the_clock(h1: Api, stack: Stack, advance: int) -> None:
    token = await h1.token(stack.client_id, stack.client_secret)
    assert (await h1.request("GET", "/api/v1/meetings", token=token)).status == 200
    stack.clock.advance(advance)
    reply = await h1.request("GET", "/api/v1/meetings", token=token)
    assert reply.status == 401 and "expired" in reply.json()["error"]["message"]


async def test_join_token_of_one_meeting_is_not_valid_for_another(h1: Api, stack: Stack) -> None:
    from darktower.errors import Forbidden
    from darktower.protocol.tokens import JoinTokenVerifier, load_public_key_pem
    from tests.global_controller._harness import register_mc

    token = await h1.token(stack.client_id, stack.client_secret)
    a = await h1.request("POST", "/api/v1/meetings", token=token, json_body={"display_name": "a"})
    b = await h1.request("POST", "/api/v1/meetings", token=token, json_body={"display_name": "b"})
    reg = await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
    verifier = JoinTokenVerifier(load_public_key_pem(reg.join_token_public_key_pem))
    with pytest.raises(Forbidden):
        verifier.verify(
            a.json()["join_token"], meeting_id=MeetingId(b.json()["meeting_id"]), now=stack.clock()
        )
