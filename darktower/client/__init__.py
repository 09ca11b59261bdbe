"""The trio client: REST to the Global Controller (HTTP/3), signaling to the Meeting
Controller and media to the Media Handler (WebTransport).

Most applications need only :func:`join_meeting_session` (or :func:`join_meeting_via_gc`),
which yields a :class:`MeetingSession`: participants, events, ``publish()``, ``subscribe()``,
``leave()`` and the reason the session ended; it reconnects lost connections by itself
(events ``Reconnecting``, ``Resumed``, ``Lost``) and, joined through the GC, rejoins the meeting
when its Meeting Controller is gone or shuts down (``Rejoining``, ``Rejoined``). The lower layers stay available:
:func:`open_gc_client`, :func:`open_signaling`, :func:`open_media_client`.
:func:`fetch_dev_access` reads the credential and certificate pin ``python -m darktower``
serves on its page.

In a meeting created with ``enable_e2e_encryption`` the session encrypts what it publishes and
decrypts what it receives by itself (docs/protocol.md §16): ``session.e2ee`` (:class:`Encryption`)
says whether the meeting is encrypted, gives this session's safety number (``fingerprint``) and
counts the frames that did not decrypt (``drops``); each participant's safety number is
``ParticipantInfo.fingerprint``, to compare out of band. Once encrypted, a session stays so:
a resume or rejoin without encryption ends it; ``require_e2ee=True`` refuses a meeting without
it at the join (:class:`EncryptionRequired`). The first public key seen for a participant is
the one keys are sealed to: another one later for the same id is refused, with an
:class:`E2EEKeyChanged` event.

Adaptive media (docs/protocol.md §17): ``QualityUpdate`` events carry the MH's estimates (to a
subscriber: its layer and whether LastN holds the video back; to a publisher: ``layers``, each
a :class:`LayerFeedback`); a simulcast publication pauses the layers nobody receives
(``Publication.paused_layers``, frames sent on them dropped and counted) and asks for a key
frame (a ``KeyFrameRequest`` with the layer id) when one is needed again; ``ActiveSpeakers``
events name who speaks, and ``Publication.send_frame(..., audio_level=...)`` says how loud an
audio frame is (``Frame.audio_level`` reads it back); ``subscribe(..., pinned=True)`` keeps a
video whoever speaks; ``session.adaptation`` (:class:`Adaptation`) sends quality reports from
what the session received, on demand (``report()``) or periodically (``start_reports()``).

The meeting as people use it (docs/protocol.md §18): every participant's
:class:`PublicationState` (``ParticipantInfo.publication`` and ``.host``; this session's own is
``session.publication``; a :class:`PublicationChanged` event says when anyone's changes);
``session.set_publication(audio_muted=..., video_off=...)`` mutes the microphone or turns the
camera off (the publication stays, its frames are dropped: ``Publication.silenced``,
``muted_dropped``); a host's ``session.moderate(participant_id, [ModerationAction.MUTE_AUDIO],
message)`` ends the participant's streams of that kind, which learns it from a
:class:`Moderated` event (its publications of that kind are closed: ``ended_by_host``);
``session.send_chat(text, to=None)`` and :class:`ChatMessage` events, ``session.chat`` (a
:class:`ChatLog`: the history a join brings and every message since, without repeats);
``GlobalControllerClient.moderate_participant`` is the owner's moderation over REST;
``session.send_data(payload, to=None)`` sends a lossy data message (a datagram through the MH,
at most 1,000 bytes) and ``async for message in session.data`` (:class:`DataMessages`, bounded,
the oldest dropped) receives the others' as :class:`~darktower.frames.DataMessage`.
"""

from ._adaptive import REPORT_INTERVAL_S, Adaptation, Report
from ._chat import CHAT_LOG, ChatLog
from ._data import DATA_BUFFER, DataMessages
from ._dev import (
    DevAccess,
    DevStackError,
    fetch_dev_access,
    fetch_dev_certificate,
    fetch_dev_credentials,
)
from ._e2ee import (
    SHARE_QUEUE,
    SHARES_IN_FLIGHT,
    UNKNOWN_SENDER,
    Encryption,
    EncryptionRequired,
    KeyPairs,
)
from ._events import (
    CLOSE_GRACE_S,
    EVENT_BUFFER,
    LEAVE_GRACE_S,
    RECONNECT_ATTEMPT_S,
    RECONNECT_FIRST_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    RECONNECT_SEND_WAIT_S,
    REJOIN_ATTEMPT_S,
    REJOIN_WINDOW_S,
    RESUBSCRIBE_WAIT_S,
    RESUME_GRACE_S,
    SUBSCRIPTION_BUFFER,
    ActiveSpeakers,
    ConnectionState,
    DerivedStream,
    E2EEKeyChanged,
    KeyFrameRequest,
    LayerFeedback,
    Lost,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    QualityUpdate,
    Reconnecting,
    RecordingChanged,
    Rejoined,
    Rejoining,
    RequestInterrupted,
    Resumed,
    SessionEnded,
    SessionEvent,
    SimulcastLayer,
    StreamInfo,
    StreamPublished,
    StreamUnpublished,
)
from ._join import Dialer, join_meeting_session, join_meeting_via_gc, media_url
from ._media import MediaClient, MediaPublisher, open_media_client
from ._meeting_models import (
    ChatMessage,
    Moderated,
    ModerationAction,
    PublicationChanged,
    PublicationState,
)
from ._publication import Publication
from ._reception import Reception, ReceptionSample
from ._rejoin import GcRejoiner, RejoinRefused
from ._rest import CreatedMeeting, GlobalControllerClient, JoinTicket, open_gc_client
from ._seams import Connector, MediaLink, RejoinConnector, Rejoiner, SignalingLink
from ._session import MeetingSession
from ._signaling import SignalingClient, SignalingEnded, open_signaling
from ._streams import EventStream, Subscription

__all__ = [
    "CHAT_LOG",
    "CLOSE_GRACE_S",
    "DATA_BUFFER",
    "EVENT_BUFFER",
    "LEAVE_GRACE_S",
    "RECONNECT_ATTEMPT_S",
    "RECONNECT_FIRST_DELAY_S",
    "RECONNECT_MAX_DELAY_S",
    "RECONNECT_SEND_WAIT_S",
    "REJOIN_ATTEMPT_S",
    "REJOIN_WINDOW_S",
    "REPORT_INTERVAL_S",
    "RESUBSCRIBE_WAIT_S",
    "RESUME_GRACE_S",
    "SHARES_IN_FLIGHT",
    "SHARE_QUEUE",
    "SUBSCRIPTION_BUFFER",
    "UNKNOWN_SENDER",
    "ActiveSpeakers",
    "Adaptation",
    "ChatLog",
    "ChatMessage",
    "ConnectionState",
    "Connector",
    "CreatedMeeting",
    "DataMessages",
    "DerivedStream",
    "DevAccess",
    "DevStackError",
    "Dialer",
    "E2EEKeyChanged",
    "Encryption",
    "EncryptionRequired",
    "EventStream",
    "GcRejoiner",
    "GlobalControllerClient",
    "JoinTicket",
    "KeyFrameRequest",
    "KeyPairs",
    "LayerFeedback",
    "Lost",
    "MediaClient",
    "MediaLink",
    "MediaPublisher",
    "MeetingSession",
    "Moderated",
    "ModerationAction",
    "ParticipantInfo",
    "ParticipantJoined",
    "ParticipantLeft",
    "ParticipantUpdated",
    "Publication",
    "PublicationChanged",
    "PublicationState",
    "QualityUpdate",
    "Reception",
    "ReceptionSample",
    "Reconnecting",
    "RecordingChanged",
    "RejoinConnector",
    "RejoinRefused",
    "Rejoined",
    "Rejoiner",
    "Rejoining",
    "Report",
    "RequestInterrupted",
    "Resumed",
    "SessionEnded",
    "SessionEvent",
    "SignalingClient",
    "SignalingEnded",
    "SignalingLink",
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
