"""The tokens the GC hands out and checks: its issuers (:class:`Tokens`), client credentials
exchanged for access tokens and access tokens checked (:class:`AccessGate`), and the id of a
join token it signed (:func:`token_id`). Claims and signatures are ``protocol/tokens.py``'s."""

from __future__ import annotations

import base64
import collections
import json
import logging
from collections.abc import Callable
from typing import Any

import attrs

from darktower.errors import NotFound, Unauthorized
from darktower.global_controller import credentials, schemas
from darktower.global_controller._limits import CLIENT_RECHECK_S, MAX_VERIFIED_TOKENS
from darktower.global_controller.store import Store
from darktower.logs import fields
from darktower.model import ClientId
from darktower.protocol.tokens import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    JoinTokenIssuer,
)

log = logging.getLogger("darktower.gc")

# The ``scope`` of every access token (docs/protocol.md §5.1).
API_SCOPES = ("meetings",)


@attrs.frozen
class Tokens:
    join: JoinTokenIssuer
    access: AccessTokenIssuer
    access_verifier: AccessTokenVerifier


def token_id(token: str) -> str:
    """The ``jti`` of a JWT this GC has just signed (its payload read without verifying)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


class AccessGate:
    """Client credentials in, access tokens out; ``Authorization`` headers checked.

    Remembers verified tokens and whether each client still exists (both bounded by
    :data:`MAX_VERIFIED_TOKENS`, least recently used evicted). Owns no task.
    """

    def __init__(self, store: Store, tokens: Tokens, clock: Callable[[], float]) -> None:
        self._store = store
        self._tokens = tokens
        self._clock = clock  # unix seconds
        self._verified: collections.OrderedDict[str, AccessClaims] = collections.OrderedDict()
        # client id -> (GC time it was last read from the store, whether it was there)
        self._clients_seen: collections.OrderedDict[str, tuple[float, bool]] = (
            collections.OrderedDict()
        )

    async def issue_access_token(self, request: schemas.TokenRequest) -> dict[str, Any]:
        """Client credentials → access token. ``Unauthorized`` for an unknown client or a
        wrong secret (same answer and about the same time for both)."""
        try:
            client = await self._store.get_client(ClientId(request.client_id))
        except NotFound:
            client = None
        # Verify even for unknown clients, so timing does not reveal which ids exist.
        encoded = client.secret_hash if client is not None else credentials.DUMMY_HASH
        try:
            ok = await credentials.verify_secret_async(request.client_secret, encoded)
        except ValueError:
            log.error("corrupt secret hash", extra=fields(client=request.client_id))
            ok = False
        if client is None or not ok:
            raise Unauthorized("unknown client or wrong secret")
        token = self._tokens.access.issue(client.client_id, API_SCOPES, self._clock())
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self._tokens.access.ttl_s),
        }

    async def authenticate(self, authorization: str | None) -> AccessClaims:
        """The claims of an ``Authorization: Bearer`` header whose client still exists;
        ``Unauthorized`` otherwise (a removed client's tokens within ``CLIENT_RECHECK_S``)."""
        claims = self.verify_access_token(authorization)
        now = self._clock()
        seen = self._clients_seen.get(claims.client_id)
        if seen is None or not 0 <= now - seen[0] < CLIENT_RECHECK_S:
            try:
                await self._store.get_client(claims.client_id)
            except NotFound:
                seen = (now, False)
            else:
                seen = (now, True)
            self._clients_seen[claims.client_id] = seen
            self._clients_seen.move_to_end(claims.client_id)
            if len(self._clients_seen) > MAX_VERIFIED_TOKENS:
                self._clients_seen.popitem(last=False)
        if not seen[1]:
            raise Unauthorized("the client of this access token has been removed")
        return claims

    def verify_access_token(self, authorization: str | None) -> AccessClaims:
        """The claims of an ``Authorization: Bearer`` header (signature, expiry); the client's
        existence is :meth:`authenticate`'s. ``Unauthorized`` otherwise."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <access token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <access token>'")
        token = token.strip()
        now = self._clock()
        claims = self._verified.get(token)
        if claims is not None and now < claims.expires_at:
            self._verified.move_to_end(token)
            return claims
        self._verified.pop(token, None)
        claims = self._tokens.access_verifier.verify(token, now=now)  # raises Unauthorized
        self._verified[token] = claims
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return claims
