"""Meeting (or room) scopes: the error boundary of one meeting and owner of its participants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from darktower.errors import CapacityExceeded, Conflict
from darktower.model import LeaveReason, MeetingId, ParticipantId

from ._events import EventKind, Level, ScopeClosed, ScopeState
from ._limits import PARTICIPANT_CLEANUP_GRACE_S
from ._participant import Participant, ParticipantBody, ParticipantCleanup
from ._scope import Scope, current_meeting_var, start_scope

if TYPE_CHECKING:
    from ._tree import TaskTree

MeetingBody = Callable[["Meeting"], Awaitable[object]]
MeetingCleanup = Callable[[LeaveReason], Awaitable[object]]


def current_meeting() -> Meeting:
    """The meeting of the running meeting body, participant body or stream task.

    RuntimeError outside one.
    """
    try:
        return current_meeting_var.get()
    except LookupError:
        raise RuntimeError("not inside a meeting scope") from None


class Meeting(Scope):
    """A meeting (MC) or room (MH) scope: its body and its participants share one nursery.

    The meeting is shielded from its tree's nursery: it ends only through :meth:`end` (which
    records ``MEETING_ENDED`` on every participant first) or the tree's drain deadline, so no
    task of it is ever cancelled without a reason it can read.
    """

    __slots__ = (
        "_end_reason",
        "_ending",
        "_nursery",
        "_participants",
        "_shield",
        "id",
        "max_participants",
    )
    level = Level.MEETING

    def __init__(self, tree: TaskTree, meeting_id: MeetingId, max_participants: int) -> None:
        super().__init__(tree, f"meeting:{meeting_id}")
        self.id = meeting_id
        self.max_participants = max_participants
        self._ending = False
        self._end_reason = LeaveReason.MEETING_ENDED
        self._nursery: trio.Nursery | None = None
        self._shield: trio.CancelScope | None = None  # against the tree nursery (see class doc)
        self._participants: dict[ParticipantId, Participant] = {}

    @property
    def tree(self) -> TaskTree:
        return self._tree

    @property
    def ending(self) -> bool:
        """True once :meth:`end` was called (or the body returned or failed)."""
        return self._ending

    @property
    def participants(self) -> Mapping[ParticipantId, Participant]:
        return MappingProxyType(self._participants)

    def participant(self, participant_id: ParticipantId) -> Participant | None:
        return self._participants.get(participant_id)

    def end(self, reason: LeaveReason = LeaveReason.MEETING_ENDED) -> bool:
        """End the meeting: ``reason`` (``MEETING_ENDED`` unless the meeting goes on elsewhere,
        e.g. a server that drains) to every participant without a reason yet.

        Synchronous; await :meth:`wait_closed` for the end of every task and cleanup (the
        participants' first, then the meeting's). Returns whether this call ended it.
        """
        if self._ending:
            return False
        self._ending = True
        self._end_reason = reason
        self._mark_cancel()
        self._tree._emit(EventKind.ENDING, self, reason=reason)
        for participant in self._participants.values():
            if participant._reason is None:
                participant._set_reason(reason)
        if self._nursery is not None:
            # One cancel reaches every participant; a participant already kicked keeps its own
            # scope's reason (KICKED), the others inherit this one.
            self._nursery.cancel_scope.cancel(reason=reason.name)
        return True

    def _leave_reason(self) -> LeaveReason | None:
        return self._end_reason if self._ending else None

    async def start_participant(
        self,
        participant_id: ParticipantId,
        body: ParticipantBody | None = None,
        *,
        cleanup: ParticipantCleanup | None = None,
        grace: float = PARTICIPANT_CLEANUP_GRACE_S,
    ) -> Participant:
        """Start a participant scope in this meeting; return its handle once it runs.

        The meeting owns the scope. ``body(participant)``, if given, runs inside it (returning
        means leaving with ``VOLUNTARY``; raising means ``CONNECTION_LOST``, reported); without
        a body the scope stays until :meth:`Participant.leave` or the meeting's end.
        ``cleanup(reason)`` runs shielded after every task of the scope exited, bounded by
        ``grace``. Raises :class:`ScopeClosed` once the meeting is ending or the tree drains,
        ``Conflict`` if the participant is already in the meeting (until its scope has
        closed), ``CapacityExceeded`` past ``max_participants``. If the caller is cancelled
        while starting, the scope is closed with ``CONNECTION_LOST`` and the call raises.
        """
        nursery = self._nursery
        if self._ending or nursery is None or not self._tree.accepting:
            raise ScopeClosed(
                f"{self.path} is {self._state.value}: cannot start participant {participant_id}"
            )
        if participant_id in self._participants:
            raise Conflict(f"participant {participant_id} is already in {self.path}")
        if len(self._participants) >= self.max_participants:
            raise CapacityExceeded(f"{self.path} is full ({self.max_participants} participants)")
        participant = Participant(self, participant_id)
        return await start_scope(
            nursery,
            self._participants,
            participant_id,
            participant,
            participant._run,
            body,
            cleanup,
            grace,
            unregister=self._participant_closed,
        )

    def _participant_closed(self, participant: Participant) -> None:
        if self._participants.get(participant.id) is participant:
            del self._participants[participant.id]
            self._tree._live[Level.PARTICIPANT] -= 1

    async def _run(
        self,
        body: MeetingBody | None,
        cleanup: MeetingCleanup | None,
        grace: float,
        *,
        task_status: trio.TaskStatus[Meeting],
    ) -> None:
        tree = self._tree
        current_meeting_var.set(self)
        try:
            with trio.CancelScope() as self._shield:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        self._state = ScopeState.RUNNING
                        tree._emit(EventKind.STARTED, self)
                        task_status.started(self)
                        if trio.lowlevel.current_task().parent_nursery is tree._nursery:
                            # Moved into the tree: from now on only end() or drain stop us.
                            self._shield.shield = True
                        else:  # the start was cancelled: never become a live meeting
                            self.end()
                        try:
                            if body is None:
                                await trio.sleep_forever()
                            else:
                                await body(self)
                        except BaseException as exc:
                            # The meeting is the boundary: it ends, the server carries on.
                            _, rest = self._settle(exc, "body")
                            if rest is not None:
                                raise rest from None
                        self.end()
                finally:
                    self.end()
                    self._nursery = None  # exited (and no cycle through its task's context)
                    self._state = ScopeState.CLOSING
                    await self._cleanup(cleanup, self._end_reason, grace)
        finally:
            tree._meeting_closed(self)
            self._finish()

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "path": self.path,
            "state": self._state.value,
            "age_s": now - self.started_at,
            "ending": self._ending,
            "participant_count": len(self._participants),
            "participants": [p.snapshot(now) for p in self._participants.values()],
        }
