"""Registration with a GC stand-in (real gRPC), heartbeats, MH registration and the ops pages."""

from __future__ import annotations

import functools
import json
import pathlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from darktower.client import open_signaling
from darktower.errors import NotFound, Unauthorized
from darktower.meeting_controller import Running, serve
from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig_pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryBase
from darktower.protocol.tokens import JoinKey, JoinTokenIssuer, generate_signing_key
from darktower.transport.rpc import call, open_rpc_loop, rpc_service, serve_rpc
from tests._cluster import GC_ID, open_cluster_channel, stack_cluster
from tests._stack import mc_settings

from ._harness import WAIT_S, FakeMediaControl


def _served(base: type, impl: object, role: str, ident: str) -> Any:
    """``serve_rpc`` of ``impl`` as the test cluster's ``role``/``ident``, for nursery.start."""
    tls = stack_cluster().tls(role, ident).server_context()
    return functools.partial(serve_rpc, [rpc_service(base, impl)], "127.0.0.1", 0, tls=tls)


class FakeRegistry:
    def __init__(self, issuer: JoinTokenIssuer) -> None:
        self.issuer = issuer
        # The join keys published (none: as an older GC, only join_token_public_key_pem).
        self.keys: list[reg_pb.JoinTokenKey] = []
        self.registrations: list[reg_pb.RegisterMeetingController] = []
        self.heartbeats: list[reg_pb.Heartbeat] = []
        self.events: list[reg_pb.MeetingEvent] = []
        self.hold_events: trio.Event | None = None  # ReportEvents waits for it when set
        self.changed = trio.Event()
        self.heartbeat_interval_ms = 50

    async def RegisterMeetingController(
        self, request: reg_pb.RegisterMeetingController
    ) -> reg_pb.RegisterMeetingControllerResponse:
        await trio.lowlevel.checkpoint()
        self.registrations.append(request)
        self.changed.set()
        return reg_pb.RegisterMeetingControllerResponse(
            join_token_public_key_pem=self.issuer.public_key_pem,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            token_audience="mc-audience-from-gc",
            join_token_keys=self.keys,
        )

    async def Heartbeat(self, request: reg_pb.Heartbeat) -> reg_pb.HeartbeatResponse:
        await trio.lowlevel.checkpoint()
        self.heartbeats.append(request)
        self.changed.set()
        return reg_pb.HeartbeatResponse(join_token_keys=self.keys)

    async def ReportEvents(
        self, request: reg_pb.MeetingEventBatch
    ) -> reg_pb.MeetingEventBatchResponse:
        await trio.lowlevel.checkpoint()
        if self.hold_events is not None:
            await self.hold_events.wait()
        self.events.extend(request.events)
        self.changed.set()
        return reg_pb.MeetingEventBatchResponse()

    async def wait_for(self, predicate) -> None:  # type: ignore[no-untyped-def]
        with trio.fail_after(WAIT_S):
            while not predicate():
                self.changed = trio.Event()
                await self.changed.wait()


async def test_registers_heartbeats_places_on_registered_mh_and_serves_ops(
    tmp_path: pathlib.Path,
) -> None:
    issuer = JoinTokenIssuer(generate_signing_key(), audience="mc-audience-from-gc")
    gc = FakeRegistry(issuer)
    mh = FakeMediaControl()
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        gc_port = await nursery.start(_served(ControllerRegistryBase, gc, "gc", GC_ID))
        mh_port = await nursery.start(_served(MediaControlBase, mh, "mh", "mh-1"))
        settings = mc_settings(
            drain_grace_s=10.0,
            gc_grpc=f"127.0.0.1:{gc_port}",
            region="eu-1",
            controller_id="mc-test",
            max_meetings=10,
        )
        shutdown = trio.Event()
        running: Running = await nursery.start(
            functools.partial(serve, settings, shutdown=shutdown)
        )
        await gc.wait_for(lambda: bool(gc.registrations))
        (registration,) = gc.registrations
        assert registration.controller_id == "mc-test" and registration.region == "eu-1"
        assert registration.signaling_url == running.signal_url
        assert registration.endpoint.endswith(f":{running.grpc_address[1]}")
        assert registration.capacity.max_meetings == 10

        async with (
            open_cluster_channel(running.grpc_address, "mh", "mh-1") as as_mh,
            open_cluster_channel(running.grpc_address, "gc", GC_ID) as as_gc,
        ):
            stub = MeetingControlStub(as_mh)
            # an MH registers itself with the MC; rooms go to it
            reply = await call(
                stub.RegisterMediaHandler,
                mtg_pb.RegisterMediaHandler(
                    handler_id="mh-1",
                    endpoint=f"127.0.0.1:{mh_port}",
                    media_url="https://mh/v1/media",
                    capacity=mtg_pb.MediaHandlerLoad(rooms=10, participants=100),
                ),
            )
            assert reply.heartbeat_interval_ms > 0
            await call(
                stub.MediaHandlerHeartbeat,
                mtg_pb.MediaHandlerHeartbeat(
                    handler_id="mh-1", load=mtg_pb.MediaHandlerLoad(rooms=0)
                ),
            )
            await call(
                MeetingControlStub(as_gc).AssignMeeting,
                mtg_pb.AssignMeeting(meeting_id="m", config=mtg_pb.MeetingConfig()),
            )
            token = issuer.issue(MeetingId("m"), Role.GUEST, time.time())
            async with open_signaling(
                running.signal_url,
                meeting_id="m",
                join_token=token,
                server_certificate_hashes=[running.certificate_sha256],
            ) as client:
                assert [r.participant_id for r in mh.registered] == [client.participant_id]
                await gc.wait_for(
                    lambda: any(
                        [(m.meeting_id, m.participant_count) for m in hb.meetings] == [("m", 1)]
                        for hb in gc.heartbeats
                    )
                )
                assert gc.heartbeats[-1].health == common_pb2.HEALTHY

                async with httpx.AsyncClient(base_url=running.ops_url) as http:
                    assert (await http.get("/healthz")).status_code == 200
                    assert (await http.get("/readyz")).status_code == 200
                    metrics = (await http.get("/metrics")).text
                    assert "darktower_mc_participants 1" in metrics
                    assert "darktower_mc_join_seconds_count 1" in metrics
                    assert "darktower_tree_cancel_latency_seconds" in metrics
                    tree = json.loads((await http.get("/debug/tree")).text)
                    assert tree["counts"]["participants"] == 1
        shutdown.set()
        with trio.fail_after(WAIT_S):
            await running.controller.tree.wait_closed()
        nursery.cancel_scope.cancel()


def test_health_follows_load_and_drain() -> None:
    from darktower.meeting_controller import MediaHandlers, MeetingController, Registration
    from darktower.nurseries import TaskTree

    ctl = MeetingController(TaskTree(), MediaHandlers(lambda event: None))
    registration = Registration(
        ctl,
        controller_id="c",
        region="r",
        endpoint="e",
        signaling_url="s",
        max_meetings=10,
        max_participants=100,
        issuer="darktower-gc",
    )
    assert registration.health() == common_pb2.HEALTHY
    ctl.rooms.update({MeetingId(f"m{i}"): object() for i in range(9)})  # type: ignore[misc]
    assert registration.health() == common_pb2.DEGRADED  # 90 % of the meetings
    ctl.rooms.clear()
    ctl.ended.append("gone")
    beat = registration.heartbeat_message()
    assert list(beat.ended_meeting_ids) == ["gone"] and beat.capacity.max_participants == 100
    registration.draining = True
    assert registration.health() == common_pb2.UNHEALTHY


def _published(key: JoinKey) -> reg_pb.JoinTokenKey:
    not_after = 0 if key.not_after is None else int(key.not_after * 1_000_000)
    return reg_pb.JoinTokenKey(kid=key.kid, public_key_pem=key.public_key_pem, not_after=not_after)


@asynccontextmanager
async def _mc_registered_with(gc: FakeRegistry, **settings: Any) -> AsyncIterator[Running]:
    """An MC registered with ``gc`` (a fake GC) and a fake MH, meeting "m" assigned; it drains
    on exit."""
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        gc_port = await nursery.start(_served(ControllerRegistryBase, gc, "gc", GC_ID))
        mh_port = await nursery.start(_served(MediaControlBase, FakeMediaControl(), "mh", "mh-1"))
        shutdown = trio.Event()
        running: Running = await nursery.start(
            functools.partial(
                serve,
                mc_settings(
                    drain_grace_s=10.0,
                    gc_grpc=f"127.0.0.1:{gc_port}",
                    media_handler=f"127.0.0.1:{mh_port}",
                    **settings,
                ),
                shutdown=shutdown,
            )
        )
        await gc.wait_for(lambda: bool(gc.registrations))
        async with open_cluster_channel(running.grpc_address, "gc", GC_ID) as channel:
            await call(
                MeetingControlStub(channel).AssignMeeting,
                mtg_pb.AssignMeeting(meeting_id="m", config=mtg_pb.MeetingConfig()),
            )
        yield running
        shutdown.set()
        with trio.fail_after(WAIT_S):
            await running.controller.tree.wait_closed()
        nursery.cancel_scope.cancel()


async def test_join_keys_rotate_with_an_overlap_learned_from_heartbeats(
    tmp_path: pathlib.Path,
) -> None:
    old_key, new_key = generate_signing_key(), generate_signing_key()
    audience = "mc-audience-from-gc"
    old, new = (
        JoinTokenIssuer(old_key, audience=audience),
        JoinTokenIssuer(new_key, audience=audience),
    )
    gc = FakeRegistry(old)
    gc.keys = [_published(JoinKey.of(old_key))]
    async with _mc_registered_with(gc, token_leeway_s=0) as running:

        async def join(issuer: JoinTokenIssuer) -> None:
            token = issuer.issue(MeetingId("m"), Role.GUEST, time.time())
            async with open_signaling(
                running.signal_url,
                meeting_id="m",
                join_token=token,
                server_certificate_hashes=[running.certificate_sha256],
            ):
                pass

        async def next_heartbeats() -> None:
            # Two more beats: the reply to the first one sent after the change has been used.
            seen = len(gc.heartbeats)
            await gc.wait_for(lambda: len(gc.heartbeats) >= seen + 2)

        await join(old)
        with pytest.raises(Unauthorized, match=r"key id '.*' unknown"):
            await join(new)

        # The GC rotates: the new key is current, the old one verifies for the overlap.
        gc.keys = [
            _published(JoinKey.of(new_key)),
            _published(JoinKey.of(old_key, not_after=time.time() + 600)),
        ]
        await next_heartbeats()
        await join(new)
        await join(old)
        assert len(gc.registrations) == 1  # learned from heartbeats, not by registering again

        # The overlap is over: tokens of the old key are refused, saying why.
        gc.keys = [
            _published(JoinKey.of(new_key)),
            _published(JoinKey.of(old_key, not_after=time.time() - 1)),
        ]
        await next_heartbeats()
        with pytest.raises(Unauthorized, match="retired"):
            await join(old)
        await join(new)
        gc.keys = [_published(JoinKey.of(new_key))]
        await next_heartbeats()
        with pytest.raises(Unauthorized, match="unknown"):
            await join(old)


async def test_a_join_with_a_key_newer_than_the_mcs_refreshes_its_keys_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """Just after the GC rotated its key (its heartbeats an hour apart here), a token of the
    new key makes the MC ask for the keys at once: the join succeeds, no join breaks."""
    old_key, new_key = generate_signing_key(), generate_signing_key()
    audience = "mc-audience-from-gc"
    new = JoinTokenIssuer(new_key, audience=audience)
    gc = FakeRegistry(JoinTokenIssuer(old_key, audience=audience))
    gc.keys = [_published(JoinKey.of(old_key))]
    gc.heartbeat_interval_ms = 3_600_000
    async with _mc_registered_with(gc) as running:
        # the heartbeat that follows a registration at once (docs/protocol.md §14)
        await gc.wait_for(lambda: bool(gc.heartbeats))
        gc.keys = [
            _published(JoinKey.of(new_key)),
            _published(JoinKey.of(old_key, not_after=time.time() + 600)),
        ]
        joined: list[str] = []

        async def join_with_the_new_key() -> None:
            token = new.issue(MeetingId("m"), Role.GUEST, time.time())
            async with open_signaling(
                running.signal_url,
                meeting_id="m",
                join_token=token,
                server_certificate_hashes=[running.certificate_sha256],
            ) as client:
                joined.append(client.join_response.participant_id)

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as joins:  # they share one refresh
                for _ in range(3):
                    joins.start_soon(join_with_the_new_key)
        assert len(joined) == 3
        assert len(gc.heartbeats) == 2 and len(gc.registrations) == 1
        # A made-up key id right after does not make the MC call the GC again.
        forged = JoinTokenIssuer(generate_signing_key(), audience=audience)
        with pytest.raises(Unauthorized, match="unknown"):
            async with open_signaling(
                running.signal_url,
                meeting_id="m",
                join_token=forged.issue(MeetingId("m"), Role.GUEST, time.time()),
                server_certificate_hashes=[running.certificate_sha256],
            ):
                pass
        assert len(gc.heartbeats) == 2


def test_a_bad_key_set_from_the_gc_keeps_the_keys_in_use() -> None:
    from darktower.meeting_controller import MediaHandlers, MeetingController, Registration
    from darktower.nurseries import TaskTree

    ctl = MeetingController(TaskTree(), MediaHandlers(lambda event: None))
    registration = Registration(
        ctl,
        controller_id="c",
        region="r",
        endpoint="e",
        signaling_url="s",
        max_meetings=10,
        max_participants=100,
        issuer="darktower-gc",
        leeway_s=7,
    )
    key = JoinKey.of(generate_signing_key())
    registration.use_keys([_published(key)], b"", "aud")
    verifier = ctl.verifier
    assert verifier is not None and verifier.leeway_s == 7 and verifier.keys == (key,)
    registration.use_keys([_published(key)], b"", "aud")
    assert ctl.verifier is verifier  # unchanged keys: nothing rebuilt
    forged = reg_pb.JoinTokenKey(kid="someone-else", public_key_pem=key.public_key_pem)
    with pytest.raises(ValueError, match="does not match"):
        registration.use_keys([forged], b"", "aud")
    too_many = [_published(JoinKey.of(generate_signing_key())) for _ in range(17)]
    with pytest.raises(ValueError, match="at most"):
        registration.use_keys(too_many, b"", "aud")
    assert ctl.verifier is verifier


async def test_registers_again_when_the_gc_forgets_it(tmp_path: pathlib.Path) -> None:
    """A GC that lost its registry (restarted) answers a heartbeat NOT_FOUND: the MC registers
    again after the first backoff step, and stays ready meanwhile."""

    class ForgetfulRegistry(FakeRegistry):
        forget = True

        async def Heartbeat(self, request: reg_pb.Heartbeat) -> reg_pb.HeartbeatResponse:
            if self.forget:
                self.forget = False
                self.heartbeats.append(request)
                raise NotFound(f"controller {request.controller_id} is not registered")
            return await super().Heartbeat(request)

    issuer = JoinTokenIssuer(generate_signing_key(), audience="mc-audience-from-gc")
    gc = ForgetfulRegistry(issuer)
    async with _mc_registered_with(gc, controller_id="mc-forgotten") as running:
        await gc.wait_for(lambda: len(gc.registrations) >= 2 and len(gc.heartbeats) >= 2)
        assert [r.controller_id for r in gc.registrations[:2]] == ["mc-forgotten"] * 2
        async with httpx.AsyncClient(base_url=running.ops_url) as http:
            assert (await http.get("/readyz")).status_code == 200


@pytest.mark.parametrize("setting", ["gc_grpc", "media_handler"])
async def test_a_bad_address_setting_fails_the_start(setting: str) -> None:
    settings = mc_settings(**{setting: "::1:50051"})
    async with open_rpc_loop():
        with (
            pytest.raises(ValueError, match=r"IPv6 address takes brackets"),
            trio.fail_after(WAIT_S),
        ):
            await serve(settings, shutdown=trio.Event())  # before anything is bound


async def test_a_drain_reports_its_last_events_before_it_stops(tmp_path: pathlib.Path) -> None:
    """The sessions a drain ends leave SERVER_SHUTDOWN (their streams unpublished first), and
    the GC has those events when the MC's serve returns."""
    issuer = JoinTokenIssuer(generate_signing_key(), audience="mc-audience-from-gc")
    gc = FakeRegistry(issuer)
    stopped = trio.Event()
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        gc_port = await nursery.start(_served(ControllerRegistryBase, gc, "gc", GC_ID))
        mh_port = await nursery.start(_served(MediaControlBase, FakeMediaControl(), "mh", "mh-1"))
        shutdown = trio.Event()
        settings = mc_settings(
            drain_grace_s=10.0, gc_grpc=f"127.0.0.1:{gc_port}", media_handler=f"127.0.0.1:{mh_port}"
        )

        async def run_mc(task_status: trio.TaskStatus[Running]) -> None:
            await serve(settings, shutdown=shutdown, task_status=task_status)
            stopped.set()

        running: Running = await nursery.start(run_mc)
        await gc.wait_for(lambda: bool(gc.registrations))
        async with open_cluster_channel(running.grpc_address, "gc", GC_ID) as channel:
            await call(
                MeetingControlStub(channel).AssignMeeting,
                mtg_pb.AssignMeeting(meeting_id="m", config=mtg_pb.MeetingConfig()),
            )
        token = issuer.issue(MeetingId("m"), Role.GUEST, time.time())
        async with open_signaling(
            running.signal_url,
            meeting_id="m",
            join_token=token,
            server_certificate_hashes=[running.certificate_sha256],
        ) as client:
            await client.request(
                sig_pb.ClientMessage(
                    publish=sig_pb.PublishStream(stream_id="mic", stream_type=common_pb2.AUDIO)
                )
            )
            await gc.wait_for(lambda: any(e.HasField("stream_published") for e in gc.events))
            # The GC takes the drain's events only once every meeting has closed.
            gc.hold_events = trio.Event()
            shutdown.set()
            with trio.fail_after(WAIT_S):
                await running.controller.tree.wait_closed()
                gc.hold_events.set()
                await stopped.wait()
        assert len(running.controller.events) == 0  # nothing left unsent
        kinds = [e.WhichOneof("kind") for e in gc.events]
        assert kinds[-2:] == ["stream_unpublished", "participant_left"], kinds
        assert gc.events[-1].participant_left.reason == common_pb2.SERVER_SHUTDOWN
        assert gc.events[-1].participant_left.participant_id == client.participant_id
        nursery.cancel_scope.cancel()
