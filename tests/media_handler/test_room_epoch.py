"""A room of an older incarnation of its meeting (an MC that is gone left it, its members in
their media grace) is replaced by the first registration of a newer one, so participants who
rejoined publish their streams again under the same stream ids; a registration of an older
incarnation than the room's is refused (docs/architecture.md §4.6)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.errors import Conflict
from darktower.media_handler import MediaHandler, MediaMetrics, Settings
from darktower.metrics import Registry
from darktower.nurseries import TaskTree
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._harness import audio

MIC = "0c4f4d55-64d4-4a0e-9d3b-6f0b7c1e2d33"


def _register(pid: str, epoch: int, *streams: str) -> mc_pb.RegisterParticipant:
    return mc_pb.RegisterParticipant(
        participant_id=pid, meeting_id="m", room_epoch=epoch, streams=[audio(s) for s in streams]
    )


async def test_a_newer_room_epoch_replaces_the_room_and_an_older_one_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        tree = TaskTree()
        await nursery.start(tree.run)
        handler = MediaHandler(tree, Settings(), MediaMetrics(Registry()))
        await handler.register_participant(_register("old", 1, MIC))
        old_room = handler.rooms["m"]  # type: ignore[index]
        # The same stream id, from the participant as it rejoined through another MC.
        reply = await handler.register_participant(_register("new", 2, MIC))
        assert reply.created
        room = handler.rooms["m"]  # type: ignore[index]
        assert room is not old_room and room.epoch == 2
        assert set(room.members) == {"new"}
        await old_room.scope.wait_closed()
        assert handler.rooms["m"] is room  # type: ignore[index]  # the old one's end kept it
        with pytest.raises(Conflict):
            await handler.register_participant(_register("late", 1))
        # The same epoch, or none said, joins the room as it is.
        await handler.register_participant(_register("other", 2))
        await handler.register_participant(_register("unsaid", 0))
        assert set(room.members) == {"new", "other", "unsaid"}
        nursery.cancel_scope.cancel()
