"""The connections of a meeting session, and getting them back when they are lost
(docs/protocol.md §13).

A :class:`Link` holds the session's current signaling and media connections. Two tasks follow
them (both run by :meth:`MeetingSession.run`, in its nursery, so every connection the link
opens is closed when ``run`` returns):

- the signaling task hands each server message to the session until the connection ends. A
  connection the MC ended (SessionEnded: KICKED, MEETING_ENDED ...) ends the session; a *lost*
  one (the QUIC connection went away) is resumed: new signaling sessions presenting the latest
  resume token, with backoff and full jitter, for at most the grace window. With a
  ``rejoiner`` (a session joined through the GC) a session whose resume cannot succeed — its
  MC said SERVER_SHUTDOWN, refused the token (NOT_FOUND), is gone (the GC places the meeting
  elsewhere or lost the MC), or the grace window passed — rejoins: a new join from the GC, at
  the MC it names, with the same display name, as a new participant whose publications and
  subscriptions the session restores; attempts back off with full jitter within the rejoin
  window, counted from the loss;
- the media task hands each frame to the session until the connection ends or the MC names a
  new one (the resumed or rejoined JoinResponse's ``media_server``, or a ``MediaReconnect`` sent
  by the MC or asked for with a ``MediaReconnectRequest``), then opens the new one and gives
  the session's publications their streams on it. The MH's KICKED / MEETING_ENDED close codes
  end the session; its SERVER_SHUTDOWN one starts the rejoin (or ends it without a rejoiner).
  While the signaling connection is being brought back, media waits for it.

The session's own connection state follows: :class:`Reconnecting` when the first of the two
is lost, :class:`Rejoining` when a rejoin starts, :class:`Resumed` (or :class:`Rejoined`) once
both are back; the session puts :class:`Lost` if it ends meanwhile.
"""

from __future__ import annotations

import enum
import itertools
import math
import random

import trio

from darktower.errors import DarkTowerError, InvalidRequest, NotFound, RateLimited
from darktower.model import LEAVE_MESSAGES, LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ConnectFailed, SessionRefused

from ._events import (
    CLOSE_GRACE_S,
    LOCATE_S,
    RECONNECT_ATTEMPT_S,
    REJOIN_WINDOW_S,
    SETTLE_S,
)
from ._outage import MEDIA, SIGNALING, Outage, backoff_delay
from ._rejoin import RejoinFailed, RejoinRefused, join_again
from ._rest import JoinTicket
from ._seams import Connector, LinkOwner, MediaLink, RejoinConnector, Rejoiner, SignalingLink
from ._signaling import SignalingEnded

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
_SHUTDOWN = LeaveReason.SERVER_SHUTDOWN


class Next(enum.Enum):
    """What the signaling task does after a connection ended."""

    RESUME = "resume"
    REJOIN = "rejoin"
    END = "end"


class Link:
    """The session's connections (see the module docstring). ``connector`` None or
    ``grace_s`` 0: a lost connection ends the session with CONNECTION_LOST (no reconnection,
    no rejoin). ``rejoiner`` None or ``rejoin_window_s`` 0: no rejoin.

    Attributes: ``signaling`` and ``media`` (the current connections), ``resume_token`` (the
    latest), ``reconnects`` (outages recovered), ``rejoins`` (of them, by a rejoin),
    ``signaling_up`` (set while the signaling connection is usable), ``signaling_down`` (set
    once it was lost; a new event after a resume).
    """

    def __init__(
        self,
        owner: LinkOwner,
        signaling: SignalingLink,
        media: MediaLink,
        *,
        connector: Connector | None,
        grace_s: float,
        rejoiner: Rejoiner | None = None,
        rejoin_window_s: float = REJOIN_WINDOW_S,
        rng: random.Random | None = None,
    ) -> None:
        self._owner = owner
        self.signaling = signaling
        self.media = media
        self.resume_token = signaling.join_response.resume_token
        self._connector = connector if grace_s > 0 else None
        self.grace_s = grace_s
        self._rejoiner = rejoiner if self._connector is not None and rejoin_window_s > 0 else None
        self.rejoin_window_s = rejoin_window_s
        self._random = rng or random.Random()
        self._outage = Outage(owner)
        self.signaling_up = trio.Event()
        self.signaling_up.set()
        self.signaling_down = trio.Event()
        self._target: sig.MediaServerInfo | None = None
        self._target_unsolicited = False
        self._target_set = trio.Event()
        # The MH of the current media connection (the first one: the join's).
        self._media_url = signaling.join_response.media_server.media_handler_url
        self._reading_media: trio.CancelScope | None = None
        self._following: trio.CancelScope | None = None  # the signaling being followed
        self._cause: tuple[LeaveReason, str] | None = None  # why the next rejoin
        self._restore_pending = False  # a rejoin's restore broke off: finish it after a resume

    @property
    def reconnecting(self) -> bool:
        """A connection is lost and being brought back."""
        return bool(self._outage.down)

    @property
    def reconnects(self) -> int:
        return self._outage.reconnects

    @property
    def rejoins(self) -> int:
        return self._outage.rejoins

    def _signaling_lost(self) -> None:
        """The signaling connection is gone (once per outage): requests wait for the next."""
        if SIGNALING in self._outage.down:
            return
        self.signaling_up = trio.Event()
        self.signaling_down.set()
        self._outage.went_down(SIGNALING)

    # -- signaling ---------------------------------------------------------------------------
    async def run_signaling(self) -> None:
        """Follow the signaling connection, resuming or rejoining when it is lost, until the
        session ends (it ends it when the MC did or no resume or rejoin succeeded).
        Cancel-safe."""
        step = await self._follow_signaling(self.signaling)
        while step is not Next.END:
            step = await (self._resume() if step is Next.RESUME else self._rejoin())

    async def _follow_signaling(self, signaling: SignalingLink) -> Next:
        """Hand messages to the session until the connection ends; then say what next."""
        ended_message = ""
        with trio.CancelScope() as following:
            self._following = following
            try:
                async for message in signaling.events:
                    kind = message.WhichOneof("message")
                    if kind == "media_reconnect":
                        self._retarget(message.media_reconnect.media_server, unsolicited=True)
                        continue
                    if kind == "session_ended":
                        ended_message = message.session_ended.message
                        if message.session_ended.reason == int(_SHUTDOWN) and self._rejoiner:
                            continue  # not the session's end: it rejoins
                    self._owner.on_message(message)
            except Broken:
                pass
        self._following = None
        if self._owner.end_reason is not None:
            return Next.END
        if following.cancelled_caught:  # the MH said SERVER_SHUTDOWN first (see _follow_media)
            return Next.REJOIN
        try:
            reason = signaling.end_reason
        except InvalidRequest:  # a newer MC's reason: over all the same
            reason = LeaveReason.CONNECTION_LOST
        if reason is _SHUTDOWN and self._rejoiner is not None:
            self._cause = (_SHUTDOWN, ended_message or LEAVE_MESSAGES[_SHUTDOWN])
            return Next.REJOIN
        if reason is None and self._connector is not None and signaling.lost:
            return Next.RESUME
        self._owner.finish(LeaveReason.CONNECTION_LOST if reason is None else reason)
        return Next.END

    def _rejoin_instead(self, message: str) -> Next:
        """Resuming cannot succeed: rejoin when there is a rejoiner, else end with ``message``."""
        if self._rejoiner is None:
            self._owner.finish(LeaveReason.CONNECTION_LOST, message)
            return Next.END
        self._cause = (LeaveReason.CONNECTION_LOST, message)
        return Next.REJOIN

    async def _moved(self) -> Next | None:
        """After a failed resume attempt: REJOIN if the GC says the meeting left this MC, END if
        it refuses (the session ended), None to go on resuming."""
        if self._rejoiner is None:
            return None
        try:
            with trio.move_on_after(LOCATE_S):
                if await self._rejoiner.moved():
                    return self._rejoin_instead("the meeting controller is gone")
        except RejoinRefused as exc:
            self._owner.finish(exc.reason or LeaveReason.CONNECTION_LOST, exc.message)
            return Next.END
        return None

    async def _resume(self) -> Next:
        """Resume the lost signaling session within the grace window; RESUME again when the
        resumed one was lost in turn, REJOIN when resuming cannot succeed (see the module
        docstring), END once the session ended (here or while it ran)."""
        assert self._connector is not None
        self._signaling_lost()
        deadline = trio.current_time() + self.grace_s
        retry = 0
        while True:
            if retry:
                if (moved := await self._moved()) is not None:
                    return moved
                delay = backoff_delay(retry, self._random)
                if trio.current_time() + delay >= deadline:
                    break
                await trio.sleep(delay)
            retry += 1
            opened = False
            try:
                attempt_end = min(deadline, trio.current_time() + RECONNECT_ATTEMPT_S)
                with trio.CancelScope(deadline=attempt_end) as attempt:
                    async with self._connector.signaling(self.resume_token) as signaling:
                        opened = True
                        attempt.deadline = math.inf
                        return await self._resumed(signaling)
            except SignalingEnded as exc:  # refused with SessionEnded: KICKED, MEETING_ENDED
                if exc.reason is _SHUTDOWN and not opened and self._rejoiner is not None:
                    self._cause = (_SHUTDOWN, exc.message or LEAVE_MESSAGES[_SHUTDOWN])
                    return Next.REJOIN
                if opened or exc.reason is not None:
                    self._owner.finish(exc.reason or LeaveReason.CONNECTION_LOST, exc.message)
                    return Next.END
            except (ConnectFailed, SessionRefused, *Broken):
                if opened:
                    raise
            except RateLimited as exc:  # resumed too recently: the token is still good
                if trio.current_time() + exc.retry_after_s >= deadline:
                    break
                await trio.sleep(exc.retry_after_s)
            except NotFound as exc:  # the token is unknown: expired, used, or the MC restarted
                return self._rejoin_instead(f"resume refused: {exc}")
            except DarkTowerError as exc:  # refused otherwise
                self._owner.finish(LeaveReason.CONNECTION_LOST, f"resume refused: {exc}")
                return Next.END
        return self._rejoin_instead("not reconnected within the grace window")

    async def _resumed(self, signaling: SignalingLink) -> Next:
        join = signaling.join_response
        if not join.resumed or join.participant_id != self._owner.participant_id:
            self._owner.finish(LeaveReason.CONNECTION_LOST, "the MC did not resume the session")
            return Next.END
        self.signaling = signaling
        self.resume_token = join.resume_token
        self._owner.on_resumed(join)
        if self._owner.end_reason is not None:  # e.g. it turned end-to-end encryption off
            return Next.END
        if self._restore_pending:
            await self._restore(signaling)
        # A fresh token: the media connection follows. None if the MH failed meanwhile: the
        # media task asks for one (docs/protocol.md §13).
        self._retarget(join.media_server)
        self._signaling_back()
        return await self._follow_signaling(signaling)

    def _signaling_back(self) -> None:
        self.signaling_down = trio.Event()
        self.signaling_up.set()
        self._outage.came_up(SIGNALING)

    async def _restore(self, signaling: SignalingLink) -> None:
        """The session publishes and subscribes again on ``signaling``; if that connection
        breaks meanwhile, the rest follows its resume."""
        self._restore_pending = True
        try:
            await self._owner.restore(signaling)
        except Broken:
            return
        self._restore_pending = False

    async def _rejoin(self) -> Next:
        """Join the meeting again through the GC (see the module docstring) until joined,
        refused or the rejoin window passed; then follow the new connection (RESUME, REJOIN,
        END as :meth:`_follow_signaling` says), or END."""
        assert self._rejoiner is not None and self._cause is not None
        self._signaling_lost()
        reason, message = self._cause
        self._outage.rejoining(reason, message)
        deadline = self._outage.since + self.rejoin_window_s
        try:
            return await join_again(self._rejoiner, deadline, self._random, self._rejoined)
        except RejoinRefused as exc:
            self._owner.finish(exc.reason or reason, exc.message)
        except RejoinFailed as exc:
            self._owner.finish(reason, f"{message}; not rejoined in time ({exc})")
        return Next.END

    async def _rejoined(
        self, signaling: SignalingLink, connector: RejoinConnector, ticket: JoinTicket
    ) -> Next:
        """Joined at the ticket's MC: the session takes the new participant and restores what
        it published and subscribed to, then the new media connection follows."""
        assert self._rejoiner is not None and self._cause is not None
        join = signaling.join_response
        self._rejoiner.joined(ticket)
        self._connector = connector
        self.signaling = signaling
        self.resume_token = join.resume_token
        self._outage.rejoined(self._owner.participant_id)
        self._owner.on_rejoined(join, ticket.join_token, self._cause[0])
        if self._owner.end_reason is not None:  # e.g. it turned end-to-end encryption off
            return Next.END
        self._cause = None
        await self._restore(signaling)
        self._retarget(join.media_server, moved=True)
        self._signaling_back()
        return await self._follow_signaling(signaling)

    # -- media -------------------------------------------------------------------------------
    def _retarget(
        self, server: sig.MediaServerInfo, *, unsolicited: bool = False, moved: bool = False
    ) -> None:
        """Connect media to ``server`` next (the current connection, if any, is replaced).
        An empty ``server`` names nothing: ignored, unless the participant ``moved`` (a
        rejoin: its media connection is the old participant's, replaced by one asked for). An
        unsolicited one (the MC heard from the MH that a media connection was lost) naming
        the MH this session is connected to is ignored too: it is about the connection
        already replaced, or the reader notices the loss itself and asks (docs/protocol.md
        §13)."""
        named = bool(server.media_handler_url and server.connection_token)
        if not named and not moved:
            return
        if unsolicited and self._reading_media is not None and self._same_mh(server):
            return
        if named:
            self._target, self._target_unsolicited = server, unsolicited
            self._target_set.set()
        if self._reading_media is not None:
            self._outage.went_down(MEDIA)
            self._reading_media.cancel()

    def _same_mh(self, server: sig.MediaServerInfo) -> bool:
        return server.media_handler_url == self._media_url

    def _take_target(self) -> sig.MediaServerInfo:
        assert self._target is not None
        target, self._target = self._target, None
        self._target_set = trio.Event()
        return target

    async def run_media(self) -> None:
        """Follow the media connection, reconnecting it when it is lost or the MC names a new
        one, until the session ends (it ends it when the MH removed the participant or no
        connection came back within the grace window). Cancel-safe."""
        first = self.media
        again = await self._follow_media(first)
        if again:  # replaced: the owner's, closed early (closing it again later is harmless)
            with trio.move_on_after(CLOSE_GRACE_S, shield=True):
                await first.aclose()
        deadline: float | None = None
        retry = 0
        while again:
            self._outage.went_down(MEDIA)
            if deadline is None:
                deadline = trio.current_time() + self.grace_s
            delay = backoff_delay(retry, self._random) if retry else 0.0
            target = await self._next_target(deadline, delay)
            if target is None:
                return
            server, deadline = target
            retry += 1
            assert self._connector is not None
            try:
                attempt_end = min(deadline, trio.current_time() + RECONNECT_ATTEMPT_S)
                with trio.CancelScope(deadline=attempt_end) as attempt:
                    async with self._connector.media(server) as media:
                        attempt.deadline = math.inf
                        self.media, self._media_url = media, server.media_handler_url
                        await self._owner.on_media(media)
                        self._outage.came_up(MEDIA)
                        deadline, retry = None, 0
                        again = await self._follow_media(media)
            except (ConnectFailed, SessionRefused, ValueError, *Broken):
                # Not connected (ValueError: a URL that is not one), or lost at once.
                again = self._owner.end_reason is None

    async def _follow_media(self, media: MediaLink) -> bool:
        """Hand frames to the session until the connection ends or is replaced; True to
        connect media again."""
        with trio.CancelScope() as reading:
            self._reading_media = reading
            if self._target_set.is_set():  # named while this one was being opened
                assert self._target is not None
                if self._target_unsolicited and self._same_mh(self._target):
                    self._take_target()  # about the connection this one replaced
                else:
                    reading.cancel()
            try:
                async for frame in media:
                    self._owner.on_frame(frame)
            except Broken:
                pass
        self._reading_media = None
        if self._owner.end_reason is not None:
            return False
        if reading.cancelled_caught:
            return True
        removed = media.removed_reason
        if removed is _SHUTDOWN and self._rejoiner is not None:
            await self._shutdown_heard()
            return True
        if removed in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED, _SHUTDOWN):
            self._owner.finish(removed)  # the MH said why before the MC did
            return False
        if self._connector is not None and media.lost:
            return True
        await self._owner.settle()
        self._owner.finish(LeaveReason.CONNECTION_LOST, "media connection lost")
        return False

    async def _shutdown_heard(self) -> None:
        """The MH removed the participant with SERVER_SHUTDOWN: the MC's SessionEnded (with
        its message) is on its way and starts the rejoin; if it does not come within
        SETTLE_S, the signaling connection is left and the rejoin starts now."""
        with trio.move_on_after(SETTLE_S):
            await self.signaling_down.wait()
        if SIGNALING not in self._outage.down and self._following is not None:
            self._cause = (_SHUTDOWN, LEAVE_MESSAGES[_SHUTDOWN])
            self._following.cancel()

    async def _next_target(
        self, deadline: float, delay: float
    ) -> tuple[sig.MediaServerInfo, float] | None:
        """The media server to connect to next (and the deadline of the window it is in): one
        the MC named, else one asked for with a MediaReconnectRequest after ``delay``. Past
        ``deadline`` while the signaling connection is being brought back, wait for it (a
        resume or a rejoin names the server, or ends the session), then for a new window. None
        once the session ended (ended here when ``deadline`` passed)."""
        while True:
            with trio.move_on_at(deadline):
                with trio.move_on_after(delay):
                    await self._target_set.wait()
                async with trio.open_nursery() as nursery:
                    if not self._target_set.is_set():
                        nursery.start_soon(self._ask_for_media)
                    await self._target_set.wait()
                    nursery.cancel_scope.cancel()
                return self._take_target(), deadline
            if SIGNALING not in self._outage.down:
                break
            await self.signaling_up.wait()
            deadline, delay = trio.current_time() + self.grace_s, 0.0
        self._owner.finish(LeaveReason.CONNECTION_LOST, "media connection lost")
        return None

    async def _ask_for_media(self) -> None:
        """Ask the MC for a fresh media connection token, once the signaling is up, again
        (with backoff) while the MC cannot give one (its MH is failing) or the signaling
        connection broke under the request (then once it is resumed, unless the resume named
        the media server: the caller cancels this once a server is named, and bounds it)."""
        request = sig.ClientMessage(media_reconnect_request=sig.MediaReconnectRequest())
        for retry in itertools.count():
            if retry:
                await trio.sleep(backoff_delay(retry, self._random))
            await self.signaling_up.wait()
            try:
                reply = await self.signaling.request(request)
            except Broken:
                continue
            except InvalidRequest as exc:  # an MC without media reconnection
                self._owner.finish(LeaveReason.CONNECTION_LOST, f"media connection lost: {exc}")
                return
            except DarkTowerError:  # CAPACITY_EXCEEDED, INTERNAL_ERROR: no token for now
                continue
            server = reply.media_reconnect.media_server
            if reply.WhichOneof("message") == "media_reconnect" and server.connection_token:
                self._retarget(server)
                return


__all__ = [
    "Connector",
    "Link",
    "LinkOwner",
    "MediaLink",
    "Next",
    "SignalingLink",
    "backoff_delay",
]
