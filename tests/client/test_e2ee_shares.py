"""How a session sends its key shares (docs/protocol.md §16.2, §16.3), over fake connections on
virtual time: a rotation in a large room reaches everyone in a few round trips (requests in
flight at once, bounded), RATE_LIMITED is retried after its retry_after, and a queued share is
dropped when a newer one to the same recipient supersedes it or its recipient leaves."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from darktower.client import SHARES_IN_FLIGHT
from darktower.errors import RateLimited
from darktower.model import LeaveReason
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import FakeNetwork, FakeSignaling
from .test_e2ee import Peer, encrypted, shares

RTT_S = 0.05


class Wire:
    """The signaling connection's key share requests, each taking ``rtt_s``: what was sent,
    when, and how many were in flight at once."""

    def __init__(self, signaling: FakeSignaling, rtt_s: float = RTT_S) -> None:
        self._request: Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]] = (
            signaling.request
        )
        self.rtt_s = rtt_s
        self.sent: list[tuple[str, str]] = []  # (recipient, key_id)
        self.in_flight = self.most_in_flight = 0
        self.rate_limited: collections.Counter[str] = collections.Counter()  # to answer so
        self.changed = trio.Event()
        signaling.request = self.request  # type: ignore[method-assign]

    async def request(self, message: sig.ClientMessage) -> sig.ServerMessage:
        if message.WhichOneof("message") != "key_share":
            return await self._request(message)
        share = message.key_share
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(self.rtt_s)
            if self.rate_limited[share.to_participant_id]:
                self.rate_limited[share.to_participant_id] -= 1
                raise RateLimited("slow down", retry_after_s=1.0)
            self.sent.append((share.to_participant_id, share.key_id))
            return sig.ServerMessage(ack=sig.Ack())
        finally:
            self.in_flight -= 1
            self.changed.set()

    async def until_sent(self, n: int) -> None:
        with trio.fail_after(60):
            while len(self.sent) < n:
                await self.changed.wait()
                self.changed = trio.Event()


def leave(pid: str) -> sig.ServerMessage:
    reason = leave_reason_to_pb(LeaveReason.VOLUNTARY)
    return sig.ServerMessage(
        participant_left=sig.ParticipantLeft(participant_id=pid, reason=reason)
    )


async def test_a_rotation_in_a_room_of_100_reaches_everyone_in_a_few_round_trips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [Peer(f"p{i:03}") for i in range(100)]
    async with encrypted(FakeNetwork(), *(p.pb() for p in peers)) as (_, signaling, __, ___):
        await trio.testing.wait_all_tasks_blocked()
        assert len(shares(signaling)) == 100
        wire = Wire(signaling)
        start = trio.current_time()
        signaling.push(leave("p000"))  # a rotation: a share to each of the 99 left
        await wire.until_sent(99)
        took = trio.current_time() - start
        assert took <= 7 * RTT_S + 0.01  # 99 / 16 requests at once: 7 round trips
        assert took < 1.0  # inside the receivers' 2 s pending window (one by one: 4.95 s)
        assert wire.most_in_flight == SHARES_IN_FLIGHT
        assert sorted(to for to, _ in wire.sent) == [p.pid for p in peers[1:]]
        assert {key for _, key in wire.sent} == {"1"}


async def test_rate_limited_shares_are_sent_again_after_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, bob = Peer("ann"), Peer("bob")
    async with encrypted(FakeNetwork(), ann.pb(), bob.pb()) as (session, signaling, _, __):
        await trio.testing.wait_all_tasks_blocked()
        shares(signaling)
        wire = Wire(signaling)
        wire.rate_limited["ann"] = 2
        start = trio.current_time()
        signaling.push(leave("carol-unknown"))  # a leave: a rotation for ann and bob
        await wire.until_sent(2)
        assert wire.sent == [("bob", "1"), ("ann", "1")]
        assert trio.current_time() - start >= 2.0  # two retry_afters of 1 s
        assert session.e2ee.shares_failed == 0 and session.e2ee.shares_sent == 4


async def test_a_queued_share_superseded_or_whose_recipient_left_is_not_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [Peer(f"p{i:02}") for i in range(40)]
    async with encrypted(FakeNetwork(), *(p.pb() for p in peers)) as (session, signaling, _, __):
        await trio.testing.wait_all_tasks_blocked()
        shares(signaling)
        wire = Wire(signaling, rtt_s=1.0)
        signaling.push(leave("p00"))  # g1 for p01..p39: 16 in flight, 23 queued
        await trio.testing.wait_all_tasks_blocked()
        assert wire.in_flight == SHARES_IN_FLIGHT
        signaling.push(leave("p39"))  # g2 for p01..p38: supersedes the queued g1 shares
        await wire.until_sent(16 + 38)
        await trio.testing.wait_all_tasks_blocked()
        assert len(wire.sent) == 16 + 38
        assert all(to != "p39" for to, _ in wire.sent)  # it left before its share went
        first = [p.pid for p in peers[1:17]]
        assert sorted(to for to, key in wire.sent if key == "1") == first  # those in flight only
        assert sorted(to for to, key in wire.sent if key == "2") == [p.pid for p in peers[1:39]]
        assert session.e2ee.shares_dropped == 22 + 1
        assert session.e2ee.generation == 2
