"""A session's rejoin through the GC (docs/protocol.md §13) against fake connections and a
fake GC, on virtual time: when it starts (a refused resume token, SERVER_SHUTDOWN from the MC
or only from the MH, the GC naming another MC), what is restored (publications, subscriptions
by stream id, a subscription whose stream does not come back), the window and its backoff,
the events."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.client import (
    RECONNECT_MAX_DELAY_S,
    RESUBSCRIBE_WAIT_S,
    KeyFrameRequest,
    Lost,
    ParticipantJoined,
    ParticipantLeft,
    Reconnecting,
    Rejoined,
    Rejoining,
    RejoinRefused,
    Resumed,
    SessionEnded,
)
from darktower.client._events import SETTLE_S
from darktower.errors import CapacityExceeded, InternalError, NotFound
from darktower.frames import FrameType
from darktower.model import LEAVE_MESSAGES, LeaveReason, StreamType
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import ConnectFailed

from ._reconnect_fakes import STREAM_A, STREAM_B, FakeNetwork, frame, participant, until
from ._rejoin_fakes import NEW_MC, FakeMc, FakeRejoiner, rejoining

SHUTDOWN = LeaveReason.SERVER_SHUTDOWN


def requests_of(kind: str, signaling: object) -> list[sig.ClientMessage]:
    sent: list[sig.ClientMessage] = signaling.requests  # type: ignore[attr-defined]
    return [m for m in sent if m.WhichOneof("message") == kind]


async def test_a_refused_resume_token_rejoins_as_a_new_participant_and_restores_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net)
    async with rejoining(net, gc, participant("ann", STREAM_A)) as (session, signaling, _):
        video = await session.publish(StreamType.VIDEO_CAMERA, codec="VP8", width=640)
        sub = await session.subscribe(STREAM_A, max_bitrate=300_000)
        net.refusal = NotFound("unknown, used or expired resume token")  # the MC restarted
        # The new MC's room: ann is back (as a new participant) with the same stream.
        net.existing = [participant("ann2", STREAM_A)]
        signaling.lose()
        events = await until(session, Rejoined)
        assert events[:2] == [
            Reconnecting(media_only=False),
            Rejoining(
                LeaveReason.CONNECTION_LOST,
                "resume refused: unknown, used or expired resume token",
            ),
        ]
        left = [e for e in events if isinstance(e, ParticipantLeft)]
        assert [(e.participant.participant_id, e.reason) for e in left] == [
            ("ann", LeaveReason.CONNECTION_LOST)
        ]
        assert [
            e.participant.participant_id for e in events if isinstance(e, ParticipantJoined)
        ] == ["ann2"]
        assert KeyFrameRequest(video.stream_id) in events
        rejoined = events[-1]
        assert rejoined == Rejoined("me", "new1", rejoined.outage_s)  # type: ignore[union-attr]
        assert session.participant_id == "new1" and session.rejoins == session.reconnects == 1
        assert gc.joins == [(NEW_MC, "token1")]
        # Published again with its id and metadata, subscribed again as it was asked.
        new = gc.signalings[0]
        (publish,) = requests_of("publish", new)
        assert publish.publish.stream_id == video.stream_id
        assert publish.publish.stream_type == common.VIDEO_CAMERA
        assert publish.publish.metadata == video.metadata
        assert publish.publish.metadata.codec == "VP8"
        (subscribe,) = requests_of("subscribe", new)
        assert subscribe.subscribe.stream_id == STREAM_A
        assert subscribe.subscribe.options.max_bitrate == 300_000
        # Media at the new MH: the same objects carry it.
        assert net.media_tokens == ["rejoined1"]
        media = net.medias[-1]
        assert set(media.published) == {video.stream_id}
        assert await video.send_frame(FrameType.VIDEO_KEY, b"k") != b""
        media.deliver(frame(STREAM_A, 7))
        assert (await sub.receive()).sequence == 7
        # A later loss resumes at the new MC with its token.
        assert session._link.resume_token == "rejoined-resume1"
        assert isinstance(session._link._connector, FakeMc)


async def test_server_shutdown_without_a_gc_ends_the_session_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with rejoining(net, None) as (session, signaling, _):
        message = "the meeting controller is shutting down"
        ended = sig.SessionEnded(reason=leave_reason_to_pb(SHUTDOWN), message=message)
        signaling.push(sig.ServerMessage(session_ended=ended))
        signaling.end(SHUTDOWN)
        with trio.fail_after(10):
            await session.ended.wait()
        assert (session.end_reason, session.end_message) == (SHUTDOWN, message)
        with pytest.raises(SessionEnded) as raised:
            await session.events.receive()
        assert raised.value.reason is SHUTDOWN


async def test_the_mhs_server_shutdown_without_the_mcs_starts_the_rejoin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net)
    async with rejoining(net, gc) as (session, _, media):
        start = trio.current_time()
        media.lose(removed=SHUTDOWN)  # the MC's SessionEnded never comes
        events = await until(session, Rejoined)
        assert events[:2] == [
            Reconnecting(media_only=True),
            Rejoining(SHUTDOWN, LEAVE_MESSAGES[SHUTDOWN]),
        ]
        assert SETTLE_S <= trio.current_time() - start < SETTLE_S + 1
        assert session.participant_id == "new1"


async def test_the_mcs_message_names_the_rejoin(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork()
    async with rejoining(net, FakeRejoiner(net)) as (session, signaling, media):
        ended = sig.SessionEnded(reason=leave_reason_to_pb(SHUTDOWN), message="going down")
        signaling.push(sig.ServerMessage(session_ended=ended))
        signaling.end(SHUTDOWN)
        media.lose(removed=SHUTDOWN)
        events = await until(session, Rejoined)
        assert [e for e in events if isinstance(e, Rejoining)] == [
            Rejoining(SHUTDOWN, "going down")
        ]
        assert session.end_reason is None and session.end_message == ""


async def test_the_gc_naming_another_mc_cuts_the_resume_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net, FakeNetwork(), moved_answer=True)
    async with rejoining(net, gc) as (session, signaling, _):
        net.up = False  # the old MC does not answer
        start = trio.current_time()
        signaling.lose()
        events = await until(session, Rejoined)
        assert Rejoining(LeaveReason.CONNECTION_LOST, "the meeting controller is gone") in events
        assert len(net.resume_tokens) == 1 and gc.asked_moved == 1  # asked after one failure
        assert trio.current_time() - start < 5.0  # not the 15 s grace window


async def test_a_gc_that_cannot_say_leaves_the_resume_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net, moved_answer=False)
    async with rejoining(net, gc) as (session, signaling, _):
        net.up = False
        signaling.lose()
        await trio.sleep(5.0)
        assert gc.tickets_at == [] and gc.asked_moved >= 2
        net.up = True
        await until(session, Resumed)
        assert gc.tickets_at == [] and session.participant_id == "me"


async def test_past_the_resume_grace_the_session_rejoins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net, FakeNetwork())
    async with rejoining(net, gc) as (session, signaling, _):
        net.up = False  # the MC never answers, and the GC cannot say
        start = trio.current_time()
        signaling.lose()
        events = await until(session, Rejoined)
        assert Rejoining(
            LeaveReason.CONNECTION_LOST, "not reconnected within the grace window"
        ) in (events)
        assert 10.0 <= trio.current_time() - start <= 16.0  # the grace window, then at once


async def test_rejoining_backs_off_within_its_window_then_the_session_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    busy = CapacityExceeded("the meeting controller is not responding")
    gc = FakeRejoiner(net, ticket_failures=[busy] * 1000)
    async with rejoining(net, gc, rejoin_window_s=30.0) as (session, signaling, _):
        start = trio.current_time()
        signaling.end(SHUTDOWN)
        events = await until(session, Lost)
        lost = events[-1]
        assert isinstance(lost, Lost) and lost.reason is SHUTDOWN is session.end_reason
        assert lost.message == (
            f"{LEAVE_MESSAGES[SHUTDOWN]}; not rejoined in time "
            "(CAPACITY_EXCEEDED: the meeting controller is not responding)"
        )
        assert trio.current_time() - start <= 30.0
        gaps = [b - a for a, b in zip(gc.tickets_at, gc.tickets_at[1:], strict=False)]
        assert gc.tickets_at[0] - start < 0.1 and 6 <= len(gc.tickets_at) <= 40
        assert all(gap <= RECONNECT_MAX_DELAY_S + 0.1 for gap in gaps)


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        (RejoinRefused(LeaveReason.MEETING_ENDED, "the meeting has ended"), "MEETING_ENDED"),
        (RejoinRefused(None, "unknown meeting"), "SERVER_SHUTDOWN"),
    ],
)
async def test_a_refusal_ends_the_session_at_once(
    autojump_clock: trio.testing.MockClock, refused: RejoinRefused, reason: str
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net, ticket_failures=[refused])
    async with rejoining(net, gc) as (session, signaling, _):
        signaling.end(SHUTDOWN)
        events = await until(session, Lost)
        assert events[-1] == Lost(LeaveReason[reason], refused.message)
        assert len(gc.tickets_at) == 1


async def test_an_mc_that_refuses_the_join_is_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    refusals: list[BaseException] = [
        NotFound("meeting m is not assigned to this controller"),
        ConnectFailed("no route"),
        InternalError("no media handler is available"),
    ]
    gc = FakeRejoiner(net, join_failures=refusals)
    async with rejoining(net, gc) as (session, signaling, _):
        signaling.end(SHUTDOWN)
        await until(session, Rejoined)
        assert len(gc.joins) == 4 and session.participant_id == "new1"


async def test_a_subscription_waits_for_its_stream_then_ends_if_it_does_not_come(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    gc = FakeRejoiner(net)
    here = (participant("ann", STREAM_A), participant("bob", STREAM_B))
    async with rejoining(net, gc, *here) as (session, signaling, _):
        from_ann = await session.subscribe(STREAM_A)
        from_bob = await session.subscribe(STREAM_B)
        net.existing = []  # nobody is at the new MC yet
        signaling.end(SHUTDOWN)
        await until(session, Rejoined)
        new = gc.signalings[0]
        assert requests_of("subscribe", new) == []
        # ann rejoins and publishes the same stream again: subscribed again at once.
        ann = participant("ann2")
        new.push(sig.ServerMessage(participant_joined=sig.ParticipantJoined(participant=ann)))
        stream = common.MediaStream(stream_id=STREAM_A, stream_type=common.AUDIO)
        new.push(
            sig.ServerMessage(
                stream_published=sig.StreamPublished(participant_id="ann2", stream=stream)
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        assert [m.subscribe.stream_id for m in requests_of("subscribe", new)] == [STREAM_A]
        net.medias[-1].deliver(frame(STREAM_A, 3))
        assert (await from_ann.receive()).sequence == 3
        # bob never comes back: his subscription ends once the wait is over.
        rejoined_at = trio.current_time()
        assert [f async for f in from_bob] == []
        assert RESUBSCRIBE_WAIT_S - 1 <= trio.current_time() - rejoined_at <= RESUBSCRIBE_WAIT_S
        assert not from_ann.closed and STREAM_A in session._subscribing.subscriptions
