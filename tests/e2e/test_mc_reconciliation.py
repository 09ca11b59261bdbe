"""Reconciliation between a real MC and a real GC (docs/protocol.md §14), both ways, with a real
MH and real clients over QUIC. The MC heartbeats every 0.2 s (the GC's interval; with enough
misses allowed that nobody is declared lost on a busy machine).

- GC to MC: a meeting the GC ended (the MC missed the EndMeeting) ends at the MC with the GC's
  reason and message; one the GC moved to another MC ends SERVER_SHUTDOWN (it goes on there).
- MC to GC: a meeting the MC ended is ended at the GC; an MC restarted with its id, holding
  nothing, gets its meetings' counts reset at the GC, and a join of one re-creates it there.
- Drain: the MC's heartbeat says so before anything else, and its meeting moves at the next
  join.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from darktower import media_handler, meeting_controller
from darktower.client import SignalingClient, open_signaling
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.global_controller.store import (
    ControllerCapacity,
    EndReason,
    MeetingStatus,
    NewMeeting,
)
from darktower.meeting_controller import MediaHandlers, MeetingController, Registration
from darktower.model import ClientId, ControllerId, LeaveReason, MeetingId
from darktower.nurseries import TaskTree
from darktower.protocol.addresses import split_host_port
from darktower.protocol.tokens import DEFAULT_ISSUER
from tests._cluster import stack_cluster
from tests._stack import WAIT_S, Services, mc_settings, mh_settings, open_services, running_service

FAST = {"heartbeat_interval_s": 0.2, "heartbeat_misses": 50}
CAPACITY = ControllerCapacity(max_meetings=10, max_participants=100)


@asynccontextmanager
async def joined(stack: Services, meeting_id: str, name: str) -> AsyncIterator[SignalingClient]:
    """Join through the GC (a join token and the MC it names), then at that MC."""
    async with stack.gc_client() as gc:
        ticket = await gc.join_meeting(meeting_id, name)
    async with open_signaling(
        ticket.meeting_controller_url,
        meeting_id=meeting_id,
        join_token=ticket.join_token,
        participant_name=name,
        server_certificate_hashes=stack.pins,
    ) as client:
        yield client


async def ended(client: SignalingClient) -> tuple[LeaveReason | None, str]:
    with trio.fail_after(WAIT_S):
        await client.closed.wait()
    message = client.session_ended.message if client.session_ended is not None else ""
    return client.end_reason, message


async def heartbeat_answered(controller: MeetingController) -> None:
    """Wait until the GC has answered a heartbeat this MC sent after the call (its join-key
    refresh, which the service sets up with a GC: at most one a second)."""
    assert controller.refresh_keys is not None
    await controller.refresh_keys()


def served_certificate(stack: Services) -> dict[str, str]:
    """The GC's certificate, which the MC and MH serve too (one pin for the stack)."""
    data = stack.data_dir
    return {"certfile": str(data / DEV_CERT_FILE), "keyfile": str(data / DEV_KEY_FILE)}


class CrashableMC:
    """A real MC (mc-1) of the stack's GC that :meth:`crash` stops as a crash would: its
    task is cancelled, nobody tells the GC anything, and its ports are free again."""

    def __init__(self, stack: Services, **overrides: Any) -> None:
        assert stack.gc is not None
        self.settings = mc_settings(
            controller_id="mc-1",
            gc_grpc=stack.gc.grpc_endpoint,
            **served_certificate(stack),
            **overrides,
        )
        self._scope = trio.CancelScope()
        self._gone = trio.Event()

    async def run(self, task_status: trio.TaskStatus[meeting_controller.Running]) -> None:
        try:
            with self._scope:
                await meeting_controller.serve(
                    self.settings, shutdown=trio.Event(), task_status=task_status
                )
        finally:
            self._gone.set()

    async def crash(self) -> None:
        self._scope.cancel()
        with trio.fail_after(WAIT_S):
            await self._gone.wait()


async def test_the_mc_ends_what_the_gc_ended_or_moved(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, gc=FAST, mc={}, mh={}) as stack, AsyncExitStack() as exits:
        assert stack.gc is not None and stack.mc is not None
        store = stack.gc.controller.store
        owner_ended = (await stack.create_meeting("ended at the GC")).meeting_id
        moved = (await stack.create_meeting("moved elsewhere")).meeting_id
        ann = await exits.enter_async_context(joined(stack, owner_ended, "ann"))
        bob = await exits.enter_async_context(joined(stack, moved, "bob"))
        rooms = list(stack.mc.controller.rooms.values())
        # What the GC did while the MC did not hear of it: the owner's end (its EndMeeting was
        # lost), and a move of the other meeting to another MC (this one was thought lost).
        await store.end_meeting(MeetingId(owner_ended))
        await store.register_controller(ControllerId("mc-other"), "", "127.0.0.1:1", CAPACITY)
        assert await store.move_meeting(
            MeetingId(moved),
            (ControllerId(stack.mc.controller_id), MeetingStatus.ACTIVE),
            (ControllerId("mc-other"), MeetingStatus.ACTIVE),
        )
        assert await ended(ann) == (LeaveReason.MEETING_ENDED, "The meeting was ended by its host.")
        assert await ended(bob) == (
            LeaveReason.SERVER_SHUTDOWN,
            "the meeting moved to another meeting controller: join it again",
        )
        with trio.fail_after(WAIT_S):
            for room in rooms:
                await room.scope.wait_closed()
        assert stack.mc.controller.rooms == {}
        # The moved meeting goes on at the GC, on the other MC: our ending it told it nothing.
        await heartbeat_answered(stack.mc.controller)  # a heartbeat (reporting both ends) answered
        record = await store.get_meeting(MeetingId(moved))
        assert (record.status, record.controller_id) == (MeetingStatus.ACTIVE, "mc-other")
        record = await store.get_meeting(MeetingId(owner_ended))
        assert record.end_reason is EndReason.OWNER


async def test_the_gc_ends_what_the_mc_ended(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, gc=FAST, mc={}, mh={}) as stack:
        assert stack.gc is not None and stack.mc is not None
        meeting_id = MeetingId((await stack.create_meeting()).meeting_id)
        room = stack.mc.controller.rooms[meeting_id]
        stack.mc.controller.end(meeting_id, "the host ended it")
        with trio.fail_after(WAIT_S):
            await room.scope.wait_closed()
        await heartbeat_answered(stack.mc.controller)  # a heartbeat sent after it, answered
        record = await stack.gc.controller.store.get_meeting(meeting_id)
        assert (record.status, record.end_reason) == (MeetingStatus.ENDED, EndReason.CONTROLLER)


async def test_an_mc_restarted_with_its_id_recreates_its_meeting_for_a_join(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, gc=FAST) as stack, trio.open_nursery() as nursery:
        assert stack.gc is not None
        gc = stack.gc.controller
        first_mc = CrashableMC(stack)
        first = await nursery.start(first_mc.run)
        grpc_port = first.grpc_address[1]
        mh_set = mh_settings(mc_grpc=f"127.0.0.1:{grpc_port}", **served_certificate(stack))
        async with running_service(media_handler.serve, mh_set) as (mh, _):
            await first.controller.mhs.wait_for(mh.handler_id)
            meeting_id = MeetingId((await stack.create_meeting("survives")).meeting_id)
            async with joined(stack, meeting_id, "ann"):
                await heartbeat_answered(first.controller)  # the GC has heard of ann
                assert (await gc.store.get_meeting(meeting_id)).participant_count == 1
                await first_mc.crash()
            # Back within seconds with its id, on the same gRPC port (its MH finds it there),
            # holding nothing: its first heartbeat follows its registration.
            second = await nursery.start(CrashableMC(stack, grpc_port=grpc_port).run)
            await heartbeat_answered(second.controller)
            record = await gc.store.get_meeting(meeting_id)
            assert (record.status, record.participant_count) == (MeetingStatus.ACTIVE, 0)
            assert second.controller.rooms == {}
            with trio.fail_after(WAIT_S):
                await second.controller.mhs.wait_for(mh.handler_id)
            # A join goes to the same MC, which re-creates the meeting for it.
            async with joined(stack, meeting_id, "bob") as bob:
                assert bob.join_response.participant_id
                room = second.controller.rooms[meeting_id]
                assert room.config.display_name == "survives"
                assert [m.name for m in room.members.values()] == ["bob"]
            nursery.cancel_scope.cancel()


async def test_a_draining_mc_tells_the_gc_and_its_meeting_moves(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, gc=FAST, mc={}, mh={}) as stack:
        assert stack.gc is not None and stack.mc is not None
        gc = stack.gc.controller
        # A second MC ("mc-drain"), registered over real gRPC with its own certificate.
        controller = MeetingController(TaskTree(), MediaHandlers(lambda event: None))
        registration = Registration(
            controller,
            controller_id="mc-drain",
            region="",
            endpoint="127.0.0.1:1",
            signaling_url="https://127.0.0.1:1/v1/signal",
            max_meetings=10,
            max_participants=100,
            issuer=DEFAULT_ISSUER,
            gc=split_host_port(stack.gc.grpc_endpoint),
            cluster=stack_cluster().tls("mc", "mc-drain"),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registration.run)
            await registration.refresh_keys()  # registered, and a heartbeat answered
            meeting = await gc.store.create_meeting(
                NewMeeting(
                    "drained", 10, ClientId(stack.client_id), controller_id=ControllerId("mc-drain")
                )
            )
            assert await registration.tell_draining()
            assert (await gc.store.get_controller(ControllerId("mc-drain"))).draining
            # The next join moves the meeting to the MC that is not draining.
            async with joined(stack, meeting.meeting_id, "ann") as ann:
                assert ann.join_response.participant_id
            record = await gc.store.get_meeting(meeting.meeting_id)
            assert record.controller_id == stack.mc.controller_id
            nursery.cancel_scope.cancel()
