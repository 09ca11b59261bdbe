"""The Global Controller: the meeting REST API, the controller registry and placement.

Compose it with ``serve(settings, shutdown=..., task_status=...)`` (reports :class:`Running`);
the launcher is ``python -m darktower.global``. Pieces:

- :class:`GlobalController` (``service.py``): the operations on meetings (placement, join
  tokens, end, kick), over a ``Store`` and the :class:`MeetingControllers` seam
  (``mc_client.GrpcMeetingControllers`` in production); its :class:`AccessGate` hands out and
  checks access tokens, its :class:`ControllerDirectory` caches the registered controllers;
- :class:`RestHandlers`: the REST handlers, each callable alone with an :class:`ApiRequest`;
  ``api.create_app`` wires them into the quart-trio app (docs/protocol.md §1, errors, rate
  limit, ``/metrics``, ``/healthz``, ``/readyz``, ``/api/v1/dev/certificate``);
- ``registry.ControllerRegistry``: the gRPC service MCs register and heartbeat with, and
  ``registry.sweep_once`` which marks silent MCs' meetings CONTROLLER_LOST;
- ``_limits``: every bound of the GC, with its policy;
- ``keys``: signing keys and the dev certificate persisted in the data directory;
- ``clients``: the operator commands for API clients.
"""

from ._controllers import ControllerDirectory, MeetingControllers
from ._handlers import ApiRequest, DevCertificate, Reply, RestHandlers
from ._limits import (
    CLIENT_RECHECK_S,
    END_EMPTY_NOTIFY_S,
    MAX_BODY_BYTES,
    MAX_CONCURRENT_END_CALLS,
    MAX_REVOKED_TOKENS,
)
from ._metrics import GcMetrics, refresh_gauges
from ._tokens import AccessGate, Tokens, token_id
from .server import Running, serve
from .service import GlobalController
from .settings import Settings

__all__ = [
    "CLIENT_RECHECK_S",
    "END_EMPTY_NOTIFY_S",
    "MAX_BODY_BYTES",
    "MAX_CONCURRENT_END_CALLS",
    "MAX_REVOKED_TOKENS",
    "AccessGate",
    "ApiRequest",
    "ControllerDirectory",
    "DevCertificate",
    "GcMetrics",
    "GlobalController",
    "MeetingControllers",
    "Reply",
    "RestHandlers",
    "Running",
    "Settings",
    "Tokens",
    "refresh_gauges",
    "serve",
    "token_id",
]
