"""Bounds on what one slow peer or one removed client costs the GC, on virtual time: the
housekeeping round's calls to MCs (empty meetings) and the store reads of a removed client's
still-valid access token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from darktower.errors import CapacityExceeded, NotFound, Unauthorized
from darktower.global_controller import (
    CLIENT_RECHECK_S,
    END_EMPTY_NOTIFY_S,
    MAX_CONCURRENT_END_CALLS,
    GlobalController,
    Tokens,
)
from darktower.global_controller.store import (
    ClientRecord,
    ControllerCapacity,
    ControllerRecord,
    HealthStatus,
    MeetingRecord,
    MeetingSettings,
    MeetingStatus,
)
from darktower.model import ClientId, ControllerId, MeetingId
from darktower.protocol.tokens import AccessTokenIssuer, AccessTokenVerifier, JoinTokenIssuer

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
RPC_DEADLINE_S = 5.0  # what GrpcMeetingControllers' default deadline costs per unanswered call


def _controller(n: int) -> ControllerRecord:
    return ControllerRecord(
        controller_id=ControllerId(f"mc-{n}"),
        region="eu",
        endpoint=f"127.0.0.1:{n} https://127.0.0.1:{n}/",
        capacity=ControllerCapacity(max_meetings=100, max_participants=1000),
        health=HealthStatus.HEALTHY,
        last_heartbeat=EPOCH,
        registered_at=EPOCH,
    )


def _meeting(n: int, controller: ControllerRecord) -> MeetingRecord:
    return MeetingRecord(
        meeting_id=MeetingId(f"m-{n}"),
        display_name="m",
        max_participants=10,
        settings=MeetingSettings(),
        owner=ClientId("alice"),
        controller_id=controller.controller_id,
        status=MeetingStatus.ENDED,
        participant_count=0,
        created_at=EPOCH,
        ended_at=EPOCH,
    )


class FakeStore:
    """What these paths of the GC read: ended meetings, controllers, clients (counted)."""

    def __init__(self, ended: list[MeetingRecord], controllers: list[ControllerRecord]) -> None:
        self.ended = ended
        self.controllers = controllers
        self.clients: dict[str, ClientRecord] = {}
        self.client_reads = 0

    async def end_empty_meetings(self, cutoff: datetime) -> list[MeetingRecord]:
        await trio.lowlevel.checkpoint()
        ended, self.ended = self.ended, []
        return ended

    async def list_controllers(self) -> list[ControllerRecord]:
        await trio.lowlevel.checkpoint()
        return self.controllers

    async def get_client(self, client_id: ClientId) -> ClientRecord:
        await trio.lowlevel.checkpoint()
        self.client_reads += 1
        found = self.clients.get(client_id)
        if found is None:
            raise NotFound(f"client {client_id}")
        return found


class SlowControllers:
    """End calls take 10 ms; those to a ``dead`` controller time out after the RPC deadline
    (``CapacityExceeded``), those to a ``blackholed`` one never return."""

    def __init__(
        self, dead: frozenset[str] = frozenset(), blackholed: frozenset[str] = frozenset()
    ) -> None:
        self.dead, self.blackholed = dead, blackholed
        self.told: list[str] = []
        self.calls: dict[str, int] = {}
        self.in_flight = self.most_in_flight = 0

    async def end_meeting(
        self, controller: ControllerRecord, meeting_id: MeetingId, reason: str = "ended"
    ) -> None:
        cid = controller.controller_id
        self.calls[cid] = self.calls.get(cid, 0) + 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if cid in self.blackholed:
                await trio.sleep_forever()
            if cid in self.dead:
                await trio.sleep(RPC_DEADLINE_S)
                raise CapacityExceeded(f"meeting controller {cid} is unreachable")
            await trio.sleep(0.01)
            self.told.append(meeting_id)
        finally:
            self.in_flight -= 1


def _gc(store: FakeStore, controllers: Any, clock: Any = None) -> GlobalController:
    access = Ed25519PrivateKey.generate()
    tokens = Tokens(
        join=JoinTokenIssuer(Ed25519PrivateKey.generate()),
        access=AccessTokenIssuer(access),
        access_verifier=AccessTokenVerifier(access.public_key()),
    )
    return GlobalController(
        store,  # type: ignore[arg-type]
        tokens,
        controllers,
        public_url="https://gc.example",
        heartbeat_timeout_s=30.0,
        empty_meeting_timeout_s=600.0,
        clock=clock or (lambda: EPOCH.timestamp() + trio.current_time()),
    )


def _spread(controllers: list[ControllerRecord], per_controller: int) -> list[MeetingRecord]:
    return [
        _meeting(i * per_controller + j, c)
        for i, c in enumerate(controllers)
        for j in range(per_controller)
    ]


async def test_an_unreachable_mc_costs_one_deadline_not_one_per_meeting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mcs = [_controller(1), _controller(2)]
    store = FakeStore(_spread(mcs, 10), mcs)
    controllers = SlowControllers(dead=frozenset({"mc-1"}))
    gc = _gc(store, controllers)
    started = trio.current_time()
    with trio.fail_after(60):  # virtual seconds
        ended = await gc.end_empty_meetings()
    assert len(ended) == 20  # all ended in the store
    assert trio.current_time() - started == pytest.approx(RPC_DEADLINE_S)  # was 10 calls of 5 s
    assert controllers.calls["mc-1"] == 1  # not asked again after its first failure
    assert sorted(controllers.told) == sorted(m.meeting_id for m in _spread(mcs, 10)[10:])


async def test_a_blackholed_mc_stops_the_round_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mcs = [_controller(n) for n in range(3)]
    store = FakeStore(_spread(mcs, 2), mcs)
    controllers = SlowControllers(blackholed=frozenset({"mc-0"}))
    gc = _gc(store, controllers)
    started = trio.current_time()
    with trio.fail_after(60):  # virtual seconds
        assert len(await gc.end_empty_meetings()) == 6
    assert trio.current_time() - started == pytest.approx(END_EMPTY_NOTIFY_S)
    assert len(controllers.told) == 4  # the other two controllers' meetings, told at once


async def test_controllers_are_told_concurrently_with_a_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mcs = [_controller(n) for n in range(20)]
    store = FakeStore(_spread(mcs, 3), mcs)
    controllers = SlowControllers()
    gc = _gc(store, controllers)
    started = trio.current_time()
    with trio.fail_after(60):  # virtual seconds
        await gc.end_empty_meetings()
    assert len(controllers.told) == 60
    assert controllers.most_in_flight == MAX_CONCURRENT_END_CALLS
    # 20 controllers, 8 at a time, 3 calls of 10 ms each: three waves of 30 ms.
    assert trio.current_time() - started == pytest.approx(0.09)


async def test_a_removed_clients_token_costs_one_store_read_per_recheck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore([], [])
    alice = ClientId("alice")
    store.clients[alice] = ClientRecord(alice, "alice", "hash", EPOCH)
    gc = _gc(store, SlowControllers())
    header = "Bearer " + gc.tokens.access.issue(alice, ("meetings",), gc.now())
    assert (await gc.access.authenticate(header)).client_id == alice
    assert store.client_reads == 1
    del store.clients[alice]  # `clients remove`
    await trio.sleep(CLIENT_RECHECK_S)
    for _ in range(100):
        with pytest.raises(Unauthorized, match="removed"):
            await gc.access.authenticate(header)
    assert store.client_reads == 2  # one read found it gone; the other 99 remembered that
    await trio.sleep(CLIENT_RECHECK_S)
    with pytest.raises(Unauthorized, match="removed"):
        await gc.access.authenticate(header)
    assert store.client_reads == 3
    # Back (the same id registered again): seen within CLIENT_RECHECK_S.
    store.clients[alice] = ClientRecord(alice, "alice", "hash", EPOCH)
    await trio.sleep(CLIENT_RECHECK_S)
    assert (await gc.access.authenticate(header)).client_id == alice
    assert store.client_reads == 4


async def test_an_empty_meeting_timeout_of_zero_means_never() -> None:
    mcs = [_controller(1)]
    store = FakeStore(_spread(mcs, 2), mcs)
    gc = _gc(store, SlowControllers())
    gc.empty_meeting_timeout_s = 0.0
    assert await gc.end_empty_meetings() == []
    assert len(store.ended) == 2  # the store was not even asked
