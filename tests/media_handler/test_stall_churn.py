"""A subscriber that stops taking sends does not make the MH churn uni streams without bound
(docs/protocol.md §13, docs/architecture.md §5.4): past MAX_ABANDONED_SENDS consecutive
abandoned sends a subscription opens its next stream only after a pause (up to
STALLED_RETRY_MAX_S), never while the peer grants no uni-stream credit, and a refused open
ends or delays that subscription only, never its participant.

In-memory sessions on virtual time (autojump_clock), as in test_stale.py."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from darktower.frames import FrameDecoder, FrameType
from darktower.media_handler import MediaHandler, MediaMetrics, Settings
from darktower.media_handler._limits import (
    MAX_ABANDONED_SENDS,
    MAX_AUDIO_AGE_S,
    MAX_VIDEO_AGE_S,
    STALLED_RETRY_MAX_S,
)
from darktower.metrics import Registry
from darktower.model import ParticipantId
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import (
    Route,
    StreamLimitExceeded,
    TlsCredentials,
    WebTransportSession,
    connect_webtransport,
    generate_dev_certificate,
)

from ..transport.conftest import start_server
from ._harness import audio, video
from .test_stale import (
    CAM,
    MEETING,
    MIC,
    BufferingUniStream,
    Reader,
    Session,
    UniStream,
    _encode,
)

K, D, A = FrameType.VIDEO_KEY, FrameType.VIDEO_DELTA, FrameType.AUDIO


class WindowedUniStream:
    """A uni stream as a real client's QUIC stack has it: it acknowledges what fits in the
    stream's window (``window`` bytes beyond what its application read) even while the
    application does not read; what does not fit stays with the sender, unacknowledged. The
    credit grows only with reads; a reset drops both parts."""

    def __init__(self, reader: Reader, window: int) -> None:
        self.reader = reader
        self.window = window
        self.decoder = FrameDecoder()
        self.reset_code: int | None = None
        self.taken = 0
        self.buffered = bytearray()  # acknowledged, not yet read
        self.pending = bytearray()  # beyond the window: unacknowledged
        reader.held.append(self)  # type: ignore[arg-type]

    @property
    def unacknowledged(self) -> int:
        return len(self.pending)

    @property
    def send_credit(self) -> int:
        return self.taken + self.window

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        self.pending += data
        self.deliver()

    def deliver(self) -> None:
        while self.reset_code is None:
            room = self.window - len(self.buffered)
            self.buffered += self.pending[:room]
            del self.pending[:room]
            if not self.reader.reading or not self.buffered:
                return
            self.reader.take(self.decoder, bytes(self.buffered))
            self.taken += len(self.buffered)
            self.buffered.clear()

    def reset(self, code: int = 0) -> None:
        self.reset_code = code
        self.buffered.clear()
        self.pending.clear()

    def when_sent(self, callback: Any) -> bool:
        return False  # no socket: the residence is not measured

    def try_send(self, data: Any) -> bool:
        return False  # every write goes through send_all, as this fake behaves


class ChurnSession(Session):
    """A subscriber's session whose uni-stream credit the test grants, and whose opens may be
    refused (``refusals``: the n-th open raises the given error)."""

    def __init__(
        self, credit: int = 1 << 30, *, buffering: bool = False, window: int | None = None
    ) -> None:
        super().__init__(Reader(), buffering=buffering)
        self.window = window  # WindowedUniStream with this window, when given
        self.credit = credit
        self.opens = 0
        self.refusals: dict[int, BaseException] = {}
        self.opened_without_credit = 0

    async def open_unidirectional_stream(self) -> UniStream | BufferingUniStream:
        await trio.lowlevel.checkpoint()
        self.opens += 1
        refusal = self.refusals.get(self.opens)
        if refusal is not None:
            raise refusal
        if self.credit <= 0:
            self.opened_without_credit += 1
        self.credit -= 1
        stream: Any
        if self.window is not None:
            stream = WindowedUniStream(self.reader, self.window)
        else:
            stream = (BufferingUniStream if self.buffering else UniStream)(self.reader)
        self.uni.append(stream)
        return stream


@attrs.define(eq=False)
class Meeting:
    handler: MediaHandler
    subscriber: ChurnSession
    ended: set[str] = attrs.Factory(set)  # participants whose handle_session returned

    def frames(self, stream: str, since: float) -> list[tuple[float, FrameType, int]]:
        return [
            (t, ft, seq)
            for t, s, ft, seq in self.subscriber.reader.got
            if s == stream and t >= since
        ]


@asynccontextmanager
async def meeting(subscriber: ChurnSession) -> AsyncIterator[Meeting]:
    """A publisher "p" sending video (30 fps, a key frame every 2 s or when asked) and audio
    (50 fps), both routed to the subscriber "s"; runs until the block ends."""
    async with trio.open_nursery() as nursery:
        tree = TaskTree()
        await nursery.start(tree.run)
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        for pid, streams in (("p", [video(CAM), audio(MIC)]), ("s", [])):
            await handler.register_participant(
                mc_pb.RegisterParticipant(participant_id=pid, meeting_id=MEETING, streams=streams)
            )
        m = Meeting(handler, subscriber)
        want_key = trio.Event()
        listening = trio.Event()

        async def key_frames_asked() -> None:
            nonlocal want_key
            async for event in handler.telemetry_hub.subscribe(MEETING, ready=listening):
                if event.key_frame_request.stream_id == CAM:
                    want_key.set()

        nursery.start_soon(key_frames_asked)
        await listening.wait()
        room = handler.rooms[MEETING]  # type: ignore[index]
        pub = Session()

        async def serve(pid: str, session: Session) -> None:
            await handler.handle_session(session, room.members[ParticipantId(pid)])  # type: ignore[arg-type]
            m.ended.add(pid)

        for pid, session in (("p", pub), ("s", subscriber)):
            nursery.start_soon(serve, pid, session)
        await trio.testing.wait_all_tasks_blocked()
        for source in (CAM, MIC):
            await handler.route_media(
                mc_pb.RouteMediaCommand(
                    meeting_id=MEETING, source_stream_id=source, destination_participant_ids=["s"]
                )
            )
        cam, mic = pub.publish(), pub.publish()

        async def send_video() -> None:
            nonlocal want_key
            seq = 0
            while True:
                key = seq % 60 == 0 or want_key.is_set()
                if want_key.is_set():
                    want_key = trio.Event()
                cam.feed(_encode(CAM, K if key else D, seq))
                seq += 1
                await trio.sleep(1 / 30)

        async def send_audio() -> None:
            seq = 0
            while True:
                mic.feed(_encode(MIC, A, seq))
                seq += 1
                await trio.sleep(1 / 50)

        nursery.start_soon(send_video)
        nursery.start_soon(send_audio)
        await trio.sleep(0.5)  # media flowing
        yield m
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("buffering", "window"),
    [
        pytest.param(False, None, id="sends-block"),
        # Sends return at once and the transport holds the bytes, unacknowledged (real QUIC).
        pytest.param(True, None, id="transport-holds-the-bytes"),
        # The client's stack acknowledges a window (~0.3 s of this video) nobody reads: without
        # READ_EVIDENCE_S this cycled a stream per age bound (measured 295 opened).
        pytest.param(True, 512, id="stack-acknowledges-a-window"),
    ],
)
async def test_a_subscriber_that_never_reads_opens_a_bounded_number_of_streams(
    autojump_clock: trio.testing.MockClock, buffering: bool, window: int | None
) -> None:
    subscriber = ChurnSession(buffering=buffering, window=window)
    async with meeting(subscriber) as m:
        before = len(subscriber.uni)
        subscriber.reader.stall()
        await trio.sleep(60.0)
        opened = len(subscriber.uni) - before
        # Per subscription: MAX_ABANDONED_SENDS replacements at once, then one per pause (the
        # pause doubles from the age bound up to STALLED_RETRY_MAX_S) plus the bound the probe
        # send is given. Measured: 101; without the bound 414 (60 / 0.5 + 60 / 0.2).
        # When the transport holds the bytes, a probe's frames may come due before the probe
        # had the whole bound (they waited queued): one per pause at most.
        bound = 0
        for age in (MAX_VIDEO_AGE_S, MAX_AUDIO_AGE_S):
            probe = 0.0 if buffering else age
            bound += MAX_ABANDONED_SENDS + math.ceil(60.0 / (STALLED_RETRY_MAX_S + probe)) + 1
        assert opened <= bound, (opened, bound)
        # Memory: at most one unreset stream per subscription is open at any time.
        assert sum(1 for u in subscriber.uni if u.reset_code is None) <= 2
        assert not m.ended
        # The stalled subscriber reads again: media is back within the longest pause.
        subscriber.reader.resume()
        back = trio.current_time()
        await trio.sleep(STALLED_RETRY_MAX_S + MAX_VIDEO_AGE_S + 0.5)
        video_after = m.frames(CAM, back)
        assert video_after and video_after[0][1] == K
        assert m.frames(MIC, back)


async def _recovers_after(stall_s: float, m: Meeting) -> None:
    subscriber = m.subscriber
    subscriber.reader.stall()
    await trio.sleep(stall_s)
    subscriber.reader.resume()
    back = trio.current_time()
    await trio.sleep(2.0)
    video_after = m.frames(CAM, back)
    audio_after = m.frames(MIC, back)
    assert video_after and audio_after
    assert video_after[0][1] == K  # live video restarts at a key frame
    # Within a second of the subscriber reading again (docs/protocol.md §13).
    assert video_after[0][0] - back <= 1.0, video_after[0][0] - back
    assert audio_after[0][0] - back <= 1.0, audio_after[0][0] - back
    assert not m.ended


@pytest.mark.parametrize(
    "buffering",
    [
        pytest.param(False, id="sends-block"),
        # Sends return at once and the transport holds the bytes, unacknowledged (real QUIC).
        pytest.param(True, id="transport-holds-the-bytes"),
    ],
)
async def test_a_subscriber_back_after_3_s_gets_live_media_at_a_key_frame(
    autojump_clock: trio.testing.MockClock, buffering: bool
) -> None:
    async with meeting(ChurnSession(buffering=buffering)) as m:
        await _recovers_after(3.0, m)


@pytest.mark.parametrize(
    "buffering",
    [
        pytest.param(False, id="sends-block"),
        # Sends return at once and the transport holds the bytes, unacknowledged (real QUIC).
        pytest.param(True, id="transport-holds-the-bytes"),
    ],
)
async def test_a_subscriber_back_after_5_s_gets_live_media_at_a_key_frame(
    autojump_clock: trio.testing.MockClock, buffering: bool
) -> None:
    async with meeting(ChurnSession(buffering=buffering)) as m:
        await _recovers_after(5.0, m)


async def test_no_replacement_stream_is_opened_without_uni_stream_credit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscriber = ChurnSession(credit=2)  # the two subscriptions' first streams
    async with meeting(subscriber) as m:
        subscriber.reader.stall()
        await trio.sleep(10.0)
        assert subscriber.opened_without_credit == 0
        assert len(subscriber.uni) == 2
        # The peer grants credit again (as it does once it forgot the reset streams).
        subscriber.credit = 1 << 30
        subscriber.reader.resume()
        back = trio.current_time()
        await trio.sleep(2.0)
        assert m.frames(CAM, back) and m.frames(MIC, back)
        assert not m.ended


async def test_a_stream_limit_on_open_delays_the_subscription_not_the_participant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscriber = ChurnSession()
    for n in range(3, 8):  # the first replacements of both subscriptions are refused
        subscriber.refusals[n] = StreamLimitExceeded("session has 256 open streams")
    async with meeting(subscriber) as m:
        await _recovers_after(1.5, m)
        assert subscriber.opens >= 8


async def test_a_closed_session_on_open_ends_that_subscription_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscriber = ChurnSession()
    subscriber.refusals[3] = trio.ClosedResourceError("session closed")
    async with meeting(subscriber) as m:
        subscriber.reader.stall()
        await trio.sleep(1.0)
        subscriber.reader.resume()
        back = trio.current_time()
        await trio.sleep(2.0)
        assert not m.ended and subscriber.close_code is None
        # One subscription ended; the other one carries media again.
        assert bool(m.frames(CAM, back)) != bool(m.frames(MIC, back))


@pytest.fixture(scope="module")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


async def test_the_uni_stream_credit_is_what_the_peer_still_allows(
    dev_cert: TlsCredentials,
) -> None:
    """The credit the router reads, over real QUIC on 127.0.0.1: the peer's MAX_STREAMS less
    the uni streams opened (the HTTP/3 control and QPACK streams count too); each open takes
    one."""

    async def handler(session: WebTransportSession, context: object) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _, base = await start_server(nursery, dev_cert, {"/s": Route(handler)})
        async with connect_webtransport(
            base + "/s", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            credit = session.unidirectional_stream_credit
            assert credit > 0
            stream = await session.open_unidirectional_stream()
            # One stream of a window the peer raises only once half of it is used.
            assert session.unidirectional_stream_credit == credit - 1
            stream.reset(0)
        nursery.cancel_scope.cancel()
