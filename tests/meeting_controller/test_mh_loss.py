"""An MH is declared lost when it misses two heartbeats (counted while the MC runs) or its
telemetry stream's connection breaks (docs/architecture.md §4.6): once per loss, it takes no
rooms until it registers again, and it is forgotten: a heartbeat from it is answered NOT_FOUND
(it registers again). The room move that follows, with real worker processes:
tests/e2e/test_mh_failover.py."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.meeting_controller import GrpcMediaLink, MediaHandlers
from darktower.meeting_controller._limits import MH_LOSS_CHECK_S
from darktower.meeting_controller._mh import MH_LOST_AFTER_S
from darktower.protocol.heartbeats import MH_HEARTBEAT_INTERVAL_S
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb


class Stub:
    """A stub is all ``usable`` looks at; nothing is called."""


def _pool(lost: list[str], *ids: str, static: str = "") -> MediaHandlers:
    pool = MediaHandlers(lambda event: None)
    pool.on_lost = lambda link: lost.append(link.handler_id)
    now = trio.current_time()
    for ident in (*ids, *([static] if static else [])):
        link = GrpcMediaLink(ident, ("127.0.0.1", 1), stub=Stub(), last_seen=now)  # type: ignore[arg-type]
        link.static = ident == static
        pool.links[ident] = link
    return pool


def _beat(pool: MediaHandlers, ident: str) -> bool:
    beat = mtg_pb.MediaHandlerHeartbeat(handler_id=ident, health=common_pb2.HEALTHY)
    return pool.heartbeat(beat, trio.current_time())


def _timed_pool(*ids: str) -> tuple[MediaHandlers, list[tuple[str, float]]]:
    """A pool whose losses are kept with the time each was declared."""
    lost: list[tuple[str, float]] = []
    pool = _pool([], *ids)
    pool.on_lost = lambda link: lost.append((link.handler_id, trio.current_time()))
    return pool, lost


async def _silent_from(last_beat: float, lost: list[tuple[str, float]]) -> None:
    """No beat after ``last_beat`` while the MC runs: the MH is lost once, within the bound
    plus one check period of that beat."""
    await trio.sleep(2 * MH_LOST_AFTER_S)
    [(_, lost_at)] = lost
    assert MH_LOST_AFTER_S < lost_at - last_beat <= MH_LOST_AFTER_S + MH_LOSS_CHECK_S


async def test_an_mh_that_misses_two_heartbeats_is_declared_lost_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lost: list[str] = []
    pool = _pool(lost, "quiet", "beating", static="static")
    noticed_at: list[float] = []
    pool.on_lost = lambda link: (
        lost.append(link.handler_id),
        noticed_at.append(trio.current_time()),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        start = trio.current_time()  # "quiet" was last seen now
        while trio.current_time() - start < 3 * MH_LOST_AFTER_S:
            assert _beat(pool, "beating")
            await trio.sleep(MH_HEARTBEAT_INTERVAL_S)
        assert lost == ["quiet"]  # once; a static MH (no heartbeats) is never declared lost
        # Noticed within two heartbeat intervals, plus one check period at most.
        assert noticed_at[0] - start <= MH_LOST_AFTER_S + MH_LOSS_CHECK_S
        now = trio.current_time()
        assert "quiet" not in pool.links  # forgotten: it registers again if it lives
        assert pool.links["beating"].usable(now)
        assert pool.choose(now) is pool.links["beating"]
        assert not _beat(pool, "quiet")  # answered NOT_FOUND: it registers again
        nursery.cancel_scope.cancel()


async def test_a_pause_of_the_mc_itself_is_not_silence_of_its_mhs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stalled machine pauses the MC's loss check and the heartbeats alike; the beat sent
    during the pause is read after the check wakes. The pause does not count as the MH's
    silence: only silence while the MC runs does."""
    pool, lost = _timed_pool("mh")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        for _ in range(3):
            await trio.sleep(MH_HEARTBEAT_INTERVAL_S)
            assert _beat(pool, "mh")
        autojump_clock.jump(2 * MH_LOST_AFTER_S)  # nothing runs for this long
        await trio.testing.wait_all_tasks_blocked()  # the loss check wakes first
        assert lost == []
        assert _beat(pool, "mh")  # the beat the pause held back
        for _ in range(5):
            await trio.sleep(MH_HEARTBEAT_INTERVAL_S)
            assert _beat(pool, "mh")
        assert lost == []
        await _silent_from(trio.current_time(), lost)  # silence while the MC runs counts
        nursery.cancel_scope.cancel()


async def test_a_pause_is_no_credit_for_a_beat_read_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A beat read after the pause, before the check wakes, is not moved past its time: an MH
    that then goes silent is lost within the usual bound of that beat."""
    pool, lost = _timed_pool("mh")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        autojump_clock.jump(2 * MH_LOST_AFTER_S)
        assert _beat(pool, "mh")  # read first; the check wakes after it
        await _silent_from(trio.current_time(), lost)
        nursery.cancel_scope.cancel()


async def test_a_lost_mh_that_registers_again_is_a_new_usable_link(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[str] = []
    usable: list[str] = []
    pool = _pool(lost, "mh")
    pool.on_usable = lambda link: usable.append(link.handler_id)
    old = pool.links["mh"]
    pool.declare_lost(old)
    pool.declare_lost(old)
    assert lost == ["mh"]

    async def run(self: GrpcMediaLink, *args: object, task_status: trio.TaskStatus[None]) -> None:
        self.stub = Stub()  # type: ignore[assignment]
        task_status.started()
        await trio.sleep_forever()

    monkeypatch.setattr(GrpcMediaLink, "run", run)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        register = mtg_pb.RegisterMediaHandler(handler_id="mh", endpoint="127.0.0.1:1")
        await pool.register(register, trio.current_time())
        new = pool.links["mh"]
        assert new is not old and new.usable(trio.current_time())
        assert usable == ["mh"] and lost == ["mh"]
        nursery.cancel_scope.cancel()
