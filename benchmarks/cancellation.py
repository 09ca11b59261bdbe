"""Cancellation cost of the task tree against plain trio nurseries (the floor).

Figures (same process, interleaved A/B rounds as BENCHMARKS.md asks):

* kick latency: ``participant.leave(KICKED)`` → ``wait_closed()`` returned, one participant of
  4 stream tasks, in a tree of 100 meetings x 10 participants x 4 streams; floor: cancelling a
  plain nursery of 4 tasks in the same loaded process.
* meeting end: ``meeting.end()`` → ``wait_closed()`` for a meeting of 100 participants x 4
  streams (400 stream tasks); floor: 400 plain tasks in one flat nursery cancelled at once.
* memory per idle participant scope (tracemalloc), next to a bare task + nursery.
* tasks left after many join/leave cycles (trio's own task tree, and the registry).

Goals: kick p99 ≤ 1 ms, meeting end ≤ 2x floor, ≤ 8 KB per idle participant, 0 tasks left.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import emit, flatten, parser, percentiles, ratio_summary, summary

from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Meeting, Participant, TaskTree

STREAMS = 4


async def _join(meeting: Meeting, pid: str) -> Participant:
    p = await meeting.start_participant(ParticipantId(pid))
    for s in range(STREAMS):
        await p.start_stream(f"s{s}", trio.sleep_forever)
    return p


async def _plain_participant(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(STREAMS):
            nursery.start_soon(trio.sleep_forever)
        task_status.started(nursery.cancel_scope)


def _count_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    n, todo = 0, [root]
    while todo:
        task = todo.pop()
        n += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return n


class _Window:
    """The timed window of one kick; with ``no_gc`` the collector is paused inside it only.

    Allocations made in the window are still collected, just after it: this separates the
    mechanism's latency from collector pauses triggered by whatever else the process does
    (here, the rejoins between kicks). Both figures are reported.
    """

    def __init__(self, no_gc: bool) -> None:
        self.no_gc = no_gc
        self.t0 = 0.0

    def __enter__(self) -> _Window:
        if self.no_gc:
            gc.disable()
        self.t0 = time.perf_counter()
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __exit__(self, *exc: object) -> None:
        if self.no_gc:
            gc.enable()


async def _plain_owner(done: trio.Event, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    try:
        await _plain_participant(task_status=task_status)
    finally:
        done.set()


async def kick_round(tree: TaskTree, kicks: int, serial: list[int], no_gc: bool) -> list[float]:
    meetings = list(tree.meetings.values())
    out = []
    for i in range(kicks):
        meeting = meetings[i % len(meetings)]
        victim = next(iter(meeting.participants.values()))
        await trio.testing.wait_all_tasks_blocked()
        with _Window(no_gc) as window:
            victim.leave(LeaveReason.KICKED)
            await victim.wait_closed()
            out.append(window.elapsed())
        serial[0] += 1
        await _join(meeting, f"r{serial[0]}")  # keep the tree at full size
    return out


async def plain_kick_round(nursery: trio.Nursery, kicks: int, no_gc: bool) -> list[float]:
    out = []
    for _ in range(kicks):
        done = trio.Event()
        scope = await nursery.start(_plain_owner, done)
        await trio.testing.wait_all_tasks_blocked()
        with _Window(no_gc) as window:
            scope.cancel()
            await done.wait()
            out.append(window.elapsed())
    return out


async def meeting_end_once(tree: TaskTree, n: int, participants: int) -> tuple[float, float]:
    meeting = await tree.start_meeting(MeetingId(f"big{n}"), max_participants=participants)
    for i in range(participants):
        await _join(meeting, f"p{i}")
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()  # both sides start their window with an empty young generation
    c0, t0 = time.process_time(), time.perf_counter()
    meeting.end()
    await meeting.wait_closed()
    return time.perf_counter() - t0, time.process_time() - c0


async def flat_end_once(tasks: int) -> tuple[float, float]:
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        nursery.cancel_scope.cancel()
    return time.perf_counter() - t0, time.process_time() - c0


async def memory_per_scope(tree: TaskTree, n: int) -> tuple[float, float]:
    meeting = await tree.start_meeting(MeetingId("idle"), max_participants=n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        await meeting.start_participant(ParticipantId(f"idle{i}"))
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    ours = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    meeting.end()
    await meeting.wait_closed()

    async with trio.open_nursery() as nursery:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            await nursery.start(_bare_scope)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        bare = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return ours, bare


async def _bare_scope(task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery():
        task_status.started()
        await trio.sleep_forever()


async def churn(tree: TaskTree, cycles: int) -> tuple[int, int, float]:
    meeting = await tree.start_meeting(MeetingId("churn"), max_participants=10)
    await trio.testing.wait_all_tasks_blocked()
    before = _count_tasks()
    t0 = time.perf_counter()
    for i in range(cycles):
        p = await _join(meeting, f"c{i % 10}")
        p.leave(LeaveReason.VOLUNTARY if i % 2 else LeaveReason.KICKED)
        await p.wait_closed()
    elapsed = time.perf_counter() - t0
    await trio.testing.wait_all_tasks_blocked()
    left = _count_tasks() - before
    registry = len(meeting.participants)
    meeting.end()
    await meeting.wait_closed()
    return left, registry, elapsed / cycles


async def main(quick: bool, rounds: int) -> None:
    kicks_per_round = 100 if quick else 250
    cycles = 2_000 if quick else 10_000
    idle = 1_000 if quick else 5_000
    tree = TaskTree()
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        t0 = time.perf_counter()
        for m in range(100):
            meeting = await tree.start_meeting(MeetingId(f"m{m}"))
            for p in range(10):
                await _join(meeting, f"p{p}")
        print(
            f"tree of 100 meetings x 10 participants x {STREAMS} streams built in "
            f"{time.perf_counter() - t0:.2f} s ({_count_tasks()} tasks)"
        )

        serial = [0]
        kick: dict[str, list[float]] = {"ours": [], "floor": [], "ours_gc": [], "floor_gc": []}
        p99s: dict[str, list[float]] = {k: [] for k in kick}
        async with trio.open_nursery() as plain:
            for _ in range(rounds):
                for name, no_gc in (("ours", True), ("ours_gc", False)):
                    samples = await kick_round(tree, kicks_per_round, serial, no_gc)
                    kick[name] += samples
                    p99s[name].append(percentiles(samples)["p99"])
                for name, no_gc in (("floor", True), ("floor_gc", False)):
                    samples = await plain_kick_round(plain, kicks_per_round, no_gc)
                    kick[name] += samples
                    p99s[name].append(percentiles(samples)["p99"])
        pct = {k: {q: v * 1e6 for q, v in percentiles(xs).items()} for k, xs in kick.items()}
        print(
            f"kick latency over {len(kick['ours'])} kicks, collector paused in the window: "
            f"p50 {pct['ours']['p50']:.0f} us, p99 {pct['ours']['p99']:.0f} us "
            f"(plain nursery floor p50 {pct['floor']['p50']:.0f} us, "
            f"p99 {pct['floor']['p99']:.0f} us)"
        )
        print(
            f"  with collector pauses: p50 {pct['ours_gc']['p50']:.0f} us, p99 "
            f"{pct['ours_gc']['p99']:.0f} us (floor p50 {pct['floor_gc']['p50']:.0f} us, "
            f"p99 {pct['floor_gc']['p99']:.0f} us)"
        )
        hist = tree.metrics.cancel_latency
        print(
            f"  tree's own histogram: {hist.count('participant')} participant cancels, "
            f"p99 bucket ≤ {hist.quantile(0.99, 'participant') * 1e3:g} ms"
        )

        tasks = 1 + 100 + 100 * STREAMS
        end: dict[str, list[float]] = {k: [] for k in ("ours", "flat400", "flat501")}
        cpu: dict[str, list[float]] = {k: [] for k in end}
        for r in range(rounds):
            for name in end:
                if name == "ours":
                    wall, used = await meeting_end_once(tree, r, 100)
                else:
                    wall, used = await flat_end_once(100 * STREAMS if name == "flat400" else tasks)
                end[name].append(wall)
                cpu[name].append(used)
        ratio_400 = ratio_summary(end["ours"], end["flat400"])
        ratio_501 = ratio_summary(end["ours"], end["flat501"])
        cpu_ratio_400 = ratio_summary(cpu["ours"], cpu["flat400"])
        med = {k: statistics.median(v) * 1e3 for k, v in end.items()}
        print(
            f"end of a 100-participant meeting ({100 * STREAMS} stream tasks, {tasks} in all): "
            f"median {med['ours']:.2f} ms; flat nursery of {100 * STREAMS} tasks "
            f"{med['flat400']:.2f} ms, of {tasks} tasks {med['flat501']:.2f} ms"
        )
        print(
            f"  ratio to flat {100 * STREAMS}: median {ratio_400['median']:.2f} "
            f"(min {ratio_400['min']:.2f}, max {ratio_400['max']:.2f}); CPU-time ratio "
            f"{cpu_ratio_400['median']:.2f}; ratio to flat {tasks}: {ratio_501['median']:.2f}"
        )

        mem, bare = await memory_per_scope(tree, idle)
        print(
            f"memory per idle participant scope: {mem / 1024:.2f} KB "
            f"(bare task + nursery: {bare / 1024:.2f} KB), over {idle} scopes"
        )

        left, registry, per_cycle = await churn(tree, cycles)
        print(
            f"after {cycles} join/leave cycles ({STREAMS} streams each, "
            f"{per_cycle * 1e6:.0f} us per cycle): {left} tasks left, {registry} in registry"
        )
        tree.drain(5.0)
    print(f"tree closed: {tree.snapshot()['counts']}")

    figures: dict[str, float | int] = {
        "kick_p50_us": pct["ours"]["p50"],
        "kick_p99_us": pct["ours"]["p99"],
        "kick_floor_p50_us": pct["floor"]["p50"],
        "kick_floor_p99_us": pct["floor"]["p99"],
        "kick_with_gc_p50_us": pct["ours_gc"]["p50"],
        "kick_with_gc_p99_us": pct["ours_gc"]["p99"],
        "kick_floor_with_gc_p99_us": pct["floor_gc"]["p99"],
        "kick_samples": len(kick["ours"]),
        **flatten("kick_p99_vs_floor", ratio_summary(p99s["ours"], p99s["floor"]), "_ratio"),
        **flatten("meeting_end", {k: v * 1e3 for k, v in summary(end["ours"]).items()}, "_ms"),
        **flatten("flat400_end", {k: v * 1e3 for k, v in summary(end["flat400"]).items()}, "_ms"),
        **flatten("meeting_end_vs_flat400", ratio_400, "_ratio"),
        "meeting_end_vs_flat400_cpu_median_ratio": cpu_ratio_400["median"],
        "meeting_end_vs_flat501_median_ratio": ratio_501["median"],
        "idle_participant_kb": mem / 1024,
        "bare_task_nursery_kb": bare / 1024,
        "join_leave_cycle_us": per_cycle * 1e6,
        "tasks_left_after_cycles": left,
        "registry_left_after_cycles": registry,
        "cycles": cycles,
    }
    emit("cancellation", figures)


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    trio.run(main, args.quick, max(3, args.rounds or (3 if args.quick else 5)))
