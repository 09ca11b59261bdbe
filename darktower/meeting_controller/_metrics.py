"""The MC's Prometheus metrics (the task tree registers its own: cancellation latency...)."""

from __future__ import annotations

from collections.abc import Callable

from darktower.metrics import Counter, Histogram, Registry


class ControllerMetrics:
    """The MC's counters; the two gauges read ``meetings()`` and ``participants()`` when
    scraped (the controller's live counts)."""

    def __init__(
        self,
        registry: Registry,
        *,
        meetings: Callable[[], int],
        participants: Callable[[], int],
    ) -> None:
        self.registry = registry
        registry.gauge(
            "darktower_mc_meetings",
            "meetings assigned to this MC",
            read=lambda: [((), float(meetings()))],
        )
        registry.gauge(
            "darktower_mc_participants",
            "participants joined in this MC's meetings",
            read=lambda: [((), float(participants()))],
        )
        self.messages: Counter = registry.counter(
            "darktower_mc_messages_total", "signaling messages received, by type", ["type"]
        )
        self.errors: Counter = registry.counter(
            "darktower_mc_errors_total", "errors sent to clients (and overflows), by code", ["code"]
        )
        self.dropped: Counter = registry.counter(
            "darktower_mc_messages_dropped_total",
            "server messages dropped for one recipient because they cannot be encoded, by type",
            ["type"],
        )
        self.resumes: Counter = registry.counter(
            "darktower_mc_resumes_total",
            "resume attempts (docs/protocol.md §13), by result: resumed, not_found, kicked, "
            "meeting_ended",
            ["result"],
        )
        self.rooms_moved: Counter = registry.counter(
            "darktower_mc_rooms_moved_total",
            "rooms moved to another Media Handler (theirs was lost or drains)",
        )
        self.join_latency: Histogram = registry.histogram(
            "darktower_mc_join_seconds", "session start to JoinResponse queued"
        )
