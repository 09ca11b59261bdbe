"""The failover benchmark's participants (benchmarks/failover.py): client-library sessions in
this process. Each publishes audio (50 fps; the first one video too, 30 fps, a key frame every
second and whenever the MH asks) and subscribes to everyone else's streams.

A participant joined with a join token (:func:`open_member`) is composed as
``join_meeting_session`` composes a session, with a connector that wraps the Dialer's media
connections: every frame a media connection hands to the session is recorded with the number
of the connection it came on, so the first frame on a later connection is the first one from
the MH the room moved to. One joined through the GC (:func:`open_member_via_gc`) is
``join_meeting_via_gc``'s own session; its frames are recorded as its subscriptions yield them.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from benchmarks._resume_peers import Pulse
from darktower.client import (
    ConnectionState,
    Dialer,
    GlobalControllerClient,
    KeyFrameRequest,
    MediaLink,
    MeetingSession,
    Publication,
    SessionEnded,
    SignalingLink,
    Subscription,
    join_meeting_via_gc,
    media_url,
)
from darktower.frames import Frame, FrameType
from darktower.model import StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

AUDIO_FPS, VIDEO_FPS, KEY_EVERY = 50, 30, 30
AUDIO_BYTES, KEY_BYTES, DELTA_BYTES = 80, 1200, 300
STEADY_S = 0.1  # "media flows": a frame within this long
LEAVE_S = 1.0  # bound on a participant's goodbye
Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
VIA_SUBSCRIPTION = -1  # the connection number of a frame a subscription yielded


class Arrivals:
    """The frames one participant received: arrival (trio clock), the number of the media
    connection it came on, video or audio, and when its sender sent it (wall clock)."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.link: list[int] = []
        self.video: list[bool] = []
        self.sent: list[float] = []
        self.pulse = Pulse()

    def add(self, link: int, frame: Frame) -> None:
        self.at.append(trio.current_time())
        self.link.append(link)
        self.video.append(frame.frame_type is not FrameType.AUDIO)
        self.sent.append(frame.timestamp_us / 1e6)
        self.pulse.fire()

    def since(self, after: float) -> int:
        """The index of the first frame that arrived after ``after``."""
        return bisect.bisect_right(self.at, after)

    async def first(
        self, start: int, where: Callable[[int], bool], within_s: float
    ) -> float | None:
        """Arrival of the first frame from index ``start`` on that satisfies ``where``."""
        found: list[float] = []
        checked = start

        def seen() -> bool:
            nonlocal checked
            for i in range(checked, len(self.at)):
                if where(i):
                    found.append(self.at[i])
                    return True
            checked = len(self.at)
            return False

        if await self.pulse.until(seen, within_s):
            return found[0]
        return None

    def max_gap(self, lo: float, hi: float) -> float:
        """The longest time without a frame from ``lo`` to ``hi`` (both ends count)."""
        i, j = bisect.bisect_left(self.at, lo), bisect.bisect_right(self.at, hi)
        times = [lo, *self.at[i:j], hi]
        return max(b - a for a, b in itertools.pairwise(times))


@attrs.define(eq=False)
class Member:
    """A participant: its session, what it received, its media connections' URLs (connection
    n is ``urls[n]``), its events (trio clock, wall clock, event)."""

    name: str
    rx: Arrivals = attrs.Factory(Arrivals)
    urls: list[str] = attrs.Factory(list)
    events: list[tuple[float, float, object]] = attrs.Factory(list)
    pulse: Pulse = attrs.Factory(Pulse)
    session: MeetingSession | None = None
    nursery: trio.Nursery | None = None
    video_stream: str = ""
    key_wanted: bool = False

    @property
    def s(self) -> MeetingSession:
        assert self.session is not None
        return self.session

    @property
    def link(self) -> int:
        """The number of its latest media connection."""
        return len(self.urls) - 1

    def flowing(self) -> bool:
        recent = bool(self.rx.at) and trio.current_time() - self.rx.at[-1] < STEADY_S
        return recent and self.s.connection is ConnectionState.CONNECTED

    def event_after(self, kind: type, after: float) -> tuple[float, float, Any] | None:
        return next((e for e in self.events if e[0] > after and isinstance(e[2], kind)), None)

    async def wait_event(
        self, kind: type, after: float, within_s: float
    ) -> tuple[float, float, Any] | None:
        found: list[tuple[float, float, Any]] = []

        def seen() -> bool:
            hit = self.event_after(kind, after)
            found[:] = [hit] if hit else []
            return hit is not None or self.s.end_reason is not None

        await self.pulse.until(seen, within_s)
        return found[0] if found else None

    def state(self) -> str:
        """For a failure's message: its end, connection, last events and last frame."""
        now, s = trio.current_time(), self.s
        last = f"{now - self.rx.at[-1]:.1f} s ago" if self.rx.at else "never"
        events = [f"{type(e).__name__} {now - t:.1f} s ago" for t, _, e in self.events[-4:]]
        return (
            f"{self.name}: end {s.end_reason} {s.end_message!r}, {s.connection.value}, last "
            f"frame {last}, media connections {len(self.urls)}, last events {events}"
        )


class TaggedLink:
    """A media connection whose frames are recorded with its number (a ``MediaLink``)."""

    def __init__(self, inner: MediaLink, member: Member, number: int) -> None:
        self._inner = inner
        self._member = member
        self._number = number

    @property
    def removed_reason(self) -> Any:
        return self._inner.removed_reason

    @property
    def lost(self) -> bool:
        return self._inner.lost

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        async for frame in self._inner:
            self._member.rx.add(self._number, frame)
            yield frame

    async def publish(self, stream_id: Any) -> Any:
        return await self._inner.publish(stream_id)

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        await self._inner.aclose(code, reason)


@asynccontextmanager
async def _tagged(
    member: Member, opening: AbstractAsyncContextManager[MediaLink], url: str
) -> AsyncIterator[MediaLink]:
    async with opening as link:
        member.urls.append(url)
        yield TaggedLink(link, member, member.link)


@attrs.frozen
class Recording:
    """The session's connector: the Dialer's, each media connection tagged (a ``Connector``)."""

    dialer: Dialer
    member: Member

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return self.dialer.signaling(resume_token)

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return _tagged(self.member, self.dialer.media(server), server.media_handler_url)


# --- the participants ---------------------------------------------------------------------
@asynccontextmanager
async def open_member(
    signal_url: str, meeting_id: str, name: str, token: str, pins: Sequence[bytes]
) -> AsyncIterator[Member]:
    """A participant joined at the MC ``signal_url`` with ``token``, media connections tagged;
    it leaves (bounded) when the block ends."""
    member = Member(name)
    dialer = Dialer(signal_url, meeting_id, name, pins)
    async with dialer.join(token) as signaling:
        server = signaling.join_response.media_server
        opening = dialer.media_at(media_url(signaling.join_response))
        async with _tagged(member, opening, server.media_handler_url) as media:
            session = MeetingSession(
                signaling, media, meeting_id=meeting_id, connector=Recording(dialer, member)
            )
            async with _running(member, session):
                yield member


@asynccontextmanager
async def open_member_via_gc(
    gc: GlobalControllerClient, meeting_id: str, name: str, pins: Sequence[bytes]
) -> AsyncIterator[Member]:
    """A participant joined through the GC (it rejoins through it by itself); it leaves
    (bounded) when the block ends."""
    member = Member(name)
    async with join_meeting_via_gc(gc, meeting_id, name, server_certificate_hashes=pins) as session:
        async with _running(member, session, run=False):
            yield member


@asynccontextmanager
async def _running(
    member: Member, session: MeetingSession, *, run: bool = True
) -> AsyncIterator[None]:
    """The member's tasks (the session's run unless its join runs it, its events, its senders
    and readers) in a nursery of its own; leave, then cancel them."""
    async with trio.open_nursery() as nursery:
        if run:
            await nursery.start(session.run)
        member.session, member.nursery = session, nursery
        nursery.start_soon(_follow_events, member)
        try:
            yield
        finally:
            with trio.move_on_after(LEAVE_S, shield=True):
                await session.leave()
            nursery.cancel_scope.cancel()


async def _follow_events(member: Member) -> None:
    try:
        async for event in member.s.events:
            member.events.append((trio.current_time(), time.time(), event))
            if isinstance(event, KeyFrameRequest) and event.stream_id == member.video_stream:
                member.key_wanted = True
            member.pulse.fire()
    except SessionEnded:
        pass
    member.pulse.fire()


# --- media --------------------------------------------------------------------------------
async def start_media(member: Member, *, video: bool) -> None:
    """Publish audio (and video) and send it at its rate from now on."""
    assert member.nursery is not None
    audio = await member.s.publish(StreamType.AUDIO)
    member.nursery.start_soon(_send, member, audio, AUDIO_FPS)
    if video:
        camera = await member.s.publish(StreamType.VIDEO_CAMERA)
        member.video_stream = camera.stream_id
        member.nursery.start_soon(_send, member, camera, VIDEO_FPS)


async def subscribe_all(members: Sequence[Member], *, tagged: bool) -> None:
    """Each member subscribes to every stream the others publish. With ``tagged`` connections
    the frames are recorded there; else as the subscriptions yield them."""
    for member in members:
        assert member.nursery is not None
        for other in members:
            if other is member:
                continue
            for stream_id in list(other.s.publications):
                subscription = await member.s.subscribe(stream_id)
                member.nursery.start_soon(_read, member, subscription, not tagged)


async def _send(member: Member, publication: Publication, fps: int) -> None:
    """Frames at their rate, from now on (a late wake-up does not send a burst)."""
    audio, key, delta = bytes(AUDIO_BYTES), bytes(KEY_BYTES), bytes(DELTA_BYTES)
    due = trio.current_time()
    try:
        for i in range(10**12):
            await trio.sleep_until(due)
            due = max(due + 1 / fps, trio.current_time())
            if publication.stream_type is StreamType.AUDIO:
                await publication.send_frame(FrameType.AUDIO, audio)
            elif i % KEY_EVERY == 0 or member.key_wanted:
                member.key_wanted = False
                await publication.send_frame(FrameType.VIDEO_KEY, key)
            else:
                await publication.send_frame(FrameType.VIDEO_DELTA, delta)
    except (SessionEnded, *Broken):
        return


async def _read(member: Member, subscription: Subscription, record: bool) -> None:
    try:
        async for frame in subscription:
            if record:
                member.rx.add(VIA_SUBSCRIPTION, frame)
    except (SessionEnded, *Broken):
        pass


async def all_flowing(members: Sequence[Member], within_s: float) -> bool:
    """Every member connected with media flowing, within ``within_s``."""
    with trio.move_on_after(within_s):
        for member in members:
            if not await member.rx.pulse.until(member.flowing, within_s):
                return False
        return True
    return False
