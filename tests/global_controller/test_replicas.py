"""Two GC replicas on one PostgreSQL serve the same meetings (shared signing keys)."""

from __future__ import annotations

import pathlib

import pytest

from darktower.global_controller import keys
from darktower.global_controller.clients import add_client
from tests.global_controller._harness import (
    ManualClock,
    StandInMC,
    gc_settings,
    heartbeat,
    open_api,
    register_mc,
    running_gc,
    running_stand_in_mc,
)


@pytest.mark.postgres
async def test_two_replicas_share_meetings(tmp_path: pathlib.Path, postgres_dsn: str) -> None:
    shared = tmp_path / "keys"
    keys.load_or_create_signing_key(shared / "join.pem")
    keys.load_or_create_signing_key(shared / "access.pem")
    common = {
        "database": postgres_dsn,
        "join_key_file": str(shared / "join.pem"),
        "access_key_file": str(shared / "access.pem"),
    }
    a_settings = gc_settings(tmp_path / "a", **common)
    b_settings = gc_settings(tmp_path / "b", **common)
    client_id, secret = await add_client(a_settings, "alice")
    clock = ManualClock()
    mc = StandInMC()
    async with (
        running_stand_in_mc(mc) as endpoint,
        running_gc(a_settings, clock) as (a, _),
        running_gc(b_settings, clock) as (b, _),
    ):
        # the MC registers with replica A only (as behind a load balancer)
        await register_mc(a.grpc_port, "mc-1", endpoint)
        async with (
            open_api("h1", a.url, a.certificate_sha256) as api_a,
            open_api("h3", b.url, b.certificate_sha256) as api_b,
        ):
            token = await api_a.token(client_id, secret)
            created = await api_b.request(
                "POST", "/api/v1/meetings", token=token, json_body={"display_name": "shared"}
            )
            assert created.status == 201, created.body  # B placed it on A's MC
            meeting_id = created.json()["meeting_id"]
            assert [m.meeting_id for m in mc.assigned] == [meeting_id]
            # a heartbeat through B is seen through A
            await heartbeat(b.grpc_port, "mc-1", counts={meeting_id: 4})
            info = await api_a.request("GET", f"/api/v1/meetings/{meeting_id}")
            assert info.json()["participant_count"] == 4
            listed = await api_a.request("GET", "/api/v1/meetings", token=token)
            assert listed.json()["total"] == 1
            end = await api_a.request("DELETE", f"/api/v1/meetings/{meeting_id}", token=token)
            assert end.status == 204
            after = await api_b.request("GET", f"/api/v1/meetings/{meeting_id}")
            assert after.json()["status"] == "ended"
    assert mc.ended == [meeting_id]
