"""Kick and end meeting: from the host's session and from the GC; host-only."""

from __future__ import annotations

import pathlib

import pytest
import trio

from darktower.errors import Forbidden, NotFound
from darktower.model import MeetingId, ParticipantId, Role
from darktower.nurseries.testing import assert_registry_matches_tasks, live_task_paths
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport.rpc import call

from ._harness import next_event, open_stack, wait_ended


async def test_kick_proves_the_whole_consequence(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        tree = stack.running.controller.tree
        async with (
            stack.join("m", Role.HOST) as host,
            stack.join("m") as guest,
            stack.join("m") as other,
        ):
            victim = guest.participant_id
            assert any(victim in path for path in live_task_paths(tree))
            meeting = tree.meeting(MeetingId("m"))
            assert meeting is not None
            scope = meeting.participant(ParticipantId(victim))
            assert scope is not None
            # a guest may not kick
            with pytest.raises(Forbidden):
                await other.request(
                    sig.ClientMessage(kick=sig.KickParticipant(participant_id=victim))
                )
            with pytest.raises(NotFound):
                await host.request(
                    sig.ClientMessage(kick=sig.KickParticipant(participant_id="nobody"))
                )
            await host.request(sig.ClientMessage(kick=sig.KickParticipant(participant_id=victim)))
            ended = await wait_ended(guest)
            assert ended.reason == common_pb2.KICKED and ended.message
            for client in (host, other):
                left = await next_event(client, "participant_left")
                assert left.participant_left.participant_id == victim
                assert left.participant_left.reason == common_pb2.KICKED
            await stack.mh.wait_for(
                lambda: any(r.participant_id == victim for r in stack.mh.removed)
            )
            removed = next(r for r in stack.mh.removed if r.participant_id == victim)
            assert removed.reason == common_pb2.KICKED and removed.meeting_id == "m"
            with trio.fail_after(10):
                await scope.wait_closed()
            assert not any(victim in path for path in live_task_paths(tree))
            assert victim not in str(tree.snapshot())
            assert_registry_matches_tasks(tree)
            # the GC can kick too
            await call(
                stack.mc.KickParticipant,
                mtg_pb.KickParticipantRequest(
                    meeting_id="m", participant_id=other.participant_id, message="bye"
                ),
            )
            ended = await wait_ended(other)
            assert (ended.reason, ended.message) == (common_pb2.KICKED, "bye")


async def test_end_meeting_by_host_and_by_gc(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("a")
        await stack.assign("b")
        async with stack.join("a", Role.HOST) as host, stack.join("a") as guest:
            with pytest.raises(Forbidden):
                await guest.request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
            reply = await host.request(sig.ClientMessage(end_meeting=sig.EndMeeting()))
            assert reply.session_ended.reason == common_pb2.MEETING_ENDED  # the reply to the host
            for client in (host, guest):
                assert (await wait_ended(client)).reason == common_pb2.MEETING_ENDED
        meeting = stack.running.controller.tree.meeting(MeetingId("b"))
        assert meeting is not None
        async with stack.join("b") as one, stack.join("b") as two:
            result = await call(
                stack.mc.EndMeeting, mtg_pb.EndMeetingRequest(meeting_id="b", message="over")
            )
            assert result.participant_count == 2
            for client in (one, two):
                ended = await wait_ended(client)
                assert (ended.reason, ended.message) == (common_pb2.MEETING_ENDED, "over")
        with trio.fail_after(10):
            await meeting.wait_closed()
        assert not stack.running.controller.rooms
        with pytest.raises(NotFound):
            await call(stack.mc.EndMeeting, mtg_pb.EndMeetingRequest(meeting_id="b"))


async def test_drain_ends_sessions_with_meeting_ended(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as client:
            stack.running.controller.tree.drain(2.0)  # what serve() does on shutdown
            assert (await wait_ended(client)).reason == common_pb2.MEETING_ENDED
