"""media_handler: the SFU. Rooms, publishers, subscribers, router, telemetry.

Tasks: docs/architecture.md §4.3; bounds: §5.4.

``serve(settings, shutdown=..., task_status=...)`` runs the whole service (see ``_service``);
:class:`MediaHandler` is the service object (MediaControl methods, the ``/v1/media`` route).
The pure routing core: :class:`SubscriptionQueue` (bounded, the drop policy),
:class:`KeyFrameRequester`, :class:`LayerSwitcher`/:func:`choose_layer` (simulcast),
:class:`ByteBudget`/:class:`Priority` (per-participant byte-rate budgets, priority-aware),
:class:`StreamStats` (telemetry figures).
"""

from ._budget import ByteBudget, Priority, priority_of
from ._handler import MediaHandler
from ._plane import MediaPlane, close_code
from ._queue import (
    DropReason,
    KeyFrameRequester,
    MediaKind,
    QueuedFrame,
    SubscriptionQueue,
)
from ._service import MEDIA_PATH, MediaControl, Running, serve
from ._settings import Settings
from ._simulcast import Layer, LayerSwitcher, choose_layer
from ._stats import StreamStats, TelemetrySnapshot
from ._telemetry import MediaMetrics, TelemetryHub

__all__ = [
    "MEDIA_PATH",
    "ByteBudget",
    "DropReason",
    "KeyFrameRequester",
    "Layer",
    "LayerSwitcher",
    "MediaControl",
    "MediaHandler",
    "MediaKind",
    "MediaMetrics",
    "MediaPlane",
    "Priority",
    "QueuedFrame",
    "Running",
    "Settings",
    "StreamStats",
    "SubscriptionQueue",
    "TelemetryHub",
    "TelemetrySnapshot",
    "choose_layer",
    "close_code",
    "priority_of",
    "serve",
]
