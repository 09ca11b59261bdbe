"""The keep-registered loop on virtual time against a fake peer: register, heartbeat at the
peer's interval, register again when the peer forgets us, back off doubling up to a maximum,
and ``fresh(now)`` for readiness."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from darktower.errors import NotFound
from darktower.servicekit import READY_FLOOR_S, KeepRegistered

BACKOFF_S = 0.5
BACKOFF_MAX_S = 10.0
DEFAULT_INTERVAL_S = 5.0


class Unreachable(Exception):
    """The fake peer is down."""


class FakePeer:
    """Records each call with its virtual time; can be down, or forget us once."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.calls: list[tuple[str, float]] = []
        self.down = False
        self.forget = False

    async def register(self) -> float:
        await trio.lowlevel.checkpoint()
        self.calls.append(("register", trio.current_time()))
        if self.down:
            raise Unreachable("connection refused")
        return self.interval_s

    async def heartbeat(self) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(("heartbeat", trio.current_time()))
        if self.down:
            raise Unreachable("connection refused")
        if self.forget:
            self.forget = False
            raise NotFound("who are you?")

    def times(self, kind: str) -> list[float]:
        return [t for k, t in self.calls if k == kind]


def _keeper() -> KeepRegistered:
    return KeepRegistered(
        peer_name="MC",
        address="127.0.0.1:50052",
        default_interval_s=DEFAULT_INTERVAL_S,
        backoff_s=BACKOFF_S,
        backoff_max_s=BACKOFF_MAX_S,
        retry_on=(NotFound, Unreachable),
        log=logging.getLogger("tests.servicekit"),
    )


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_backoff_doubles_up_to_the_maximum_and_resets_once_registered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(), _keeper()
    peer.down = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(35.6)  # attempts at 0, .5, 1.5, 3.5, 7.5, 15.5, 25.5, 35.5
        assert _gaps(peer.times("register")) == [0.5, 1, 2, 4, 8, 10, 10]
        assert not keeper.registered and not keeper.fresh(trio.current_time())

        peer.down = False  # the next attempt (at 45.5) registers
        await trio.sleep(10)
        assert keeper.registered and keeper.fresh(trio.current_time())
        peer.forget = True  # the heartbeat at 46.5 fails: registers again after 0.5 s
        await trio.sleep(1.5)
        assert peer.calls[-3:] == [("register", 45.5), ("heartbeat", 46.5), ("register", 47.0)]
        nursery.cancel_scope.cancel()


async def test_heartbeats_at_the_peers_interval_and_registers_again_when_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=1.0), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(2.5)
        peer.forget = True
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    assert peer.calls == [
        ("register", 0.0),
        ("heartbeat", 1.0),
        ("heartbeat", 2.0),
        ("heartbeat", 3.0),  # NotFound: the peer forgot us
        ("register", 3.5),  # after the first backoff step
        ("heartbeat", 4.5),
    ]
    assert keeper.interval_s == 1.0


async def test_the_default_interval_when_the_peer_says_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=0.0), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(2 * DEFAULT_INTERVAL_S + 0.1)
        nursery.cancel_scope.cancel()
    assert peer.times("heartbeat") == [DEFAULT_INTERVAL_S, 2 * DEFAULT_INTERVAL_S]
    assert keeper.interval_s == DEFAULT_INTERVAL_S


async def test_fresh_goes_false_after_the_missed_beats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=1.0), _keeper()
    assert not keeper.fresh(trio.current_time())  # never heard from the peer
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(2.5)
        assert keeper.fresh(trio.current_time())
        peer.down = True  # the beat at 3 fails, and every registration after it
        last_ok = 2.0
        await trio.sleep_until(last_ok + 3 * 1.0 - 0.01)
        assert keeper.fresh(trio.current_time())
        await trio.sleep_until(last_ok + 3 * 1.0 + 0.01)
        assert not keeper.fresh(trio.current_time())
        assert keeper.registered  # registered once (what the MH's readiness asks)
        nursery.cancel_scope.cancel()
    assert keeper.fresh(last_ok + 3.0) and not keeper.fresh(last_ok + 3.0 + 1e-6)


async def test_fresh_never_narrower_than_the_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, keeper = FakePeer(interval_s=0.1), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(0.05)
        peer.down = True
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert keeper.fresh(READY_FLOOR_S) and not keeper.fresh(READY_FLOOR_S + 1e-6)


async def test_beat_now_heartbeats_at_once(autojump_clock: trio.testing.MockClock) -> None:
    peer, keeper = FakePeer(interval_s=3600.0), _keeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, peer)
        await trio.sleep(10)
        keeper.beat_now()
        await trio.testing.wait_all_tasks_blocked()
        assert peer.calls == [("register", 0.0), ("heartbeat", 10.0)]
        await trio.sleep(3600.5)
        assert peer.times("heartbeat") == [10.0, 3610.0]  # the interval counts from the beat
        nursery.cancel_scope.cancel()


async def test_an_error_it_does_not_retry_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken(FakePeer):
        async def register(self) -> float:
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await _keeper().run(Broken())
