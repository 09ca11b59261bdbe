"""The connections of a meeting session, and getting them back when they are lost
(docs/protocol.md §13).

A :class:`Link` holds the session's current signaling and media connections. Two tasks follow
them (both run by :meth:`MeetingSession.run`, in its nursery, so every connection the link
opens is closed when ``run`` returns):

- the signaling task hands each server message to the session until the connection ends. A
  connection the MC ended (SessionEnded: KICKED, MEETING_ENDED ...) ends the session; a *lost*
  one (the QUIC connection went away) is resumed: new signaling sessions presenting the latest
  resume token, with backoff and full jitter, for at most the grace window;
- the media task hands each frame to the session until the connection ends or the MC names a
  new one (the resumed JoinResponse's ``media_server``, or a ``MediaReconnect`` sent by the MC
  or asked for with a ``MediaReconnectRequest``), then opens the new one and gives the
  session's publications their streams on it. The MH's KICKED / MEETING_ENDED close codes end
  the session.

The session's own connection state follows: :class:`Reconnecting` when the first of the two
is lost, :class:`Resumed` once both are back; the session puts :class:`Lost` if it ends
meanwhile.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from darktower.errors import DarkTowerError, InvalidRequest, RateLimited
from darktower.frames import Frame
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ConnectFailed, SessionRefused

from ._events import (
    CLOSE_GRACE_S,
    RECONNECT_ATTEMPT_S,
    RECONNECT_FIRST_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    Reconnecting,
    Resumed,
    SessionEvent,
)
from ._media import MediaPublisher
from ._signaling import SignalingEnded

Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
SIGNALING = "signaling"
MEDIA = "media"


class SignalingLink(Protocol):
    """What the session uses of a joined signaling connection (a :class:`SignalingClient`)."""

    @property
    def join_response(self) -> sig.JoinResponse: ...

    @property
    def events(self) -> trio.MemoryReceiveChannel[sig.ServerMessage]: ...

    @property
    def end_reason(self) -> LeaveReason | None: ...

    @property
    def lost(self) -> bool: ...

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage: ...

    async def leave(self) -> sig.SessionEnded | None: ...


class MediaLink(Protocol):
    """What the session uses of a media connection (a :class:`MediaClient`)."""

    @property
    def removed_reason(self) -> LeaveReason | None: ...

    @property
    def lost(self) -> bool: ...

    def __aiter__(self) -> AsyncIterator[Frame]: ...

    async def publish(self, stream_id: str | uuid.UUID) -> MediaPublisher: ...

    async def aclose(self, code: int = 0, reason: str = "") -> None: ...


class Connector(Protocol):
    """Opens the connections of a reconnection (``_join.Dialer`` over the network)."""

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        """A signaling session whose JoinRequest resumes with ``resume_token``."""
        ...

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        """A media session at ``server`` with its connection token."""
        ...


class LinkOwner(Protocol):
    """What the link tells its session (a :class:`MeetingSession`)."""

    @property
    def participant_id(self) -> str: ...

    @property
    def end_reason(self) -> LeaveReason | None: ...

    def on_message(self, message: sig.ServerMessage) -> None: ...

    def on_frame(self, frame: Frame) -> None: ...

    def on_resumed(self, join: sig.JoinResponse) -> None: ...

    def on_media_down(self) -> None: ...

    async def on_media(self, media: MediaLink) -> None: ...

    def put_event(self, event: SessionEvent) -> None: ...

    def finish(self, reason: LeaveReason, message: str = "") -> None: ...

    async def settle(self) -> None: ...


def backoff_delay(retry: int, rng: random.Random) -> float:
    """The wait before retry ``retry`` (1, 2, ...): full jitter, a uniform draw in
    [0, min(RECONNECT_MAX_DELAY_S, RECONNECT_FIRST_DELAY_S * 2**(retry - 1))]."""
    ceiling = RECONNECT_FIRST_DELAY_S * 2.0 ** min(retry - 1, 32)
    return rng.uniform(0.0, min(RECONNECT_MAX_DELAY_S, ceiling))


class Link:
    """The session's connections (see the module docstring). ``connector`` None or
    ``grace_s`` 0: a lost connection ends the session with CONNECTION_LOST (no reconnection).

    Attributes: ``signaling`` and ``media`` (the current connections), ``resume_token`` (the
    latest), ``reconnects`` (outages recovered), ``signaling_up`` (set while the signaling
    connection is usable), ``signaling_down`` (set once it was lost; a new event after a
    resume).
    """

    def __init__(
        self,
        owner: LinkOwner,
        signaling: SignalingLink,
        media: MediaLink,
        *,
        connector: Connector | None,
        grace_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self._owner = owner
        self.signaling = signaling
        self.media = media
        self.resume_token = signaling.join_response.resume_token
        self._connector = connector if grace_s > 0 else None
        self.grace_s = grace_s
        self._random = rng or random.Random()
        self.reconnects = 0
        self.signaling_up = trio.Event()
        self.signaling_up.set()
        self.signaling_down = trio.Event()
        self._down: set[str] = set()
        self._outage_since = 0.0
        self._media_only = True
        self._target: sig.MediaServerInfo | None = None
        self._target_unsolicited = False
        self._target_set = trio.Event()
        # The MH of the current media connection (the first one: the join's).
        self._media_url = signaling.join_response.media_server.media_handler_url
        self._reading_media: trio.CancelScope | None = None

    @property
    def reconnecting(self) -> bool:
        """A connection is lost and being brought back."""
        return bool(self._down)

    def _went_down(self, which: str) -> None:
        if which in self._down:
            return
        first = not self._down
        self._down.add(which)
        if which == MEDIA:
            self._owner.on_media_down()
        else:
            self._media_only = False
        if first:
            self._outage_since = trio.current_time()
            self._media_only = which == MEDIA
            self._owner.put_event(Reconnecting(media_only=self._media_only))

    def _came_up(self, which: str) -> None:
        self._down.discard(which)
        if not self._down:
            self.reconnects += 1
            outage = trio.current_time() - self._outage_since
            self._owner.put_event(Resumed(media_only=self._media_only, outage_s=outage))

    # -- signaling ---------------------------------------------------------------------------
    async def run_signaling(self) -> None:
        """Follow the signaling connection, resuming it when it is lost, until the session
        ends (it ends it when the MC did or a resume failed). Cancel-safe."""
        again = await self._follow_signaling(self.signaling)
        while again:
            again = await self._resume()

    async def _follow_signaling(self, signaling: SignalingLink) -> bool:
        """Hand messages to the session until the connection ends; True to resume it."""
        try:
            async for message in signaling.events:
                if message.WhichOneof("message") == "media_reconnect":
                    self._retarget(message.media_reconnect.media_server, unsolicited=True)
                else:
                    self._owner.on_message(message)
        except Broken:
            pass
        try:
            reason = signaling.end_reason
        except InvalidRequest:  # a newer MC's reason: over all the same
            reason = LeaveReason.CONNECTION_LOST
        if reason is None and self._connector is not None and signaling.lost:
            return self._owner.end_reason is None
        self._owner.finish(LeaveReason.CONNECTION_LOST if reason is None else reason)
        return False

    async def _resume(self) -> bool:
        """Resume the lost signaling session within the grace window; True when the resumed
        one was lost in turn, False once the session ended (here or while it ran)."""
        assert self._connector is not None
        self.signaling_up = trio.Event()
        self.signaling_down.set()
        self._went_down(SIGNALING)
        deadline = trio.current_time() + self.grace_s
        retry = 0
        while True:
            if retry:
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
                if opened or exc.reason is not None:
                    self._owner.finish(exc.reason or LeaveReason.CONNECTION_LOST, exc.message)
                    return False
            except (ConnectFailed, SessionRefused, *Broken):
                if opened:
                    raise
            except RateLimited as exc:  # resumed too recently: the token is still good
                if trio.current_time() + exc.retry_after_s >= deadline:
                    break
                await trio.sleep(exc.retry_after_s)
            except DarkTowerError as exc:  # refused: NOT_FOUND (expired or used) and the like
                self._owner.finish(LeaveReason.CONNECTION_LOST, f"resume refused: {exc}")
                return False
        self._owner.finish(LeaveReason.CONNECTION_LOST, "not reconnected within the grace window")
        return False

    async def _resumed(self, signaling: SignalingLink) -> bool:
        join = signaling.join_response
        if not join.resumed or join.participant_id != self._owner.participant_id:
            self._owner.finish(LeaveReason.CONNECTION_LOST, "the MC did not resume the session")
            return False
        self.signaling = signaling
        self.resume_token = join.resume_token
        self._owner.on_resumed(join)
        # A fresh token: the media connection follows. None if the MH failed meanwhile: the
        # media task asks for one (docs/protocol.md §13).
        self._retarget(join.media_server)
        self.signaling_down = trio.Event()
        self.signaling_up.set()
        self._came_up(SIGNALING)
        return await self._follow_signaling(signaling)

    # -- media -------------------------------------------------------------------------------
    def _retarget(self, server: sig.MediaServerInfo, *, unsolicited: bool = False) -> None:
        """Connect media to ``server`` next (the current connection, if any, is replaced).
        An empty ``server`` names nothing: ignored. An unsolicited one (the MC heard from the
        MH that a media connection was lost) naming the MH this session is connected to is
        ignored too: it is about the connection already replaced, or the reader notices the
        loss itself and asks (docs/protocol.md §13)."""
        if not server.media_handler_url or not server.connection_token:
            return
        if unsolicited and self._reading_media is not None and self._same_mh(server):
            return
        self._target, self._target_unsolicited = server, unsolicited
        self._target_set.set()
        if self._reading_media is not None:
            self._went_down(MEDIA)
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
            self._went_down(MEDIA)
            if deadline is None:
                deadline = trio.current_time() + self.grace_s
            delay = backoff_delay(retry, self._random) if retry else 0.0
            server = await self._next_target(deadline, delay)
            if server is None:
                return
            retry += 1
            assert self._connector is not None
            try:
                attempt_end = min(deadline, trio.current_time() + RECONNECT_ATTEMPT_S)
                with trio.CancelScope(deadline=attempt_end) as attempt:
                    async with self._connector.media(server) as media:
                        attempt.deadline = math.inf
                        self.media, self._media_url = media, server.media_handler_url
                        await self._owner.on_media(media)
                        self._came_up(MEDIA)
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
        if removed in (LeaveReason.KICKED, LeaveReason.MEETING_ENDED):
            self._owner.finish(removed)  # the MH said why before the MC did
            return False
        if self._connector is not None and media.lost:
            return True
        await self._owner.settle()
        self._owner.finish(LeaveReason.CONNECTION_LOST, "media connection lost")
        return False

    async def _next_target(self, deadline: float, delay: float) -> sig.MediaServerInfo | None:
        """The media server to connect to next: one the MC named, else one asked for with a
        MediaReconnectRequest after ``delay``. None once the session ended (ended here when
        ``deadline`` passed)."""
        with trio.move_on_at(deadline):
            with trio.move_on_after(delay):
                await self._target_set.wait()
            async with trio.open_nursery() as nursery:
                if not self._target_set.is_set():
                    nursery.start_soon(self._ask_for_media)
                await self._target_set.wait()
                nursery.cancel_scope.cancel()
            return self._take_target()
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
    "SignalingLink",
    "backoff_delay",
]
