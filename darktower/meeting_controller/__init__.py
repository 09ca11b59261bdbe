"""The Meeting Controller: WebTransport signaling with meetings and sessions as task-tree scopes.

``serve(settings, shutdown=, task_status=)`` runs the whole service (see ``_service``) and
reports a :class:`Running`; :class:`Settings` are its options (``python -m darktower.meeting
--help``). Inside: :class:`MeetingController` (meetings = tree meeting scopes, each a
:class:`RoomState`; leave/kick/connection loss/end are cancellations with their
``LeaveReason``), :class:`SignalingSession` (one per participant, a :class:`RoomMember`: the
body of its participant scope reads, a stream task writes, the scope's cleanup says goodbye),
:class:`MediaHandlers` (registered and static MHs, least-loaded placement, a telemetry stream
per MH), the ``MeetingControl`` gRPC service and the GC registration (:class:`Registration`;
:func:`join_keys_from_pb` reads the join-token keys the GC sends). :class:`SignalPort` is the
seam between a session and its transport (WebTransport, or a memory stream in tests).
"""

from ._controller import MeetingController
from ._limits import (
    HANDSHAKE_TIMEOUT_S,
    MAX_PUBLISHED_STREAMS,
    MIN_RESUME_INTERVAL_S,
    OUTBOUND_QUEUE_SIZE,
)
from ._mh import GrpcMediaLink, MediaHandlers, MediaLink
from ._port import SignalPort, webtransport_port
from ._registration import Registration, join_keys_from_pb
from ._room import RoomMember, RoomState
from ._rpc import MeetingControl
from ._service import SIGNAL_PATH, Running, serve
from ._session import SessionControls, SignalingSession
from ._settings import Settings
from ._wire import error_reply

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "MAX_PUBLISHED_STREAMS",
    "MIN_RESUME_INTERVAL_S",
    "OUTBOUND_QUEUE_SIZE",
    "SIGNAL_PATH",
    "GrpcMediaLink",
    "MediaHandlers",
    "MediaLink",
    "MeetingControl",
    "MeetingController",
    "Registration",
    "RoomMember",
    "RoomState",
    "Running",
    "SessionControls",
    "Settings",
    "SignalPort",
    "SignalingSession",
    "error_reply",
    "join_keys_from_pb",
    "serve",
    "webtransport_port",
]
