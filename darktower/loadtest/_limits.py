"""Named limits and timings of the load tester (each with its policy: docs/architecture.md §5)."""

from __future__ import annotations

from typing import Final

# Latency samples kept per figure (join, join end to end, delivery). Policy when full:
# reservoir sampling (a new sample replaces a random kept one with probability k/n), so memory
# is fixed and the percentiles stay an unbiased estimate over the whole run.
MAX_LATENCY_SAMPLES: Final = 100_000
# Participants in one run (meetings x participants). Policy: a larger run is refused when the
# options are read; one process cannot drive more anyway.
MAX_TOTAL_PARTICIPANTS: Final = 5_000
# Per-meeting participants: the MH's default room size (MAX_PARTICIPANTS_PER_ROOM).
MAX_PARTICIPANTS_PER_MEETING: Final = 100
# Received frames buffered per participant by the media client. Policy when full: its stream
# readers wait, QUIC flow control pushes back on the MH, whose per-subscription queue drops by
# its policy -- a load tester too slow to read shows up as drops, as a slow client would.
MEDIA_BUFFERED_FRAMES: Final = 64
# Distinct error kinds remembered with an example message. Policy when full: further kinds are
# counted under "other" (the count stays exact, only the breakdown is coarser).
MAX_ERROR_KINDS: Final = 64
# Length of an example error message kept per kind (longer ones are cut).
MAX_ERROR_MESSAGE: Final = 300

# After the publishers stop: how long to wait for frames still in flight before leaving.
DRAIN_S: Final = 3.0
# Each participant's leave (LeaveRequest -> SessionEnded), shielded and bounded.
LEAVE_GRACE_S: Final = 3.0
# Ending the meetings through the GC at the end, shielded and bounded.
END_MEETINGS_GRACE_S: Final = 10.0
# GC 429 RATE_LIMITED / MC RATE_LIMITED: retries of one call, and the longest wait honoured
# between two (the server's Retry-After, else RETRY_DEFAULT_S).
MAX_RETRIES: Final = 20
MAX_RETRY_WAIT_S: Final = 30.0
RETRY_DEFAULT_S: Final = 1.0
# Progress line period.
PROGRESS_INTERVAL_S: Final = 1.0
# Load tester processes (--processes). Policy: more is refused when the options are read.
MAX_PROCESSES: Final = 64
# A worker's line on stdout (a progress or final report). Policy: a longer line is an error of
# that worker (its report is lost, the run goes on); the final report carries at most
# 3 x MAX_LATENCY_SAMPLES numbers, well under this.
MAX_WORKER_LINE: Final = 64 * 1024 * 1024
