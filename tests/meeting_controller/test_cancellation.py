"""The nurseries' cancel-at-every-checkpoint harness over a participant's whole lifecycle
(join -> publish -> subscribe-less leave), at the MeetingController level on memory streams and
virtual time, with a fake Media Handler link."""

from __future__ import annotations

import time

import trio
import trio.testing

from darktower.meeting_controller import MediaHandlers, MeetingController, SignalPort
from darktower.model import MeetingId, Role
from darktower.nurseries import TaskTree
from darktower.nurseries.testing import Journal, cancel_at_every_checkpoint
from darktower.protocol import MessageDecoder, encode_message
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.tokens import JoinTokenIssuer, JoinTokenVerifier, generate_signing_key


class FakeLink:
    """A Media Handler that registers a participant only once it replies (as a real one)."""

    handler_id = "fake"

    def __init__(self) -> None:
        self.rooms = 0
        self.registered: list[str] = []
        self.removed: list[str] = []

    def usable(self, now: float) -> bool:
        return True

    def load_key(self) -> tuple[float, ...]:
        return (0.0,)

    async def register_participant(
        self, request: mh_pb.RegisterParticipant
    ) -> mh_pb.RegisterParticipantResponse:
        await trio.lowlevel.checkpoint()
        self.registered.append(request.participant_id)
        return mh_pb.RegisterParticipantResponse(connection_token="t", media_handler_url="u")

    async def route_media(self, request: mh_pb.RouteMediaCommand) -> None:
        await trio.lowlevel.checkpoint()

    async def remove_stream(self, request: mh_pb.RemoveStreamRequest) -> None:
        await trio.lowlevel.checkpoint()

    async def remove_participant(self, request: mh_pb.RemoveParticipantRequest) -> None:
        await trio.lowlevel.checkpoint()
        self.removed.append(request.participant_id)


KEY = generate_signing_key()
ISSUER = JoinTokenIssuer(KEY)
VERIFIER = JoinTokenVerifier(KEY.public_key())


async def _until(
    stream: trio.abc.ReceiveStream, decoder: MessageDecoder[sig.ServerMessage], kind: str
) -> sig.ServerMessage:
    while True:
        for message in decoder:
            if message.WhichOneof("message") == kind:
                return message
        data = await stream.receive_some()
        if not data:
            raise AssertionError(f"stream ended before {kind}")
        decoder.receive_data(data)


def _make_lifecycle(links: list[FakeLink]):  # type: ignore[no-untyped-def]
    async def lifecycle(tree: TaskTree) -> None:
        link = FakeLink()
        links.append(link)
        mhs = MediaHandlers(lambda event: None)
        await mhs.add(link)
        ctl = MeetingController(tree, mhs, verifier=VERIFIER)
        await ctl.assign(MeetingId("m"), mtg_pb.MeetingConfig())
        client, server = trio.testing.memory_stream_pair()
        decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
        token = ISSUER.issue(MeetingId("m"), Role.HOST, time.time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctl.serve_session, SignalPort(server))
            await client.send_all(
                encode_message(
                    sig.ClientMessage(
                        request_id=1, join=sig.JoinRequest(meeting_id="m", join_token=token)
                    )
                )
            )
            await _until(client, decoder, "join_response")
            await client.send_all(
                encode_message(
                    sig.ClientMessage(request_id=2, publish=sig.PublishStream(stream_id="s"))
                )
            )
            await _until(client, decoder, "ack")
            await client.send_all(
                encode_message(sig.ClientMessage(request_id=3, leave=sig.LeaveRequest()))
            )
            ended = await _until(client, decoder, "session_ended")
            assert ended.session_ended.reason == common_pb2.VOLUNTARY
            assert ended.request_id == 3

    return lifecycle


def _no_media_leak(links: list[FakeLink], done: list[FakeLink]):  # type: ignore[no-untyped-def]
    def check(tree: TaskTree, journal: Journal) -> None:
        if not links:
            return  # disrupted before the lifecycle began
        link = links.pop()
        done.append(link)
        # every participant the MH registered (again at each publish) was removed once
        assert set(link.registered) == set(link.removed), (link.registered, link.removed)
        assert len(link.removed) == len(set(link.removed)), link.removed

    return check


async def test_participant_lifecycle_survives_cancellation_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links: list[FakeLink] = []
    done: list[FakeLink] = []
    report = await cancel_at_every_checkpoint(
        _make_lifecycle(links), check=_no_media_leak(links, done)
    )
    assert report.runs > 20
    # the undisturbed run: registered at join and again at publish, removed once
    last = done[-1]
    assert len(last.registered) == 2 and last.removed == last.registered[:1]


async def test_participant_lifecycle_survives_a_kick_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def end_everything(tree: TaskTree, scope: trio.CancelScope) -> None:
        for meeting in list(tree.meetings.values()):
            meeting.end()
        scope.cancel()

    links: list[FakeLink] = []
    report = await cancel_at_every_checkpoint(
        _make_lifecycle(links), disrupt=end_everything, check=_no_media_leak(links, [])
    )
    assert report.runs > 20
