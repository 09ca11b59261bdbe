"""One synthetic participant: join, publish, subscribe to every other stream of the run,
count what arrives, leave. It is a :class:`~darktower.client.MeetingSession`, so it reconnects
as the client library does (docs/protocol.md §13); reconnections and the time each took are
counted.

Its task tree (owned by :meth:`SimulatedParticipant.run`, itself owned by the run's nursery)::

    participant: signaling session ⊃ media session ⊃ MeetingSession.run (its readers)
    ├── events      StreamPublished -> subscribe, KeyFrameRequest -> next video frame is a key,
    │               Resumed -> a reconnection and its outage, the session's end -> an error
    ├── receive     one task per subscription: stamp -> gaps, latency (Stats.received)
    └── sending     (go .. stop_sending) one task per published stream, paced by the clock

A failure of one participant is counted in :class:`Stats` under ``phase:KIND`` and ends only
that participant; the others go on.
"""

from __future__ import annotations

import itertools
import time
import uuid

import trio

from darktower.client import (
    Dialer,
    KeyFrameRequest,
    MeetingSession,
    Publication,
    Resumed,
    SessionEnded,
    StreamPublished,
    media_url,
)
from darktower.client import Subscription as SessionSubscription
from darktower.frames import FrameType
from darktower.model import StreamType

from ._context import MeetingPlan, RunContext, error_kind, leaves
from ._limits import LEAVE_GRACE_S, MEDIA_BUFFERED_FRAMES
from ._payload import AUDIO_BYTES, AUDIO_FPS, KEY_EVERY, VIDEO_FPS, make_payload, read_stamp
from ._stats import PublishedStream, SubscriptionStats


class SimulatedParticipant:
    """Participant ``index`` of ``meeting`` (see the module docstring)."""

    def __init__(self, ctx: RunContext, meeting: MeetingPlan, index: int) -> None:
        self.ctx = ctx
        self.meeting = meeting
        self.index = index
        self.name = f"loadtest-m{meeting.index}-p{index}"
        self.publishes = index < meeting.publishers
        self.phase = "ticket"
        self.leaving = False
        self.ready = False
        self.settled = False
        self.key_frame_wanted = False
        self.subscriptions: dict[bytes, SubscriptionStats] = {}  # by stream id, wire form
        ctx.on_publisher_lost.setdefault(meeting.index, []).append(self.check_ready)
        self._subscribing: set[str] = set()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._published = not self.publishes

    # -- life --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Join, take part until the run says leave, leave. Owns both sessions and every task
        of this participant. Records failures in the run's Stats and returns; cancelled, it
        closes its sessions at once (without a LeaveRequest). Raises only Cancelled."""
        stats = self.ctx.stats
        try:
            await self._run()
        except Exception as exc:
            for leaf in leaves(exc):
                self._record(leaf)
        finally:
            for sub in self.subscriptions.values():
                stats.unsubscribe(sub)
            self.subscriptions.clear()
            if not self._published:
                self.ctx.publisher_lost(self.meeting.index)
            self._settle()
            self.ctx.participant_gone()

    def _record(self, exc: BaseException) -> None:
        if self.leaving and isinstance(exc, trio.BrokenResourceError):
            return  # the server closing our sessions after we asked to leave
        self.ctx.stats.error(f"{self.phase}:{error_kind(exc)}", exc)
        if self.phase in ("ticket", "join", "media"):
            self.ctx.stats.joins_failed += 1

    def _settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.ctx.settle()

    def _fail(self, kind: str, detail: BaseException | str) -> None:
        """Count an error of the session and end this participant."""
        if self.leaving:
            return
        self.ctx.stats.error(f"{self.phase}:{kind}", detail)
        if self._scope is not None:
            self._scope.cancel()

    async def _run(self) -> None:
        ctx, stats = self.ctx, self.ctx.stats
        token, signal_url = self.meeting.host_token, self.meeting.signal_url
        if self.index > 0:
            ticket = await ctx.rest(
                lambda: ctx.guest_gc.join_meeting(self.meeting.meeting_id, self.name)
            )
            token, signal_url = ticket.join_token, ticket.meeting_controller_url
        dialer = Dialer(
            signal_url,
            self.meeting.meeting_id,
            self.name,
            ctx.pins,
            ctx.guest_gc.origin,
            max_buffered_frames=MEDIA_BUFFERED_FRAMES,
        )
        # A join slot is held from connect to media connected, not for the whole session.
        await ctx.join_slots.acquire()
        holding = True
        try:
            if ctx.leave.is_set():
                return  # the run stopped before our turn
            self.phase = "join"
            start = trio.current_time()
            async with dialer.join(token) as signaling:
                stats.join_s.add(trio.current_time() - start)
                self.phase = "media"
                async with dialer.media_at(media_url(signaling.join_response)) as media:
                    stats.join_e2e_s.add(trio.current_time() - start)
                    stats.joins_ok += 1
                    self.phase = "session"
                    ctx.join_slots.release()
                    holding = False
                    session = MeetingSession(
                        signaling,
                        media,
                        meeting_id=self.meeting.meeting_id,
                        connector=dialer,
                        resume_grace_s=ctx.settings.resume_grace,
                    )
                    async with trio.open_nursery() as nursery:
                        await nursery.start(session.run)
                        await self._session(session)
                    stats.unexpected += session.unrouted_frames
                    if media.stream_errors:
                        stats.error("media:MALFORMED_FRAMES", f"{media.stream_errors} bad streams")
        finally:
            if holding:
                ctx.join_slots.release()

    async def _session(self, session: MeetingSession) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                publications: list[tuple[Publication, PublishedStream]] = []
                if self.publishes:
                    publications = await self._publish_all(session)
                self._published = True
                for other in list(session.participants.values()):
                    for stream in other.streams:
                        await self._subscribe(session, stream.stream_id)
                self.check_ready()
                nursery.start_soon(self._events, session)
                await self.ctx.go.wait()
                async with trio.open_nursery() as sending:
                    for publication, counter in publications:
                        sending.start_soon(self._send, publication, counter)
                    await self.ctx.stop_sending.wait()
                    sending.cancel_scope.cancel()
                await self.ctx.leave.wait()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a refused publish or subscribe: counted as of the session
            for leaf in leaves(exc):
                self._fail(error_kind(leaf), leaf)
        finally:
            self.leaving = True
            self.phase = "leave"
            with trio.move_on_after(LEAVE_GRACE_S, shield=True):
                if session.end_reason is None:
                    await session.leave()
                    self.ctx.stats.left += 1

    # -- signaling ---------------------------------------------------------------------------
    async def _publish_all(
        self, session: MeetingSession
    ) -> list[tuple[Publication, PublishedStream]]:
        kinds = (["video"] if self.ctx.settings.video_kbps > 0 else []) + (
            ["audio"] if self.ctx.settings.audio else []
        )
        out = []
        for kind in kinds:
            stream_id = str(uuid.uuid4())
            counter = PublishedStream(kind)
            # Registered before it is announced, so every subscriber finds it.
            self.ctx.streams[stream_id] = counter
            stream_type = StreamType.VIDEO_CAMERA if kind == "video" else StreamType.AUDIO

            async def publish(
                stream_type: StreamType = stream_type, sid: str = stream_id
            ) -> Publication:
                return await session.publish(stream_type, stream_id=sid)

            out.append((await self.ctx.retrying(publish), counter))
        return out

    async def _subscribe(self, session: MeetingSession, stream_id: str) -> None:
        stream = self.ctx.streams.get(stream_id)
        if stream is None or stream_id in self._subscribing:
            return  # not a stream of this run (a person in the meeting?), or done already
        self._subscribing.add(stream_id)

        async def subscribe() -> SessionSubscription:
            return await session.subscribe(stream_id, buffer=MEDIA_BUFFERED_FRAMES)

        frames = await self.ctx.retrying(subscribe)
        sub = self.ctx.stats.subscribe(stream)
        self.subscriptions[uuid.UUID(stream_id).bytes] = sub
        assert self._nursery is not None
        self._nursery.start_soon(self._receive, frames, sub)
        self.check_ready()

    def check_ready(self) -> None:
        """Ready once publishing and subscribed to every stream of the meeting's publishers
        (those that failed before publishing excepted)."""
        if self.settled:
            return
        lost = self.ctx.lost_publishers.get(self.meeting.index, 0)
        others = self.meeting.publishers - (1 if self.publishes else 0) - lost
        wanted = others * self.ctx.streams_per_publisher
        if not self.ready and self._published and len(self.subscriptions) >= wanted:
            self.ready = True
            self.ctx.stats.ready += 1
            self._settle()

    async def _events(self, session: MeetingSession) -> None:
        stats = self.ctx.stats
        try:
            async for event in session.events:
                if isinstance(event, StreamPublished):
                    await self._subscribe(session, event.stream.stream_id)
                elif isinstance(event, KeyFrameRequest):
                    self.key_frame_wanted = True
                    stats.key_frame_requests += 1
                elif isinstance(event, Resumed):
                    stats.reconnected(event.outage_s)
        except SessionEnded as exc:
            self._fail(
                f"ENDED_{exc.reason.name}",
                f"the meeting controller ended the session ({exc.reason.name} {exc.message})",
            )
        except Exception as exc:
            for leaf in leaves(exc):
                self._fail(error_kind(leaf), leaf)
            return
        self._fail("SIGNALING_CLOSED", "the session ended")

    # -- media -------------------------------------------------------------------------------
    async def _send(self, publication: Publication, counter: PublishedStream) -> None:
        """Send frames at the stream's rate until cancelled. A sender that falls behind skips
        the frames it missed (as a real encoder does) rather than bursting to catch up. Frames
        the reconnection policy drops are not sent (nor expected) and take no sequence
        number."""
        stats, video = self.ctx.stats, counter.kind == "video"
        fps = VIDEO_FPS if video else AUDIO_FPS
        start = trio.current_time()
        slot = 0
        sequence = 0
        try:
            for _ in itertools.count():
                await trio.sleep_until(start + slot / fps)
                if video:
                    key = slot % KEY_EVERY == 0 or self.key_frame_wanted
                    self.key_frame_wanted = False
                    plan = self.ctx.video
                    size, kind = (
                        (plan.key_bytes, FrameType.VIDEO_KEY)
                        if key
                        else (plan.delta_bytes, FrameType.VIDEO_DELTA)
                    )
                else:
                    size, kind = AUDIO_BYTES, FrameType.AUDIO
                payload = make_payload(size, sequence, time.monotonic_ns())
                data = await publication.send_frame(kind, payload, sequence=sequence)
                if data:
                    sequence += 1
                    stats.sent(counter, len(data))
                due = int((trio.current_time() - start) * fps)
                if due > slot + 1:
                    stats.send_skipped += due - slot - 1  # this process is too slow
                slot = max(slot + 1, due)
        except Exception as exc:
            for leaf in leaves(exc):
                self._fail(error_kind(leaf), leaf)

    async def _receive(self, frames: SessionSubscription, sub: SubscriptionStats) -> None:
        stats = self.ctx.stats
        try:
            async for frame in frames:
                stamp = read_stamp(frame.payload)
                if stamp is None or stamp[0] != frame.sequence:
                    self._fail("CORRUPT_FRAME", f"frame {frame.sequence} of {frame.stream_id}")
                    continue
                latency = (time.monotonic_ns() - stamp[1]) / 1e9
                stats.received(sub, stamp[0], frame.raw.nbytes, latency)
        except SessionEnded:
            pass  # said by the events task
