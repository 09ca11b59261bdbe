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
* **Connection tokens** (MH -> client -> MH) are HS256 with a random per-process secret: the MH
  that issues one at ``RegisterParticipant`` is the only party that ever verifies it (the client
  connects to the ``media_handler_url`` returned with it), so a shared secret that never leaves
  the process is both sufficient and cheaper than a signature. A restarted MH invalidates the
  outstanding tokens, which live :data:`CONNECTION_TOKEN_TTL_S` anyway.

Verification pins the algorithm (``alg: none`` and algorithm confusion, e.g. HS256 keyed with
the public key's bytes, are rejected), requires every claim, and checks ``exp``/``nbf``/``iat``
against the caller's ``now`` with a clock-skew leeway (:data:`DEFAULT_LEEWAY_S`, configurable
per verifier and per service). Any failure raises
:class:`~darktower.errors.Unauthorized` with a message naming the reason; a valid join token for
another meeting raises :class:`~darktower.errors.Forbidden`, because the caller *is*
authenticated, just not for this meeting (HTTP 403 / ``FORBIDDEN``).

pyjwt is imported lazily: ``import jwt`` loads ``socket`` and ``ssl`` through
``jwt.jwks_client``, and the protocol layer must import without any I/O module (docs/architecture.md
§2, ``tests/test_layering.py``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import secrets
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from darktower.errors import Forbidden, Unauthorized
from darktower.model import ClientId, MeetingId, ParticipantId, Role

# --- limits and defaults -----------------------------------------------------------------------
ASYMMETRIC_ALGORITHM = "EdDSA"
CONNECTION_ALGORITHM = "HS256"
DEFAULT_ISSUER = "darktower-gc"
MC_AUDIENCE = "darktower-mc"  # default audience of join tokens; configurable per deployment
ACCESS_AUDIENCE = "darktower-api"
MH_AUDIENCE = "darktower-mh"
JOIN_TOKEN_TTL_S = 15 * 60  # long enough to open the meeting page and join, short if leaked
ACCESS_TOKEN_TTL_S = 3600  # the contract's ``expires_in``
CONNECTION_TOKEN_TTL_S = 60  # used at once, right after JoinResponse
# Clock skew tolerated between the host that issued a token and the one verifying it, for
# exp, iat, nbf and a join key's retirement; each service's ``--token-leeway-s`` overrides it.
DEFAULT_LEEWAY_S = 30.0
# Join keys an MC accepts at once (current, previous ones within their overlap). Policy: a
# larger set from the GC is refused (ValueError: the MC keeps its keys and registers again);
# rotating more often than the overlap never comes near it.
MAX_JOIN_KEYS = 16
MAX_KEY_ID_LENGTH = 64  # ours are 43 characters (base64url of a SHA-256)
CONNECTION_SECRET_BYTES = 32  # HS256 wants at least the hash size
# Tokens longer than this are rejected before any parsing: a bounded input (docs/architecture.md
# §5). Ours are a few hundred bytes; a display name is capped below so an issued token always fits.
MAX_TOKEN_LENGTH = 4096
MAX_PARTICIPANT_NAME_LENGTH = 256

_JOIN_CLAIMS = ("iss", "aud", "mid", "role", "exp", "iat", "jti")
_ACCESS_CLAIMS = ("iss", "aud", "sub", "scope", "exp", "iat", "jti")
_CONNECTION_CLAIMS = ("aud", "sub", "mid", "exp", "iat", "jti")


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


@attrs.frozen
class AccessClaims:
    """A verified access token (client credentials)."""

    client_id: ClientId
    scopes: tuple[str, ...]
    token_id: str
    issued_at: float
    expires_at: float


@attrs.frozen
class ConnectionClaims:
    """A verified MH connection token, bound to one participant of one meeting."""

    participant_id: ParticipantId
    meeting_id: MeetingId
    token_id: str
    issued_at: float
    expires_at: float


# --- keys --------------------------------------------------------------------------------------
def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM, the form sent to MCs in ``RegisterMeetingControllerResponse``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (for writing a configuration file; protect it with file modes)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Parse a PEM private key; raises ``ValueError`` if it is not an Ed25519 key."""
    key = serialization.load_pem_private_key(data, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_private_key_file(
    path: str | pathlib.Path, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Read a PEM private key file named in the configuration (``ValueError`` if not Ed25519)."""
    return load_private_key_pem(pathlib.Path(path).read_bytes(), password)


def load_public_key_pem(data: bytes | str) -> Ed25519PublicKey:
    """Parse the PEM public key an MC receives; raises ``ValueError`` if it is not Ed25519."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``kid`` of a join key: its JWK thumbprint (RFC 7638, OKP members per RFC 8037), so
    GC replicas sharing a key agree on its id and nothing has to be stored beside it."""
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(public_key_raw(key))}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")
    return _b64url(hashlib.sha256(canonical).digest())


@attrs.frozen
class JoinKey:
    """One public key verifying join tokens, as the GC publishes it to MCs.

    ``not_after`` (unix seconds) is when a retired key stops verifying (its retirement plus the
    GC's overlap); ``None`` for the key the GC signs with now.
    """

    kid: str
    public_key: Ed25519PublicKey = attrs.field(eq=False, repr=False)
    not_after: float | None = None
    # Equality by the key's bytes (cryptography's key objects compare by identity on some
    # versions).
    _raw: bytes = attrs.field(init=False, repr=False)

    @_raw.default
    def _raw_default(self) -> bytes:
        return public_key_raw(self.public_key)

    @classmethod
    def of(
        cls, key: Ed25519PrivateKey | Ed25519PublicKey, *, not_after: float | None = None
    ) -> JoinKey:
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        return cls(key_id(public), public, not_after)

    @classmethod
    def from_pem(cls, kid: str, pem: bytes | str, *, not_after: float | None = None) -> JoinKey:
        """As received from the GC; ``ValueError`` if not Ed25519 or ``kid`` is not its id."""
        key = load_public_key_pem(pem)
        if key_id(key) != kid:
            raise ValueError(f"join key id {kid[:MAX_KEY_ID_LENGTH]!r} does not match its key")
        return cls(kid, key, not_after)

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    def retired(self, now: float, leeway_s: float = 0.0) -> bool:
        return self.not_after is not None and now >= self.not_after + leeway_s


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


@attrs.frozen
class GcSigningKeys:
    """The GC's two signing keys; equal keys are refused so the token kinds stay separate."""

    join_key: Ed25519PrivateKey
    access_key: Ed25519PrivateKey

    def __attrs_post_init__(self) -> None:
        if secrets.compare_digest(_raw(self.join_key), _raw(self.access_key)):
            raise ValueError("the join-token key and the access-token key must differ")

    @classmethod
    def generate(cls) -> GcSigningKeys:
        return cls(join_key=generate_signing_key(), access_key=generate_signing_key())


# --- shared encode / decode --------------------------------------------------------------------
def _jwt() -> types.ModuleType:
    import jwt  # lazily: see the module docstring

    return jwt


def _encode(
    payload: Mapping[str, Any], key: Any, algorithm: str, headers: dict[str, Any] | None = None
) -> str:
    token: str = _jwt().encode(dict(payload), key, algorithm=algorithm, headers=headers)
    return token


def _check_leeway(leeway_s: float) -> float:
    if not leeway_s >= 0:
        raise ValueError(f"token leeway must be >= 0 seconds, got {leeway_s}")
    return float(leeway_s)


def _decode(
    kind: str,
    token: str,
    key: Any | Callable[[Mapping[str, Any]], Any],
    *,
    algorithm: str,
    audience: str,
    issuer: str | None,
    required: Iterable[str],
    now: float,
    leeway_s: float,
) -> dict[str, Any]:
    """Verify signature, algorithm, audience, issuer and times; raise ``Unauthorized``."""
    jwt = _jwt()
    if not isinstance(token, str) or not token:
        raise Unauthorized(f"{kind} token missing")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized(f"{kind} token too long ({len(token)} > {MAX_TOKEN_LENGTH} bytes)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"{kind} token malformed: {exc}") from None
    # Checked before pyjwt sees the key, so the message names the attack; pyjwt's own
    # ``algorithms=[...]`` pin below is the second line of defence.
    if header.get("alg") != algorithm:
        raise Unauthorized(
            f"{kind} token algorithm {header.get('alg')!r} not allowed (expected {algorithm})"
        )
    if callable(key):
        key = key(header)  # picks the key the header names; raises Unauthorized
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            # Times are checked below against the caller's ``now``, not the process clock.
            options={
                "require": list(required),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise Unauthorized(f"{kind} token signature invalid") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized(f"{kind} token audience invalid (expected {audience!r})") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized(f"{kind} token issuer invalid (expected {issuer!r})") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"{kind} token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"{kind} token invalid: {exc}") from None
    _check_times(kind, claims, now, leeway_s)
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise Unauthorized(f"{kind} token has no valid 'jti'")
    return claims


def _number(kind: str, claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"{kind} token claim {name!r} is not a number")
    return float(value)


def _check_times(kind: str, claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    exp = _number(kind, claims, "exp")
    iat = _number(kind, claims, "iat")
    if now >= exp + leeway_s:
        raise Unauthorized(f"{kind} token expired at {exp:.0f} (now {now:.0f})")
    if iat > now + leeway_s:
        raise Unauthorized(f"{kind} token not yet valid: issued at {iat:.0f} (now {now:.0f})")
    if "nbf" in claims and _number(kind, claims, "nbf") > now + leeway_s:
        raise Unauthorized(f"{kind} token not yet valid before {claims['nbf']} (now {now:.0f})")


def _string(kind: str, claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Unauthorized(f"{kind} token claim {name!r} is not a non-empty string")
    return value


def _new_jti() -> str:
    return secrets.token_urlsafe(16)


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
    ) -> str:
        if participant_name is not None and len(participant_name) > MAX_PARTICIPANT_NAME_LENGTH:
            raise ValueError(f"participant name longer than {MAX_PARTICIPANT_NAME_LENGTH}")
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "mid": str(meeting_id),
            "role": Role(role).value,
            "iat": int(now),
            "exp": int(now + self.ttl_s),
            "jti": _new_jti(),
        }
        if participant_name is not None:
            payload["name"] = participant_name
        return _encode(payload, self._key, ASYMMETRIC_ALGORITHM, headers={"kid": self.kid})


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
        self.leeway_s = _check_leeway(leeway_s)

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
        claims = _decode(
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
        token_meeting = _string("join", claims, "mid")
        try:
            role = Role(claims["role"])
        except ValueError:
            raise Unauthorized(f"join token role {claims['role']!r} unknown") from None
        name = claims.get("name")
        if name is not None and not isinstance(name, str):
            raise Unauthorized("join token claim 'name' is not a string")
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
        return _encode(
            {
                "iss": self.issuer,
                "aud": ACCESS_AUDIENCE,
                "sub": str(client_id),
                "scope": scope,
                "iat": int(now),
                "exp": int(now + self.ttl_s),
                "jti": _new_jti(),
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
        self.leeway_s = _check_leeway(leeway_s)

    def verify(self, token: str, *, now: float) -> AccessClaims:
        claims = _decode(
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
            client_id=ClientId(_string("access", claims, "sub")),
            scopes=tuple(scope.split()),
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )


# --- connection tokens (MH) --------------------------------------------------------------------
class ConnectionTokenAuthority:
    """Issues and verifies one MH process's connection tokens (HS256, per-process secret)."""

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        ttl_s: float = CONNECTION_TOKEN_TTL_S,
        leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        if secret is None:
            secret = secrets.token_bytes(CONNECTION_SECRET_BYTES)
        if len(secret) < CONNECTION_SECRET_BYTES:
            raise ValueError(
                f"connection-token secret shorter than {CONNECTION_SECRET_BYTES} bytes"
            )
        self._secret = secret
        self.ttl_s = ttl_s
        self.leeway_s = _check_leeway(leeway_s)

    def issue(self, participant_id: ParticipantId, meeting_id: MeetingId, now: float) -> str:
        return _encode(
            {
                "aud": MH_AUDIENCE,
                "sub": str(participant_id),
                "mid": str(meeting_id),
                "iat": int(now),
                "exp": int(now + self.ttl_s),
                "jti": _new_jti(),
            },
            self._secret,
            CONNECTION_ALGORITHM,
        )

    def verify(self, token: str, *, now: float) -> ConnectionClaims:
        claims = _decode(
            "connection",
            token,
            self._secret,
            algorithm=CONNECTION_ALGORITHM,
            audience=MH_AUDIENCE,
            issuer=None,
            required=_CONNECTION_CLAIMS,
            now=now,
            leeway_s=self.leeway_s,
        )
        return ConnectionClaims(
            participant_id=ParticipantId(_string("connection", claims, "sub")),
            meeting_id=MeetingId(_string("connection", claims, "mid")),
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
