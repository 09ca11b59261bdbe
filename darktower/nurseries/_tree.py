"""The server level of the task tree: meetings, drain, failure reporting, introspection."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import trio

from darktower.errors import Conflict, sole_error
from darktower.metrics import Registry
from darktower.model import LeaveReason, MeetingId

from ._events import EventKind, Level, Observer, ScopeClosed, TreeEvent, TreeState
from ._limits import DRAIN_GRACE_S, MAX_PARTICIPANTS_PER_MEETING, MEETING_CLEANUP_GRACE_S
from ._meeting import Meeting, MeetingBody, MeetingCleanup
from ._metrics import TreeMetrics
from ._scope import Scope, start_scope

logger = logging.getLogger("darktower.nurseries")


class TaskTree:
    """The server level: owns every meeting scope of one service.

    Run it with ``await nursery.start(tree.run)`` (or use :func:`open_task_tree`). Failures
    below are contained at the nearest boundary and reported (logged with their path, counted
    in :attr:`metrics`, passed to ``observer``); they never cancel the tree.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        metrics: TreeMetrics | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else TreeMetrics()
        self.metrics._live = self.live_counts
        if registry is not None:
            self.metrics.register(registry)
        self._observer = observer
        self._state = TreeState.NEW
        self._meetings: dict[MeetingId, Meeting] = {}
        self._live: dict[Level, int] = dict.fromkeys(Level, 0)
        self._nursery: trio.Nursery | None = None
        self._drain_requested = trio.Event()
        self._empty = trio.Event()  # set once no meeting is left after the drain began
        self._done = trio.Event()  # set when run() returns
        self._force_at = math.inf  # drain deadline: every cleanup is cut off by then
        self._serial = 0
        self._started_at = math.nan

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> TreeState:
        return self._state

    @property
    def accepting(self) -> bool:
        """True while new meetings and participants may start (running, not draining)."""
        return self._state is TreeState.RUNNING

    @property
    def meetings(self) -> Mapping[MeetingId, Meeting]:
        return MappingProxyType(self._meetings)

    def meeting(self, meeting_id: MeetingId) -> Meeting | None:
        return self._meetings.get(meeting_id)

    def live_counts(self) -> dict[Level, int]:
        return dict(self._live)

    # -- running -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[TaskTree] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the meetings until drained; report readiness with ``task_status.started(self)``.

        Returns after :meth:`drain` once every meeting closed (or at the drain deadline, after
        cancelling what was left). If cancelled from outside, ends every meeting with
        ``MEETING_ENDED`` and waits for their shielded cleanups (each bounded by its grace).
        Raises RuntimeError if run twice.
        """
        if self._state is not TreeState.NEW:
            raise RuntimeError("a TaskTree runs once")
        try:
            await self._run(task_status)
        finally:
            self._state = TreeState.CLOSED
            self._done.set()

    async def _run(self, task_status: trio.TaskStatus[TaskTree]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._state = TreeState.RUNNING
            self._started_at = trio.current_time()
            task_status.started(self)
            try:
                await self._drain_requested.wait()
                with trio.move_on_at(self._force_at):
                    await self._empty.wait()
                if self._meetings:
                    self._force()
            finally:
                if self._state is TreeState.RUNNING:
                    self._state = TreeState.DRAINING
                # Meetings are shielded from our nursery: end them (reasons first) ourselves.
                for meeting in list(self._meetings.values()):
                    meeting.end()

    def drain(self, grace: float, reason: LeaveReason = LeaveReason.MEETING_ENDED) -> None:
        """Stop accepting, end every meeting with ``reason`` (``MEETING_ENDED`` unless the
        meetings go on elsewhere), and set a deadline.

        Cleanups (already running or not) are cut off at ``now + grace``; at the deadline
        anything still alive is cancelled and :meth:`run` returns. A second drain may only
        bring the deadline closer. Synchronous; await :meth:`wait_closed` for the end.
        """
        self._force_at = min(self._force_at, trio.current_time() + grace)
        if self._state is TreeState.RUNNING:
            self._state = TreeState.DRAINING
        for scope in self._walk():
            scope._cap_cleanup(self._force_at)
        for meeting in list(self._meetings.values()):
            meeting.end(reason)
        if not self._meetings:
            self._empty.set()
        self._drain_requested.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`run` has returned (after a drain or an outside cancellation)."""
        await self._done.wait()

    def _force(self) -> None:
        now = trio.current_time()
        self._force_at = min(self._force_at, now)
        # Every task under a meeting was already cancelled by end(); what can still run is
        # cleanup, whose deadlines were capped at drain(). Cut again in case the clock raced.
        # (Code that shields itself is out of any canceller's reach, by trio's design.)
        for scope in self._walk():
            scope._cap_cleanup(now)
        logger.warning("drain deadline passed with %d meetings left", len(self._meetings))

    def _walk(self) -> Iterator[Scope]:
        for meeting in list(self._meetings.values()):
            yield meeting
            for participant in list(meeting._participants.values()):
                yield participant
                yield from list(participant._streams.values())

    # -- meetings ----------------------------------------------------------------------------

    async def start_meeting(
        self,
        meeting_id: MeetingId,
        body: MeetingBody | None = None,
        *,
        cleanup: MeetingCleanup | None = None,
        grace: float = MEETING_CLEANUP_GRACE_S,
        max_participants: int = MAX_PARTICIPANTS_PER_MEETING,
    ) -> Meeting:
        """Start a meeting scope; return its handle once it runs.

        The tree owns the scope. ``body(meeting)``, if given, runs inside it; its return or
        exception ends the meeting (an exception is reported, never reaches the server).
        ``cleanup(MEETING_ENDED)`` runs shielded after every participant closed, bounded by
        ``grace``. Raises :class:`ScopeClosed` unless the tree runs and accepts, ``Conflict``
        for a meeting ID that is still live. If the caller is cancelled while starting, the
        meeting is ended and the call raises ``Cancelled``.
        """
        nursery = self._nursery
        if not self.accepting or nursery is None:
            raise ScopeClosed(
                f"task tree is {self._state.value}: cannot start meeting {meeting_id}"
            )
        if meeting_id in self._meetings:
            raise Conflict(f"meeting {meeting_id} is already running")
        meeting = Meeting(self, meeting_id, max_participants)
        return await start_scope(
            nursery,
            self._meetings,
            meeting_id,
            meeting,
            meeting._run,
            body,
            cleanup,
            grace,
            unregister=self._meeting_closed,
        )

    def _meeting_closed(self, meeting: Meeting) -> None:
        if self._meetings.get(meeting.id) is meeting:
            del self._meetings[meeting.id]
            self._live[Level.MEETING] -= 1
        if not self._meetings and self._state is not TreeState.RUNNING:
            self._empty.set()

    # -- reporting ---------------------------------------------------------------------------

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _cleanup_deadline(self, grace: float) -> float:
        return min(trio.current_time() + grace, self._force_at)

    def _emit(
        self,
        kind: EventKind,
        scope: Scope,
        *,
        reason: LeaveReason | None = None,
        phase: str | None = None,
        error: BaseException | None = None,
        overrun: bool = False,
    ) -> None:
        if self._observer is None:
            return
        self._observer(
            TreeEvent(
                kind=kind,
                level=scope.level,
                path=scope.path,
                serial=scope.serial,
                time=trio.current_time(),
                reason=reason,
                phase=phase,
                error=error,
                overrun=overrun,
            )
        )

    def _report_failure(self, scope: Scope, phase: str, group: BaseException) -> None:
        error = sole_error(group)
        self.metrics.failures.inc(1, scope.level.value, phase)
        logger.error(
            "contained failure in %s %s at %s: %r",
            scope.level.value,
            phase,
            scope.path,
            error,
            exc_info=error,
        )
        self._emit(EventKind.FAILURE, scope, phase=phase, error=error)

    def _log_overrun(self, scope: Scope, grace: float) -> None:
        logger.warning("cleanup of %s cut off (grace %.3f s)", scope.path, grace)

    # -- introspection -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The live tree as JSON-able dicts: meetings → participants → streams.

        Each node has ``path``, ``state`` and ``age_s``; counts per level are under
        ``counts``; contained failures and cleanup overruns under ``failures``/``overruns``.
        """
        now = trio.current_time()
        m = self.metrics
        return {
            "state": self._state.value,
            "age_s": 0.0 if math.isnan(self._started_at) else now - self._started_at,
            "counts": {
                "meetings": self._live[Level.MEETING],
                "participants": self._live[Level.PARTICIPANT],
                "streams": self._live[Level.STREAM],
            },
            "failures": {
                f"{level.value}.{phase}": m.failures.value(level.value, phase)
                for level in Level
                for phase in ("body", "cleanup")
            },
            "overruns": {level.value: m.cleanup_overruns.value(level.value) for level in Level},
            "meetings": [meeting.snapshot(now) for meeting in self._meetings.values()],
        }


@asynccontextmanager
async def open_task_tree(
    *,
    drain_grace: float = DRAIN_GRACE_S,
    registry: Registry | None = None,
    metrics: TreeMetrics | None = None,
    observer: Observer | None = None,
) -> AsyncIterator[TaskTree]:
    """Run a :class:`TaskTree` for the block; on exit drain it with ``drain_grace`` and wait.

    Owns the tree's task. If the block is cancelled or raises, the tree still ends every
    meeting with ``MEETING_ENDED`` and waits for their bounded cleanups.
    """
    tree = TaskTree(registry=registry, metrics=metrics, observer=observer)
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        try:
            yield tree
        finally:
            tree.drain(drain_grace)
