"""media_handler: the SFU. Rooms, publishers, subscribers, router, telemetry.

Tasks: docs/architecture.md §4.3; bounds: §5.4.

``serve(settings, shutdown=..., task_status=...)`` runs the whole service (see ``_service``);
:class:`MediaHandler` is the service object (MediaControl methods, the ``/v1/media`` route),
composed of :class:`RoomRegistry` (the rooms), :class:`MediaPlane` (media connections and
publish streams) and :class:`MediaRouter` (subscriptions). Its state: :class:`MediaRoom`,
:class:`MediaMember`, :class:`MediaPublication`, :class:`MediaSubscription`. Its Prometheus
metrics are :class:`MediaMetrics`; the Telemetry stream to the MCs is :class:`TelemetryHub`.
The pure routing core: :class:`SubscriptionQueue` (bounded, the drop policy),
:class:`KeyFrameRequester`, :class:`LayerSwitcher`/:func:`choose_layer` (simulcast),
:class:`ByteBudget`/:class:`Priority` (per-participant byte-rate budgets, priority-aware),
:class:`StreamStats` (telemetry figures).
"""

from ._budget import ByteBudget, Priority, priority_of
from ._handler import MediaHandler
from ._metrics import MediaMetrics
from ._plane import MediaPlane
from ._queue import (
    DropReason,
    KeyFrameRequester,
    MediaKind,
    QueuedFrame,
    SubscriptionQueue,
)
from ._registry import RoomRegistry
from ._room import MediaMember, MediaPublication, MediaRoom, MediaSubscription
from ._router import MediaRouter
from ._service import MEDIA_PATH, MediaControl, Running, serve
from ._settings import Settings
from ._simulcast import Layer, LayerSwitcher, choose_layer
from ._stats import StreamStats, TelemetrySnapshot
from ._supervisor import serve_workers
from ._telemetry import TelemetryHub

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
    "MediaMember",
    "MediaMetrics",
    "MediaPlane",
    "MediaPublication",
    "MediaRoom",
    "MediaRouter",
    "MediaSubscription",
    "Priority",
    "QueuedFrame",
    "RoomRegistry",
    "Running",
    "Settings",
    "StreamStats",
    "SubscriptionQueue",
    "TelemetryHub",
    "TelemetrySnapshot",
    "choose_layer",
    "priority_of",
    "serve",
    "serve_workers",
]
