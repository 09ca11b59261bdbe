"""Why a participant's media connection ended is read from the transport's typed
``WebTransportSession.end`` (docs/architecture.md §4.3), never from messages or private
attributes: a close by the peer is VOLUNTARY, any other end CONNECTION_LOST. The MH says which
in the close code it sends and in its telemetry to the MC."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.media_handler import MediaHandler, MediaMetrics, Settings
from darktower.metrics import Registry
from darktower.model import LeaveReason
from darktower.nurseries import TaskTree
from darktower.protocol import close_code_for
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import (
    ClosedByPeer,
    ClosedLocally,
    ConnectionLost,
    IdleTimeout,
    SessionEnd,
)


class EndingSession:
    """A media session that publishes nothing and ends as ``end`` says, once told to. It has
    only the public fields the MH may read (no ``peer_close_code``)."""

    def __init__(self, end: SessionEnd | None) -> None:
        self._end = end
        self.end: SessionEnd | None = None
        self.ended = trio.Event()
        self.close_code: int | None = None

    def finish(self) -> None:
        self.end = self._end
        self.ended.set()

    async def accept_stream(self) -> object:
        await self.ended.wait()
        raise trio.ClosedResourceError("session ended")

    async def open_unidirectional_stream(self) -> object:
        raise AssertionError("nothing is routed in this test")

    def close_nowait(self, code: int = 0, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        self.ended.set()


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (ClosedByPeer(0, ""), LeaveReason.VOLUNTARY),
        (ClosedByPeer(7, "bye"), LeaveReason.VOLUNTARY),
        (ConnectionLost(0, "", by_peer=False), LeaveReason.CONNECTION_LOST),
        # The client closed its QUIC connection cleanly before its session capsule arrived.
        (ConnectionLost(0, "", by_peer=True), LeaveReason.VOLUNTARY),
        # A browser's QUIC stack gave up (its idle timeout): closed with NO_ERROR all the same.
        (
            ConnectionLost(0, "25:No recent network activity", by_peer=True),
            LeaveReason.CONNECTION_LOST,
        ),
        (ConnectionLost(0x0A, "protocol violation", by_peer=True), LeaveReason.CONNECTION_LOST),
        (IdleTimeout(), LeaveReason.CONNECTION_LOST),
        (ClosedLocally(0, ""), LeaveReason.CONNECTION_LOST),
        (None, LeaveReason.CONNECTION_LOST),
    ],
)
async def test_the_leave_reason_comes_from_the_sessions_typed_end(
    autojump_clock: trio.testing.MockClock, end: SessionEnd | None, expected: LeaveReason
) -> None:
    async with trio.open_nursery() as nursery:
        tree = TaskTree()
        await nursery.start(tree.run)
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        await handler.register_participant(
            mc_pb.RegisterParticipant(participant_id="p", meeting_id="m")
        )
        member = handler.rooms["m"].members["p"]  # type: ignore[index]
        session = EndingSession(end)
        events: list[mc_pb.TelemetryEvent] = []
        listening = trio.Event()

        async def listen() -> None:
            async for event in handler.telemetry_hub.subscribe("m", ready=listening):
                events.append(event)

        nursery.start_soon(listen)
        await listening.wait()
        nursery.start_soon(handler.handle_session, session, member)
        await trio.testing.wait_all_tasks_blocked()
        assert member.connected
        session.finish()
        await trio.testing.wait_all_tasks_blocked()

        # CONNECTION_LOST is closed without a reason (the client asks its MC for media again).
        code = 0 if expected is LeaveReason.CONNECTION_LOST else close_code_for(expected)
        assert session.close_code == code
        assert [e.participant_disconnected.participant_id for e in events] == ["p"]
        # Kept for the media grace, for a new connection to re-attach it; then forgotten.
        assert handler.rooms["m"].members["p"] is member  # type: ignore[index]
        assert not member.connected and member.lost_at == trio.current_time()
        await trio.sleep(Settings().media_grace_s)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.rooms == {}
        nursery.cancel_scope.cancel()
