"""The trio client: REST to the Global Controller (HTTP/3), signaling to the Meeting
Controller and media to the Media Handler (WebTransport)."""

from ._media import MediaClient, MediaPublisher, open_media_client
from ._rest import CreatedMeeting, GlobalControllerClient, JoinTicket, open_gc_client
from ._signaling import SignalingClient, SignalingEnded, open_signaling

__all__ = [
    "CreatedMeeting",
    "GlobalControllerClient",
    "JoinTicket",
    "MediaClient",
    "MediaPublisher",
    "SignalingClient",
    "SignalingEnded",
    "open_gc_client",
    "open_media_client",
    "open_signaling",
]
