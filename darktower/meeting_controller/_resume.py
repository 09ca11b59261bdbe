"""Resume tokens (docs/protocol.md §13): one live token per participant, single-use, bound to
its meeting, compared in constant time; and the reasons of participants that ended while a
token was live (kicked, meeting ended), so a late resume is refused with that reason.

Only a keyed digest of each token is kept (never the token), one per live participant plus a
bounded, expiring list of ended ones (``MAX_ENDED_RESUME_TOKENS``).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from typing import Generic, Protocol, TypeVar

from darktower.errors import Conflict, DarkTowerError, Forbidden, NotFound
from darktower.model import LeaveReason, MeetingId

from ._limits import MAX_ENDED_RESUME_TOKENS, RESUME_GRACE_S

# 32 random bytes, URL-safe base64 (43 characters).
TOKEN_BYTES = 32


class Resumable(Protocol):
    """What holds a live token: its digest, b"" when it has none."""

    resume_key: bytes


_H = TypeVar("_H", bound=Resumable)


class ResumeRefused(DarkTowerError):
    """A resume refused because its participant ended with ``reason`` during the window
    (the client gets this error, then ``SessionEnded{reason}``)."""

    def __init__(self, error: DarkTowerError, reason: LeaveReason) -> None:
        super().__init__(error.message, details=error.details)
        self.code = error.code
        self.reason = reason


def refusal_for(reason: LeaveReason) -> DarkTowerError:
    """The error refusing a resume of a participant that ended with ``reason``."""
    if reason is LeaveReason.KICKED:
        return Forbidden("removed from the meeting")
    if reason is LeaveReason.MEETING_ENDED:
        return Conflict("the meeting has ended", details={"status": "ended"})
    return NotFound("the participant has left the meeting")


class ResumeTokens(Generic[_H]):
    """The MC's resume tokens; ``grace_s`` is the reconnecting window (0: no tokens)."""

    def __init__(
        self, grace_s: float = RESUME_GRACE_S, *, max_ended: int = MAX_ENDED_RESUME_TOKENS
    ) -> None:
        self.grace_s = grace_s
        self._max_ended = max_ended
        # A per-process key: digests are useless outside this process, and precomputing them
        # for guessed tokens is impossible.
        self._secret = secrets.token_bytes(32)
        self._live: dict[bytes, _H] = {}
        # digest -> (reason, until when it is remembered), oldest first
        self._ended: collections.OrderedDict[bytes, tuple[LeaveReason, float]] = (
            collections.OrderedDict()
        )

    @property
    def enabled(self) -> bool:
        return self.grace_s > 0

    def _key(self, meeting_id: MeetingId, token: str) -> bytes:
        # Bound to the meeting: the same token presented for another meeting is another key.
        mid = meeting_id.encode()
        message = len(mid).to_bytes(4, "big") + mid + token.encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(self, meeting_id: MeetingId, holder: _H) -> str:
        """A fresh token for ``holder`` (its previous one no longer works); "" when disabled."""
        self.revoke(holder)
        if not self.enabled:
            return ""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        holder.resume_key = self._key(meeting_id, token)
        self._live[holder.resume_key] = holder
        return token

    def revoke(self, holder: _H) -> None:
        if holder.resume_key:
            if self._live.get(holder.resume_key) is holder:
                del self._live[holder.resume_key]
            holder.resume_key = b""

    def find(self, meeting_id: MeetingId, token: str, now: float) -> _H:
        """The holder of ``token`` in ``meeting_id`` (the token stays live: call :meth:`revoke`
        once it is used). Raises ResumeRefused for a participant kicked or ended with its
        meeting while the token was live, NotFound for any other token."""
        key = self._key(meeting_id, token)
        ended = self._ended.get(key)
        if ended is not None and ended[1] > now:
            raise ResumeRefused(refusal_for(ended[0]), ended[0])
        holder = self._live.get(key)
        # The lookup compares digests of a secret key, never the token; the comparison that
        # decides is constant-time all the same.
        if holder is None or not hmac.compare_digest(holder.resume_key, key):
            raise NotFound("unknown, used or expired resume token")
        return holder

    def ended(self, holder: _H, reason: LeaveReason, now: float) -> None:
        """``holder`` left with ``reason``: its token stops working; a kick or the meeting's
        end is remembered for ``grace_s`` (bounded: the oldest go first)."""
        key = holder.resume_key
        self.revoke(holder)
        while self._ended and next(iter(self._ended.values()))[1] <= now:
            self._ended.popitem(last=False)
        if key and reason in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED):
            self._ended[key] = (reason, now + self.grace_s)
            while len(self._ended) > self._max_ended:
                self._ended.popitem(last=False)

    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def ended_count(self) -> int:
        return len(self._ended)
