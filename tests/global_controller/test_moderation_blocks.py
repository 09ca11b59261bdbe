"""A host's blocks stay with the blocked participant's join identity across a rejoin
(docs/protocol.md §18.2): a real GC, the test acting as its MC over gRPC (ReportEvents with
``participant_moderated``), the join tokens' ``pub`` claim read as an MC reads it."""

from __future__ import annotations

import pathlib
from datetime import timedelta
from typing import Any

from darktower.global_controller.store import (
    ControllerCapacity,
    NewMeeting,
    ReportedBlocks,
    SqlStore,
)
from darktower.model import ClientId, ControllerId, MeetingId
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import JoinClaims, JoinTokenVerifier, load_public_key_pem
from darktower.transport.rpc import call
from tests.global_controller._harness import Api, gc_stack, mc_channel, register_mc

from .conftest import FakeClock


async def _report(port: int, controller_id: str, events: list[reg_pb.MeetingEvent]) -> None:
    async with mc_channel(port, controller_id) as channel:
        await call(
            ControllerRegistryStub(channel).ReportEvents,
            reg_pb.MeetingEventBatch(controller_id=controller_id, events=events),
            deadline_s=10,
        )


def _moderated(meeting_id: str, n: int, token_id: str, **blocked: bool) -> reg_pb.MeetingEvent:
    return reg_pb.MeetingEvent(
        event_id=f"mod-{n}",
        meeting_id=meeting_id,
        participant_moderated=reg_pb.ParticipantModeratedEvent(
            participant_id=f"p-{n}", token_id=token_id, **blocked
        ),
    )


async def test_a_hosts_blocks_hold_across_a_rejoin(tmp_path: pathlib.Path) -> None:
    async with gc_stack(tmp_path / "data") as stack, stack.api("h1") as api:
        reg = await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
        verifier = JoinTokenVerifier(
            load_public_key_pem(reg.join_token_public_key_pem), audience=reg.token_audience
        )
        token = await api.token(stack.client_id, stack.client_secret)
        created = await api.request(
            "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=token
        )
        meeting = created.json()["meeting_id"]
        port = stack.running.grpc_port

        async def join(api: Api, body: Any = None, access: str | None = None) -> JoinClaims:
            reply = await api.request(
                "POST", f"/api/v1/meetings/{meeting}/join", json_body=body, token=access
            )
            assert reply.status == 200, reply.body
            return verifier.verify(
                reply.json()["join_token"], meeting_id=MeetingId(meeting), now=stack.clock()
            )

        guest = await join(api)  # anonymous: its identity is its address
        assert guest.may_publish is None
        await _report(port, "mc-1", [_moderated(meeting, 1, guest.token_id, audio_blocked=True)])
        again = await join(api)
        assert again.may_publish == {"video", "screen"}  # all it would get, but audio
        # The owner's grant, minus the blocks of the identity it is minted for.
        bob = {"participant_name": "Bob", "role": "guest", "may_publish": ["audio", "video"]}
        minted = await join(api, bob, token)
        assert minted.may_publish == {"audio", "video"}
        await _report(
            port,
            "mc-1",
            [_moderated(meeting, 2, minted.token_id, audio_blocked=True, screen_blocked=True)],
        )
        assert (await join(api, bob, token)).may_publish == {"video"}
        # Another MC cannot block (nor allow) anyone in a meeting it does not hold.
        await register_mc(port, "mc-2", stack.mc_endpoint)
        await _report(port, "mc-2", [_moderated(meeting, 3, again.token_id)])
        assert (await join(api)).may_publish == {"video", "screen"}
        # Allowed again (nothing blocked): the next token grants everything.
        await _report(port, "mc-1", [_moderated(meeting, 4, again.token_id)])
        assert (await join(api)).may_publish is None
        # The owner as host is never blocked (its token is no identity's).
        host = await join(api, None, token)
        await _report(port, "mc-1", [_moderated(meeting, 5, host.token_id, video_blocked=True)])
        assert (await join(api, None, token)).may_publish is None
        # None of these is a webhook event, nor counted as a malformed one.
        assert stack.running.controller.webhooks.skipped == 0


async def test_the_store_keeps_blocks_by_identity(store: SqlStore, clock: FakeClock) -> None:
    mc1, mc2 = ControllerId("mc-1"), ControllerId("mc-2")
    for mc in (mc1, mc2):
        await store.register_controller(mc, "eu", str(mc), ControllerCapacity(10, 0, 100, 0))
    meeting = await store.create_meeting(NewMeeting("m", 10, ClientId("c"), controller_id=mc1))
    mid, later = meeting.meeting_id, clock.now + timedelta(hours=1)
    guest = "addr:192.0.2.7"
    assert await store.record_join(mid, "jti-1", guest, later) == frozenset()
    audio = ReportedBlocks(mid, "jti-1", frozenset({"audio"}))
    assert await store.record_blocks(mc2, [audio]) == 0  # not mc-2's meeting
    assert await store.record_blocks(mc1, [ReportedBlocks(mid, "jti-x", audio.kinds)]) == 0
    assert await store.record_blocks(mc1, [audio]) == 1
    assert await store.record_join(mid, "jti-2", guest, later) == {"audio"}
    assert await store.record_join(mid, "jti-3", "addr:192.0.2.8", later) == frozenset()
    both = ReportedBlocks(mid, "jti-2", frozenset({"video", "screen"}))
    assert await store.record_blocks(mc1, [both]) == 1  # by the identity, whichever token
    assert await store.record_join(mid, "jti-4", guest, later) == {"video", "screen"}
    assert await store.record_blocks(mc1, [ReportedBlocks(mid, "jti-1", frozenset())]) == 1
    assert await store.record_join(mid, "jti-5", guest, later) == frozenset()
    # A block long after the blocked one's token expired: its record outlives it while the
    # meeting goes on.
    clock.advance(2 * 3600)
    await store.purge_expired()
    assert await store.record_blocks(mc1, [audio]) == 1
    assert await store.record_join(mid, "jti-6", guest, clock.now + timedelta(hours=1)) == {"audio"}
    await store.end_meeting(mid)
    await store.purge_expired()  # an ended meeting's blocks go
    assert await store.record_join(mid, "jti-7", guest, later) == frozenset()
