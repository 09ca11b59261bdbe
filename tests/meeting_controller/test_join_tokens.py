"""A kick sticks: one live session per join token (jti), a kicked token is refused until it
expires, and the name others see is the signed one (docs/protocol.md)."""

from __future__ import annotations

import pathlib

import pytest

from darktower.errors import Conflict, Forbidden
from darktower.meeting_controller import RoomState
from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport.rpc import call

from ._harness import next_event, open_stack, wait_ended


async def test_a_kicked_token_is_refused(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        token = stack.token("m")
        async with stack.join("m", Role.HOST) as host:
            async with stack.join("m", token=token) as guest:
                await host.request(
                    sig.ClientMessage(kick=sig.KickParticipant(participant_id=guest.participant_id))
                )
                assert (await wait_ended(guest)).reason == common_pb2.KICKED
            with pytest.raises(Forbidden):
                async with stack.join("m", token=token):
                    pass
            # a kick from the GC sticks too
            second = stack.token("m")
            async with stack.join("m", token=second) as guest:
                await call(
                    stack.mc.KickParticipant,
                    mtg_pb.KickParticipantRequest(
                        meeting_id="m", participant_id=guest.participant_id
                    ),
                )
                await wait_ended(guest)
            with pytest.raises(Forbidden):
                async with stack.join("m", token=second):
                    pass
            # the host's meeting goes on; a fresh token joins
            async with stack.join("m"):
                pass
            pong = await host.request(sig.ClientMessage(ping=sig.Ping(timestamp=1)))
            assert pong.pong.timestamp == 1


async def test_one_live_session_per_token(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        token = stack.token("m", Role.HOST)
        async with stack.join("m", token=token) as first:
            with pytest.raises(Conflict):
                async with stack.join("m", token=token):
                    pass
            pong = await first.request(sig.ClientMessage(ping=sig.Ping(timestamp=2)))
            assert pong.pong.timestamp == 2
            await first.leave()
        # once that session is over, the token joins again (until it expires)
        async with stack.join("m", token=token) as again:
            assert again.participant_id


async def test_the_name_others_see_is_the_signed_one(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host:
            token = stack.token("m", participant_name="Bob")
            async with stack.join("m", token=token, name="The Host"):
                joined = await next_event(host, "participant_joined")
                assert joined.participant_joined.participant.name == "Bob"
            async with stack.join("m", token=stack.token("m"), name="The Host"):
                joined = await next_event(host, "participant_joined")
                assert joined.participant_joined.participant.name == "guest"  # its role


def test_bans_expire_with_their_token() -> None:
    room = RoomState(MeetingId("m"), mtg_pb.MeetingConfig(), scope=None)  # type: ignore[arg-type]
    room.claim_token("a", now=0.0)
    room.release_token("a")
    room.ban_token("a", until=100.0, now=10.0)
    with pytest.raises(Forbidden):
        room.claim_token("a", now=99.0)
    room.claim_token("a", now=100.0)  # expired: the verifier refuses the token anyway
    room.ban_token("b", until=50.0, now=150.0)  # already expired: not kept
    assert room.banned_tokens == {}  # "a" swept at that ban
    with pytest.raises(Conflict):
        room.claim_token("a", now=100.0)
