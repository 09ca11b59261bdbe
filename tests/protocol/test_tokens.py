"""Join, access and connection tokens: every listed attack is rejected, time is explicit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any

import jwt
import pytest

from darktower.errors import Forbidden, Unauthorized
from darktower.model import ClientId, MeetingId, ParticipantId, Role
from darktower.protocol import tokens as t

NOW = 1_700_000_000.0
MEETING = MeetingId("550e8400-e29b-41d4-a716-446655440000")


@pytest.fixture(scope="module")
def keys() -> t.GcSigningKeys:
    return t.GcSigningKeys.generate()


@pytest.fixture
def issuer(keys: t.GcSigningKeys) -> t.JoinTokenIssuer:
    return t.JoinTokenIssuer(keys.join_key)


@pytest.fixture
def verifier(keys: t.GcSigningKeys) -> t.JoinTokenVerifier:
    # The MC receives the key as PEM, so the round trip is part of what is tested.
    return t.JoinTokenVerifier(t.load_public_key_pem(t.public_key_pem(keys.join_key)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _forge(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{_b64(signature)}"


def _join_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": t.DEFAULT_ISSUER,
        "aud": t.MC_AUDIENCE,
        "mid": MEETING,
        "role": "host",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "jti": "abc",
    }
    payload.update(overrides)
    return payload


# --- join tokens: the good path ---------------------------------------------------------------
def test_join_token_round_trip(issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier) -> None:
    token = issuer.issue(MEETING, Role.GUEST, NOW, participant_name="Ada")
    claims = verifier.verify(token, meeting_id=MEETING, now=NOW + 1)
    assert claims.meeting_id == MEETING
    assert claims.role is Role.GUEST
    assert claims.participant_name == "Ada"
    assert claims.issued_at == int(NOW)
    assert claims.expires_at == int(NOW) + t.JOIN_TOKEN_TTL_S
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_join_tokens_have_unique_ids(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier
) -> None:
    ids = {
        verifier.verify(issuer.issue(MEETING, Role.HOST, NOW), meeting_id=MEETING, now=NOW).token_id
        for _ in range(20)
    }
    assert len(ids) == 20


# --- join tokens: expiry on a given now --------------------------------------------------------
def test_join_token_expiry_honours_leeway(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier
) -> None:
    token = issuer.issue(MEETING, Role.HOST, NOW)
    exp = int(NOW) + t.JOIN_TOKEN_TTL_S
    # Still accepted within the leeway after exp...
    verifier.verify(token, meeting_id=MEETING, now=exp + t.DEFAULT_LEEWAY_S - 0.001)
    # ...and refused from exp + leeway on.
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token, meeting_id=MEETING, now=exp + t.DEFAULT_LEEWAY_S)


def test_join_token_from_the_future_is_not_yet_valid(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier
) -> None:
    token = issuer.issue(MEETING, Role.HOST, NOW + 60)
    with pytest.raises(Unauthorized, match="not yet valid"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_join_token_nbf_in_the_future_is_rejected(
    keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier
) -> None:
    token = jwt.encode(_join_payload(nbf=int(NOW) + 60), keys.join_key, algorithm="EdDSA")
    with pytest.raises(Unauthorized, match="not yet valid"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


# --- join tokens: attacks ---------------------------------------------------------------------
def test_alg_none_is_rejected(verifier: t.JoinTokenVerifier) -> None:
    token = _forge({"alg": "none", "typ": "JWT"}, _join_payload())
    with pytest.raises(Unauthorized, match="algorithm 'none' not allowed"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_alg_none_is_rejected_even_past_our_header_check(keys: t.GcSigningKeys) -> None:
    # The second line of defence: pyjwt itself, with the algorithm pinned, refuses it.
    token = _forge({"alg": "none"}, _join_payload())
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, keys.join_key.public_key(), algorithms=["EdDSA"], audience=t.MC_AUDIENCE)


def test_hs256_signed_with_the_public_key_is_rejected(
    keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier
) -> None:
    # Algorithm confusion: the attacker knows the public key PEM and uses it as an HMAC secret.
    pem = t.public_key_pem(keys.join_key)

    def sign(data: bytes) -> bytes:
        return hmac.new(pem, data, hashlib.sha256).digest()

    token = _forge({"alg": "HS256", "typ": "JWT"}, _join_payload(), sign)
    with pytest.raises(Unauthorized, match="algorithm 'HS256' not allowed"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_wrong_key_is_rejected(keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier) -> None:
    other = t.generate_signing_key()
    with pytest.raises(Unauthorized, match="unknown"):
        verifier.verify(
            t.JoinTokenIssuer(other).issue(MEETING, Role.HOST, NOW), meeting_id=MEETING, now=NOW
        )
    # Claiming our key id does not help: the signature is checked with our key.
    header = {"alg": "EdDSA", "typ": "JWT", "kid": t.key_id(keys.join_key)}
    forged = jwt.encode(_join_payload(), other, algorithm="EdDSA", headers=header)
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.verify(forged, meeting_id=MEETING, now=NOW)


def test_tampered_payload_is_rejected(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier
) -> None:
    header, _payload, signature = issuer.issue(MEETING, Role.GUEST, NOW).split(".")
    promoted = _b64(json.dumps(_join_payload(role="host")).encode())
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.verify(f"{header}.{promoted}.{signature}", meeting_id=MEETING, now=NOW)


def test_wrong_audience_is_rejected(keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier) -> None:
    token = t.JoinTokenIssuer(keys.join_key, audience="someone-else").issue(MEETING, Role.HOST, NOW)
    with pytest.raises(Unauthorized, match="audience invalid"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_configured_audience_is_honoured(keys: t.GcSigningKeys) -> None:
    token = t.JoinTokenIssuer(keys.join_key, audience="mc-eu").issue(MEETING, Role.HOST, NOW)
    custom = t.JoinTokenVerifier(keys.join_key.public_key(), audience="mc-eu")
    assert custom.verify(token, meeting_id=MEETING, now=NOW).meeting_id == MEETING


def test_wrong_issuer_is_rejected(keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier) -> None:
    token = t.JoinTokenIssuer(keys.join_key, issuer="mallory").issue(MEETING, Role.HOST, NOW)
    with pytest.raises(Unauthorized, match="issuer invalid"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_wrong_meeting_is_forbidden(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier
) -> None:
    token = issuer.issue(MeetingId("another-meeting"), Role.HOST, NOW)
    with pytest.raises(Forbidden, match="another-meeting"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


@pytest.mark.parametrize("claim", ["iss", "aud", "mid", "role", "exp", "iat", "jti"])
def test_missing_claim_is_rejected(
    keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier, claim: str
) -> None:
    payload = _join_payload()
    del payload[claim]
    token = jwt.encode(payload, keys.join_key, algorithm="EdDSA")
    with pytest.raises(Unauthorized):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_unknown_role_is_rejected(keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier) -> None:
    token = jwt.encode(_join_payload(role="admin"), keys.join_key, algorithm="EdDSA")
    with pytest.raises(Unauthorized, match="role 'admin'"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * (t.MAX_TOKEN_LENGTH + 1)])
def test_malformed_tokens_are_rejected(verifier: t.JoinTokenVerifier, token: str) -> None:
    with pytest.raises(Unauthorized):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


# --- key separation ---------------------------------------------------------------------------
def test_gc_refuses_one_key_for_both_token_kinds() -> None:
    key = t.generate_signing_key()
    with pytest.raises(ValueError, match="must differ"):
        t.GcSigningKeys(join_key=key, access_key=key)


def test_access_token_round_trip(keys: t.GcSigningKeys) -> None:
    token = t.AccessTokenIssuer(keys.access_key).issue(ClientId("c1"), ["meetings:write"], NOW)
    claims = t.AccessTokenVerifier(keys.access_key.public_key()).verify(token, now=NOW)
    assert claims.client_id == "c1"
    assert claims.scopes == ("meetings:write",)
    assert claims.expires_at - claims.issued_at == t.ACCESS_TOKEN_TTL_S == 3600


def test_access_token_expires_after_an_hour(keys: t.GcSigningKeys) -> None:
    token = t.AccessTokenIssuer(keys.access_key).issue(ClientId("c1"), [], NOW)
    verifier = t.AccessTokenVerifier(keys.access_key.public_key(), leeway_s=0)
    verifier.verify(token, now=NOW + 3599)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token, now=NOW + 3600)


def test_access_token_is_not_a_join_token(
    keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier
) -> None:
    token = t.AccessTokenIssuer(keys.access_key).issue(ClientId("c1"), [], NOW)
    with pytest.raises(Unauthorized):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_access_token_is_not_a_join_token_even_with_one_key(keys: t.GcSigningKeys) -> None:
    # Should a deployment share the key anyway, the audience still keeps them apart.
    token = t.AccessTokenIssuer(keys.join_key).issue(ClientId("c1"), [], NOW)
    # (pyjwt checks required claims before the audience: either reason is a refusal.)
    with pytest.raises(Unauthorized, match=r"audience|lacks the"):
        t.JoinTokenVerifier(keys.join_key.public_key()).verify(token, meeting_id=MEETING, now=NOW)


def test_join_token_is_not_an_access_token(
    keys: t.GcSigningKeys, issuer: t.JoinTokenIssuer
) -> None:
    token = issuer.issue(MEETING, Role.HOST, NOW)
    with pytest.raises(Unauthorized):
        t.AccessTokenVerifier(keys.access_key.public_key()).verify(token, now=NOW)
    with pytest.raises(Unauthorized, match=r"audience|lacks the"):
        t.AccessTokenVerifier(keys.join_key.public_key()).verify(token, now=NOW)


def test_access_alg_none_is_rejected(keys: t.GcSigningKeys) -> None:
    payload = {"iss": t.DEFAULT_ISSUER, "aud": t.ACCESS_AUDIENCE, "sub": "c1", "scope": "",
               "iat": int(NOW), "exp": int(NOW) + 60, "jti": "j"}  # fmt: skip
    with pytest.raises(Unauthorized, match="not allowed"):
        t.AccessTokenVerifier(keys.access_key.public_key()).verify(
            _forge({"alg": "none"}, payload), now=NOW
        )


# --- connection tokens ------------------------------------------------------------------------
def test_connection_token_round_trip_and_binding() -> None:
    mh = t.ConnectionTokenAuthority()
    token = mh.issue(ParticipantId("p1"), MEETING, NOW)
    claims = mh.verify(token, now=NOW + 10)
    assert (claims.participant_id, claims.meeting_id) == ("p1", MEETING)
    assert claims.expires_at - claims.issued_at == t.CONNECTION_TOKEN_TTL_S


def test_connection_token_is_short_lived() -> None:
    mh = t.ConnectionTokenAuthority(leeway_s=0)
    token = mh.issue(ParticipantId("p1"), MEETING, NOW)
    with pytest.raises(Unauthorized, match="expired"):
        mh.verify(token, now=NOW + t.CONNECTION_TOKEN_TTL_S)


def test_connection_token_of_another_mh_process_is_rejected() -> None:
    token = t.ConnectionTokenAuthority().issue(ParticipantId("p1"), MEETING, NOW)
    with pytest.raises(Unauthorized, match="signature invalid"):
        t.ConnectionTokenAuthority().verify(token, now=NOW)


def test_join_token_is_not_a_connection_token(issuer: t.JoinTokenIssuer) -> None:
    with pytest.raises(Unauthorized, match="algorithm 'EdDSA' not allowed"):
        t.ConnectionTokenAuthority().verify(issuer.issue(MEETING, Role.HOST, NOW), now=NOW)


def test_short_connection_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        t.ConnectionTokenAuthority(b"short")


# --- join keys: key ids and rotation ----------------------------------------------------------
def test_join_tokens_name_their_key() -> None:
    key = t.generate_signing_key()
    token = t.JoinTokenIssuer(key).issue(MEETING, Role.HOST, NOW)
    kid = jwt.get_unverified_header(token)["kid"]
    # RFC 7638 / RFC 8037 thumbprint: base64url SHA-256 of the canonical OKP JWK.
    raw = t.public_key_raw(key.public_key())
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}, separators=(",", ":"))
    assert kid == _b64(hashlib.sha256(jwk.encode()).digest()) == t.key_id(key)
    assert t.key_id(key) == t.key_id(key.public_key())


def test_previous_key_verifies_until_the_overlap_ends() -> None:
    old, new = t.generate_signing_key(), t.generate_signing_key()
    old_token = t.JoinTokenIssuer(old).issue(MEETING, Role.HOST, NOW)
    retired_until = NOW + 600
    issuer = t.JoinTokenIssuer(
        new, previous_keys=[t.JoinKey.of(old.public_key(), not_after=retired_until)]
    )
    published = issuer.verification_keys(NOW)
    assert [k.kid for k in published] == [t.key_id(new), t.key_id(old)]
    assert published[0].not_after is None and published[1].not_after == retired_until
    verifier = t.JoinTokenVerifier(keys=published, leeway_s=0)
    new_token = issuer.issue(MEETING, Role.GUEST, NOW)
    assert verifier.verify(new_token, meeting_id=MEETING, now=NOW).role is Role.GUEST
    assert verifier.verify(old_token, meeting_id=MEETING, now=retired_until - 1).role is Role.HOST
    with pytest.raises(Unauthorized, match="retired"):
        verifier.verify(old_token, meeting_id=MEETING, now=retired_until)
    # The GC stops publishing a key once it is retired.
    assert [k.kid for k in issuer.verification_keys(retired_until)] == [t.key_id(new)]


def test_retirement_honours_the_leeway() -> None:
    old = t.generate_signing_key()
    token = t.JoinTokenIssuer(old).issue(MEETING, Role.HOST, NOW)
    verifier = t.JoinTokenVerifier(keys=[t.JoinKey.of(old, not_after=NOW)], leeway_s=10)
    verifier.verify(token, meeting_id=MEETING, now=NOW + 9)
    with pytest.raises(Unauthorized, match="retired"):
        verifier.verify(token, meeting_id=MEETING, now=NOW + 10)


def test_unknown_key_id_is_refused_with_a_clear_message(verifier: t.JoinTokenVerifier) -> None:
    token = t.JoinTokenIssuer(t.generate_signing_key()).issue(MEETING, Role.HOST, NOW)
    kid = jwt.get_unverified_header(token)["kid"]
    with pytest.raises(Unauthorized, match=f"join token key id '{kid}' unknown"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


@pytest.mark.parametrize("kid", [7, "", "x" * 200, ["a"]])
def test_malformed_key_id_is_refused(
    keys: t.GcSigningKeys, verifier: t.JoinTokenVerifier, kid: Any
) -> None:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    token = _forge(header, _join_payload(), keys.join_key.sign)
    with pytest.raises(Unauthorized, match=r"(?i)key id"):
        verifier.verify(token, meeting_id=MEETING, now=NOW)


def test_token_without_key_id_is_verified_with_the_current_key(keys: t.GcSigningKeys) -> None:
    # Tokens minted before key ids existed (an older GC) still verify with the current key,
    # never with a retired one.
    old = t.generate_signing_key()
    token = jwt.encode(_join_payload(), keys.join_key, algorithm="EdDSA")
    current = t.JoinKey.of(keys.join_key)
    retired = t.JoinKey.of(old, not_after=NOW + 600)
    verifier = t.JoinTokenVerifier(keys=[retired, current])
    assert verifier.verify(token, meeting_id=MEETING, now=NOW).token_id == "abc"
    legacy_by_old = jwt.encode(_join_payload(), old, algorithm="EdDSA")
    with pytest.raises(Unauthorized, match="signature invalid"):
        verifier.verify(legacy_by_old, meeting_id=MEETING, now=NOW)


def test_a_verifier_needs_a_key_and_caps_the_key_set() -> None:
    with pytest.raises(ValueError):
        t.JoinTokenVerifier()
    many = [
        t.JoinKey.of(t.generate_signing_key(), not_after=NOW) for _ in range(t.MAX_JOIN_KEYS + 1)
    ]
    with pytest.raises(ValueError, match="keys"):
        t.JoinTokenVerifier(keys=many)


def test_join_key_pem_round_trip() -> None:
    key = t.JoinKey.of(t.generate_signing_key(), not_after=NOW)
    again = t.JoinKey.from_pem(key.kid, key.public_key_pem, not_after=NOW)
    assert again == key
    with pytest.raises(ValueError, match="key id"):
        t.JoinKey.from_pem("not-its-kid", key.public_key_pem)


# --- clock-skew leeway --------------------------------------------------------------------------
def test_default_leeway_is_thirty_seconds(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier, keys: t.GcSigningKeys
) -> None:
    assert t.DEFAULT_LEEWAY_S == 30.0
    # A host whose clock is 29 s behind the GC's still accepts a token issued "now".
    verifier.verify(issuer.issue(MEETING, Role.HOST, NOW + 29), meeting_id=MEETING, now=NOW)
    access = t.AccessTokenIssuer(keys.access_key).issue(ClientId("c"), ["meetings"], NOW + 29)
    t.AccessTokenVerifier(keys.access_key.public_key()).verify(access, now=NOW)
    mh = t.ConnectionTokenAuthority()
    mh.verify(mh.issue(ParticipantId("p"), MEETING, NOW + 29), now=NOW)


def test_leeway_is_configurable_for_every_kind(
    issuer: t.JoinTokenIssuer, keys: t.GcSigningKeys
) -> None:
    late = NOW + t.JOIN_TOKEN_TTL_S + 5
    token = issuer.issue(MEETING, Role.HOST, NOW)
    t.JoinTokenVerifier(keys.join_key.public_key(), leeway_s=10).verify(
        token, meeting_id=MEETING, now=late
    )
    with pytest.raises(Unauthorized, match="expired"):
        t.JoinTokenVerifier(keys.join_key.public_key(), leeway_s=2).verify(
            token, meeting_id=MEETING, now=late
        )
    access = t.AccessTokenIssuer(keys.access_key).issue(ClientId("c"), [], NOW + 20)
    with pytest.raises(Unauthorized, match="not yet valid"):
        t.AccessTokenVerifier(keys.access_key.public_key(), leeway_s=10).verify(access, now=NOW)
    mh = t.ConnectionTokenAuthority(leeway_s=10)
    with pytest.raises(Unauthorized, match="not yet valid"):
        mh.verify(mh.issue(ParticipantId("p"), MEETING, NOW + 20), now=NOW)
    with pytest.raises(ValueError, match="leeway"):
        t.JoinTokenVerifier(keys.join_key.public_key(), leeway_s=-1)


# --- keys -------------------------------------------------------------------------------------
def test_private_key_pem_file_round_trip(tmp_path: Any, issuer: t.JoinTokenIssuer) -> None:
    key = t.generate_signing_key()
    path = tmp_path / "join.pem"
    path.write_bytes(t.private_key_pem(key))
    loaded = t.load_private_key_file(path)
    assert t.public_key_pem(loaded) == t.public_key_pem(key)
    assert t.JoinTokenIssuer(loaded).public_key_pem == t.public_key_pem(key)


def test_non_ed25519_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="Ed25519"):
        t.load_private_key_pem(pem)
    with pytest.raises(ValueError, match="Ed25519"):
        t.load_public_key_pem(
            other.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def test_tokens_module_imports_no_io_module() -> None:
    code = (
        "import sys, darktower.protocol.tokens\n"
        "print(','.join(m for m in ('socket', 'ssl', 'asyncio', 'trio') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_join_token_carries_what_its_participant_may_publish(
    issuer: t.JoinTokenIssuer, verifier: t.JoinTokenVerifier, keys: t.GcSigningKeys
) -> None:
    limited = issuer.issue(MEETING, Role.GUEST, NOW, may_publish=frozenset({"audio"}))
    assert verifier.verify(limited, meeting_id=MEETING, now=NOW).may_publish == {"audio"}
    unlimited = issuer.issue(MEETING, Role.GUEST, NOW)
    assert verifier.verify(unlimited, meeting_id=MEETING, now=NOW).may_publish is None
    with pytest.raises(ValueError):
        issuer.issue(MEETING, Role.GUEST, NOW, may_publish=frozenset({"camera"}))
    # a forged claim naming an unknown kind is refused, even well signed
    forged = jwt.encode(_join_payload(pub=["audio", "camera"]), keys.join_key, algorithm="EdDSA")
    with pytest.raises(Unauthorized):
        verifier.verify(forged, meeting_id=MEETING, now=NOW)
