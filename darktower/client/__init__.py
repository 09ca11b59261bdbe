"""The trio client: REST to the Global Controller (HTTP/3), signaling to the Meeting
Controller and media to the Media Handler (WebTransport).

Most applications need only :func:`join_meeting_session` (or :func:`join_meeting_via_gc`),
which yields a :class:`MeetingSession`: participants, events, ``publish()``, ``subscribe()``,
``leave()`` and the reason the session ended. The lower layers stay available:
:func:`open_gc_client`, :func:`open_signaling`, :func:`open_media_client`.
:func:`fetch_dev_access` reads the credential and certificate pin ``python -m darktower``
serves on its page.
"""

from ._dev import (
    DevAccess,
    DevStackError,
    fetch_dev_access,
    fetch_dev_certificate,
    fetch_dev_credentials,
)
from ._events import (
    CLOSE_GRACE_S,
    EVENT_BUFFER,
    LEAVE_GRACE_S,
    SUBSCRIPTION_BUFFER,
    KeyFrameRequest,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    QualityUpdate,
    SessionEnded,
    SessionEvent,
    SimulcastLayer,
    StreamInfo,
    StreamPublished,
    StreamUnpublished,
)
from ._join import join_meeting_session, join_meeting_via_gc, media_url
from ._media import MediaClient, MediaPublisher, open_media_client
from ._rest import CreatedMeeting, GlobalControllerClient, JoinTicket, open_gc_client
from ._session import MeetingSession
from ._signaling import SignalingClient, SignalingEnded, open_signaling
from ._streams import EventStream, Publication, Subscription

__all__ = [
    "CLOSE_GRACE_S",
    "EVENT_BUFFER",
    "LEAVE_GRACE_S",
    "SUBSCRIPTION_BUFFER",
    "CreatedMeeting",
    "DevAccess",
    "DevStackError",
    "EventStream",
    "GlobalControllerClient",
    "JoinTicket",
    "KeyFrameRequest",
    "MediaClient",
    "MediaPublisher",
    "MeetingSession",
    "ParticipantInfo",
    "ParticipantJoined",
    "ParticipantLeft",
    "Publication",
    "QualityUpdate",
    "SessionEnded",
    "SessionEvent",
    "SignalingClient",
    "SignalingEnded",
    "SimulcastLayer",
    "StreamInfo",
    "StreamPublished",
    "StreamUnpublished",
    "Subscription",
    "fetch_dev_access",
    "fetch_dev_certificate",
    "fetch_dev_credentials",
    "join_meeting_session",
    "join_meeting_via_gc",
    "media_url",
    "open_gc_client",
    "open_media_client",
    "open_signaling",
]
