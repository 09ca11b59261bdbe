"""MC failure at the GC (docs/protocol.md §14): a meeting whose MC is lost, draining or gone
moves to a live MC at its next join; a heartbeat listing every live meeting is reconciled; no
MC is declared lost within one heartbeat timeout of the GC's start. Real GC, real gRPC with the
test cluster's certificates, stand-in MCs recording what the GC asks, SQLite; the GC's clock
is moved by hand."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import trio

from darktower.errors import CapacityExceeded, DarkTowerError
from darktower.global_controller import schemas
from darktower.global_controller.registry import sweep_once
from darktower.global_controller.store import EndReason, MeetingStatus, NewMeeting
from darktower.model import ClientId, ControllerId, MeetingId
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.transport.rpc import call
from tests.global_controller._harness import (
    Api,
    ManualClock,
    Stack,
    StandInMC,
    gc_settings,
    heartbeat,
    mc_channel,
    register_mc,
    running_gc,
    running_stand_in_mc,
)


def url_of(controller_id: str) -> str:
    """The signaling URL ``register_mc`` registers for ``controller_id``."""
    return f"https://127.0.0.1:4433/v1/signal?mc={controller_id}"


async def beat(
    grpc_port: int,
    controller_id: str,
    listed: Mapping[str, int] | None = None,
    *,
    ended: Sequence[str] = (),
    draining: bool = False,
    lists_all: bool = True,
) -> reg_pb.HeartbeatResponse:
    """A heartbeat as an MC of this release sends it (every live meeting listed)."""
    reply: reg_pb.HeartbeatResponse | None = None
    error: DarkTowerError | None = None
    async with mc_channel(grpc_port, controller_id) as channel:
        try:
            reply = await call(
                ControllerRegistryStub(channel).Heartbeat,
                reg_pb.Heartbeat(
                    controller_id=controller_id,
                    capacity=reg_pb.ControllerCapacity(max_meetings=100, max_participants=1000),
                    meetings=[
                        reg_pb.MeetingLoad(meeting_id=k, participant_count=v)
                        for k, v in (listed or {}).items()
                    ],
                    ended_meeting_ids=list(ended),
                    lists_all_meetings=lists_all,
                    draining=draining,
                ),
                deadline_s=5,
            )
        except DarkTowerError as exc:  # raised outside the channel's loop (see _harness)
            error = exc
    if error is not None:
        raise error
    assert reply is not None
    return reply


async def create(api: Api, stack: Stack) -> tuple[str, str]:
    """A meeting (placed on mc-1, the only MC yet); returns (meeting id, access token)."""
    token = await api.token(stack.client_id, stack.client_secret)
    created = await api.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": "standup"}
    )
    assert created.status == 201, created.body
    return created.json()["meeting_id"], token


async def lose_mc1(stack: Stack, *alive: str) -> None:
    """Silence mc-1 past the heartbeat timeout (and the GC's startup grace) while the MCs in
    ``alive`` keep heartbeating; the sweep declares mc-1 lost."""
    stack.clock.advance(stack.settings.heartbeat_timeout_s + 1)
    for controller_id in alive:
        await heartbeat(stack.running.grpc_port, controller_id)
    assert await sweep_once(stack.running.controller) == ["mc-1"]


async def test_a_lost_meeting_moves_to_a_live_mc_at_its_next_join(h1: Api, stack: Stack) -> None:
    meeting_id, token = await create(h1, stack)
    other = StandInMC()
    async with running_stand_in_mc(other, "mc-2") as endpoint:
        await register_mc(stack.running.grpc_port, "mc-2", endpoint)
        await lose_mc1(stack, "mc-2")
        info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
        assert info["status"] == "controller_lost"
        joined = await h1.request(
            "POST", f"/api/v1/meetings/{meeting_id}/join", json_body={"participant_name": "ann"}
        )
        assert joined.status == 200, joined.body
        assert joined.json()["meeting_controller_url"] == url_of("mc-2")
        # the new MC was given the meeting with its config before the join token went out
        assert [(m.meeting_id, m.config.display_name) for m in other.assigned] == [
            (meeting_id, "standup")
        ]
        info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
        assert (info["status"], info["meeting_controller_url"]) == ("active", url_of("mc-2"))
        # the next join goes there too, without assigning it again
        again = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join", token=token)
        assert again.json()["meeting_controller_url"] == url_of("mc-2")
        assert again.json()["role"] == "host"
        assert len(other.assigned) == 1


async def test_the_same_mc_restarted_with_its_id_gets_its_meeting_back(
    h1: Api, stack: Stack
) -> None:
    meeting_id, _ = await create(h1, stack)
    await lose_mc1(stack)
    refused = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
    assert refused.status == 503 and refused.error_code == "CAPACITY_EXCEEDED"
    assert "not responding" in refused.json()["error"]["message"]
    # still lost (nothing took it), and the meeting id lives on
    info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
    assert info["status"] == "controller_lost"
    # the MC comes back with its id, holding nothing (it restarted)
    await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
    stack.mc.assigned.clear()
    joined = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
    assert joined.status == 200 and joined.json()["meeting_controller_url"] == url_of("mc-1")
    assert [m.meeting_id for m in stack.mc.assigned] == [meeting_id]
    info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
    assert info["status"] == "active"


async def test_an_mc_that_refuses_the_moved_meeting_leaves_it_lost(h1: Api, stack: Stack) -> None:
    meeting_id, _ = await create(h1, stack)
    full = StandInMC()
    full.refuse = CapacityExceeded("this meeting controller is full (1)")
    async with running_stand_in_mc(full, "mc-2") as endpoint:
        await register_mc(stack.running.grpc_port, "mc-2", endpoint)
        await lose_mc1(stack, "mc-2")
        refused = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
        assert refused.status == 503
        assert "mc-2: this meeting controller is full" in refused.json()["error"]["message"]
        info = (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()
        assert info["status"] == "controller_lost"
        # the MC has room again: the next join moves the meeting there
        full.refuse = None
        joined = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
        assert joined.status == 200 and joined.json()["meeting_controller_url"] == url_of("mc-2")


async def test_concurrent_joins_of_a_lost_meeting_agree_on_one_mc(h1: Api, stack: Stack) -> None:
    meeting_id, _ = await create(h1, stack)
    others = {"mc-2": StandInMC(), "mc-3": StandInMC()}
    async with (
        running_stand_in_mc(others["mc-2"], "mc-2") as e2,
        running_stand_in_mc(others["mc-3"], "mc-3") as e3,
    ):
        await register_mc(stack.running.grpc_port, "mc-2", e2)
        await register_mc(stack.running.grpc_port, "mc-3", e3)
        await lose_mc1(stack, "mc-2", "mc-3")
        gc = stack.running.controller
        urls: list[str] = []

        async def join() -> None:
            joined = await gc.join_meeting(MeetingId(meeting_id), schemas.JoinMeeting(), None)
            urls.append(joined["meeting_controller_url"])

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(join)
        assert len(urls) == 6 and len(set(urls)) == 1
        record = await gc.store.get_meeting(MeetingId(meeting_id))
        assert url_of(str(record.controller_id)) == urls[0]


async def test_a_draining_mc_gets_nothing_new_and_its_meetings_move(h1: Api, stack: Stack) -> None:
    meeting_id, token = await create(h1, stack)
    other = StandInMC()
    async with running_stand_in_mc(other, "mc-2") as endpoint:
        await register_mc(stack.running.grpc_port, "mc-2", endpoint)
        # mc-1 drains; what it ends meanwhile it ends for itself (its participants rejoin)
        await beat(stack.running.grpc_port, "mc-1", {meeting_id: 2}, draining=True)
        await beat(stack.running.grpc_port, "mc-1", ended=[meeting_id], draining=True)
        assert (await h1.request("GET", f"/api/v1/meetings/{meeting_id}")).json()[
            "status"
        ] == "active"
        created = await h1.request(
            "POST", "/api/v1/meetings", token=token, json_body={"display_name": "new"}
        )
        assert created.json()["meeting_controller_url"] == url_of("mc-2")
        joined = await h1.request("POST", f"/api/v1/meetings/{meeting_id}/join")
        assert joined.json()["meeting_controller_url"] == url_of("mc-2")
        assert meeting_id in [m.meeting_id for m in other.assigned]
        # the drained MC, still listing it, is told the meeting moved
        reply = await beat(stack.running.grpc_port, "mc-1", {meeting_id: 1}, draining=True)
        assert [(e.meeting_id, e.reason) for e in reply.ended_meetings] == [(meeting_id, "moved")]
        assert "join it again" in reply.ended_meetings[0].message
        # restarted with its id, it takes meetings again
        await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
        await beat(stack.running.grpc_port, "mc-2", {meeting_id: 1})
        stack.clock.advance(2)  # past the controller cache
        placed = await h1.request(
            "POST", "/api/v1/meetings", token=token, json_body={"display_name": "later"}
        )
        assert placed.json()["meeting_controller_url"] == url_of("mc-1")  # draining no more


async def test_reconciliation_tells_each_side_what_the_other_ended(h1: Api, stack: Stack) -> None:
    gc = stack.running.controller
    kept, _ = await create(h1, stack)
    gone, token = await create(h1, stack)
    forgotten, _ = await create(h1, stack)
    await beat(stack.running.grpc_port, "mc-1", {kept: 1, gone: 2, forgotten: 3})
    # while the MC is away the owner ends a meeting (the MC is not told: stand-in records it)
    assert (await h1.request("DELETE", f"/api/v1/meetings/{gone}", token=token)).status == 204
    # the MC restarted and re-created only `kept`; it also knows a meeting the GC never had
    reply = await beat(stack.running.grpc_port, "mc-1", {kept: 1, gone: 2, "stray": 1})
    assert reply.reconciled
    ends = {e.meeting_id: (e.reason, e.message) for e in reply.ended_meetings}
    assert ends == {
        gone: ("owner", "The meeting was ended by its host."),
        "stray": ("unknown", "the meeting does not exist"),
    }
    assert [(m.meeting_id, m.config.display_name) for m in reply.unlisted_meetings] == [
        (forgotten, "standup")
    ]
    # nobody is in the meeting the MC lacks; it stays active, joinable at the same MC
    info = (await h1.request("GET", f"/api/v1/meetings/{forgotten}")).json()
    assert (info["status"], info["participant_count"]) == ("active", 0)
    joined = await h1.request("POST", f"/api/v1/meetings/{forgotten}/join")
    assert joined.json()["meeting_controller_url"] == url_of("mc-1")
    # the MC's own ends reach the GC with its reason
    await beat(stack.running.grpc_port, "mc-1", {}, ended=[kept])
    record = await gc.store.get_meeting(MeetingId(kept))
    assert (record.status, record.end_reason) == (MeetingStatus.ENDED, EndReason.CONTROLLER)
    # an MC that does not list everything gets no view
    plain = await beat(stack.running.grpc_port, "mc-1", {}, lists_all=False)
    assert not plain.reconciled and not plain.unlisted_meetings and not plain.ended_meetings


async def test_no_mc_is_declared_lost_within_a_timeout_of_the_gc_start(
    tmp_path: pathlib.Path,
) -> None:
    settings = gc_settings(tmp_path / "gc")
    timeout = settings.heartbeat_timeout_s
    clock = ManualClock()
    mc = StandInMC()
    async with (
        running_stand_in_mc(mc, "mc-1") as endpoint,
        running_gc(settings, clock) as (
            first,
            _,
        ),
    ):
        await register_mc(first.grpc_port, "mc-1", endpoint)
        meeting = await first.controller.store.create_meeting(
            NewMeeting("m", 10, ClientId("owner"), controller_id=ControllerId("mc-1"))
        )
    # The GC was down for a minute; the MC could not heartbeat meanwhile.
    clock.advance(60)
    async with running_stand_in_mc(mc, "mc-1"), running_gc(settings, clock) as (second, _):
        gc = second.controller
        assert await sweep_once(gc) == []  # the MC's last heartbeat is a minute old: grace
        clock.advance(timeout - 1)
        assert await sweep_once(gc) == []
        joined = await gc.join_meeting(meeting.meeting_id, schemas.JoinMeeting(), None)
        assert joined["meeting_controller_url"] == url_of("mc-1")
        # heard within the grace: alive after it too
        await heartbeat(second.grpc_port, "mc-1", counts={meeting.meeting_id: 1})
        clock.advance(2)
        assert await sweep_once(gc) == []
        # silent for a timeout after that: lost
        clock.advance(timeout)
        assert await sweep_once(gc) == ["mc-1"]
        lost = await gc.store.get_meeting(meeting.meeting_id)
        assert lost.status is MeetingStatus.CONTROLLER_LOST


async def test_a_gc_restarted_without_its_mc_declares_it_lost_after_the_grace(
    tmp_path: pathlib.Path,
) -> None:
    settings = gc_settings(tmp_path / "gc")
    clock = ManualClock()
    async with running_gc(settings, clock) as (first, _):
        await register_mc(first.grpc_port, "mc-1", "127.0.0.1:1")
    clock.advance(60)
    async with running_gc(settings, clock) as (second, _):
        assert await sweep_once(second.controller) == []
        clock.advance(settings.heartbeat_timeout_s)
        assert await sweep_once(second.controller) == ["mc-1"]
