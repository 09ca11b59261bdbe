"""Quotas at the GC: a per-client cap on active meetings (429 RATE_LIMITED: a quota that frees
when one of the client's meetings ends), and meetings nobody is in end after a configurable
time, with the reason reported (``end_reason: empty``)."""

from __future__ import annotations

import pathlib

import trio

from tests.global_controller._harness import gc_stack, heartbeat


async def test_active_meetings_per_client_are_capped(tmp_path: pathlib.Path) -> None:
    async with (
        gc_stack(tmp_path / "data", max_active_meetings_per_client=2) as stack,
        stack.api("h1") as api,
    ):
        token = await api.token(stack.client_id, stack.client_secret)
        body = {"display_name": "m"}
        ids = []
        for _ in range(2):
            reply = await api.request("POST", "/api/v1/meetings", json_body=body, token=token)
            assert reply.status == 201
            ids.append(reply.json()["meeting_id"])
        refused = await api.request("POST", "/api/v1/meetings", json_body=body, token=token)
        assert (refused.status, refused.error_code) == (429, "RATE_LIMITED")
        details = refused.json()["error"]["details"]
        assert details["max_active_meetings"] == "2" and details["active_meetings"] == "2"
        assert "end one first" in refused.json()["error"]["message"]
        assert len(stack.mc.assigned) == 2  # the refused one never reached a controller
        await api.request("DELETE", f"/api/v1/meetings/{ids[0]}", token=token)
        reply = await api.request("POST", "/api/v1/meetings", json_body=body, token=token)
        assert reply.status == 201


async def test_meetings_that_stay_empty_end_with_a_reason(tmp_path: pathlib.Path) -> None:
    async with (
        # Housekeeping (controller expiry, then empty meetings) every 10 ms of real time; the
        # meetings' age is the GC's manual clock. Controllers never expire here.
        gc_stack(
            tmp_path / "data",
            empty_meeting_timeout_s=600.0,
            heartbeat_interval_s=0.01,
            heartbeat_misses=10**7,
        ) as stack,
        stack.api("h1") as api,
    ):
        token = await api.token(stack.client_id, stack.client_secret)
        body = {"display_name": "m"}
        created = [
            (await api.request("POST", "/api/v1/meetings", json_body=body, token=token)).json()[
                "meeting_id"
            ]
            for _ in range(3)
        ]
        lonely, busy, joined_late = created
        await heartbeat(stack.running.grpc_port, "mc-1", counts={lonely: 0, busy: 3})
        stack.clock.advance(590)
        # A join token issued now: someone is on the way in.
        assert (await api.request("POST", f"/api/v1/meetings/{joined_late}/join")).status == 200
        stack.clock.advance(20)
        await heartbeat(stack.running.grpc_port, "mc-1", counts={lonely: 0, busy: 3})
        with trio.fail_after(10):
            await stack.mc.ended_one.wait()
        info = (await api.request("GET", f"/api/v1/meetings/{lonely}")).json()
        assert (info["status"], info["end_reason"]) == ("ended", "empty")
        assert stack.mc.ended == [lonely]  # its controller was told
        for alive in (busy, joined_late):
            info = (await api.request("GET", f"/api/v1/meetings/{alive}")).json()
            assert info["status"] == "active" and "end_reason" not in info
        reply = await api.request("POST", f"/api/v1/meetings/{lonely}/join")
        assert (reply.status, reply.error_code) == (409, "CONFLICT")
