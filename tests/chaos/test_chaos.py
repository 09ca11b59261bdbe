"""A randomized fault schedule against the services as processes (docs/architecture.md §9),
run by ``nox -s chaos`` and skipped otherwise.

The cluster of tests/e2e/_fault_cluster.py with two MHs behind each MC (seven processes);
MEETINGS meetings of PER_MEETING client-library participants each (tests/e2e/_fault_peers.py:
joined through the GC, audio to and from everyone). For ``DARKTOWER_CHAOS_S`` seconds (default
120) a random service is killed with SIGKILL every few seconds, stays down a random moment and
is started again (one service down at a time). Then, within SETTLE_S, the run must end with:

- no meeting lost: each is ``active`` at the GC;
- every participant either in — connected, listing every other participant still in by name,
  hearing each of them — or told why: its session's end reason and message;
- no process, port or file left behind once everyone left and every service drained.

It prints the seed (``DARKTOWER_CHAOS_SEED`` replays a schedule), each kill and a summary.
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack

import pytest
import trio

from darktower.client import open_gc_client
from tests.e2e._fault_cluster import FaultCluster, Topology, fault_cluster
from tests.e2e._fault_peers import Peer, everyone_sees_everyone, joined, media_back

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(os.environ.get("DARKTOWER_CHAOS") != "1", reason="a long run: nox -s chaos"),
]

MEETINGS = 2
PER_MEETING = 3
DURATION_S = float(os.environ.get("DARKTOWER_CHAOS_S", "120"))
DOWN_S = (0.0, 3.0)  # how long a killed service stays down
PAUSE_S = (1.0, 4.0)  # between a service's return and the next kill
# After the last kill: a participant that was rejoining has its rejoin window (60 s) to finish.
SETTLE_S = 90.0
MEDIA_BOUND_S = 20.0
STATUS_POLL_S = 0.2  # between looks at the GC's view of a meeting (another process)
TOPOLOGY = Topology(mhs={"mc-a": 2, "mc-b": 2})
NAMES = ("ann", "bob", "cid", "dan", "eve", "fay", "gus", "hal", "ivy")


async def _schedule(
    cluster: FaultCluster, rng: random.Random, say: Callable[[str], None]
) -> list[tuple[str, float]]:
    """Kill and restart random services until DURATION_S has passed; (victim, downtime) each."""
    kills: list[tuple[str, float]] = []
    began = trio.current_time()
    while trio.current_time() - began < DURATION_S:
        victim = rng.choice(sorted(cluster.specs))
        killed_at = await cluster.kill(victim)
        await trio.sleep(rng.uniform(*DOWN_S))  # the schedule's pace, not a wait
        await cluster.start(victim)
        down = trio.current_time() - killed_at
        kills.append((victim, down))
        say(f"  {killed_at - began:6.1f} s: SIGKILL {victim}, ready again after {down:.1f} s")
        await trio.sleep(rng.uniform(*PAUSE_S))  # the schedule's pace
    return kills


async def _meeting_status(cluster: FaultCluster, meeting_id: str) -> str:
    """The GC's status of the meeting once it says ``active`` (or the last within SETTLE_S)."""
    status = "unknown"
    async with open_gc_client(cluster.gc_url, server_certificate_hashes=cluster.pins) as gc:
        with trio.move_on_after(SETTLE_S):
            while status != "active":
                status = str((await gc.get_meeting(meeting_id))["status"])
                if status != "active":
                    await trio.sleep(STATUS_POLL_S)  # another process's state: poll
    return status


def _told_why(peer: Peer) -> bool:
    return peer.session.end_reason is not None and bool(peer.session.end_message)


async def _settled(meetings: Mapping[str, Sequence[Peer]], say: Callable[[str], None]) -> None:
    for meeting_id, peers in meetings.items():
        await everyone_sees_everyone(peers, SETTLE_S)
        delays = await media_back(peers, trio.current_time(), MEDIA_BOUND_S)
        say(f"  meeting {meeting_id}: {len(delays)} audio paths flowing")


@pytest.mark.slow
async def test_random_kills_lose_no_meeting_and_nobody_unexplained(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    seed = int(os.environ.get("DARKTOWER_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    say(f"\nchaos: seed {seed}, {DURATION_S:g} s of kills, {MEETINGS} meetings of {PER_MEETING}")
    async with fault_cluster(tmp_path, TOPOLOGY) as cluster:
        async with AsyncExitStack() as clients:
            owner = await clients.enter_async_context(
                open_gc_client(cluster.gc_url, server_certificate_hashes=cluster.pins)
            )
            await owner.authenticate(cluster.client_id, cluster.client_secret)
            guest = owner.as_caller(None)
            meetings: dict[str, list[Peer]] = {}
            names = iter(NAMES)
            for m in range(MEETINGS):
                created = await owner.create_meeting(f"chaos {m}")
                meetings[created.meeting_id] = [
                    await clients.enter_async_context(
                        joined(
                            owner if i == 0 else guest,
                            created.meeting_id,
                            next(names),
                            cluster.pins,
                        )
                    )
                    for i in range(PER_MEETING)
                ]
            await _settled(meetings, say)
            kills = await _schedule(cluster, rng, say)
            say(f"chaos: {len(kills)} kills: {dict(collections.Counter(v for v, _ in kills))}")
            await _settled(meetings, say)
            statuses = {m: await _meeting_status(cluster, m) for m in meetings}
            peers = [p for ps in meetings.values() for p in ps]
            for peer in peers:
                say(f"  {peer.state()}")
            say(f"chaos: meetings {statuses}")
            assert set(statuses.values()) == {"active"}, statuses
            unexplained = [p.state() for p in peers if not p.live and not _told_why(p)]
            assert unexplained == [], unexplained
            ended = [p.name for p in peers if not p.live]
            say(f"chaos: {len(peers) - len(ended)} participants in, ended (told why): {ended}")
        await cluster.stop_all()
        tracebacks = cluster.tracebacks()
        say(f"chaos: {len(cluster.started)} processes started in all; tracebacks: {tracebacks}")
        assert tracebacks == []
    cluster.assert_nothing_left()
    say("chaos: no process, port or file left behind")
