"""A caller's word that its MC does not answer (``unreachable_controller``, docs/protocol.md
§14): the GC probes that MC over its mutual-TLS gRPC and, only when it does not answer, marks it
lost at once, so the join moves the meeting; an MC that answers keeps it. Real GC, real gRPC
with the test cluster's certificates, stand-in MCs, SQLite. The GC's clock never moves here:
its heartbeat timeout (15 s) never passes, so any loss is the probe's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from darktower.global_controller import GlobalController, schemas
from darktower.global_controller.registry import sweep_once
from darktower.global_controller.store import HealthStatus, MeetingStatus, NewMeeting
from darktower.model import ClientId, ControllerId, MeetingId
from darktower.protocol.pb.v1 import meeting_control_pb2 as mc_pb
from tests.global_controller._harness import (
    Api,
    Stack,
    StandInMC,
    heartbeat,
    register_mc,
    running_stand_in_mc,
)
from tests.global_controller.test_failover import url_of

MC2 = ControllerId("mc-2")


class HungMC(StandInMC):
    """An MC whose process hangs: its server accepts calls and never answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.called = trio.Event()
        self.release = trio.Event()

    async def AssignMeeting(self, request: mc_pb.AssignMeeting) -> mc_pb.AssignMeetingResponse:
        self.calls += 1
        self.called.set()
        await self.release.wait()
        return mc_pb.AssignMeetingResponse()


async def meeting_on(gc: GlobalController, controller_id: ControllerId) -> MeetingId:
    new = NewMeeting("standup", 10, ClientId("owner"), controller_id=controller_id)
    return (await gc.store.create_meeting(new)).meeting_id


@asynccontextmanager
async def dead_mc2(stack: Stack) -> AsyncIterator[MeetingId]:
    """mc-2 registered (and heard from) with a meeting on it, then its server stopped."""
    async with running_stand_in_mc(StandInMC(), "mc-2") as endpoint:
        await register_mc(stack.running.grpc_port, "mc-2", endpoint)
        meeting_id = await meeting_on(stack.running.controller, MC2)
    yield meeting_id


async def join(gc: GlobalController, meeting_id: MeetingId, hint: str = "") -> str:
    joined = await gc.join_meeting(
        meeting_id, schemas.JoinMeeting(unreachable_controller=hint), None
    )
    url: str = joined["meeting_controller_url"]
    return url


async def test_a_hinted_join_moves_a_meeting_off_a_dead_mc_at_once(h1: Api, stack: Stack) -> None:
    gc = stack.running.controller
    async with dead_mc2(stack) as meeting_id:
        before = stack.clock.now
        joined = await h1.request(
            "POST",
            f"/api/v1/meetings/{meeting_id}/join",
            json_body={"participant_name": "ann", "unreachable_controller": url_of("mc-2")},
        )
        assert joined.status == 200, joined.body
        assert joined.json()["meeting_controller_url"] == url_of("mc-1")
        assert [m.meeting_id for m in stack.mc.assigned] == [meeting_id]
        # lost now, as its heartbeat timeout would have made it: not by the sweep
        assert stack.clock.now == before
        assert (await gc.store.get_controller(MC2)).health is HealthStatus.UNHEALTHY
        assert await sweep_once(gc) == []
        info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
        assert (info["status"], info["meeting_controller_url"]) == ("active", url_of("mc-1"))


async def test_a_lookup_naming_a_dead_mc_reports_it_lost_and_moves_nothing(
    api: Api, stack: Stack
) -> None:
    gc = stack.running.controller
    async with dead_mc2(stack) as meeting_id:
        path = f"/api/v1/meetings/{meeting_id}"
        plain = (await api.request("GET", path)).json()
        assert plain["status"] == "active"  # a lookup without the hint probes nothing
        hinted = await api.request("GET", f"{path}?unreachable_controller=mc-2")  # the id
        assert hinted.status == 200, hinted.body
        assert hinted.json()["status"] == "controller_lost"
        assert hinted.json()["meeting_controller_url"] == url_of("mc-2")  # not moved
        assert stack.mc.assigned == []
        # the next join, with or without the hint, moves it
        assert await join(gc, meeting_id) == url_of("mc-1")


async def test_a_hinted_join_of_a_live_mc_changes_nothing(h1: Api, stack: Stack) -> None:
    gc = stack.running.controller
    created = await h1.request(
        "POST",
        "/api/v1/meetings",
        token=await h1.token(stack.client_id, stack.client_secret),
        json_body={"display_name": "standup"},
    )
    meeting_id = MeetingId(created.json()["meeting_id"])
    assert len(stack.mc.assigned) == 1
    other = StandInMC()
    async with running_stand_in_mc(other, "mc-2") as endpoint:
        await register_mc(stack.running.grpc_port, "mc-2", endpoint)
        assert await join(gc, meeting_id, url_of("mc-1")) == url_of("mc-1")
        # probed with the meeting itself (the MC holds it: nothing happens there)
        assert [m.meeting_id for m in stack.mc.assigned] == [meeting_id, meeting_id]
        assert stack.mc.assigned[1].config.display_name == "standup"
        record = await gc.store.get_meeting(meeting_id)
        assert (record.status, record.controller_id) == (MeetingStatus.ACTIVE, "mc-1")
        assert (await gc.store.get_controller(ControllerId("mc-1"))).health is (
            HealthStatus.HEALTHY
        )
        # a hint naming another MC than the meeting's probes nothing
        assert await join(gc, meeting_id, url_of("mc-2")) == url_of("mc-1")
        assert await join(gc, meeting_id, "https://elsewhere.example/v1/signal") == url_of("mc-1")
        assert len(stack.mc.assigned) == 2 and other.assigned == []
        # the API says the same over HTTP
        joined = await h1.request(
            "POST",
            f"/api/v1/meetings/{meeting_id}/join",
            json_body={"unreachable_controller": url_of("mc-1")},
        )
        assert joined.json()["meeting_controller_url"] == url_of("mc-1")


async def test_many_hinted_joins_at_once_cost_one_probe(stack: Stack) -> None:
    gc = stack.running.controller
    meeting_id = await meeting_on(gc, ControllerId("mc-1"))
    stack.mc.assigned.clear()
    urls: list[str] = []

    async def hinted() -> None:
        urls.append(await join(gc, meeting_id, url_of("mc-1")))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(hinted)
    assert urls == [url_of("mc-1")] * 20
    assert len(stack.mc.assigned) == 1  # one probe, its answer shared


async def test_a_hung_mc_is_lost_after_the_probe_deadline_once_for_all_joins(
    stack: Stack,
) -> None:
    gc = stack.running.controller
    hung = HungMC()
    try:
        async with running_stand_in_mc(hung, "mc-2") as endpoint:
            await register_mc(stack.running.grpc_port, "mc-2", endpoint)
            meeting_id = await meeting_on(gc, MC2)
            urls: list[str] = []

            async def hinted() -> None:
                urls.append(await join(gc, meeting_id, url_of("mc-2")))

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(hinted)
            # one probe, given up after its deadline (1 s), and the meeting moved once
            assert hung.calls == 1
            assert 1.0 <= trio.current_time() - started < 5.0
            assert urls == [url_of("mc-1")] * 10
            assert [m.meeting_id for m in stack.mc.assigned] == [meeting_id]
            hung.release.set()
    finally:
        hung.release.set()


async def test_an_mc_heard_from_during_the_probe_is_not_lost(stack: Stack) -> None:
    gc = stack.running.controller
    hung = HungMC()
    try:
        async with running_stand_in_mc(hung, "mc-2") as endpoint:
            await register_mc(stack.running.grpc_port, "mc-2", endpoint)
            meeting_id = await meeting_on(gc, MC2)
            stack.clock.advance(1)  # its registration is a second old when the probe begins
            async with trio.open_nursery() as nursery:
                nursery.start_soon(join, gc, meeting_id, url_of("mc-2"))
                await hung.called.wait()  # the probe has reached the MC
                stack.clock.advance(0.5)
                await heartbeat(stack.running.grpc_port, "mc-2")  # it is back meanwhile
            record = await gc.store.get_meeting(meeting_id)
            assert (record.status, record.controller_id) == (MeetingStatus.ACTIVE, MC2)
            assert (await gc.store.get_controller(MC2)).health is HealthStatus.HEALTHY
            hung.release.set()
    finally:
        hung.release.set()


async def test_the_hint_is_checked_like_any_field(h1: Api, stack: Stack) -> None:
    meeting_id = await meeting_on(stack.running.controller, ControllerId("mc-1"))
    path = f"/api/v1/meetings/{meeting_id}"
    for body in (
        {"unreachable_controller": 1},
        {"unreachable_controller": "x" * 513},
        {"unreachable_controller": "a\nb"},
    ):
        refused = await h1.request("POST", f"{path}/join", json_body=body)
        assert refused.status == 400 and refused.error_code == "INVALID_REQUEST", body
        assert "unreachable_controller" in refused.json()["error"]["message"]
    refused = await h1.request("GET", f"{path}?unreachable_controller={'x' * 513}")
    assert refused.status == 400 and refused.error_code == "INVALID_REQUEST"
    assert stack.mc.assigned == []
