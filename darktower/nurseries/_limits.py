"""Named limits and grace periods of the task tree (one module, each with its policy).

See docs/architecture.md §3.3 and §4.4.

The tree holds no queues; what it bounds is how many tasks an owner may start and how long
cleanup may run. Services pass their own values where the contract fixes them.
"""

from __future__ import annotations

# Cleanup grace per level (seconds). Cleanup runs shielded; past its grace it is cut off and
# counted (``cleanup_overruns``), so a stuck peer never holds its owner open.
MEETING_CLEANUP_GRACE_S = 5.0
PARTICIPANT_CLEANUP_GRACE_S = 2.0
STREAM_CLEANUP_GRACE_S = 1.0

# Default drain deadline used by ``open_task_tree`` when its block exits.
DRAIN_GRACE_S = 10.0

# Per-owner task bounds: starting one more raises ``CapacityExceeded`` (the caller refuses the
# join / publish with that wire code). The meeting default is the contract's example
# ``max_participants``; services pass the meeting's own setting.
MAX_PARTICIPANTS_PER_MEETING = 100
# A participant's stream tasks: signaling reader and writer plus published and subscribed
# media streams; far above any real client, low enough that a buggy or hostile client cannot
# make the server spawn tasks without bound.
MAX_STREAMS_PER_PARTICIPANT = 256
