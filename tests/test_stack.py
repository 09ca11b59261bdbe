"""The shared stack harness (tests/_stack.py) wires the real services it starts: the
compositions no per-package harness uses are checked here."""

from __future__ import annotations

import pathlib

import trio

from darktower.client import open_media_client, open_signaling
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key

from ._stack import WAIT_S, StandIn, open_services


async def test_gc_mc_and_mh_place_a_meeting_and_serve_one_certificate(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path / "data", gc={}, mc={}, mh={}) as stack:
        assert len(stack.pins) == 1  # the MC and MH serve the GC's certificate
        created = await stack.create_meeting("harness")
        assert created.meeting_controller_url == stack.signal_url
        async with open_signaling(
            stack.signal_url,
            meeting_id=created.meeting_id,
            join_token=created.join_token,
            participant_name="host",
            server_certificate_hashes=stack.pins,
        ) as host:
            media = host.join_response.media_server
            assert media.media_handler_url == stack.media_url
            url = f"{media.media_handler_url}?token={media.connection_token}"
            async with open_media_client(url, server_certificate_hashes=stack.pins):
                pass


async def test_a_meeting_controller_with_the_real_media_handler_hands_over_on_drain(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, mc={}, mh={}) as stack:
        assert stack.mc is not None and stack.mh is not None
        await stack.assign("m")
        async with open_signaling(
            stack.signal_url,
            meeting_id="m",
            join_token=stack.token("m", Role.HOST),
            server_certificate_hashes=[stack.mc.certificate_sha256],
        ) as host:
            media = host.join_response.media_server
            assert media.media_handler_url == stack.media_url
            stack.shutdown.set()  # the MC drains first: its participants go while the MH is up
            with trio.fail_after(WAIT_S):
                await host.closed.wait()
            assert host.session_ended is not None
            assert host.session_ended.reason == common_pb2.SERVER_SHUTDOWN


class Registry:
    """A GC stand-in: records the MC's registration and hands it a join key."""

    def __init__(self) -> None:
        self.registered: list[reg_pb.RegisterMeetingController] = []
        self.changed = trio.Event()
        self.issuer = JoinTokenIssuer(generate_signing_key())

    async def RegisterMeetingController(
        self, request: reg_pb.RegisterMeetingController
    ) -> reg_pb.RegisterMeetingControllerResponse:
        self.registered.append(request)
        self.changed.set()
        return reg_pb.RegisterMeetingControllerResponse(
            join_token_public_key_pem=self.issuer.public_key_pem
        )

    async def Heartbeat(self, request: reg_pb.Heartbeat) -> reg_pb.HeartbeatResponse:
        return reg_pb.HeartbeatResponse()

    async def ReportEvents(
        self, request: reg_pb.MeetingEventBatch
    ) -> reg_pb.MeetingEventBatchResponse:
        return reg_pb.MeetingEventBatchResponse()


async def test_a_meeting_controller_registers_with_a_stand_in_registry(
    tmp_path: pathlib.Path,
) -> None:
    registry = Registry()
    async with open_services(tmp_path, gc=StandIn(registry), mc={}) as stack:
        assert stack.issuer is None  # the join keys come from the registry
        with trio.fail_after(WAIT_S):
            await registry.changed.wait()
        (registration,) = registry.registered
        assert registration.signaling_url == stack.signal_url
