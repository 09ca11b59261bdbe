"""What the GC asks of an MC over gRPC, on a real GC and a stand-in MC: an ``EndMeeting`` says
why (``reason``: the owner's ``ended``, the empty timeout's ``empty``; docs/protocol.md §6,
§18.5), and the owner's moderation waits for an MC slower than the other calls' deadline
(the MC's own moderation deadline, docs/protocol.md §18.2)."""

from __future__ import annotations

import pathlib

import trio

from darktower.global_controller._limits import (
    MC_MODERATION_DEADLINE_S,
    MODERATION_CALL_TIMEOUT_S,
)
from darktower.meeting_controller._limits import MODERATION_DEADLINE_S
from tests.global_controller._harness import gc_stack, heartbeat


def test_the_moderation_call_outlasts_the_mcs_deadline() -> None:
    assert MC_MODERATION_DEADLINE_S == MODERATION_DEADLINE_S  # the mirror is true
    assert MODERATION_CALL_TIMEOUT_S > MODERATION_DEADLINE_S


async def test_the_owners_moderation_waits_for_a_slow_mc(tmp_path: pathlib.Path) -> None:
    # Every other call to the MC is cut at 0.2 s; the MC takes 0.6 s to moderate.
    async with gc_stack(tmp_path / "data", mc_call_timeout_s=0.2) as stack, stack.api("h1") as api:
        token = await api.token(stack.client_id, stack.client_secret)
        created = await api.request(
            "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=token
        )
        meeting = created.json()["meeting_id"]
        stack.mc.moderate_delay_s = 0.6
        reply = await api.request(
            "POST",
            f"/api/v1/meetings/{meeting}/participants/p-1/moderate",
            json_body={"actions": ["mute_audio"]},
            token=token,
        )
        assert reply.status == 200, reply.body
        assert reply.json()["publication"]["audio_blocked"] is True


async def test_end_meeting_tells_the_mc_why(tmp_path: pathlib.Path) -> None:
    async with (
        gc_stack(
            tmp_path / "data",
            empty_meeting_timeout_s=600.0,
            heartbeat_interval_s=0.01,
            heartbeat_misses=10**7,
        ) as stack,
        stack.api("h1") as api,
    ):
        token = await api.token(stack.client_id, stack.client_secret)
        lonely, busy = [
            (
                await api.request(
                    "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=token
                )
            ).json()["meeting_id"]
            for _ in range(2)
        ]
        await heartbeat(stack.running.grpc_port, "mc-1", counts={lonely: 0, busy: 3})
        stack.clock.advance(610)
        await heartbeat(stack.running.grpc_port, "mc-1", counts={lonely: 0, busy: 3})
        with trio.fail_after(10):
            await stack.mc.ended_one.wait()
        end = await api.request("DELETE", f"/api/v1/meetings/{busy}", token=token)
        assert end.status == 204
        assert [(r.meeting_id, r.reason) for r in stack.mc.end_requests] == [
            (lonely, "empty"),
            (busy, "ended"),
        ]
        assert stack.mc.end_requests[0].message == "The meeting stayed empty."
