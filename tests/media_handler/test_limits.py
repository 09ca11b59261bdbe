"""Room limits, registration expiry, the telemetry queue's bound."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.errors import CapacityExceeded
from darktower.media_handler import MediaMetrics, TelemetryHub
from darktower.metrics import Registry
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import SessionRefused

from ._harness import WAIT_S, audio, new_id, open_harness


async def test_participants_per_room_and_rooms_are_bounded() -> None:
    async with open_harness(max_participants_per_room=2, max_rooms=1) as h:
        meeting = new_id()
        await h.register(meeting, "a")
        await h.register(meeting, "b")
        with pytest.raises(CapacityExceeded):
            await h.register(meeting, "c")
        await h.register(meeting, "a")  # registering again is not a new participant
        with pytest.raises(CapacityExceeded):
            await h.register(new_id(), "x")


async def test_a_room_takes_the_largest_meeting_by_default() -> None:
    """The GC creates meetings of up to 1,000: the MH's default room takes as many."""
    async with open_harness() as h:
        meeting = new_id()
        with trio.fail_after(WAIT_S * 3):
            for i in range(1000):
                await h.register(meeting, f"p{i}")
        with pytest.raises(CapacityExceeded):
            await h.register(meeting, "one too many")


async def test_a_registration_never_connected_expires_and_its_room_ends() -> None:
    meeting = new_id()
    async with open_harness(registration_ttl_s=0.2) as h:
        url = await h.register(meeting, "late")
        room = h.handler.rooms[meeting]  # type: ignore[index]
        with trio.fail_after(WAIT_S):
            await room.scope.wait_closed()
        assert h.handler.rooms == {}
        with pytest.raises(SessionRefused) as info:
            async with h.client(url):
                pass
        assert info.value.status == 401


async def test_telemetry_queue_drops_oldest_and_never_blocks() -> None:
    metrics = MediaMetrics(Registry())
    hub = TelemetryHub(metrics, queue_size=3)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        listening = trio.Event()

        async def listen() -> None:
            async for event in hub.subscribe("m", ready=listening):
                got.append(event.telemetry.stream_id)

        nursery.start_soon(listen)
        await listening.wait()
        for i in range(5):  # the listener does not run in between: its queue overflows
            hub.publish(
                mc_pb.TelemetryEvent(
                    meeting_id="m", telemetry=mc_pb.MediaTelemetry(stream_id=str(i))
                )
            )
        hub.publish(mc_pb.TelemetryEvent(meeting_id="other"))  # another meeting: filtered
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["2", "3", "4"]
        assert metrics.telemetry_dropped.value() == 2
        nursery.cancel_scope.cancel()
    assert hub.listeners == 0


async def test_a_refused_first_registration_leaves_no_room() -> None:
    async with open_harness(max_streams_per_participant=1) as h:
        meeting = new_id()
        with pytest.raises(CapacityExceeded):
            await h.register(meeting, "a", [audio(new_id()), audio(new_id())])
        assert meeting not in h.handler.rooms
