"""ControllerRegistry over real gRPC, heartbeat expiry on an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from darktower.errors import InvalidRequest, NotFound
from darktower.global_controller import refresh_gauges
from darktower.global_controller.registry import sweep_once
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import MC_AUDIENCE, load_public_key_pem, public_key_pem
from darktower.protocol.tokens import load_private_key_file as load_key
from darktower.transport.rpc import call
from tests.global_controller._harness import Api, Stack, heartbeat, mc_channel, register_mc


async def test_registration_returns_the_join_key_interval_and_audience(stack: Stack) -> None:
    reply = await register_mc(stack.running.grpc_port, "mc-9", "127.0.0.1:1")
    join_key = load_key(stack.settings.data_path / "join-key.pem")
    assert reply.join_token_public_key_pem == public_key_pem(join_key)
    load_public_key_pem(reply.join_token_public_key_pem)  # a valid Ed25519 public key
    assert reply.heartbeat_interval_ms == 5000
    assert reply.token_audience == MC_AUDIENCE
    # only the public half travels
    assert b"PRIVATE" not in reply.join_token_public_key_pem


async def test_bad_registration_and_unknown_heartbeat(stack: Stack) -> None:
    async with mc_channel(stack.running.grpc_port, "x") as channel:
        stub = ControllerRegistryStub(channel)
        with pytest.raises(InvalidRequest, match="endpoint"):
            await call(
                stub.RegisterMeetingController,
                reg_pb.RegisterMeetingController(controller_id="x"),
                deadline_s=5,
            )
        with pytest.raises(InvalidRequest, match="https://"):
            await call(
                stub.RegisterMeetingController,
                reg_pb.RegisterMeetingController(
                    controller_id="x", endpoint="h:1", signaling_url="wss://x"
                ),
                deadline_s=5,
            )
    with pytest.raises(NotFound):
        await heartbeat(stack.running.grpc_port, "never-registered")


async def test_silent_controller_loses_its_meetings_then_gets_them_back(
    h1: Api, stack: Stack
) -> None:
    gc = stack.running.controller
    token = await h1.token(stack.client_id, stack.client_secret)
    created = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
    )
    meeting_id = created.json()["meeting_id"]

    # within the timeout nothing expires
    stack.clock.advance(stack.settings.heartbeat_timeout_s - 1)
    assert await sweep_once(gc) == []
    stack.clock.advance(2)
    assert await sweep_once(gc) == ["mc-1"]
    assert await sweep_once(gc) == []  # reported once

    info = await h1.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert info.json()["status"] == "controller_lost"
    join = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
    assert join.status == 503 and "not responding" in join.json()["error"]["message"]
    refused = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "n"}
    )
    assert refused.status == 503
    await refresh_gauges(
        stack.running.metrics, gc.store, now=gc.now(), heartbeat_timeout_s=gc.heartbeat_timeout_s
    )
    text = (await h1.request("GET", "/metrics")).body.decode()
    assert 'darktower_gc_controllers{health="unhealthy"} 1' in text
    assert 'darktower_gc_meetings{status="controller_lost"} 1' in text

    # the MC comes back and still has the meeting
    await heartbeat(stack.running.grpc_port, "mc-1", counts={meeting_id: 2})
    info = await h1.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert info.json()["status"] == "active" and info.json()["participant_count"] == 2
    assert (await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")).status == 200


async def test_heartbeat_reports_ended_meetings_of_its_own_only(h1: Api, stack: Stack) -> None:
    token = await h1.token(stack.client_id, stack.client_secret)
    first = await h1.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "a"}
    )
    meeting_id = first.json()["meeting_id"]
    await register_mc(stack.running.grpc_port, "mc-other", "127.0.0.1:1")
    await heartbeat(stack.running.grpc_port, "mc-other", ended=(meeting_id, "unknown-id"))
    info = await h1.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert info.json()["status"] == "active"
    await heartbeat(stack.running.grpc_port, "mc-1", ended=(meeting_id,))
    info = await h1.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert info.json()["status"] == "ended"
    assert stack.mc.ended == []  # the MC told us; we do not tell it back
