"""MH connection tokens (MH -> client -> MH): HS256 with a random per-process secret.

The MH that issues one at ``RegisterParticipant`` is the only party that ever verifies it (the
client connects to the ``media_handler_url`` returned with it), so a shared secret that never
leaves the process is both sufficient and cheaper than a signature. A restarted MH invalidates
the outstanding tokens, which live :data:`CONNECTION_TOKEN_TTL_S` anyway (docs/decisions.md,
"MH connection tokens are HS256 with a per-process secret"). Re-exported by
:mod:`darktower.protocol.tokens`.
"""

from __future__ import annotations

import secrets

import attrs

from darktower.model import MeetingId, ParticipantId

from . import _jwt
from ._jwt import DEFAULT_LEEWAY_S

CONNECTION_ALGORITHM = "HS256"
MH_AUDIENCE = "darktower-mh"
CONNECTION_TOKEN_TTL_S = 60  # used at once, right after JoinResponse
CONNECTION_SECRET_BYTES = 32  # HS256 wants at least the hash size

_CONNECTION_CLAIMS = ("aud", "sub", "mid", "exp", "iat", "jti")


@attrs.frozen
class ConnectionClaims:
    """A verified MH connection token, bound to one participant of one meeting."""

    participant_id: ParticipantId
    meeting_id: MeetingId
    token_id: str
    issued_at: float
    expires_at: float


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
        self.leeway_s = _jwt.check_leeway(leeway_s)

    def issue(self, participant_id: ParticipantId, meeting_id: MeetingId, now: float) -> str:
        return _jwt.encode(
            {
                "aud": MH_AUDIENCE,
                "sub": str(participant_id),
                "mid": str(meeting_id),
                "iat": int(now),
                "exp": int(now + self.ttl_s),
                "jti": _jwt.new_jti(),
            },
            self._secret,
            CONNECTION_ALGORITHM,
        )

    def verify(self, token: str, *, now: float) -> ConnectionClaims:
        claims = _jwt.decode(
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
            participant_id=ParticipantId(_jwt.claim_string("connection", claims, "sub")),
            meeting_id=MeetingId(_jwt.claim_string("connection", claims, "mid")),
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
