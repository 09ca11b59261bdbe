"""Sessions follow their meeting when its MC drains, end to end with the real GC
(docs/protocol.md §13, §14): two real MCs, each with its MH, registered with a real GC that
heartbeats fast; the MC holding the meeting drains (its shutdown, as SIGTERM does): it says so
to the GC and ends each session SERVER_SHUTDOWN, the clients ask the GC for a new join, the GC
moves the meeting to the other MC at that join, and media flows again on the same publication
and subscription objects."""

from __future__ import annotations

import pathlib
from contextlib import AsyncExitStack

import trio

from darktower import media_handler, meeting_controller
from darktower.client import (
    MeetingSession,
    ParticipantJoined,
    Rejoined,
    Rejoining,
    SessionEvent,
    join_meeting_via_gc,
)
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.meeting_controller._service import SHUTDOWN_MESSAGE
from darktower.model import LeaveReason
from darktower.protocol.addresses import netloc
from tests._stack import WAIT_S, mc_settings, mh_settings, open_services, running_service
from tests.client.test_reconnect import expect, flows, talking

FAST = {"heartbeat_interval_s": 0.2, "heartbeat_misses": 50}
GRACE_S = 8.0


async def test_a_drained_mc_hands_its_participants_to_another_through_the_real_gc(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, gc=FAST) as stack, AsyncExitStack() as stop:
        assert stack.gc is not None
        files = {
            "certfile": str(stack.data_dir / DEV_CERT_FILE),
            "keyfile": str(stack.data_dir / DEV_KEY_FILE),
        }
        mcs: dict[str, tuple[meeting_controller.Running, trio.Event]] = {}
        for ident in ("mc-a", "mc-b"):
            mc, stop_mc = await stop.enter_async_context(
                running_service(
                    meeting_controller.serve,
                    mc_settings(
                        controller_id=ident,
                        gc_grpc=stack.gc.grpc_endpoint,
                        resume_grace_s=GRACE_S,
                        **files,
                    ),
                )
            )
            mh, _ = await stop.enter_async_context(
                running_service(
                    media_handler.serve, mh_settings(mc_grpc=netloc(*mc.grpc_address), **files)
                )
            )
            with trio.fail_after(WAIT_S):
                await mc.controller.mhs.wait_for(mh.handler_id)
                assert mc.controller.refresh_keys is not None
                await mc.controller.refresh_keys()  # registered, and heard by the GC
            mcs[mc.signal_url] = (mc, stop_mc)
        async with AsyncExitStack() as clients:
            owner = await clients.enter_async_context(stack.gc_client())
            created = await owner.create_meeting("follows its participants")
            meeting_id = created.meeting_id
            guest = owner.as_caller(None)

            async def join(gc: object, name: str) -> MeetingSession:
                return await clients.enter_async_context(
                    join_meeting_via_gc(
                        gc,  # type: ignore[arg-type]
                        meeting_id,
                        name,
                        server_certificate_hashes=stack.pins,
                        resume_grace_s=GRACE_S,
                    )
                )

            ann = await join(owner, "ann")
            bob = await join(guest, "bob")
            await expect(ann, ParticipantJoined, lambda e: e.participant.name == "bob")
            ann_to_bob = await talking(ann, bob)
            bob_to_ann = await talking(bob, ann)
            await flows(*ann_to_bob)
            first = str((await owner.get_meeting(meeting_id))["meeting_controller_url"])
            (other,) = set(mcs) - {first}
            mcs[first][1].set()  # the MC holding the meeting drains

            seen: dict[str, list[SessionEvent]] = {"ann": [], "bob": []}

            async def rejoined(name: str, session: MeetingSession) -> None:
                seen[name].append(await expect(session, Rejoined, seen=seen[name]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rejoined, "ann", ann)
                nursery.start_soon(rejoined, "bob", bob)
            for name in ("ann", "bob"):
                rejoining = [e for e in seen[name] if isinstance(e, Rejoining)]
                assert rejoining == [Rejoining(LeaveReason.SERVER_SHUTDOWN, SHUTDOWN_MESSAGE)]
            assert (await owner.get_meeting(meeting_id))["meeting_controller_url"] == other
            await flows(*ann_to_bob)
            await flows(*bob_to_ann)
            room = mcs[other][0].controller.rooms[meeting_id]  # type: ignore[index]
            assert sorted(m.name for m in room.members.values()) == ["ann", "bob"]
            assert ann.role is not None and ann.role.value == "host"
