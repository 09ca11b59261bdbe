"""Rejoining a meeting through the Global Controller when its MC is lost or shuts down
(docs/protocol.md §13).

A session joined with ``join_meeting_via_gc`` keeps a :class:`GcRejoiner`: the GC client (its
connection, or a fresh one when that is gone), the access token the session joined with, the
meeting and the display name. The session's link asks it two things:

- :meth:`~GcRejoiner.moved`, after a resume attempt failed: does the GC still place the meeting
  at this session's MC? (``GET /api/v1/meetings/{id}``: another MC, or ``controller_lost``,
  means the MC is gone and resuming is pointless);
- :meth:`~GcRejoiner.ticket`: a new join (``POST /api/v1/meetings/{id}/join``), whose MC
  :meth:`~GcRejoiner.connector` dials.

Both tell the GC which MC did not answer (``unreachable_controller``, its signaling URL;
docs/protocol.md §14): the lookup names the session's MC, whose resume attempt just failed; a
join names an MC the GC has not been told of yet — the session's, when the lookup did not reach
the GC, or the MC of a ticket that got no answer to its join. The GC probes that MC and, only if
it does not answer either, places the meeting elsewhere at once rather than after its heartbeat
timeout; a word that was wrong costs a probe and changes nothing.

A refusal that no retry can change (the meeting ended, is unknown, the caller is banned or no
longer authorised) is :class:`RejoinRefused`, with the reason the session ends with; anything
else (the GC unreachable or busy, 503 while it re-places the meeting) is retried by
:func:`join_again` within the rejoin window. Nothing here starts a task.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from darktower.errors import (
    Conflict,
    DarkTowerError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
)
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ConnectFailed

from ._events import REJOIN_ATTEMPT_S
from ._outage import backoff_delay
from ._rest import GlobalControllerClient, JoinTicket
from ._seams import MediaLink, RejoinConnector, Rejoiner, SignalingLink
from ._signaling import SignalingEnded

T = TypeVar("T")
Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
# The GC's word for a meeting whose MC stopped heartbeating (docs/protocol.md §1.1).
CONTROLLER_LOST = "controller_lost"
ENDED = "ended"


class RejoinRefused(Exception):
    """The GC refused the rejoin for good: the session ends with ``reason`` (None: the reason
    it was rejoining for, SERVER_SHUTDOWN or CONNECTION_LOST) and ``message``."""

    def __init__(self, reason: LeaveReason | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RejoinFailed(Exception):
    """No rejoin succeeded within the window; the message says what the last attempt met
    (the one before it when the window's end cut the last one short)."""


async def join_again(
    rejoiner: Rejoiner,
    deadline: float,
    rng: random.Random,
    then: Callable[[SignalingLink, RejoinConnector, JoinTicket], Awaitable[T]],
) -> T:
    """Ask the GC for a new join and join at the MC it names; while an attempt fails, again
    after a backoff with full jitter, until ``deadline``. Each attempt is bounded by
    ``REJOIN_ATTEMPT_S``. With the joined signaling connection (owned by this call until
    ``then`` returns), return what ``then`` returns.

    Raises RejoinRefused (the GC refused for good, or the new MC ended the session KICKED or
    MEETING_ENDED), RejoinFailed once ``deadline`` passed, what ``then`` raises. An attempt
    fails, and is retried, when the GC is unreachable or busy (503 while it places the meeting
    again; 429 waits as it says) or the MC it names is unreachable or refuses the join (not
    assigned yet, draining, no MH)."""
    failure = "no attempt in time"
    retry = 0
    while True:
        if retry:
            delay = backoff_delay(retry, rng)
            if trio.current_time() + delay >= deadline:
                raise RejoinFailed(failure)
            await trio.sleep(delay)
        retry += 1
        opened = False
        try:
            attempt_end = min(deadline, trio.current_time() + REJOIN_ATTEMPT_S)
            with trio.CancelScope(deadline=attempt_end) as attempt:
                ticket = await rejoiner.ticket()
                connector = rejoiner.connector(ticket)
                async with connector.join(ticket.join_token) as signaling:
                    opened = True
                    attempt.deadline = math.inf
                    return await then(signaling, connector, ticket)
            if attempt_end < deadline or retry == 1:
                failure = "an attempt timed out"
            # else the window's end cut the attempt short: the failure before it says why
            # the rejoin did not happen (this one tells nothing).
        except RateLimited as exc:  # the GC's: wait as it says
            failure = f"{exc.code.name}: {exc}"
            if trio.current_time() + exc.retry_after_s >= deadline:
                raise RejoinFailed(failure) from exc
            await trio.sleep(exc.retry_after_s)
        except SignalingEnded as exc:  # the new MC ended the session at once
            if opened:
                raise
            if exc.reason in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED):
                raise RejoinRefused(exc.reason, exc.message) from exc
            failure = str(exc)  # e.g. a draining MC (SERVER_SHUTDOWN): the GC names another
        except (DarkTowerError, OSError, ValueError, *Broken) as exc:
            if opened:
                raise
            name = exc.code.name if isinstance(exc, DarkTowerError) else type(exc).__name__
            failure = f"{name}: {exc}"


class GcRejoiner:
    """A ``Rejoiner`` (``_seams``): rejoins ``meeting_id`` as ``participant_name`` with ``gc`` (see the module docstring).
    ``signal_url``: the MC the session joined; ``dial_at(url)``: the connector of another."""

    def __init__(
        self,
        gc: GlobalControllerClient,
        meeting_id: str,
        participant_name: str,
        *,
        signal_url: str,
        dial_at: Callable[[str], RejoinConnector],
    ) -> None:
        self._gc = gc
        self.meeting_id = meeting_id
        self.participant_name = participant_name
        self.signal_url = signal_url
        self._dial_at = dial_at
        # The signaling URL of an MC that did not answer and that the GC has not been told of
        # ("": none): said with the next join.
        self.unanswered = ""

    async def _call(self, call: Callable[[GlobalControllerClient], Awaitable[T]]) -> T:
        """``call`` on the GC client's connection, or on a fresh one when that is gone."""
        try:
            return await call(self._gc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not self._gc.can_reconnect:
                raise
        async with self._gc.reconnected() as gc:
            return await call(gc)

    async def moved(self) -> bool:
        # Asked after a resume attempt at the session's MC failed: it did not answer (or, rarely,
        # answered with a refusal that a retry may change; the GC's probe then finds it alive).
        unanswered = self.unanswered = self.signal_url
        try:
            info: dict[str, Any] = await self._call(
                lambda gc: gc.get_meeting(self.meeting_id, unreachable_controller=unanswered)
            )
        except NotFound as exc:
            raise RejoinRefused(None, _refused(exc)) from exc
        except Exception:  # unreachable, busy, an odd answer: it cannot say
            return False
        self.unanswered = ""  # the GC has heard it and judged
        status = info.get("status")
        if status == ENDED:
            raise RejoinRefused(
                LeaveReason.MEETING_ENDED,
                "the meeting has ended (the Global Controller says so; the meeting controller "
                "could not be reached)",
            )
        url = info.get("meeting_controller_url")
        return status == CONTROLLER_LOST or (bool(url) and url != self.signal_url)

    async def ticket(self) -> JoinTicket:
        unanswered = self.unanswered
        try:
            ticket = await self._call(
                lambda gc: gc.join_meeting(
                    self.meeting_id, self.participant_name, unreachable_controller=unanswered
                )
            )
        except Conflict as exc:  # 409: the meeting has ended
            raise RejoinRefused(LeaveReason.MEETING_ENDED, _refused(exc)) from exc
        except Forbidden as exc:  # 403: this identity was removed from the meeting (a ban)
            raise RejoinRefused(LeaveReason.KICKED, _refused(exc)) from exc
        except (NotFound, Unauthorized, InvalidRequest) as exc:
            raise RejoinRefused(None, _refused(exc)) from exc
        self.unanswered = ""  # the GC has heard it and judged
        return ticket

    def connector(self, ticket: JoinTicket) -> RejoinConnector:
        url = ticket.meeting_controller_url
        return _Watched(self._dial_at(url), url, self)

    def joined(self, ticket: JoinTicket) -> None:
        self.signal_url = ticket.meeting_controller_url
        self.unanswered = ""


@attrs.frozen
class _Watched:
    """A ticket's connector that tells its rejoiner when the ticket's MC does not answer the
    join: no QUIC connection, or none opened within the attempt's time (``join_again``
    cancels it). A refusal is an answer."""

    connector: RejoinConnector
    url: str
    rejoiner: GcRejoiner

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return self.connector.signaling(resume_token)

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return self.connector.media(server)

    @asynccontextmanager
    async def join(self, join_token: str) -> AsyncIterator[SignalingLink]:
        opened = False
        try:
            async with self.connector.join(join_token) as signaling:
                opened = True
                yield signaling
        except SignalingEnded:  # the MC ended the session: an answer
            raise
        except (ConnectFailed, OSError, trio.Cancelled, *Broken):
            if not opened:
                self.rejoiner.unanswered = self.url
            raise


def _refused(exc: DarkTowerError) -> str:
    return f"the Global Controller refused to rejoin the meeting ({exc.code.name}): {exc.message}"


__all__ = ["GcRejoiner", "RejoinFailed", "RejoinRefused", "join_again"]
