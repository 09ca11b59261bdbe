"""Participant scopes and their stream tasks: the error boundary of one participant."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from darktower.errors import CapacityExceeded, Conflict
from darktower.model import LeaveReason, ParticipantId

from ._events import EventKind, Level, ScopeClosed, ScopeState
from ._limits import MAX_STREAMS_PER_PARTICIPANT, STREAM_CLEANUP_GRACE_S
from ._scope import Scope, current_meeting_var, current_participant_var, start_scope

if TYPE_CHECKING:
    from ._meeting import Meeting

ParticipantBody = Callable[["Participant"], Awaitable[object]]
ParticipantCleanup = Callable[[LeaveReason], Awaitable[object]]
# A stream's cleanup gets its participant's reason, or None when only the stream ended.
StreamCleanup = Callable[[LeaveReason | None], Awaitable[object]]


def current_participant() -> Participant:
    """The participant whose body or stream task is running (RuntimeError outside one)."""
    try:
        return current_participant_var.get()
    except LookupError:
        raise RuntimeError("not inside a participant scope") from None


class StreamTask(Scope):
    """One task inside a participant (signaling reader/writer, a published or subscribed stream).

    ``cancel()`` stops this stream alone; the participant carries on. So does reaching its
    ``deadline`` (a window the clock closes, e.g. a participant reconnecting): the stream's
    function is cancelled and the stream ends normally. An exception escaping the stream's
    function ends the whole participant with ``CONNECTION_LOST``.
    """

    __slots__ = ("_participant", "_scope", "deadline", "name")
    level = Level.STREAM

    def __init__(self, participant: Participant, name: str, deadline: float = math.inf) -> None:
        super().__init__(participant._tree, f"{participant.path}/stream:{name}")
        self._participant = participant
        self.name = name
        self.deadline = deadline
        self._scope: trio.CancelScope | None = None

    @property
    def participant(self) -> Participant:
        return self._participant

    def cancel(self) -> None:
        """Stop this stream only (e.g. unpublish, unsubscribe). Idempotent."""
        self._mark_cancel()
        if self._scope is not None:
            self._scope.cancel(reason=f"stream {self.name} cancelled")

    def _leave_reason(self) -> LeaveReason | None:
        return self._participant._reason

    async def _run(
        self,
        fn: Callable[..., Awaitable[object]],
        args: tuple[Any, ...],
        cleanup: StreamCleanup | None,
        grace: float,
        *,
        task_status: trio.TaskStatus[StreamTask],
    ) -> None:
        participant = self._participant
        current_meeting_var.set(participant._meeting)
        current_participant_var.set(participant)
        self._state = ScopeState.RUNNING
        try:
            with trio.CancelScope(deadline=self.deadline) as self._scope:
                self._tree._emit(EventKind.STARTED, self)
                task_status.started(self)
                try:
                    await fn(*args)
                except BaseException as exc:
                    failed, rest = self._settle(exc, "body")
                    if failed:  # one-for-one: the participant is its streams' boundary
                        participant.leave(LeaveReason.CONNECTION_LOST)
                    if rest is not None:
                        raise rest from None
        finally:
            self._scope = None  # exited: nothing left to cancel (and no cycle through it)
            self._state = ScopeState.CLOSING
            if math.isnan(self._cancel_at) and trio.current_time() >= self.deadline:
                self._cancel_at = self.deadline  # its own deadline ended it, not its owner
            if math.isnan(self._cancel_at):
                self._cancel_at = participant._cancel_at
                latency = False  # ended with its participant: measured at that level
            else:
                latency = True  # cancelled alone (unpublish, unsubscribe, its deadline)
            await self._cleanup(cleanup, participant._reason, grace)
            participant._stream_closed(self)
            self._finish(latency)

    def snapshot(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "state": self._state.value,
            "age_s": now - self.started_at,
        }
        if self.deadline != math.inf:
            out["deadline_in_s"] = self.deadline - now
        return out


class Participant(Scope):
    """A participant session scope: its body and its stream tasks share one nursery.

    The first call of :meth:`leave` (or the meeting's end) records the one reason, then cancels
    the scope with ``reason=reason.name``; tasks read :attr:`reason` in their ``finally``.
    """

    __slots__ = ("_meeting", "_nursery", "_reason", "_streams", "id")
    level = Level.PARTICIPANT

    def __init__(self, meeting: Meeting, participant_id: ParticipantId) -> None:
        super().__init__(meeting._tree, f"{meeting.path}/participant:{participant_id}")
        self._meeting = meeting
        self.id = participant_id
        self._reason: LeaveReason | None = None
        self._nursery: trio.Nursery | None = None
        self._streams: dict[str, StreamTask] = {}

    @property
    def meeting(self) -> Meeting:
        return self._meeting

    @property
    def reason(self) -> LeaveReason | None:
        """The one leave reason, set before the scope is cancelled; None while it runs."""
        return self._reason

    @property
    def streams(self) -> Mapping[str, StreamTask]:
        return MappingProxyType(self._streams)

    def stream(self, name: str) -> StreamTask | None:
        return self._streams.get(name)

    def leave(self, reason: LeaveReason) -> bool:
        """End this participant with ``reason`` unless it already has one (the first wins).

        Synchronous: records the reason, then cancels the scope; await :meth:`wait_closed` to
        know that every task has exited and cleanup ran. Returns whether this call set it.
        """
        first = self._reason is None
        if first:
            self._set_reason(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason=(self._reason or reason).name)
        return first

    def _set_reason(self, reason: LeaveReason) -> None:
        self._reason = reason
        self._mark_cancel()
        self._tree._emit(EventKind.LEAVING, self, reason=reason)

    def _leave_reason(self) -> LeaveReason | None:
        return self._reason

    async def start_stream(
        self,
        name: str,
        fn: Callable[..., Awaitable[object]],
        *args: Any,
        cleanup: StreamCleanup | None = None,
        grace: float = STREAM_CLEANUP_GRACE_S,
        deadline: float = math.inf,
    ) -> StreamTask:
        """Start ``fn(*args)`` as a stream task of this participant; return once it runs.

        The participant owns the task. At ``deadline`` (trio time) ``fn`` is cancelled and the
        stream ends; the participant carries on. ``cleanup(reason)`` runs shielded after
        ``fn`` ends, bounded by ``grace``. Raises :class:`ScopeClosed` once the participant is
        leaving, ``Conflict`` for a live stream of the same name, ``CapacityExceeded`` past
        ``MAX_STREAMS_PER_PARTICIPANT``. If the caller is cancelled while starting, the task is
        cancelled too and the call raises ``Cancelled``.
        """
        nursery = self._nursery_for(name)
        stream = StreamTask(self, name, deadline)
        return await start_scope(
            nursery,
            self._streams,
            name,
            stream,
            stream._run,
            fn,
            args,
            cleanup,
            grace,
            unregister=self._stream_closed,
        )

    def start_stream_soon(
        self,
        name: str,
        fn: Callable[..., Awaitable[object]],
        *args: Any,
        cleanup: StreamCleanup | None = None,
        grace: float = STREAM_CLEANUP_GRACE_S,
        deadline: float = math.inf,
    ) -> StreamTask:
        """Like :meth:`start_stream`, from synchronous code (e.g. an event handler): the stream
        is registered at once (a second of the same name is a ``Conflict`` until it ended) and
        its task runs from the next scheduling round. Raises as :meth:`start_stream`."""
        nursery = self._nursery_for(name)
        stream = StreamTask(self, name, deadline)
        self._streams[name] = stream
        self._tree._live[Level.STREAM] += 1
        run = functools.partial(stream._run, task_status=trio.TASK_STATUS_IGNORED)
        nursery.start_soon(run, fn, args, cleanup, grace, name=stream.path)
        return stream

    def _nursery_for(self, name: str) -> trio.Nursery:
        """The nursery a new stream ``name`` starts in; raises as :meth:`start_stream`."""
        nursery = self._nursery
        if self._state is not ScopeState.RUNNING or self._reason is not None or nursery is None:
            raise ScopeClosed(f"{self.path} is {self._state.value}: cannot start stream {name}")
        if name in self._streams:
            raise Conflict(f"stream {name} already runs in {self.path}")
        if len(self._streams) >= MAX_STREAMS_PER_PARTICIPANT:
            raise CapacityExceeded(f"{self.path} has {len(self._streams)} streams")
        return nursery

    def _stream_closed(self, stream: StreamTask) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            self._tree._live[Level.STREAM] -= 1

    async def _run(
        self,
        body: ParticipantBody | None,
        cleanup: ParticipantCleanup | None,
        grace: float,
        *,
        task_status: trio.TaskStatus[Participant],
    ) -> None:
        meeting = self._meeting
        current_meeting_var.set(meeting)
        current_participant_var.set(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._state = ScopeState.RUNNING
                self._tree._emit(EventKind.STARTED, self)
                task_status.started(self)
                if self._reason is not None:  # the meeting ended while we were starting
                    nursery.cancel_scope.cancel(reason=self._reason.name)
                try:
                    if body is None:
                        await trio.sleep_forever()
                    else:
                        await body(self)
                except BaseException as exc:
                    failed, rest = self._settle(exc, "body")
                    if failed:
                        self.leave(LeaveReason.CONNECTION_LOST)
                    if rest is not None:
                        raise rest from None
                else:
                    # A body that returns has finished the session: its streams end with it.
                    self.leave(LeaveReason.VOLUNTARY)
        finally:
            # The nursery has exited. Dropping it also breaks the cycle nursery → task →
            # context (current_participant_var) → participant, so a closed participant is
            # freed by reference counting: kicks leave no garbage for the collector.
            self._nursery = None
            if self._reason is None:
                # Only an aborted start (the caller of start_participant was cancelled) gets
                # here without a reason: the session never really began.
                self._set_reason(meeting._leave_reason() or LeaveReason.CONNECTION_LOST)
            self._state = ScopeState.CLOSING
            await self._cleanup(cleanup, self._reason, grace)
            meeting._participant_closed(self)
            self._finish()

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "path": self.path,
            "state": self._state.value,
            "age_s": now - self.started_at,
            "reason": None if self._reason is None else self._reason.name,
            "stream_count": len(self._streams),
            "streams": [s.snapshot(now) for s in self._streams.values()],
        }
