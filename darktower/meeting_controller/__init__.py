"""The Meeting Controller: WebTransport signaling with meetings and sessions as task-tree scopes.

``serve(settings, shutdown=, task_status=)`` runs the whole service (see ``_service``) and
reports a :class:`Running`; :class:`Settings` are its options (``python -m darktower.meeting
--help``). Inside: :class:`MeetingController` (meetings = tree meeting scopes, each signaling
session = a participant scope with a reader body and a writer task; leave/kick/connection
loss/end are cancellations with their ``LeaveReason``), :class:`MediaHandlers` (registered and
static MHs, least-loaded placement, a telemetry stream per MH), the ``MeetingControl`` gRPC
service and the GC registration. :class:`SignalPort` is the seam between a session and its
transport (WebTransport, or a memory stream in tests).
"""

from ._controller import MeetingController
from ._limits import HANDSHAKE_TIMEOUT_S, OUTBOUND_QUEUE_SIZE
from ._mh import GrpcMediaLink, MediaHandlers, MediaLink, split_address
from ._port import SignalPort, webtransport_port
from ._registration import Registration
from ._rpc import MeetingControl
from ._service import SIGNAL_PATH, Running, serve
from ._session import error_reply
from ._settings import Settings

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "OUTBOUND_QUEUE_SIZE",
    "SIGNAL_PATH",
    "GrpcMediaLink",
    "MediaHandlers",
    "MediaLink",
    "MeetingControl",
    "MeetingController",
    "Registration",
    "Running",
    "Settings",
    "SignalPort",
    "error_reply",
    "serve",
    "split_address",
    "webtransport_port",
]
