"""The GC's Prometheus metrics (``/metrics``), and the task that refreshes its gauges."""

from __future__ import annotations

from darktower.global_controller.placement import effective_health, to_view
from darktower.global_controller.store import HealthStatus, MeetingStatus, Store
from darktower.metrics import Registry


class GcMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.requests = registry.counter(
            "darktower_gc_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
        )
        self.latency = registry.histogram(
            "darktower_gc_http_request_seconds", "HTTP request latency by route.", ["route"]
        )
        self.meetings_created = registry.counter(
            "darktower_gc_meetings_created_total", "Meetings created by this GC."
        )
        # Refreshed by :func:`refresh_gauges` from the store (shared by every replica).
        self.meetings = registry.gauge(
            "darktower_gc_meetings", "Meetings in the store by status (capped at 1000).", ["status"]
        )
        self.controllers = registry.gauge(
            "darktower_gc_controllers", "Registered meeting controllers by health.", ["health"]
        )


async def refresh_gauges(
    metrics: GcMetrics, store: Store, *, now: float, heartbeat_timeout_s: float
) -> None:
    """Read the store's meetings and controllers into the gauges (a controller whose heartbeat
    is older than the timeout counts as UNHEALTHY)."""
    counts = dict.fromkeys(HealthStatus, 0)
    for record in await store.list_controllers():
        counts[effective_health(to_view(record), now, heartbeat_timeout_s)] += 1
    for health, n in counts.items():
        metrics.controllers.set(n, health.name.lower())
    active = await store.list_meetings(active=True)
    lost = sum(m.status is MeetingStatus.CONTROLLER_LOST for m in active)
    metrics.meetings.set(len(active) - lost, MeetingStatus.ACTIVE.value)
    metrics.meetings.set(lost, MeetingStatus.CONTROLLER_LOST.value)
