"""Which subscription gets a derived stream's frames (docs/protocol.md §2.2), against fake
connections on virtual time: audio subscriptions the MC answers with the mix share its stream
id (the oldest live one gets its frames, the one asked for with mix_audio first),
SubscriptionUpdated moves a subscription to another stream, RecordingStatus is the session's
``recording``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from darktower.client import MeetingSession, RecordingChanged, Subscription
from darktower.errors import Conflict
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import (
    PID,
    STREAM_A,
    STREAM_B,
    FakeMedia,
    FakeNetwork,
    FakeSignaling,
    frame,
    participant,
    until,
)

MIX = str(uuid.uuid4())
MIX_MOVED = str(uuid.uuid4())


class Answering(FakeSignaling):
    """Answers each SubscribeStream with the derived stream ``derived`` names for it (by stream
    id; ``""``: the mix asked for)."""

    def __init__(self, join: sig.JoinResponse, net: FakeNetwork) -> None:
        super().__init__(join, net)
        self.derived: dict[str, sig.DerivedStream] = {}

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        reply = await super().request(message)
        if message.WhichOneof("message") == "subscribe":
            key = "" if message.subscribe.mix_audio else message.subscribe.stream_id
            reply.ack.stream_id = key
            if key in self.derived:
                reply.ack.derived.CopyFrom(self.derived[key])
        return reply


@asynccontextmanager
async def session() -> AsyncIterator[tuple[MeetingSession, Answering, FakeMedia]]:
    join = sig.JoinResponse(
        participant_id=PID, existing_participants=[participant("ann", STREAM_A, STREAM_B)]
    )
    signaling, media = Answering(join, FakeNetwork()), FakeMedia("first")
    meeting = MeetingSession(signaling, media, meeting_id="m", resume_grace_s=0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(meeting.run)
        yield meeting, signaling, media
        nursery.cancel_scope.cancel()


async def delivered(media: FakeMedia, stream_id: str, seq: int) -> None:
    media.deliver(frame(stream_id, seq))
    await trio.testing.wait_all_tasks_blocked()


def got(subscription: Subscription) -> list[int]:
    """The sequence numbers it holds (taken)."""
    out = []
    while True:
        try:
            out.append(subscription._receive.receive_nowait().header.sequence)
        except trio.WouldBlock:
            return out


async def test_audio_subscriptions_answered_with_the_mix_share_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mixed = sig.DerivedStream(stream_id=MIX, codec="Opus", mix=True)
    async with session() as (meeting, signaling, media):
        signaling.derived = {STREAM_A: mixed, STREAM_B: mixed, "": mixed}
        a = await meeting.subscribe(STREAM_A)
        b = await meeting.subscribe(STREAM_B)
        assert a.derived is not None and a.derived.mix and a.derived == b.derived
        await delivered(media, MIX, 0)
        assert (got(a), got(b)) == ([0], [])  # once, to the oldest
        await delivered(media, STREAM_A, 1)  # the source itself still reaches its own
        assert got(a) == [1]

        await a.aclose()
        await delivered(media, MIX, 2)
        assert got(b) == [2]

        # the mix asked for takes it over, and is withdrawn by its stream id
        mix = await meeting.subscribe_mix()
        assert mix.mix and mix.stream_id == "" and mix.derived == b.derived
        with pytest.raises(Conflict):
            await meeting.subscribe_mix()
        await delivered(media, MIX, 3)
        assert (got(mix), got(b)) == ([3], [])
        await mix.aclose()
        assert signaling.requests[-1].unsubscribe.stream_id == MIX
        await delivered(media, MIX, 4)
        assert got(b) == [4]


async def test_subscription_updated_moves_a_subscription_to_its_new_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (meeting, signaling, media):
        signaling.derived = {"": sig.DerivedStream(stream_id=MIX, codec="Opus", mix=True)}
        mix = await meeting.subscribe_mix()
        a = await meeting.subscribe(STREAM_A)  # the source itself
        assert a.derived is None
        signaling.push(
            sig.ServerMessage(
                subscription_updated=sig.SubscriptionUpdated(
                    stream_id="", derived=sig.DerivedStream(stream_id=MIX_MOVED, mix=True)
                )
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        assert mix.derived is not None and mix.derived.stream_id == MIX_MOVED
        await delivered(media, MIX, 0)
        await delivered(media, MIX_MOVED, 1)
        assert got(mix) == [1]
        assert meeting.unrouted_frames == 1
        # back to the source: an update without a derived stream
        signaling.push(
            sig.ServerMessage(subscription_updated=sig.SubscriptionUpdated(stream_id=STREAM_A))
        )
        await trio.testing.wait_all_tasks_blocked()
        await delivered(media, STREAM_A, 2)
        assert got(a) == [2] and a.derived is None


async def test_recording_status_is_the_sessions_recording(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session() as (meeting, signaling, _):
        assert not meeting.recording
        for on in (True, False):
            signaling.push(sig.ServerMessage(recording_status=sig.RecordingStatus(recording=on)))
            [event] = await until(meeting, RecordingChanged)
            assert event == RecordingChanged(on) and meeting.recording is on
