"""The JWT encoding and verification every token kind shares (sans-IO: ``now`` is a parameter).

Verification pins the algorithm, requires every claim and checks the times against the
caller's ``now`` with a leeway; any failure raises :class:`~darktower.errors.Unauthorized`
naming the reason (docs/protocol.md §5).

pyjwt is imported lazily: ``import jwt`` loads ``socket`` and ``ssl`` through
``jwt.jwks_client``, and the protocol layer must import without any I/O module (docs/architecture.md
§2, ``tests/test_layering.py``).
"""

from __future__ import annotations

import secrets
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from darktower.errors import Unauthorized

# Tokens longer than this are rejected before any parsing: a bounded input (docs/architecture.md
# §5). Ours are a few hundred bytes; a display name is capped (tokens.MAX_PARTICIPANT_NAME_LENGTH) so
# an issued token always fits.
MAX_TOKEN_LENGTH = 4096
# Clock skew tolerated between the host that issued a token and the one verifying it, for
# exp, iat, nbf and a join key's retirement; each service's ``--token-leeway-s`` overrides it.
DEFAULT_LEEWAY_S = 30.0


def _jwt() -> types.ModuleType:
    import jwt  # lazily: see the module docstring

    return jwt


def encode(
    payload: Mapping[str, Any], key: Any, algorithm: str, headers: dict[str, Any] | None = None
) -> str:
    token: str = _jwt().encode(dict(payload), key, algorithm=algorithm, headers=headers)
    return token


def check_leeway(leeway_s: float) -> float:
    if not leeway_s >= 0:
        raise ValueError(f"token leeway must be >= 0 seconds, got {leeway_s}")
    return float(leeway_s)


def decode(
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


def claim_string(kind: str, claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Unauthorized(f"{kind} token claim {name!r} is not a non-empty string")
    return value


def new_jti() -> str:
    return secrets.token_urlsafe(16)
