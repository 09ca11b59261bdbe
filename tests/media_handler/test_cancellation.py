"""The task tree's cancel-at-every-checkpoint harness over a publisher's and a subscriber's
lifecycle, at the service-object level (the MediaHandler with in-memory sessions: the
harness needs virtual time, which real QUIC does not run on)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
import trio.testing

from darktower.errors import DarkTowerError
from darktower.frames import FrameHeader, FrameType
from darktower.media_handler import MediaHandler, MediaMetrics, Settings
from darktower.metrics import Registry
from darktower.model import LeaveReason
from darktower.nurseries import TaskTree
from darktower.nurseries.testing import Journal, cancel_at_every_checkpoint
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import SessionEnd

from ._harness import video

CAM = "7f1d1c6e-9a55-4c86-b1a4-0d7f6c1f3a10"


def _frame(frame_type: FrameType, seq: int, payload: bytes) -> bytes:
    header = FrameHeader(
        frame_type=frame_type,
        stream_id=uuid.UUID(CAM),
        timestamp_us=seq,
        sequence=seq,
        payload_length=len(payload),
    )
    return header.encode() + payload


class FakeStream:
    """An in-memory WebTransport stream: what the peer sends is fed with ``feed``."""

    unacknowledged = 0  # what a send handed over is taken at once
    send_credit = 0  # no flow control: the credit never moves

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[bytes](16)
        self.sent: list[bytes] = []
        self.reset_code: int | None = None

    def feed(self, data: bytes) -> None:
        self._send.send_nowait(data)

    def end(self) -> None:
        self._send.close()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def send_all(self, data: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_code is not None:
            raise trio.ClosedResourceError("reset")
        self.sent.append(bytes(data))

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    def reset(self, code: int = 0) -> None:
        self.reset_code = code

    def stop_sending(self, code: int = 0) -> None:
        self._recv.close()

    def when_sent(self, callback: Any) -> bool:
        return False  # no socket: the residence is not measured

    def try_send(self, data: Any) -> bool:
        return False  # every write goes through send_all, as this fake behaves


class FakeSession:
    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[FakeStream](16)
        self.uni: list[FakeStream] = []
        self.end: SessionEnd | None = None  # why it ended, as the transport says
        self.close_code: int | None = None

    async def accept_stream(self) -> FakeStream:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("session closed") from None

    async def open_unidirectional_stream(self) -> FakeStream:
        await trio.lowlevel.checkpoint()
        if self.close_code is not None:
            raise trio.ClosedResourceError("session closed")
        stream = FakeStream()
        self.uni.append(stream)
        return stream

    def close_nowait(self, code: int = 0, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        self._recv.close()


def _expected(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_expected(e) for e in exc.exceptions)
    return isinstance(
        exc, (DarkTowerError, trio.BrokenResourceError, trio.ClosedResourceError, KeyError)
    )


def _cancel_everything(tree: TaskTree, scope: trio.CancelScope) -> None:
    scope.cancel(reason="harness")


def _end_rooms(tree: TaskTree, scope: trio.CancelScope) -> None:
    for meeting in list(tree.meetings.values()):
        meeting.end()


def _kick_everyone(tree: TaskTree, scope: trio.CancelScope) -> None:
    for meeting in list(tree.meetings.values()):
        for participant in list(meeting.participants.values()):
            participant.leave(LeaveReason.KICKED)


@pytest.mark.parametrize("disrupt", [_cancel_everything, _end_rooms, _kick_everyone])
async def test_publisher_and_subscriber_lifecycle_survives_cancellation_anywhere(
    autojump_clock: trio.testing.MockClock, disrupt: Any
) -> None:
    handlers: list[MediaHandler] = []
    undisturbed: list[list[bytes]] = []
    state = {"disrupted": False}

    def flagged(tree: TaskTree, scope: trio.CancelScope) -> None:
        state["disrupted"] = True
        disrupt(tree, scope)

    async def lifecycle(tree: TaskTree) -> None:
        state["disrupted"] = False
        try:
            await run(tree)
        except BaseException as exc:
            # Kicked or ended from outside, the MC's next calls fail in the ways they may.
            if state["disrupted"] and _expected(exc):
                return
            raise

    async def run(tree: TaskTree) -> None:
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        handlers.append(handler)
        await handler.register_participant(
            mc_pb.RegisterParticipant(participant_id="p", meeting_id="m", streams=[video(CAM)])
        )
        await handler.register_participant(
            mc_pb.RegisterParticipant(participant_id="s", meeting_id="m")
        )
        room = handler.rooms["m"]  # type: ignore[index]
        sessions = {"p": FakeSession(), "s": FakeSession()}
        async with trio.open_nursery() as nursery:
            for pid, session in sessions.items():
                nursery.start_soon(handler.handle_session, session, room.members[pid])  # type: ignore[index]
            await trio.testing.wait_all_tasks_blocked()
            await handler.route_media(
                mc_pb.RouteMediaCommand(
                    source_stream_id=CAM, destination_participant_ids=["s"], meeting_id="m"
                )
            )
            publish = FakeStream()
            sessions["p"]._send.send_nowait(publish)
            sent = [_frame(FrameType.VIDEO_KEY, 0, b"k"), _frame(FrameType.VIDEO_DELTA, 1, b"d")]
            for data in sent:
                publish.feed(data)
            publish.end()
            await trio.testing.wait_all_tasks_blocked()
            got = [d for s in sessions["s"].uni for d in s.sent]
            await handler.remove_participant(
                mc_pb.RemoveParticipantRequest(
                    meeting_id="m", participant_id="p", reason=LeaveReason.KICKED
                )
            )
            await handler.remove_participant(
                mc_pb.RemoveParticipantRequest(
                    meeting_id="m", participant_id="s", reason=LeaveReason.VOLUNTARY
                )
            )
            assert sessions["p"].close_code is not None and sessions["s"].close_code is not None
            if not state["disrupted"]:
                undisturbed.append(got)
                assert b"".join(got) == b"".join(sent)

    def check(tree: TaskTree, journal: Journal) -> None:
        handler = handlers[-1] if handlers else None
        if handler is not None:
            assert handler.rooms == {}, handler.rooms
            assert handler.load() == (0, 0, 0)

    report = await cancel_at_every_checkpoint(lifecycle, check=check, disrupt=flagged)
    assert report.runs > 20
    assert undisturbed  # the last, undisturbed run delivered both frames unchanged
