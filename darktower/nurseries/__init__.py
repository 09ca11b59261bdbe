"""The task tree: server ⊃ meeting (room) ⊃ participant ⊃ stream scopes (docs/architecture.md §3).

Every task of a service runs in one of these scopes; nothing is started outside a live owner.
Services never write lifecycle code by hand::

    tree = TaskTree(registry=service_metrics)           # or: async with open_task_tree() as tree
    await nursery.start(tree.run)
    meeting = await tree.start_meeting(meeting_id, cleanup=release_meeting)
    participant = await meeting.start_participant(pid, session_body, cleanup=send_left)
    await participant.start_stream("signaling-reader", read_loop, conn)
    participant.leave(LeaveReason.KICKED)               # first reason wins; then cancel
    await participant.wait_closed()                     # every task exited, cleanup ran
    meeting.end()                                       # MEETING_ENDED to all without a reason
    tree.drain(grace)                                   # stop accepting, end all, deadline

Rules the tree enforces:

* **Start returns once running** (``nursery.start``); starting in an owner that is leaving,
  ending or draining raises :class:`ScopeClosed`; a live duplicate ID raises ``Conflict``;
  too many participants or streams raise ``CapacityExceeded``.
* **One reason per participant**, recorded on the handle (:attr:`Participant.reason`) *before*
  the scope is cancelled with ``cancel(reason=reason.name)``, so every ``finally`` can read
  it. A participant body that returns leaves ``VOLUNTARY``; a failure is ``CONNECTION_LOST``;
  a meeting's end is ``MEETING_ENDED`` unless a reason was already set.
* **Cleanup hooks** (``cleanup(reason)``, per meeting, participant and stream) run shielded,
  bounded by their grace and by any drain deadline; an overrun is cut off and counted.
  Order: streams, then their participant, then the meeting.
* **Error boundaries** (one-for-one): an exception in a stream task or participant body ends
  that participant with ``CONNECTION_LOST``; in a meeting body it ends that meeting; a
  failing cleanup is contained too. Each is logged with its path and counted
  (``TreeMetrics.failures``), and passed to the tree's ``observer``.
* **Meetings are shielded** from the tree's nursery: an outside cancellation of the tree
  reaches them only as :meth:`Meeting.end`, so no task is ever cancelled without a reason.
* A scope's task that ends because its owner was cancelled returns normally instead of
  re-raising ``Cancelled`` into the owner's nursery (the owner is cancelled anyway); this
  keeps ending a meeting under 2x the cost of a flat nursery of the same stream tasks.
  Code inside a body or stream function sees ``Cancelled`` as usual.
* **Drain** is a deadline: :meth:`TaskTree.drain` stops accepting, ends every meeting, caps
  every cleanup at ``now + grace`` and cancels whatever is left at that deadline.
* **Introspection**: :meth:`TaskTree.snapshot` (JSON-able dicts with counts, ages, states);
  ``TreeMetrics`` holds the cancellation-latency histogram (cancel call → last task of the
  scope exited, cleanup included), failure and overrun counters and a live-scope gauge.

:mod:`darktower.nurseries.testing` has a cancel-at-every-checkpoint harness for service tests.
"""

from ._events import EventKind, Level, Observer, ScopeClosed, ScopeState, TreeEvent, TreeState
from ._limits import (
    DRAIN_GRACE_S,
    MAX_PARTICIPANTS_PER_MEETING,
    MAX_STREAMS_PER_PARTICIPANT,
    MEETING_CLEANUP_GRACE_S,
    PARTICIPANT_CLEANUP_GRACE_S,
    STREAM_CLEANUP_GRACE_S,
)
from ._meeting import Meeting, MeetingBody, MeetingCleanup, current_meeting
from ._metrics import TreeMetrics
from ._participant import (
    Participant,
    ParticipantBody,
    ParticipantCleanup,
    StreamCleanup,
    StreamTask,
    current_participant,
)
from ._tree import TaskTree, open_task_tree

__all__ = [
    "DRAIN_GRACE_S",
    "MAX_PARTICIPANTS_PER_MEETING",
    "MAX_STREAMS_PER_PARTICIPANT",
    "MEETING_CLEANUP_GRACE_S",
    "PARTICIPANT_CLEANUP_GRACE_S",
    "STREAM_CLEANUP_GRACE_S",
    "EventKind",
    "Level",
    "Meeting",
    "MeetingBody",
    "MeetingCleanup",
    "Observer",
    "Participant",
    "ParticipantBody",
    "ParticipantCleanup",
    "ScopeClosed",
    "ScopeState",
    "StreamCleanup",
    "StreamTask",
    "TaskTree",
    "TreeEvent",
    "TreeMetrics",
    "TreeState",
    "current_meeting",
    "current_participant",
    "open_task_tree",
]
