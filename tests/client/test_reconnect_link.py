"""A session's reconnection (docs/protocol.md §13) against fake connections, on virtual time:
resume with the latest token and catch-up, media reconnection asked for or sent by the MC, the
grace window, refusals, the events, the publisher's send policy, interrupted requests."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from darktower.client import (
    RECONNECT_FIRST_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    RECONNECT_SEND_WAIT_S,
    ConnectionState,
    KeyFrameRequest,
    Lost,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Reconnecting,
    RequestInterrupted,
    Resumed,
    SessionEnded,
    SessionEvent,
    SignalingEnded,
    StreamPublished,
    StreamUnpublished,
)
from darktower.client._link import backoff_delay
from darktower.errors import NotFound, RateLimited
from darktower.frames import FrameType
from darktower.model import LeaveReason, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import (
    GRACE_S,
    PID,
    STREAM_A,
    STREAM_B,
    STREAM_C,
    FakeNetwork,
    frame,
    participant,
    running,
    until,
)


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    rng = random.Random(7)
    for retry in range(1, 40):
        ceiling = min(RECONNECT_MAX_DELAY_S, RECONNECT_FIRST_DELAY_S * 2 ** (retry - 1))
        draws = [backoff_delay(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8  # spread over the whole range, not a fixed step


async def test_lost_signaling_resumes_with_the_latest_token_and_media_follows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    net.existing = [participant("ann", STREAM_A)]  # the room as the resume finds it
    async with running(net, *net.existing) as (session, signaling, media):
        audio = await session.publish(StreamType.AUDIO)
        video = await session.publish(StreamType.VIDEO_CAMERA)
        sub = await session.subscribe(STREAM_A)
        await video.send_frame(FrameType.VIDEO_KEY, b"k")
        sent_before = video.publishers[video.stream_id].sequence
        signaling.lose()
        events = await until(session, Resumed)
        assert events[0] == Reconnecting(media_only=False)
        resumed = events[-1]
        assert isinstance(resumed, Resumed) and not resumed.media_only
        assert KeyFrameRequest(video.stream_id) in events  # the video restarts at a key frame
        assert session.participant_id == PID
        assert session.connection is ConnectionState.CONNECTED and session.reconnects == 1
        assert net.resume_tokens == ["resume1"]
        assert net.media_tokens == ["joined2"]  # the resumed JoinResponse's fresh token
        assert media.closed  # the old media connection was replaced
        # The same publication objects, on streams of the new media connection.
        new_media = net.medias[-1]
        assert set(new_media.published) == {audio.stream_id, video.stream_id}
        assert session.publications == {audio.stream_id: audio, video.stream_id: video}
        assert await video.send_frame(FrameType.VIDEO_DELTA, b"d") == b""  # a key first
        assert await video.send_frame(FrameType.VIDEO_KEY, b"k") != b""
        assert video.publishers[video.stream_id].sequence == sent_before + 1
        assert await audio.send_frame(FrameType.AUDIO, b"a") != b""
        # The same subscription object gets the frames of the new connection.
        new_media.deliver(frame(STREAM_A, 5))
        assert (await sub.receive()).sequence == 5
        # Lost again: the next resume presents the token the last JoinResponse carried.
        net.signalings[-1].lose()
        await until(session, Resumed)
        assert net.resume_tokens == ["resume1", "resume2"]
        assert session.reconnects == 2


async def test_the_catch_up_says_what_changed_while_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    here = (participant("ann", STREAM_A), participant("bob"))
    async with running(net, *here) as (session, signaling, _):
        sub = await session.subscribe(STREAM_A)
        signaling.lose()
        # Meanwhile: ann left, bob published, cat joined with a stream.
        net.existing = [participant("bob", STREAM_B), participant("cat", STREAM_C)]
        events = await until(session, Resumed)
        kinds = [(type(e).__name__, _about(e)) for e in events[1:-1]]
        assert kinds == [
            ("ParticipantLeft", "ann"),
            ("StreamPublished", STREAM_B),
            ("ParticipantJoined", "cat"),
            ("StreamPublished", STREAM_C),
        ]
        left = events[1]
        assert isinstance(left, ParticipantLeft)
        assert left.reason is LeaveReason.VOLUNTARY
        assert set(session.participants) == {"bob", "cat"}
        assert [f async for f in sub] == []  # ann's stream went with her: the subscription ends


def _about(event: SessionEvent) -> str:
    if isinstance(event, (ParticipantJoined, ParticipantLeft, ParticipantUpdated)):
        return event.participant.participant_id
    if isinstance(event, (StreamPublished, StreamUnpublished)):
        return event.stream.stream_id
    return ""


async def test_past_the_grace_window_the_session_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net, grace_s=GRACE_S) as (session, signaling, _):
        net.up = False
        start = trio.current_time()
        signaling.lose()
        events = await until(session, Lost)
        assert events == [Reconnecting(media_only=False), events[-1]]
        lost = events[-1]
        assert isinstance(lost, Lost) and lost.reason is LeaveReason.CONNECTION_LOST
        assert trio.current_time() - start <= GRACE_S
        with pytest.raises(SessionEnded) as ended:
            await session.events.receive()
        assert ended.value.reason is LeaveReason.CONNECTION_LOST
        # Retried with growing, jittered gaps, none longer than the cap.
        gaps = [b - a for a, b in zip(net.attempts_at, net.attempts_at[1:], strict=False)]
        assert len(net.attempts_at) >= 4
        assert all(gap <= RECONNECT_MAX_DELAY_S + 0.1 for gap in gaps)
        assert net.attempts_at[0] - start < 0.1  # the first attempt is immediate


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (NotFound("unknown, used or expired resume token"), LeaveReason.CONNECTION_LOST),
        (SignalingEnded(LeaveReason.KICKED, "kicked"), LeaveReason.KICKED),
        (SignalingEnded(LeaveReason.MEETING_ENDED, "ended"), LeaveReason.MEETING_ENDED),
    ],
)
async def test_a_refused_resume_ends_the_session_with_its_reason(
    autojump_clock: trio.testing.MockClock, refusal: BaseException, reason: LeaveReason
) -> None:
    net = FakeNetwork()
    net.refusal = refusal
    async with running(net) as (session, signaling, _):
        signaling.lose()
        events = await until(session, Lost)
        assert events[-1] == Lost(reason, events[-1].message)  # type: ignore[union-attr]
        assert len(net.resume_tokens) == 1  # a refusal is final
        assert session.end_reason is reason


async def test_media_only_loss_asks_for_a_token_and_keeps_the_signaling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net, participant("ann", STREAM_A)) as (session, signaling, media):
        audio = await session.publish(StreamType.AUDIO)
        sub = await session.subscribe(STREAM_A)
        media.lose()
        events = await until(session, Resumed)
        assert events[0] == Reconnecting(media_only=True)
        assert isinstance(events[-1], Resumed) and events[-1].media_only
        assert net.resume_tokens == []  # no rejoin
        asked = [
            r for r in signaling.requests if r.WhichOneof("message") == "media_reconnect_request"
        ]
        assert len(asked) == 1
        assert net.media_tokens == ["asked1"]
        assert await audio.send_frame(FrameType.AUDIO, b"a") != b""
        net.medias[-1].deliver(frame(STREAM_A, 9))
        assert (await sub.receive()).sequence == 9


async def test_an_unsolicited_media_reconnect_moves_the_media_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, signaling, media):
        server = sig.MediaServerInfo(media_handler_url="https://mh2", connection_token="moved")
        signaling.push(sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=server)))
        events = await until(session, Resumed)
        assert events[0] == Reconnecting(media_only=True)
        assert net.media_tokens == ["moved"] and media.closed
        assert signaling.requests == []  # nothing asked


async def test_media_that_does_not_come_back_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, _, media):
        net.up = False
        media.lose()
        events = await until(session, Lost)
        assert events[-1] == Lost(LeaveReason.CONNECTION_LOST, "media connection lost")
        assert len(net.media_tokens) >= 3  # asked and tried again, with backoff


async def test_removal_by_the_server_ends_without_reconnecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, signaling, _):
        signaling.end(LeaveReason.KICKED)
        with pytest.raises(SessionEnded) as ended:
            await until(session, Lost)  # no Reconnecting, no Lost: just the end
        assert ended.value.reason is LeaveReason.KICKED
        assert net.resume_tokens == []
    net = FakeNetwork()
    async with running(net) as (session, _, media):
        media.lose(removed=LeaveReason.MEETING_ENDED)  # the MH's close code
        with pytest.raises(SessionEnded) as ended:
            await until(session, Lost)
        assert ended.value.reason is LeaveReason.MEETING_ENDED
        assert net.media_tokens == []


async def test_send_frame_waits_briefly_then_drops_while_reconnecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, _, media):
        audio = await session.publish(StreamType.AUDIO)
        net.up = False
        media.lose()
        await until(session, Reconnecting)
        start = trio.current_time()
        assert await audio.send_frame(FrameType.AUDIO, b"a") == b""
        assert trio.current_time() - start == pytest.approx(RECONNECT_SEND_WAIT_S)
        assert audio.dropped == 1
        net.up = True
        await until(session, Resumed)
        assert await audio.send_frame(FrameType.AUDIO, b"a") != b""
        assert audio.dropped == 1


async def test_requests_wait_for_the_resume_and_an_interrupted_one_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, signaling, _):
        signaling.hold = True

        async def interrupted() -> None:
            with pytest.raises(RequestInterrupted):
                await session.publish(StreamType.AUDIO)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupted)
            await trio.testing.wait_all_tasks_blocked()
            assert [r.WhichOneof("message") for r in signaling.requests] == ["publish"]
            signaling.lose()
        await until(session, Resumed)
        # Issued while reconnecting: sent on the resumed connection.
        net.up = False
        net.signalings[-1].lose()
        await until(session, Reconnecting)
        done = trio.Event()

        async def publish() -> None:
            await session.publish(StreamType.AUDIO)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.sleep(1)
            assert not done.is_set()
            net.up = True
        assert [r.WhichOneof("message") for r in net.signalings[-1].requests] == ["publish"]


async def test_others_connection_state_is_an_event_and_in_the_roster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net, participant("ann")) as (session, signaling, _):
        update = sig.ParticipantUpdated(participant_id="ann", connection=sig.RECONNECTING)
        signaling.push(sig.ServerMessage(participant_updated=update))
        (event,) = await until(session, ParticipantUpdated)
        assert isinstance(event, ParticipantUpdated)
        assert event.participant.connection is ConnectionState.RECONNECTING
        assert session.participants["ann"].connection is ConnectionState.RECONNECTING
        update.connection = sig.CONNECTED
        signaling.push(sig.ServerMessage(participant_updated=update))
        await until(session, ParticipantUpdated)
        assert session.participants["ann"].connection is ConnectionState.CONNECTED


async def test_without_a_connector_a_lost_connection_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net, grace_s=0) as (session, signaling, _):
        signaling.lose()
        with pytest.raises(SessionEnded) as ended:
            await until(session, Lost)
        assert ended.value.reason is LeaveReason.CONNECTION_LOST
        assert net.resume_tokens == []


async def test_a_resume_without_a_media_server_asks_for_one_until_the_mc_can_give_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    net.resumed_media = False  # the MH failed during the resume
    net.mh_failing = 2  # and the MC cannot give a token twice
    async with running(net) as (session, signaling, media):
        signaling.lose()
        media.lose()
        events = await until(session, Resumed)
        assert isinstance(events[-1], Resumed) and not events[-1].media_only
        resumed = net.signalings[-1]
        asked = [r.WhichOneof("message") for r in resumed.requests]
        assert asked == ["media_reconnect_request"] * 3
        assert net.media_tokens == ["asked1"]


async def test_an_unsolicited_media_reconnect_for_the_mh_in_use_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with running(net) as (session, signaling, media):
        same = sig.MediaServerInfo(media_handler_url="https://mh", connection_token="late")
        unsolicited = sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=same))
        signaling.push(unsolicited)  # about a connection lost earlier: ours is live
        await trio.sleep(1)
        assert net.media_tokens == [] and not media.closed
        # Lost now: the client asks, and the MC's own message about that loss races it.
        media.lose()
        signaling.push(unsolicited)
        await until(session, Resumed)
        await trio.sleep(1)
        assert session.reconnects == 1 and len(net.medias) == 1


async def test_a_resume_refused_as_too_soon_is_tried_again_after_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The MC refuses a resume that follows another too closely with RATE_LIMITED (its token
    still good, docs/protocol.md §13): the client waits what it is told and resumes."""
    net = FakeNetwork()
    net.refusal = RateLimited("too many resumes", retry_after_s=0.8)
    async with running(net) as (session, signaling, _):
        signaling.lose()
        await trio.sleep(0.1)  # virtual time: the first attempt (at once) has been refused
        assert len(net.resume_tokens) == 1
        net.refusal = None
        await until(session, Resumed)
        assert len(net.resume_tokens) == 2
        assert net.resume_tokens[0] == net.resume_tokens[1]  # the same, still good token
        assert net.attempts_at[1] - net.attempts_at[0] >= 0.8
        assert session.end_reason is None
