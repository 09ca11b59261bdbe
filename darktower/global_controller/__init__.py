"""The Global Controller: the meeting REST API, the controller registry and placement.

Compose it with ``serve(settings, shutdown=..., task_status=...)`` (reports :class:`Running`);
the launcher is ``python -m darktower.global``. Pieces:

- ``service.GlobalController``: the operations (tokens, meetings, placement), over a ``Store``
  and the ``MeetingControllers`` seam (``mc_client.GrpcMeetingControllers`` in production);
- ``api.create_app``: the quart-trio app (docs/protocol.md §1, errors, rate limit, ``/metrics``,
  ``/healthz``, ``/readyz``, ``/api/v1/dev/certificate``);
- ``registry.ControllerRegistry``: the gRPC service MCs register and heartbeat with, and
  ``registry.sweep_once`` which marks silent MCs' meetings CONTROLLER_LOST;
- ``keys``: signing keys and the dev certificate persisted in the data directory;
- ``clients``: the operator commands for API clients.
"""

from .server import Running, serve
from .settings import GlobalSettings, Settings

__all__ = ["GlobalSettings", "Running", "Settings", "serve"]
