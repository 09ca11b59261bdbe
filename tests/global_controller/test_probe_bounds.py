"""The bounds on probing MCs (``_probes.ControllerProbes``, docs/protocol.md §14): one probe
per controller at a time, its result shared with whoever waits and reused for
``PROBE_CACHE_S``; a probe cancelled halfway teaches nothing and is not kept; a probe cut short
by a pause of the GC itself is made again. Virtual time, hand-written fakes for the MC calls
and the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from darktower.global_controller._limits import (
    PROBE_CACHE_S,
    PROBE_PAUSED_AFTER_S,
    PROBE_TIMEOUT_S,
)
from darktower.global_controller._probes import ControllerProbes
from darktower.global_controller.store import (
    ControllerCapacity,
    ControllerRecord,
    HealthStatus,
    MeetingRecord,
    MeetingSettings,
    MeetingStatus,
)
from darktower.model import ClientId, ControllerId, MeetingId

NOW = datetime(2026, 1, 16, 12, 0, tzinfo=UTC)


def controller(ident: str) -> ControllerRecord:
    return ControllerRecord(
        controller_id=ControllerId(ident),
        region="local",
        endpoint=f"127.0.0.1:1 https://{ident}/v1/signal",
        capacity=ControllerCapacity(max_meetings=10, max_participants=100),
        health=HealthStatus.HEALTHY,
        last_heartbeat=NOW,
        registered_at=NOW,
    )


MEETING = MeetingRecord(
    meeting_id=MeetingId("m-1"),
    display_name="m",
    max_participants=10,
    owner=ClientId("owner"),
    settings=MeetingSettings(),
    status=MeetingStatus.ACTIVE,
    controller_id=ControllerId("mc-1"),
    participant_count=0,
    created_at=NOW,
    ended_at=None,
)


@attrs.define
class FakeControllers:
    """Each probe takes ``delay_s`` and answers ``answer``."""

    answer: bool = True
    delay_s: float = 0.1
    probes: list[str] = attrs.Factory(list)

    async def probe(
        self, record: ControllerRecord, meeting: MeetingRecord, *, deadline_s: float
    ) -> bool:
        assert deadline_s == PROBE_TIMEOUT_S
        self.probes.append(record.controller_id)
        await trio.sleep(self.delay_s)
        return self.answer


@attrs.define
class FakeStore:
    expired: list[tuple[str, datetime]] = attrs.Factory(list)
    fail: bool = False

    async def expire_controller(self, controller_id: str, silent_since: datetime) -> bool:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise OSError("the store is gone")
        self.expired.append((controller_id, silent_since))
        return True


@attrs.define
class FakeDirectory:
    changes: int = 0

    def changed(self) -> None:
        self.changes += 1


@attrs.define
class FakeGc:
    controllers: FakeControllers = attrs.Factory(FakeControllers)
    store: FakeStore = attrs.Factory(FakeStore)
    directory: FakeDirectory = attrs.Factory(FakeDirectory)

    def now(self) -> float:
        return NOW.timestamp()


def probes_of(gc: FakeGc) -> ControllerProbes:
    fake: Any = gc
    return ControllerProbes(fake)


async def test_concurrent_askers_share_one_probe_and_its_result_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc = FakeGc()
    probes = probes_of(gc)
    answers: list[bool] = []

    async def ask(ident: str) -> None:
        answers.append(await probes.answers(controller(ident), MEETING))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask, "mc-1")
        nursery.start_soon(ask, "mc-2")  # another controller: its own probe
    assert answers == [True] * 51
    assert sorted(gc.controllers.probes) == ["mc-1", "mc-2"]
    await trio.sleep(PROBE_CACHE_S - 0.2)
    await ask("mc-1")
    assert gc.controllers.probes.count("mc-1") == 1  # kept
    await trio.sleep(0.2)
    await ask("mc-1")
    assert gc.controllers.probes.count("mc-1") == 2  # stale: probed again
    assert gc.store.expired == []


async def test_an_unanswered_probe_marks_the_controller_lost_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc = FakeGc(FakeControllers(answer=False, delay_s=PROBE_TIMEOUT_S))
    probes = probes_of(gc)
    answers: list[bool] = []

    async def ask() -> None:
        answers.append(await probes.answers(controller("mc-1"), MEETING))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
    assert answers == [False] * 10
    assert gc.controllers.probes == ["mc-1"]
    # silent since the probe began (the GC's clock)
    assert gc.store.expired == [("mc-1", NOW)]
    assert gc.directory.changes == 1


async def test_a_cancelled_probe_is_not_kept_and_its_waiters_change_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc = FakeGc(FakeControllers(answer=False, delay_s=PROBE_TIMEOUT_S))
    probes = probes_of(gc)
    waited: list[bool] = []

    async def wait_for_it() -> None:
        waited.append(await probes.answers(controller("mc-1"), MEETING))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.1):  # the request that started the probe goes away
            nursery.start_soon(wait_for_it)  # waits for the probe started just below
            await probes.answers(controller("mc-1"), MEETING)
    assert waited == [True]
    assert gc.store.expired == []
    # the next asker probes again at once
    assert not await probes.answers(controller("mc-1"), MEETING)
    assert gc.controllers.probes == ["mc-1", "mc-1"]


async def test_a_store_failure_reaches_the_prober_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc = FakeGc(FakeControllers(answer=False), FakeStore(fail=True))
    probes = probes_of(gc)
    with pytest.raises(OSError, match="the store is gone"):
        await probes.answers(controller("mc-1"), MEETING)
    gc.store.fail = False
    assert not await probes.answers(controller("mc-1"), MEETING)  # not kept: probed again
    assert len(gc.controllers.probes) == 2


@attrs.define
class PausedControllers:
    """Each probe goes unanswered after its deadline; the first ``pauses`` of them also see
    the GC stop running (the clock jumps) before it notices."""

    clock: trio.testing.MockClock
    pauses: int
    probes: int = 0

    async def probe(
        self, record: ControllerRecord, meeting: MeetingRecord, *, deadline_s: float
    ) -> bool:
        self.probes += 1
        await trio.sleep(deadline_s)
        if self.probes <= self.pauses:
            self.clock.jump(PROBE_PAUSED_AFTER_S)
        return False


@pytest.mark.parametrize("pauses", [0, 1, 2])
async def test_a_probe_cut_short_by_a_pause_of_the_gc_is_made_again_once(
    autojump_clock: trio.testing.MockClock, pauses: int
) -> None:
    fake = PausedControllers(autojump_clock, pauses)
    gc = FakeGc(fake)  # type: ignore[arg-type]
    probes = probes_of(gc)
    assert not await probes.answers(controller("mc-1"), MEETING)
    # No pause: the MC's silence is enough. A pause: once more, and a second one is not
    # excused (the MC stays silent while this GC runs, or this GC cannot tell).
    assert fake.probes == {0: 1, 1: 2, 2: 2}[pauses]
    assert gc.store.expired == [("mc-1", NOW)]


async def test_an_mc_that_answers_the_probe_made_again_after_a_pause_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @attrs.define
    class AnswersSecond(PausedControllers):
        async def probe(
            self, record: ControllerRecord, meeting: MeetingRecord, *, deadline_s: float
        ) -> bool:
            return await super().probe(record, meeting, deadline_s=deadline_s) or (self.probes > 1)

    gc = FakeGc(AnswersSecond(autojump_clock, pauses=1))  # type: ignore[arg-type]
    assert await probes_of(gc).answers(controller("mc-1"), MEETING)
    assert gc.store.expired == []
