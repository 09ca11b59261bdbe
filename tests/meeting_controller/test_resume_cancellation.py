"""The cancel-at-every-checkpoint harness over the reconnecting state (docs/protocol.md §13): a
participant joins with a witness, loses its connection (its session task is cancelled, as the
transport does when a connection goes), waits reconnecting, then resumes and leaves, or lets
the window pass. MeetingController level, memory streams, virtual time, a fake MH link."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from darktower.meeting_controller import MediaHandlers, MeetingController, SignalPort
from darktower.model import MeetingId, Role
from darktower.nurseries import EventKind, Level, TaskTree
from darktower.nurseries.testing import Journal, cancel_at_every_checkpoint
from darktower.protocol import MessageDecoder, encode_message
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from .test_cancellation import ISSUER, VERIFIER, FakeLink, _until

GRACE_S = 2.0


class _Client:
    """One signaling session on a memory stream, served by the controller in ``nursery``."""

    def __init__(self, ctl: MeetingController, nursery: trio.Nursery) -> None:
        self.stream, server = trio.testing.memory_stream_pair()
        self.decoder: MessageDecoder[sig.ServerMessage] = MessageDecoder(sig.ServerMessage)
        self.scope = trio.CancelScope()  # the transport's session task: cancelled = connection gone

        async def serve() -> None:
            with self.scope:
                await ctl.serve_session(SignalPort(server))

        nursery.start_soon(serve)

    async def send(self, message: sig.ClientMessage) -> None:
        await self.stream.send_all(encode_message(message))

    async def until(self, kind: str) -> sig.ServerMessage:
        return await _until(self.stream, self.decoder, kind)

    async def join(self, **join: str) -> sig.JoinResponse:
        await self.send(
            sig.ClientMessage(request_id=1, join=sig.JoinRequest(meeting_id="m", **join))
        )
        return (await self.until("join_response")).join_response


def _lifecycle(links: list[FakeLink], resume: bool) -> Callable[[TaskTree], Awaitable[None]]:
    async def lifecycle(tree: TaskTree) -> None:
        link = FakeLink()
        links.append(link)
        mhs = MediaHandlers(lambda event: None)
        await mhs.add(link)
        ctl = MeetingController(tree, mhs, verifier=VERIFIER, resume_grace_s=GRACE_S)
        await ctl.assign(MeetingId("m"), mtg_pb.MeetingConfig())
        now = time.time()
        async with trio.open_nursery() as nursery:
            witness = _Client(ctl, nursery)
            await witness.join(join_token=ISSUER.issue(MeetingId("m"), Role.HOST, now))
            subject = _Client(ctl, nursery)
            joined = await subject.join(join_token=ISSUER.issue(MeetingId("m"), Role.GUEST, now))
            await subject.send(
                sig.ClientMessage(request_id=2, publish=sig.PublishStream(stream_id="s"))
            )
            await subject.until("ack")
            subject.scope.cancel()  # the connection is lost
            updated = await witness.until("participant_updated")
            assert updated.participant_updated.connection == sig.RECONNECTING
            if resume:
                back = _Client(ctl, nursery)
                response = await back.join(resume_token=joined.resume_token)
                assert response.resumed and response.participant_id == joined.participant_id
                updated = await witness.until("participant_updated")
                assert updated.participant_updated.connection == sig.CONNECTED
                await back.send(sig.ClientMessage(request_id=3, leave=sig.LeaveRequest()))
                ended = await back.until("session_ended")
                assert ended.session_ended.reason == common_pb2.VOLUNTARY
                reason = common_pb2.VOLUNTARY
            else:
                reason = common_pb2.CONNECTION_LOST
            left = await witness.until("participant_left")
            assert left.participant_left.participant_id == joined.participant_id
            assert left.participant_left.reason == reason
            await witness.send(sig.ClientMessage(request_id=4, leave=sig.LeaveRequest()))
            await witness.until("session_ended")

    return lifecycle


def _no_media_leak(
    links: list[FakeLink], windows: list[str] | None = None
) -> Callable[[TaskTree, Journal], None]:
    def check(tree: TaskTree, journal: Journal) -> None:
        if windows is not None:
            windows.extend(
                e.path
                for e in journal.of(EventKind.STARTED, Level.STREAM)
                if e.path.endswith("/stream:reconnecting")
            )
        if not links:
            return  # disrupted before the lifecycle began
        link = links.pop()
        # every participant the MH registered (again at publish and resume) was removed once
        assert set(link.registered) == set(link.removed), (link.registered, link.removed)
        assert len(link.removed) == len(set(link.removed)), link.removed

    return check


async def test_resume_survives_cancellation_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links: list[FakeLink] = []
    windows: list[str] = []
    report = await cancel_at_every_checkpoint(
        _lifecycle(links, resume=True), check=_no_media_leak(links, windows)
    )
    assert report.runs > 50
    # the reconnecting window (a stream scope) was reached, and disrupted, in many runs
    assert len(windows) > 10


async def test_the_window_passing_survives_cancellation_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links: list[FakeLink] = []
    windows: list[str] = []
    report = await cancel_at_every_checkpoint(
        _lifecycle(links, resume=False), check=_no_media_leak(links, windows)
    )
    assert report.runs > 50
    assert len(windows) > 10


async def test_resume_survives_the_meetings_end_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def end_everything(tree: TaskTree, scope: trio.CancelScope) -> None:
        for meeting in list(tree.meetings.values()):
            meeting.end()
        scope.cancel()

    links: list[FakeLink] = []
    report = await cancel_at_every_checkpoint(
        _lifecycle(links, resume=True), disrupt=end_everything, check=_no_media_leak(links)
    )
    assert report.runs > 50
