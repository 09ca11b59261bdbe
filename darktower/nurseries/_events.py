"""Levels, states, the events a tree reports to its observer, and the tree's own errors."""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
import trio

from darktower.model import LeaveReason


class Level(enum.StrEnum):
    """A level of the tree; also the ``level`` label of the tree's metrics."""

    MEETING = "meeting"
    PARTICIPANT = "participant"
    STREAM = "stream"


class ScopeState(enum.StrEnum):
    """Life of one scope: STARTING → RUNNING → CLOSING (cancel requested, cleanup) → CLOSED."""

    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class TreeState(enum.StrEnum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"  # refuses new meetings and participants; deadline set
    CLOSED = "closed"


class EventKind(enum.StrEnum):
    STARTED = "started"  # the scope is running (its start call is about to return)
    LEAVING = "leaving"  # a participant got its one reason (emitted exactly once)
    ENDING = "ending"  # a meeting got end() (emitted exactly once)
    FAILURE = "failure"  # a contained exception (``error`` set; ``phase`` body or cleanup)
    CLEANUP = "cleanup"  # the cleanup stage ran (``phase="none"`` without a hook; ``overrun``)
    CLOSED = "closed"  # the scope's last task exited; it left the registry


@attrs.frozen
class TreeEvent:
    """One thing that happened in the tree, as seen by an observer (tests, audit logs).

    ``serial`` is unique per scope for the life of the tree (a participant that rejoins gets a
    new one); ``path`` names the scope, e.g. ``meeting:m1/participant:p1/stream:audio``.
    """

    kind: EventKind
    level: Level
    path: str
    serial: int
    time: float
    reason: LeaveReason | None = None
    phase: str | None = None
    error: BaseException | None = None
    overrun: bool = False


Observer = Callable[[TreeEvent], None]


class ScopeClosed(trio.ClosedResourceError):
    """Starting a task in an owner that is closing or closed (or a tree that is draining).

    "Closed" in the sense of docs/architecture.md §7: our side closed it. Starting anything outside
    a live owner is refused, so no task can outlive its owner.
    """
