"""What every scope of the tree shares: identity, state, closing, and shielded bounded cleanup."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from darktower.model import LeaveReason

from ._events import EventKind, Level, ScopeState

if TYPE_CHECKING:
    from ._meeting import Meeting
    from ._participant import Participant
    from ._tree import TaskTree

# Set by each scope's own task (a task's context is private to it), inherited by nothing else.
current_meeting_var: contextvars.ContextVar[Meeting] = contextvars.ContextVar("dt_meeting")
current_participant_var: contextvars.ContextVar[Participant] = contextvars.ContextVar(
    "dt_participant"
)


def only_cancelled(exc: BaseException) -> bool:
    """True if ``exc`` is Cancelled or a group of nothing else."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(only_cancelled(e) for e in exc.exceptions)
    return False


class Scope:
    """Base of the handles: one node of the tree and the task that owns it.

    Handles are runtime objects (slotted, not attrs models) because a tree may hold tens of
    thousands of idle participants and every byte per scope counts (budget: 8 KB each).
    """

    __slots__ = (
        "_cancel_at",
        "_cleanup_scope",
        "_closed_event",
        "_state",
        "_tree",
        "path",
        "serial",
        "started_at",
    )
    level: ClassVar[Level]

    def __init__(self, tree: TaskTree, path: str) -> None:
        self._tree = tree
        self.path = path
        self.serial = tree._next_serial()
        self.started_at = trio.current_time()
        self._state = ScopeState.STARTING
        self._cancel_at = math.nan  # time of the first cancel call; latency is measured from it
        self._closed_event: trio.Event | None = None  # made on demand: idle scopes stay small
        # Set while cleanup runs, so that a drain can cap its deadline.
        self._cleanup_scope: trio.CancelScope | None = None

    @property
    def state(self) -> ScopeState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is ScopeState.CLOSED

    async def wait_closed(self) -> None:
        """Wait until this scope's tasks have all exited and its cleanup is done.

        Owns nothing; cancelling the wait does not affect the scope. Always a checkpoint.
        """
        if self._state is ScopeState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    def _mark_cancel(self) -> None:
        if math.isnan(self._cancel_at):
            self._cancel_at = trio.current_time()

    def _finish(self, latency: bool = True) -> None:
        """The owning task is about to exit: account and wake waiters (sync, cannot fail)."""
        self._state = ScopeState.CLOSED
        if latency:
            now = trio.current_time()
            start = self._cancel_at if not math.isnan(self._cancel_at) else now
            self._tree.metrics.cancel_latency.observe(now - start, self.level.value)
        self._tree._emit(EventKind.CLOSED, self, reason=self._leave_reason())
        if self._closed_event is not None:
            self._closed_event.set()

    def _leave_reason(self) -> LeaveReason | None:
        return None

    def _settle(self, exc: BaseException, phase: str) -> tuple[bool, BaseException | None]:
        """Sort what ended a body or hook: ``(failed, rest)``.

        Errors (``Exception``, also inside groups) are contained: reported here, ``failed``.
        ``Cancelled`` is dropped: the caller's task is about to end anyway, and its owner's
        scope is cancelled, so its owner will see that at its own next checkpoint; handing
        trio one Cancelled per child to repr, group and split again buys nothing and made
        ending a meeting cost ~3x a flat nursery. ``rest`` (KeyboardInterrupt, SystemExit, ...)
        must be re-raised by the caller.
        """
        if isinstance(exc, trio.Cancelled):
            return False, None
        if isinstance(exc, Exception):
            self._tree._report_failure(self, phase, exc)
            return True, None
        if isinstance(exc, BaseExceptionGroup):
            errors, rest = exc.split(Exception)
            if errors is not None:
                self._tree._report_failure(self, phase, errors)
            if rest is not None and only_cancelled(rest):
                rest = None
            return errors is not None, rest
        return False, exc

    async def _cleanup(
        self,
        hook: Callable[[Any], Awaitable[object]] | None,
        reason: LeaveReason | None,
        grace: float,
    ) -> None:
        """Run ``hook(reason)`` shielded, cut off at ``grace`` (or the drain deadline).

        Errors are contained and reported; an overrun is counted. Never raises Exception.
        """
        tree = self._tree
        if hook is None:
            tree._emit(EventKind.CLEANUP, self, reason=self._leave_reason(), phase="none")
            return
        with trio.CancelScope(deadline=tree._cleanup_deadline(grace), shield=True) as cs:
            self._cleanup_scope = cs
            try:
                await hook(reason)
            except BaseException as exc:
                _, rest = self._settle(exc, "cleanup")
                if rest is not None:
                    raise rest from None
            finally:
                self._cleanup_scope = None
        overrun = cs.cancel_called
        if overrun:
            tree.metrics.cleanup_overruns.inc(1, self.level.value)
            tree._log_overrun(self, grace)
        tree._emit(EventKind.CLEANUP, self, reason=self._leave_reason(), overrun=overrun)

    def _cap_cleanup(self, deadline: float) -> None:
        cs = self._cleanup_scope
        if cs is not None and cs.deadline > deadline:
            cs.deadline = deadline

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self._state.value}>"


_S = TypeVar("_S", bound=Scope)


async def start_scope(
    nursery: trio.Nursery,
    children: dict[Any, _S],
    key: object,
    scope: _S,
    run: Callable[..., Awaitable[object]],
    *args: Any,
    unregister: Callable[[_S], None],
) -> _S:
    """Register ``scope`` as ``children[key]`` (and count it live), start ``run(*args)``, the
    task that owns it, in its owner's ``nursery``; return ``scope`` once it runs.

    If the start fails, or the caller is cancelled before the task ran, the scope is closed
    and ``unregister(scope)`` (the owner's, also called when the task ends) removes it again;
    the error is re-raised. A cancelled start can return (the task swallowed its
    ``Cancelled``): that cancellation is raised here.
    """
    children[key] = scope
    scope._tree._live[scope.level] += 1
    try:
        await nursery.start(run, *args, name=scope.path)
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        if scope._state is ScopeState.STARTING:  # never ran: nothing else will unregister it
            scope._state = ScopeState.CLOSED
            unregister(scope)
        raise
    return scope
