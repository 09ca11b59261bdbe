"""The old home of the GC's metrics, kept while ``server.py`` still imports from it: use
``darktower.global_controller._metrics`` (re-exported by the package)."""

from darktower.global_controller._metrics import GcMetrics, refresh_gauges

__all__ = ["GcMetrics", "refresh_gauges"]
