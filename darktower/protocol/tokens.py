"""Join, access and connection tokens: issuing and verifying JWTs (sans-IO, time is a parameter).

Three kinds of token, three keys, three audiences, so none is accepted in place of another:

* **Join tokens** (GC -> client -> MC) are signed by the GC with Ed25519 (``EdDSA``). MCs hold
  only public keys (they travel in ``RegisterMeetingControllerResponse`` and every
  ``HeartbeatResponse`` as PEM), so an MC can verify but never mint one. Each token names its
  key in the header's ``kid`` (:func:`key_id`, the key's RFC 7638 thumbprint), and an MC
  holds a small key set (:class:`JoinKey`): the GC's current key and the keys it retired less
  than an overlap ago, each with the time from which its tokens are refused, so rotating the
  GC's join key breaks no join (docs/decisions.md, "Join keys rotate with an overlap").
* **Access tokens** (client credentials, ``POST /api/v1/auth/token``) are signed with a second
  Ed25519 key of the GC, never the join-token key (:class:`GcSigningKeys` refuses equal keys),
  and carry the audience ``darktower-api``.
* **Connection tokens** (MH -> client -> MH) are HS256 with a random per-process secret that
  never leaves the MH that issued them (``_connection_tokens.py``).

Verification pins the algorithm (``alg: none`` and algorithm confusion, e.g. HS256 keyed with
the public key's bytes, are rejected), requires every claim, and checks ``exp``/``nbf``/``iat``
against the caller's ``now`` with a clock-skew leeway (:data:`DEFAULT_LEEWAY_S`, configurable
per verifier and per service). Any failure raises
:class:`~darktower.errors.Unauthorized` with a message naming the reason; a valid join token for
another meeting raises :class:`~darktower.errors.Forbidden`, because the caller *is*
authenticated, just not for this meeting (HTTP 403 / ``FORBIDDEN``).

Keys live in ``_token_keys.py``, connection tokens in ``_connection_tokens.py`` and the JWT
codec every kind shares in ``_jwt.py`` (which imports pyjwt lazily, so the protocol layer
imports no I/O module); this module re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from darktower.errors import Forbidden, Unauthorized
from darktower.model import ClientId, MeetingId, Role

from . import _jwt
from ._connection_tokens import (
    CONNECTION_ALGORITHM,
    CONNECTION_SECRET_BYTES,
    CONNECTION_TOKEN_TTL_S,
    MH_AUDIENCE,
    ConnectionClaims,
    ConnectionTokenAuthority,
)
from ._jwt import DEFAULT_LEEWAY_S, MAX_TOKEN_LENGTH
from ._token_keys import (
    MAX_KEY_ID_LENGTH,
    GcSigningKeys,
    JoinKey,
    generate_signing_key,
    key_id,
    load_private_key_file,
    load_private_key_pem,
    load_public_key_pem,
    private_key_pem,
    public_key_pem,
    public_key_raw,
)

__all__ = [
    "ACCESS_AUDIENCE",
    "ACCESS_TOKEN_TTL_S",
    "ASYMMETRIC_ALGORITHM",
    "CONNECTION_ALGORITHM",
    "CONNECTION_SECRET_BYTES",
    "CONNECTION_TOKEN_TTL_S",
    "DEFAULT_ISSUER",
    "DEFAULT_LEEWAY_S",
    "JOIN_TOKEN_TTL_S",
    "MAX_JOIN_KEYS",
    "MAX_KEY_ID_LENGTH",
    "MAX_PARTICIPANT_NAME_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MC_AUDIENCE",
    "MH_AUDIENCE",
    "AccessClaims",
    "AccessTokenIssuer",
    "AccessTokenVerifier",
    "ConnectionClaims",
    "ConnectionTokenAuthority",
    "GcSigningKeys",
    "JoinClaims",
    "JoinKey",
    "JoinTokenIssuer",
    "JoinTokenVerifier",
    "UnknownKeyId",
    "generate_signing_key",
    "key_id",
    "load_private_key_file",
    "load_private_key_pem",
    "load_public_key_pem",
    "private_key_pem",
    "public_key_pem",
    "public_key_raw",
]

# --- limits and defaults -----------------------------------------------------------------------
ASYMMETRIC_ALGORITHM = "EdDSA"
DEFAULT_ISSUER = "darktower-gc"
MC_AUDIENCE = "darktower-mc"  # default audience of join tokens; configurable per deployment
ACCESS_AUDIENCE = "darktower-api"
JOIN_TOKEN_TTL_S = 15 * 60  # long enough to open the meeting page and join, short if leaked
ACCESS_TOKEN_TTL_S = 3600  # the contract's ``expires_in``
# Join keys an MC accepts at once (current, previous ones within their overlap). Policy: a
# larger set from the GC is refused (ValueError: the MC keeps its keys and registers again);
# rotating more often than the overlap never comes near it.
MAX_JOIN_KEYS = 16
# A display name is capped so an issued token always fits in MAX_TOKEN_LENGTH.
MAX_PARTICIPANT_NAME_LENGTH = 256

_JOIN_CLAIMS = ("iss", "aud", "mid", "role", "exp", "iat", "jti")
_ACCESS_CLAIMS = ("iss", "aud", "sub", "scope", "exp", "iat", "jti")


# --- claims ------------------------------------------------------------------------------------
class UnknownKeyId(Unauthorized):
    """A join token names a key id the verifier does not hold: a key of another GC, a retired
    one, or one the GC started signing with since the verifier last learnt its keys (the MC
    then refreshes its keys once and verifies again)."""


@attrs.frozen
class JoinClaims:
    """A verified join token."""

    meeting_id: MeetingId
    role: Role
    token_id: str  # ``jti``: unique per token, for replay tracking
    issued_at: float
    expires_at: float
    participant_name: str | None = None
    # The kinds the participant may publish (claim ``pub``, docs/protocol.md §18.2): a subset
    # of PUBLISH_KINDS; None (no claim) means all of them.
    may_publish: frozenset[str] | None = None


# What a join token's ``pub`` claim may name (docs/protocol.md §18.2).
PUBLISH_KINDS: Final = frozenset({"audio", "video", "screen"})


@attrs.frozen
class AccessClaims:
    """A verified access token (client credentials)."""

    client_id: ClientId
    scopes: tuple[str, ...]
    token_id: str
    issued_at: float
    expires_at: float


# --- join tokens -------------------------------------------------------------------------------
class JoinTokenIssuer:
    """Mints join tokens on the GC with its join-token Ed25519 key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = MC_AUDIENCE,
        ttl_s: float = JOIN_TOKEN_TTL_S,
        previous_keys: Iterable[JoinKey] = (),
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.kid = key_id(key)
        # Retired keys still published to MCs until their ``not_after``.
        self.previous_keys = tuple(k for k in previous_keys if k.kid != self.kid)

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self._key)

    def verification_keys(self, now: float | None = None) -> tuple[JoinKey, ...]:
        """What MCs need to verify this GC's join tokens: the current key first, then the
        previous keys not yet retired at ``now`` (all of them when ``now`` is None)."""
        current = JoinKey(self.kid, self._key.public_key())
        previous = [k for k in self.previous_keys if now is None or not k.retired(now)]
        return (current, *previous)

    def issue(
        self,
        meeting_id: MeetingId,
        role: Role,
        now: float,
        *,
        participant_name: str | None = None,
        may_publish: frozenset[str] | None = None,
    ) -> str:
        """``may_publish``: the kinds of PUBLISH_KINDS the participant may publish (None: all;
        the token then carries no ``pub`` claim)."""
        if participant_name is not None and len(participant_name) > MAX_PARTICIPANT_NAME_LENGTH:
            raise ValueError(f"participant name longer than {MAX_PARTICIPANT_NAME_LENGTH}")
        if may_publish is not None and not may_publish <= PUBLISH_KINDS:
            raise ValueError(f"may_publish names kinds outside {sorted(PUBLISH_KINDS)}")
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "mid": str(meeting_id),
            "role": Role(role).value,
            "iat": int(now),
            "exp": int(now + self.ttl_s),
            "jti": _jwt.new_jti(),
        }
        if participant_name is not None:
            payload["name"] = participant_name
        if may_publish is not None:
            payload["pub"] = sorted(may_publish)
        return _jwt.encode(payload, self._key, ASYMMETRIC_ALGORITHM, headers={"kid": self.kid})


class JoinTokenVerifier:
    """Verifies join tokens on an MC with the GC's public keys (it cannot mint any).

    ``public_key`` is the GC's current key (as older GCs send it); ``keys`` the set the GC
    publishes (:meth:`JoinTokenIssuer.verification_keys`). A token is checked with the key its
    ``kid`` names; one without a ``kid`` (an older GC's) with a current key only. Raises
    ``ValueError`` for no key or more than :data:`MAX_JOIN_KEYS`.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey | None = None,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = MC_AUDIENCE,
        leeway_s: float = DEFAULT_LEEWAY_S,
        keys: Iterable[JoinKey] = (),
    ) -> None:
        ring = {k.kid: k for k in keys}
        if public_key is not None:
            ring.setdefault(key_id(public_key), JoinKey.of(public_key))
        if not ring:
            raise ValueError("a join-token verifier needs at least one key")
        if len(ring) > MAX_JOIN_KEYS:
            raise ValueError(f"more than {MAX_JOIN_KEYS} join keys")
        self._keys = ring
        current = [k for k in ring.values() if k.not_after is None]
        self._current = current[0] if len(current) == 1 else None
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = _jwt.check_leeway(leeway_s)

    @property
    def keys(self) -> tuple[JoinKey, ...]:
        return tuple(self._keys.values())

    def _key_for(self, header: Mapping[str, Any], now: float) -> Ed25519PublicKey:
        if "kid" not in header:
            if self._current is None:
                raise Unauthorized("join token names no key id ('kid')")
            return self._current.public_key
        kid = header["kid"]
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KEY_ID_LENGTH:
            raise Unauthorized("join token key id ('kid') malformed")
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKeyId(
                f"join token key id {kid!r} unknown: not a key of this GC, or retired"
            )
        if key.retired(now, self.leeway_s):
            raise Unauthorized(
                f"join token key {kid!r} was retired at {key.not_after:.0f} (now {now:.0f})"
            )
        return key.public_key

    def verify(self, token: str, *, meeting_id: MeetingId, now: float) -> JoinClaims:
        """Return the claims; ``Unauthorized`` if invalid, ``Forbidden`` for another meeting."""
        claims = _jwt.decode(
            "join",
            token,
            lambda header: self._key_for(header, now),
            algorithm=ASYMMETRIC_ALGORITHM,
            audience=self.audience,
            issuer=self.issuer,
            required=_JOIN_CLAIMS,
            now=now,
            leeway_s=self.leeway_s,
        )
        token_meeting = _jwt.claim_string("join", claims, "mid")
        try:
            role = Role(claims["role"])
        except ValueError:
            raise Unauthorized(f"join token role {claims['role']!r} unknown") from None
        name = claims.get("name")
        if name is not None and not isinstance(name, str):
            raise Unauthorized("join token claim 'name' is not a string")
        pub = claims.get("pub")
        if pub is not None and (
            not isinstance(pub, list)
            or not all(isinstance(kind, str) for kind in pub)
            or not set(pub) <= PUBLISH_KINDS
        ):
            raise Unauthorized("join token claim 'pub' is not a list of publish kinds")
        if token_meeting != meeting_id:
            raise Forbidden(
                f"join token is for meeting {token_meeting}, not {meeting_id}",
                details={"meeting_id": str(meeting_id)},
            )
        return JoinClaims(
            meeting_id=MeetingId(token_meeting),
            role=role,
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            participant_name=name,
            may_publish=None if pub is None else frozenset(pub),
        )


# --- access tokens -----------------------------------------------------------------------------
class AccessTokenIssuer:
    """Mints access tokens on the GC with its access-token Ed25519 key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        issuer: str = DEFAULT_ISSUER,
        ttl_s: float = ACCESS_TOKEN_TTL_S,
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.ttl_s = ttl_s

    def issue(self, client_id: ClientId, scopes: Iterable[str], now: float) -> str:
        scope = " ".join(scopes)
        return _jwt.encode(
            {
                "iss": self.issuer,
                "aud": ACCESS_AUDIENCE,
                "sub": str(client_id),
                "scope": scope,
                "iat": int(now),
                "exp": int(now + self.ttl_s),
                "jti": _jwt.new_jti(),
            },
            self._key,
            ASYMMETRIC_ALGORITHM,
        )


class AccessTokenVerifier:
    """Verifies access tokens on the GC (audience ``darktower-api``, EdDSA pinned)."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        *,
        issuer: str = DEFAULT_ISSUER,
        leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        self._key = public_key
        self.issuer = issuer
        self.leeway_s = _jwt.check_leeway(leeway_s)

    def verify(self, token: str, *, now: float) -> AccessClaims:
        claims = _jwt.decode(
            "access",
            token,
            self._key,
            algorithm=ASYMMETRIC_ALGORITHM,
            audience=ACCESS_AUDIENCE,
            issuer=self.issuer,
            required=_ACCESS_CLAIMS,
            now=now,
            leeway_s=self.leeway_s,
        )
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise Unauthorized("access token claim 'scope' is not a string")
        return AccessClaims(
            client_id=ClientId(_jwt.claim_string("access", claims, "sub")),
            scopes=tuple(scope.split()),
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
