"""Every endpoint of the GC API, over HTTP/1.1 and HTTP/3, against a real stack."""

from __future__ import annotations

import base64
import pathlib
import uuid

import pytest

from darktower.model import MeetingId, Role
from darktower.protocol.tokens import JoinTokenVerifier, load_public_key_pem
from tests.global_controller._harness import Api, Stack, gc_stack, heartbeat, register_mc

CONTRACT_CREATE_FIELDS = {
    "meeting_id",
    "meeting_url",
    "join_token",
    "meeting_controller_url",
    "created_at",
}


async def _walk_every_endpoint(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)

    # create: placed on mc-1, which heard AssignMeeting before the 201
    created = await api.request(
        "POST",
        "/api/v1/meetings",
        token=token,
        json_body={
            "display_name": "Team Standup",
            "max_participants": 7,
            "settings": {"enable_e2e_encryption": False, "recording_enabled": True},
        },
    )
    assert created.status == 201, created.body
    body = created.json()
    assert set(body) == CONTRACT_CREATE_FIELDS
    meeting_id = body["meeting_id"]
    uuid.UUID(meeting_id)
    assert body["meeting_url"] == f"{stack.url}/m/{meeting_id}"
    assert body["meeting_controller_url"] == "https://127.0.0.1:4433/v1/signal?mc=mc-1"
    assert body["created_at"].endswith("Z")
    [assigned] = stack.mc.assigned
    assert assigned.meeting_id == meeting_id
    assert assigned.config.display_name == "Team Standup"
    assert assigned.config.max_participants == 7
    assert not assigned.config.enable_e2e_encryption and assigned.config.recording_enabled

    # the host token verifies with the key MCs receive at registration
    reg = await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
    verifier = JoinTokenVerifier(
        load_public_key_pem(reg.join_token_public_key_pem), audience=reg.token_audience
    )
    claims = verifier.verify(
        body["join_token"], meeting_id=MeetingId(meeting_id), now=stack.clock()
    )
    assert claims.role is Role.HOST

    # get, with the participant count from the MC's heartbeat
    await heartbeat(stack.running.grpc_port, "mc-1", counts={meeting_id: 3})
    info = await api.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert info.status == 200
    assert info.json() == {
        "meeting_id": meeting_id,
        "display_name": "Team Standup",
        "participant_count": 3,
        "max_participants": 7,
        "created_at": body["created_at"],
        "status": "active",
        "meeting_controller_region": "local",
        "meeting_controller_url": "https://127.0.0.1:4433/v1/signal?mc=mc-1",
    }

    # list with total, and the active filter
    listed = await api.request("GET", "/api/v1/meetings?active=true", token=token)
    assert listed.status == 200
    assert listed.json()["total"] == 1
    [item] = listed.json()["meetings"]
    assert item["meeting_id"] == meeting_id and item["participant_count"] == 3
    mine = await api.request("GET", f"/api/v1/meetings?user_id={stack.client_id}", token=token)
    assert mine.json()["total"] == 1

    # guest join token without an access token; the owner's join gives a host token
    join = await api.request(
        "POST", f"/api/v1/meetings/{meeting_id}/join", json_body={"participant_name": "Bob"}
    )
    assert join.status == 200, join.body
    guest = verifier.verify(
        join.json()["join_token"], meeting_id=MeetingId(meeting_id), now=stack.clock()
    )
    assert guest.role is Role.GUEST and guest.participant_name == "Bob"
    assert join.json()["meeting_controller_url"] == body["meeting_controller_url"]
    host_join = await api.request("POST", f"/api/v1/meetings/{meeting_id}/join", token=token)
    assert host_join.json()["role"] == "host"

    # kick (owner), then end (owner): the MC is told each time
    kick = await api.request(
        "DELETE", f"/api/v1/meetings/{meeting_id}/participants/p-1", token=token
    )
    assert kick.status == 204
    assert stack.mc.kicked == [(meeting_id, "p-1")]
    end = await api.request("DELETE", f"/api/v1/meetings/{meeting_id}", token=token)
    assert end.status == 204
    assert stack.mc.ended == [meeting_id]
    after = await api.request("GET", f"/api/v1/meetings/{meeting_id}")
    assert after.json()["status"] == "ended"
    assert (await api.request("GET", "/api/v1/meetings?active=true", token=token)).json()[
        "total"
    ] == 0
    assert (await api.request("GET", "/api/v1/meetings?active=false", token=token)).json()[
        "total"
    ] == 1
    # ending again is idempotent and does not bother the MC
    again = await api.request("DELETE", f"/api/v1/meetings/{meeting_id}", token=token)
    assert again.status == 204 and stack.mc.ended == [meeting_id]
    # the meeting still exists, but its state refuses joins and kicks: 409 CONFLICT
    gone = await api.request("POST", f"/api/v1/meetings/{meeting_id}/join")
    assert gone.status == 409 and gone.error_code == "CONFLICT"
    assert "has ended" in gone.json()["error"]["message"]
    late_kick = await api.request(
        "DELETE", f"/api/v1/meetings/{meeting_id}/participants/p-1", token=token
    )
    assert late_kick.status == 409 and late_kick.error_code == "CONFLICT"
    assert stack.mc.kicked == [(meeting_id, "p-1")]  # the MC was not bothered


async def test_every_endpoint(api: Api, stack: Stack) -> None:
    await _walk_every_endpoint(api, stack)


async def test_every_endpoint_over_http2(stack: Stack) -> None:
    async with stack.api("h2") as api:
        await _walk_every_endpoint(api, stack)


async def test_operations_endpoints(api: Api, stack: Stack) -> None:
    health = await api.request("GET", "/healthz")
    assert health.status == 200 and health.json() == {"status": "alive"}
    ready = await api.request("GET", "/readyz")
    assert ready.status == 200 and ready.json() == {"status": "ready"}
    cert = await api.request("GET", "/api/v1/dev/certificate")
    assert cert.status == 200
    assert bytes.fromhex(cert.json()["sha256_hex"]) == stack.running.certificate_sha256
    assert base64.b64decode(cert.json()["sha256_base64"]) == stack.running.certificate_sha256
    assert cert.json()["generated"] is True
    metrics = await api.request("GET", "/metrics")
    assert metrics.status == 200
    text = metrics.body.decode()
    assert (
        'darktower_gc_http_requests_total{route="/api/v1/dev/certificate",method="GET",'
        'status="200"} 1' in text
    )
    assert "darktower_gc_http_request_seconds_bucket" in text
    assert "darktower_gc_controllers" in text


async def test_alt_svc_advertises_http3(h1: Api, stack: Stack) -> None:
    reply = await h1.request("GET", "/healthz")
    assert f'h3=":{stack.running.port}"' in reply.headers["alt-svc"]


@pytest.mark.postgres
async def test_every_endpoint_on_postgresql(tmp_path: pathlib.Path, postgres_dsn: str) -> None:
    async with gc_stack(tmp_path / "data", database=postgres_dsn) as stack:
        async with stack.api("h1") as api:
            await _walk_every_endpoint(api, stack)
