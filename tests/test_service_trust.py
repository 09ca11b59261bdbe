"""Who may call what between the real services (docs/architecture.md §8), over mutual TLS on
127.0.0.1: a registration with a certificate of the wrong role or id is refused, a controller id
cannot be taken over, the GC's calls on an MC and the MC's on an MH need those roles, a client
does not talk to a server holding another identity, and an MC keeps a configured join key."""

from __future__ import annotations

import logging
import pathlib
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from darktower.client import open_signaling
from darktower.errors import CapacityExceeded, DarkTowerError, Forbidden, Unauthorized
from darktower.global_controller.mc_client import GrpcMeetingControllers
from darktower.global_controller.store import ControllerCapacity, ControllerRecord, HealthStatus
from darktower.model import ControllerId, MeetingId, Role
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key, public_key_pem
from darktower.transport.rpc import call
from tests._cluster import GC_ID, open_cluster_channel, stack_cluster
from tests._stack import Services, open_services

WAIT_S = 20.0


async def _as(address: tuple[str, int], role: str, ident: str, method: str, request: Any) -> Any:
    """``method(request)`` on the service at ``address``, as ``role``/``ident`` of the test
    cluster; returns the reply or the DarkTowerError (raised outside the channel's loop)."""
    stubs = {
        "RegisterMeetingController": ControllerRegistryStub,
        "Heartbeat": ControllerRegistryStub,
        "RegisterParticipant": MediaControlStub,
        "RouteMedia": MediaControlStub,
        "RemoveParticipant": MediaControlStub,
    }
    async with open_cluster_channel(address, role, ident) as channel:
        stub = stubs.get(method, MeetingControlStub)(channel)
        try:
            with trio.fail_after(WAIT_S):
                return await call(getattr(stub, method), request)
        except DarkTowerError as exc:
            return exc


def _registration(controller_id: str, endpoint: str) -> reg_pb.RegisterMeetingController:
    return reg_pb.RegisterMeetingController(
        controller_id=controller_id,
        region="local",
        endpoint=endpoint,
        capacity=reg_pb.ControllerCapacity(max_meetings=10_000, max_participants=10_000),
        signaling_url="https://127.0.0.1:1/v1/signal",
    )


async def test_a_controller_id_is_its_certificates(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, gc={}, mc={}) as stack:
        assert stack.gc is not None and stack.mc is not None
        gc_address = ("127.0.0.1", stack.gc.grpc_port)
        real = stack.mc.controller_id
        with trio.fail_after(WAIT_S):
            await stack.mc.controller.refresh_keys()  # registered, and a heartbeat answered
        store = stack.gc.controller.store
        before = await store.get_controller(ControllerId(real))
        fake = _registration(real, "127.0.0.1:1")
        # Another MC's certificate, an MH's with the same id, the GC's: all refused.
        for role, ident in (("mc", "mc-intruder"), ("mh", real), ("gc", GC_ID)):
            refused = await _as(gc_address, role, ident, "RegisterMeetingController", fake)
            assert isinstance(refused, Forbidden), (role, refused)
            beat = reg_pb.Heartbeat(controller_id=real, ended_meeting_ids=["m"])
            assert isinstance(await _as(gc_address, role, ident, "Heartbeat", beat), Forbidden)
        assert isinstance(refused, Forbidden) and "only the MC may call" in refused.message
        after = await store.get_controller(ControllerId(real))
        assert after.endpoint == before.endpoint  # not taken over
        # Its own certificate may register (again) under its id.
        mine = await _as(gc_address, "mc", real, "RegisterMeetingController", fake)
        assert isinstance(mine, reg_pb.RegisterMeetingControllerResponse)


async def test_the_gcs_calls_on_an_mc_and_an_mhs_registration(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, gc={}, mc={}, mh={}) as stack:
        assert stack.mc is not None and stack.mh is not None
        mc = stack.mc.grpc_address
        assign = mtg_pb.AssignMeeting(meeting_id="m-trust", config=mtg_pb.MeetingConfig())
        end = mtg_pb.EndMeetingRequest(meeting_id="m-trust", message="bye")
        kick = mtg_pb.KickParticipantRequest(meeting_id="m-trust", participant_id="p")
        for method, request in (("AssignMeeting", assign), ("EndMeeting", end)):
            for role, ident in (("mc", "mc-other"), ("mh", stack.mh.handler_id)):
                refused = await _as(mc, role, ident, method, request)
                assert isinstance(refused, Forbidden), (method, role, refused)
        assert isinstance(await _as(mc, "mh", "mh-x", "KickParticipant", kick), Forbidden)
        assert MeetingId("m-trust") not in stack.mc.controller.rooms
        assert isinstance(
            await _as(mc, "gc", GC_ID, "AssignMeeting", assign), mtg_pb.AssignMeetingResponse
        )

        # An MH registers only as itself; the MC's link to the real one stays.
        links = dict(stack.mc.controller.mhs.links)
        takeover = mtg_pb.RegisterMediaHandler(
            handler_id=stack.mh.handler_id, endpoint="127.0.0.1:1", media_url="https://x/"
        )
        beat = mtg_pb.MediaHandlerHeartbeat(handler_id=stack.mh.handler_id)
        for role, ident in (("mh", "mh-intruder"), ("mc", stack.mh.handler_id), ("gc", GC_ID)):
            for method, request in (
                ("RegisterMediaHandler", takeover),
                ("MediaHandlerHeartbeat", beat),
            ):
                refused = await _as(mc, role, ident, method, request)
                assert isinstance(refused, Forbidden), (method, role, refused)
        assert stack.mc.controller.mhs.links == links


async def test_only_an_mc_calls_an_mh(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, mh={}) as stack:
        assert stack.mh is not None
        register = mh_pb.RegisterParticipant(meeting_id="m", participant_id="p")
        route = mh_pb.RouteMediaCommand(meeting_id="m")
        for role, ident in (("gc", GC_ID), ("mh", "mh-other")):
            for method, request in (("RegisterParticipant", register), ("RouteMedia", route)):
                refused = await _as(stack.mh.grpc_address, role, ident, method, request)
                assert isinstance(refused, Forbidden), (method, role, refused)
        assert stack.mh.handler.rooms == {}
        ok = await _as(stack.mh.grpc_address, "mc", "mc-any", "RegisterParticipant", register)
        assert isinstance(ok, mh_pb.RegisterParticipantResponse)


async def test_the_gc_calls_an_mc_only_if_it_holds_the_registered_id(
    tmp_path: pathlib.Path,
) -> None:
    """A controller registered with the address of another MC (holding another id) is
    unreachable to the GC: nothing reaches that MC."""
    async with open_services(tmp_path, mc={}) as stack:
        assert stack.mc is not None
        await stack.assign("m-1")
        endpoint = "{}:{}".format(*stack.mc.grpc_address)
        now = datetime.now(UTC)

        def record(controller_id: str) -> ControllerRecord:
            capacity = ControllerCapacity(max_meetings=1, current_meetings=0)
            healthy = HealthStatus.HEALTHY
            return ControllerRecord(
                ControllerId(controller_id), "local", endpoint, capacity, healthy, now, now
            )

        gc_tls = stack_cluster().tls("gc", GC_ID)
        async with GrpcMeetingControllers.open(timeout_s=5.0, tls=gc_tls) as mcs:
            with pytest.raises(
                CapacityExceeded, match=r"mc-elsewhere is unreachable.*the server is mc/"
            ):
                await mcs.end_meeting(record("mc-elsewhere"), MeetingId("m-1"))
            assert MeetingId("m-1") in stack.mc.controller.rooms
            await mcs.end_meeting(record(stack.mc.controller_id), MeetingId("m-1"))
            assert MeetingId("m-1") not in stack.mc.controller.rooms


async def test_a_configured_join_key_is_kept(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_signing_key()
    key_file = tmp_path / "join.pub.pem"
    key_file.write_bytes(public_key_pem(key))
    caplog.set_level(logging.WARNING, logger="darktower.meeting_controller")
    mc = {"join_public_key_file": str(key_file)}
    async with open_services(tmp_path / "s", gc={}, mc=mc, mh={}) as stack:
        assert stack.mc is not None
        configured = stack.mc.controller.verifier
        assert configured is not None
        assert [k.public_key_pem for k in configured.keys] == [public_key_pem(key)]
        with trio.fail_after(WAIT_S):
            await stack.mc.controller.refresh_keys()  # a heartbeat and its reply's keys
        # The GC's own token is refused at the MC; one of the configured key is accepted.
        created = await stack.create_meeting("pinned")
        with pytest.raises(Unauthorized):
            await _join(stack, created.meeting_id, created.join_token)
        token = JoinTokenIssuer(key).issue(MeetingId(created.meeting_id), Role.HOST, time.time())
        await _join(stack, created.meeting_id, token)
        assert stack.mc.controller.verifier is configured
        warned = [r for r in caplog.records if "other than the configured one" in r.getMessage()]
        assert len(warned) == 1  # once, not at every heartbeat


async def _join(stack: Services, meeting_id: str, token: str) -> None:
    async with open_signaling(
        stack.signal_url,
        meeting_id=meeting_id,
        join_token=token,
        server_certificate_hashes=stack.pins,
    ) as client:
        assert client.join_response is not None
