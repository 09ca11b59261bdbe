"""Test helpers for services built on the task tree: a journal of events and a harness that
cancels a lifecycle at every checkpoint.

A service test drives a whole lifecycle (join → streams → leave ...) against a fresh tree and
lets the harness disrupt it at checkpoint 1, 2, 3 ... until the lifecycle finishes untouched::

    from darktower.nurseries.testing import cancel_at_every_checkpoint

    async def lifecycle(tree: TaskTree) -> None:
        meeting = await tree.start_meeting(MeetingId("m"))
        session = await meeting.start_participant(ParticipantId("p"), cleanup=send_left)
        await session.start_stream("reader", reader_loop)
        session.leave(LeaveReason.VOLUNTARY)
        await session.wait_closed()

    async def test_join_leave_survives_cancellation(autojump_clock):
        report = await cancel_at_every_checkpoint(lifecycle, check=my_invariants)
        assert report.runs > 1

By default the disruption cancels everything (the tree's owner and the lifecycle at once: a
service killed mid-join); pass ``disrupt=`` to kick, end or drain instead. After each run the
tree is drained and the harness asserts the tree's own invariants (:meth:`Journal.check`:
every scope closed once after its children, every participant left exactly once with one
reason, cleanup ran once per scope, registry empty, no task left), then ``check(tree, journal)``.
Use it with pytest-trio's ``autojump_clock`` so that cleanup graces pass in virtual time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from ._events import EventKind, Level, TreeEvent
from ._tree import TaskTree

Disrupt = Callable[[TaskTree, trio.CancelScope], None]
Check = Callable[[TaskTree, "Journal"], None]

# Upper bound on harness runs: a lifecycle with more checkpoints is a test bug (runs forever).
MAX_CHECKPOINTS = 5_000


class Journal:
    """Records a tree's events (pass :meth:`record` as the tree's ``observer``)."""

    def __init__(self) -> None:
        self.events: list[TreeEvent] = []

    def record(self, event: TreeEvent) -> None:
        self.events.append(event)

    def of(self, kind: EventKind, level: Level | None = None) -> list[TreeEvent]:
        return [e for e in self.events if e.kind is kind and (level is None or e.level is level)]

    def reasons(self) -> dict[str, list[str]]:
        """Leave reasons per participant path, in order (one each if the tree is sound)."""
        out: dict[str, list[str]] = {}
        for e in self.of(EventKind.LEAVING):
            assert e.reason is not None
            out.setdefault(e.path, []).append(e.reason.name)
        return out

    def check(self, *, closed: bool = True) -> None:
        """Assert the tree's invariants over the events so far.

        Always: no scope closes while a child is open; a participant gets at most one reason and
        closes with it; cleanup runs at most once per scope and before it closes. With
        ``closed`` (the tree has finished): every started scope closed exactly once, and every
        participant left exactly once.
        """
        open_paths: dict[str, int] = {}
        left: dict[int, TreeEvent] = {}
        cleaned: set[int] = set()
        closed_serials: set[int] = set()
        for e in self.events:
            if e.kind is EventKind.STARTED:
                assert e.path not in open_paths, f"{e.path} started twice while live"
                open_paths[e.path] = e.serial
            elif e.kind is EventKind.LEAVING:
                assert e.serial not in left, f"{e.path} got a second reason {e.reason}"
                left[e.serial] = e
            elif e.kind is EventKind.CLEANUP:
                assert e.serial not in cleaned, f"{e.path} cleaned up twice"
                cleaned.add(e.serial)
            elif e.kind is EventKind.CLOSED:
                assert e.serial not in closed_serials, f"{e.path} closed twice"
                closed_serials.add(e.serial)
                assert e.serial in cleaned, f"{e.path} closed without its cleanup stage"
                children = [p for p in open_paths if p.startswith(e.path + "/")]
                assert not children, f"{e.path} closed before {children}"
                if e.level is Level.PARTICIPANT:
                    assert e.serial in left, f"{e.path} closed without a reason"
                    assert e.reason is left[e.serial].reason, f"{e.path} reason changed"
                if open_paths.get(e.path) == e.serial:
                    del open_paths[e.path]
        if closed:
            assert not open_paths, f"scopes never closed: {sorted(open_paths)}"
            started = {e.serial for e in self.of(EventKind.STARTED)}
            assert started <= closed_serials
            for e in self.of(EventKind.STARTED, Level.PARTICIPANT):
                assert e.serial in left, f"{e.path} never left"


def registry_paths(tree: TaskTree) -> set[str]:
    """Paths of every scope in the tree's registry."""
    return {scope.path for scope in tree._walk()}


def live_task_paths(tree: TaskTree) -> set[str]:
    """Names of the live trio tasks under the tree (each scope's task is named by its path).

    Read from trio's own task tree, so it sees tasks the registry might have lost.
    """
    out: set[str] = set()
    if tree._nursery is None:
        return out
    todo = [tree._nursery]
    while todo:
        nursery = todo.pop()
        for task in nursery.child_tasks:
            if task.name.startswith("meeting:"):
                out.add(task.name)
            todo.extend(task.child_nurseries)
    return out


def assert_registry_matches_tasks(tree: TaskTree) -> None:
    """The registry lists exactly the live tasks (call when all tasks are blocked)."""
    registry, tasks = registry_paths(tree), live_task_paths(tree)
    assert registry == tasks, f"registry only {registry - tasks}, tasks only {tasks - registry}"


@attrs.frozen
class HarnessReport:
    runs: int  # lifecycles run: disrupted at checkpoints 1 .. runs-1, then once untouched
    checkpoints: int  # checkpoints of the undisturbed run


def _cancel_all(tree: TaskTree, scope: trio.CancelScope) -> None:
    scope.cancel(reason="harness: cancelled at checkpoint")


class _CheckpointTrigger(trio.abc.Instrument):
    """Counts task steps under ``root`` and disrupts at the ``at``-th one."""

    def __init__(self, root: trio.lowlevel.Task, at: int, action: Callable[[], None]) -> None:
        self.root = root
        self.at = at
        self.count = 0
        self.action = action
        self.error: BaseException | None = None

    def _ours(self, task: trio.lowlevel.Task) -> bool:
        current: trio.lowlevel.Task | None = task
        while current is not None:
            if current is self.root:
                return True
            nursery = current.parent_nursery
            current = None if nursery is None else nursery.parent_task
        return False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self._ours(task):
            return
        self.count += 1
        if self.count == self.at:
            try:
                self.action()
            except BaseException as exc:  # re-raised by the harness; trio would only log it
                self.error = exc


async def _run_once(
    lifecycle: Callable[[TaskTree], Awaitable[object]],
    at: int,
    disrupt: Disrupt,
    check: Check | None,
    drain_grace: float,
) -> _CheckpointTrigger:
    journal = Journal()
    tree = TaskTree(observer=journal.record)
    with trio.CancelScope() as everything:
        trigger = _CheckpointTrigger(
            trio.lowlevel.current_task(), at, lambda: disrupt(tree, everything)
        )
        trio.lowlevel.add_instrument(trigger)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(tree.run)
                try:
                    await lifecycle(tree)
                finally:
                    tree.drain(drain_grace)
        finally:
            trio.lowlevel.remove_instrument(trigger)
    if trigger.error is not None:
        raise trigger.error
    where = f"disrupted at checkpoint {at}" if trigger.count >= at else "undisturbed run"
    try:
        journal.check()
        snapshot = tree.snapshot()
        assert snapshot["counts"] == {"meetings": 0, "participants": 0, "streams": 0}, snapshot
        assert live_task_paths(tree) == set()
        if check is not None:
            check(tree, journal)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from exc
    return trigger


async def cancel_at_every_checkpoint(
    lifecycle: Callable[[TaskTree], Awaitable[object]],
    *,
    disrupt: Disrupt = _cancel_all,
    check: Check | None = None,
    drain_grace: float = 1.0,
    max_checkpoints: int = MAX_CHECKPOINTS,
) -> HarnessReport:
    """Run ``lifecycle(tree)`` once per checkpoint, disrupting it at the N-th; check after each.

    Each run gets a fresh, running :class:`TaskTree` (drained with ``drain_grace`` when the
    lifecycle returns or is cancelled). ``disrupt(tree, scope)`` runs between two task steps at
    the N-th checkpoint of the harness's tasks; the default cancels ``scope``, which holds the
    tree's owner and the lifecycle. Stops after the first run the disruption did not reach.
    Owns every task it starts; raises AssertionError naming the checkpoint that broke an
    invariant, or if ``max_checkpoints`` is reached.
    """
    for at in range(1, max_checkpoints + 1):
        trigger = await _run_once(lifecycle, at, disrupt, check, drain_grace)
        if trigger.count < at:
            return HarnessReport(runs=at, checkpoints=trigger.count)
    raise AssertionError(f"lifecycle still running after {max_checkpoints} checkpoints")
