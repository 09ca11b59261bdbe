"""The keep-registered loop once registered, on virtual time: the wait between attempts never
exceeds the heartbeat interval the peer asked for, so a peer that restarts (a GC with its
startup grace of one heartbeat timeout, docs/protocol.md §14) hears from us within one interval
however long it was gone."""

from __future__ import annotations

import trio
import trio.testing

from darktower.protocol.heartbeats import HEARTBEAT_MISSES

from .test_keep_registered import BACKOFF_MAX_S, BACKOFF_S, FakePeer, _gaps, _keeper

INTERVAL_S = 1.0  # shorter than BACKOFF_MAX_S: a GC configured with a fast heartbeat


async def test_once_registered_attempts_come_within_the_peers_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=INTERVAL_S), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(0.5)  # registered at 0
        peer.down = True  # the heartbeat at 1 fails, and every registration after it
        await trio.sleep(60)
        registers = peer.times("register")
        # 1.5 (the first backoff step), then one a second: never the 10 s maximum.
        assert registers[:3] == [0.0, 1.5, 2.5]
        assert set(_gaps(registers[1:])) == {INTERVAL_S}
        peer.down = False  # back after a minute: within one interval it is registered again
        back = trio.current_time()
        await trio.sleep(INTERVAL_S)
        assert peer.times("register")[-1] - back <= INTERVAL_S
        assert keeper.fresh(trio.current_time())
        assert INTERVAL_S < HEARTBEAT_MISSES * INTERVAL_S  # the peer's grace covers it
        nursery.cancel_scope.cancel()


async def test_never_faster_than_the_first_backoff_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=0.1), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(0.05)
        peer.down = True
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    gaps = _gaps(peer.times("register")[1:])
    assert gaps and set(gaps) == {BACKOFF_S}  # capped at max(interval, first step)
    assert BACKOFF_S < BACKOFF_MAX_S
