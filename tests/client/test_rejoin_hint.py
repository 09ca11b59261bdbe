"""A session whose MC stops answering tells the GC so (``unreachable_controller``,
docs/protocol.md §13, §14), and the GC, finding that MC unreachable too, places the meeting
elsewhere at once instead of after its heartbeat timeout.

End to end: a real GC whose heartbeat timeout (100 s) cannot pass during the test, two real
MCs each with its MH, sessions joined through the GC; the machine of the MC holding the meeting
dies (its MC and MH cancelled: no drain, no goodbye reaches anyone, as after SIGKILL). On
fakes: when the rejoiner names an MC to the GC, and when it does not."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from darktower import media_handler, meeting_controller
from darktower.client import (
    GlobalControllerClient,
    JoinTicket,
    MeetingSession,
    ParticipantJoined,
    Rejoined,
    Rejoining,
    SessionEvent,
    join_meeting_via_gc,
)
from darktower.client._rejoin import GcRejoiner
from darktower.client._signaling import SignalingEnded
from darktower.errors import CapacityExceeded
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.global_controller.store import HealthStatus
from darktower.model import ControllerId, LeaveReason
from darktower.protocol.addresses import netloc
from darktower.transport import ConnectFailed, TransportLimits
from tests._stack import WAIT_S, Services, mc_settings, mh_settings, open_services, running_service
from tests.client.test_reconnect import expect, flows, talking

# The GC hears every MC every 0.2 s and would declare one lost after 100 s of silence.
SLOW_LOSS = {"heartbeat_interval_s": 0.2, "heartbeat_misses": 500}
IDLE_S = 1.0  # the clients notice a dead path this long after it died
LIMITS = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 3)
GRACE_S = 8.0


@attrs.define(eq=False)
class Machine:
    """An MC and its MH, which die together when ``scope`` is cancelled."""

    mc: meeting_controller.Running
    scope: trio.CancelScope
    gone: trio.Event


async def run_machine(
    stack: Services,
    ident: str,
    files: dict[str, str],
    *,
    task_status: trio.TaskStatus[Machine] = trio.TASK_STATUS_IGNORED,
) -> None:
    gone = trio.Event()
    assert stack.gc is not None
    try:
        with trio.CancelScope() as scope:
            async with (
                running_service(
                    meeting_controller.serve,
                    mc_settings(
                        controller_id=ident,
                        gc_grpc=stack.gc.grpc_endpoint,
                        resume_grace_s=GRACE_S,
                        idle_timeout_s=IDLE_S,
                        **files,
                    ),
                ) as (mc, _),
                running_service(
                    media_handler.serve, mh_settings(mc_grpc=netloc(*mc.grpc_address), **files)
                ) as (mh, _),
            ):
                with trio.fail_after(WAIT_S):
                    await mc.controller.mhs.wait_for(mh.handler_id)
                    assert mc.controller.refresh_keys is not None
                    await mc.controller.refresh_keys()  # registered, and heard by the GC
                task_status.started(Machine(mc, scope, gone))
                await trio.sleep_forever()
    finally:
        gone.set()


async def test_a_dead_mc_is_left_through_the_gc_before_its_heartbeat_timeout(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, gc=SLOW_LOSS) as stack, trio.open_nursery() as machines:
        assert stack.gc is not None
        files = {
            "certfile": str(stack.data_dir / DEV_CERT_FILE),
            "keyfile": str(stack.data_dir / DEV_KEY_FILE),
        }
        by_url: dict[str, Machine] = {}
        for ident in ("mc-a", "mc-b"):
            machine: Machine = await machines.start(run_machine, stack, ident, files)
            by_url[machine.mc.signal_url] = machine
        async with AsyncExitStack() as clients:
            owner = await clients.enter_async_context(stack.gc_client())
            meeting_id = (await owner.create_meeting("outlives its MC")).meeting_id

            async def join(gc: GlobalControllerClient, name: str) -> MeetingSession:
                return await clients.enter_async_context(
                    join_meeting_via_gc(
                        gc,
                        meeting_id,
                        name,
                        server_certificate_hashes=stack.pins,
                        resume_grace_s=GRACE_S,
                        transport_limits=LIMITS,
                    )
                )

            ann = await join(owner, "ann")
            bob = await join(owner.as_caller(None), "bob")
            await expect(ann, ParticipantJoined, lambda e: e.participant.name == "bob")
            ann_to_bob = await talking(ann, bob)
            await flows(*ann_to_bob)
            first = str((await owner.get_meeting(meeting_id))["meeting_controller_url"])
            (other,) = set(by_url) - {first}
            dead = by_url[first]
            dead_id = ControllerId(dead.mc.controller_id)
            died_at = trio.current_time()
            dead.scope.cancel()  # the machine dies
            await dead.gone.wait()

            seen: dict[str, list[SessionEvent]] = {"ann": [], "bob": []}

            async def rejoined(name: str, session: MeetingSession) -> None:
                seen[name].append(await expect(session, Rejoined, seen=seen[name]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rejoined, "ann", ann)
                nursery.start_soon(rejoined, "bob", bob)
            back_after = trio.current_time() - died_at
            for name in ("ann", "bob"):
                [rejoining] = [e for e in seen[name] if isinstance(e, Rejoining)]
                assert rejoining.reason is LeaveReason.CONNECTION_LOST, rejoining
            # Long before the GC's heartbeat timeout (100 s), and within the resume grace: the
            # GC was told, and found the MC unreachable itself.
            assert back_after < GRACE_S, back_after
            gc = stack.gc.controller
            assert (await gc.store.get_controller(dead_id)).health is HealthStatus.UNHEALTHY
            assert (await owner.get_meeting(meeting_id))["meeting_controller_url"] == other
            await flows(*ann_to_bob)
            await flows(*await talking(bob, ann))
        machines.cancel_scope.cancel()


# -- on fakes --------------------------------------------------------------------------------
MC1 = "https://mc-1/v1/signal"
MC2 = "https://mc-2/v1/signal"


@attrs.define
class FakeGcClient:
    """Records what each call told the GC (``unreachable_controller``); answers with
    ``info`` and tickets naming ``at``, or raises ``failure`` once."""

    info: dict[str, Any] = attrs.Factory(
        lambda: {"status": "active", "meeting_controller_url": MC1}
    )
    at: str = MC1
    failure: BaseException | None = None
    lookups: list[str] = attrs.Factory(list)
    joins: list[str] = attrs.Factory(list)
    can_reconnect: bool = False

    def _fail(self) -> None:
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    async def get_meeting(self, meeting_id: str, *, unreachable_controller: str = "") -> Any:
        await trio.lowlevel.checkpoint()
        self.lookups.append(unreachable_controller)
        self._fail()
        return self.info

    async def join_meeting(
        self, meeting_id: str, participant_name: str = "", *, unreachable_controller: str = ""
    ) -> JoinTicket:
        await trio.lowlevel.checkpoint()
        self.joins.append(unreachable_controller)
        self._fail()
        return JoinTicket(meeting_id, "token", self.at, "guest")


@attrs.define
class FakeDial:
    """An MC's connector whose join raises ``failure`` (None: joins)."""

    failure: BaseException | None = None

    @asynccontextmanager
    async def join(self, join_token: str) -> AsyncIterator[Any]:
        await trio.lowlevel.checkpoint()
        if self.failure is not None:
            raise self.failure
        yield object()

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def media(self, server: Any) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError


def rejoiner(gc: FakeGcClient, dial: FakeDial) -> GcRejoiner:
    client: Any = gc
    return GcRejoiner(client, "m", "ann", signal_url=MC1, dial_at=lambda url: dial)


async def test_a_failed_resume_names_the_mc_to_the_gc_once() -> None:
    gc, dial = FakeGcClient(), FakeDial()
    r = rejoiner(gc, dial)
    # the lookup after a failed resume attempt names the session's MC; the GC judged it alive
    assert not await r.moved()
    assert gc.lookups == [MC1]
    # a later rejoin (the grace passed) does not say it again: the GC heard it and judged
    ticket = await r.ticket()
    assert gc.joins == [""]
    async with r.connector(ticket).join(ticket.join_token):
        pass
    r.joined(ticket)
    gc.info = {"status": "controller_lost", "meeting_controller_url": MC1}
    assert await r.moved()


async def test_a_lookup_that_did_not_reach_the_gc_is_said_with_the_join() -> None:
    gc, dial = FakeGcClient(failure=trio.BrokenResourceError()), FakeDial()
    r = rejoiner(gc, dial)
    assert not await r.moved()  # the GC cannot say
    assert gc.lookups == [MC1]
    await r.ticket()
    await r.ticket()
    assert gc.joins == [MC1, ""]


@pytest.mark.parametrize(
    "failure", [ConnectFailed("no answer"), ConnectionRefusedError(), trio.BrokenResourceError()]
)
async def test_a_ticket_whose_mc_did_not_answer_is_named_with_the_next_join(
    failure: BaseException,
) -> None:
    gc, dial = FakeGcClient(at=MC2), FakeDial(failure)
    r = rejoiner(gc, dial)
    ticket = await r.ticket()  # a rejoin for SERVER_SHUTDOWN or a refused token: nothing said
    with pytest.raises(type(failure)):
        async with r.connector(ticket).join(ticket.join_token):
            pass
    await r.ticket()
    assert gc.joins == ["", MC2]


async def test_a_join_cut_short_by_its_attempt_deadline_names_the_mc() -> None:
    gc, dial = FakeGcClient(at=MC2), FakeDial()
    r = rejoiner(gc, dial)
    ticket = await r.ticket()
    with trio.CancelScope() as attempt:
        attempt.cancel()
        async with r.connector(ticket).join(ticket.join_token):
            pass
    await r.ticket()
    assert gc.joins == ["", MC2]


@pytest.mark.parametrize(
    "failure",
    [SignalingEnded(LeaveReason.SERVER_SHUTDOWN, "draining"), CapacityExceeded("no MH")],
)
async def test_an_mc_that_refuses_the_join_is_not_named(failure: BaseException) -> None:
    gc, dial = FakeGcClient(at=MC2), FakeDial(failure)
    r = rejoiner(gc, dial)
    ticket = await r.ticket()
    with pytest.raises(type(failure)):
        async with r.connector(ticket).join(ticket.join_token):
            pass
    await r.ticket()
    assert gc.joins == ["", ""]
