"""The tree's own measurements: cancellation latency, contained failures, cleanup overruns."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from darktower.metrics import Counter, Gauge, Histogram, LabelValues, Registry

from ._events import Level


class TreeMetrics:
    """Metric objects of one task tree, registered in a service's :class:`Registry` if given.

    * ``cancel_latency{level}``: seconds from the cancel call (leave, kick, end, drain) to the
      scope's last task exiting, cleanup included. Streams are observed only when cancelled
      alone (``StreamTask.cancel``); streams ending with their participant count in it.
    * ``failures{level,phase}``: exceptions contained at a boundary (phase ``body``/``cleanup``).
    * ``cleanup_overruns{level}``: cleanups cut off at their grace or at a drain deadline.
    * ``scopes{level}``: live scopes (read from the tree when rendered).
    """

    def __init__(self, prefix: str = "darktower_tree") -> None:
        self.cancel_latency = Histogram(
            f"{prefix}_cancel_latency_seconds",
            "Seconds from a scope's cancel call to its last task exiting",
            ("level",),
        )
        self.failures = Counter(
            f"{prefix}_failures_total",
            "Exceptions contained at a task-tree boundary",
            ("level", "phase"),
        )
        self.cleanup_overruns = Counter(
            f"{prefix}_cleanup_overruns_total",
            "Cleanup hooks cut off at their grace or a drain deadline",
            ("level",),
        )
        self._live: Callable[[], dict[Level, int]] = dict
        self.scopes = Gauge(
            f"{prefix}_scopes",
            "Live scopes in the task tree",
            ("level",),
            read=self._read_scopes,
        )

    def _read_scopes(self) -> Iterable[tuple[LabelValues, float]]:
        live = self._live()
        return [((level.value,), float(live.get(level, 0))) for level in Level]

    def register(self, registry: Registry) -> None:
        for metric in (self.cancel_latency, self.failures, self.cleanup_overruns, self.scopes):
            registry.register(metric)
