"""What a :class:`~darktower.client.MeetingSession` tells its application: participant and
stream models, session events, the end-of-session exception, and the session's limits.

Models are frozen attrs classes built from the signaling protobufs at the edge; nothing here
does I/O.
"""

from __future__ import annotations

import base64
import enum
import json
import uuid
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from darktower.e2ee import fingerprint
from darktower.errors import InvalidRequest
from darktower.model import LeaveReason, Role, StreamType
from darktower.protocol import stream_type_from_pb
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._meeting_models import ChatMessage, Moderated, PublicationChanged, PublicationState
from ._signaling import SignalingEnded

# Limit: session events not yet taken by the application. Policy when full: the oldest event
# is dropped and counted in ``EventStream.dropped``. Blocking instead would stall the one
# signaling reader, and with it the replies that publish()/subscribe() wait for; losing an old
# event costs little because ``MeetingSession.participants`` is always exact.
EVENT_BUFFER: Final = 256
# Limit: frames of one subscription not yet taken by the application. Policy when full
# (the MH's, docs/architecture.md §5.4, applied at the client): a discardable frame is dropped;
# audio drops its oldest frame; video drops the new frame and every delta after it until the next
# key frame, which evicts the oldest frame if it has to. Every drop is counted in
# ``Subscription.dropped``. 256 frames is about 8 s of 30 fps video or 5 s of 20 ms audio: a few MiB
# at real frame sizes.
SUBSCRIPTION_BUFFER: Final = 256
# Bound on the goodbye: LeaveRequest sent and SessionEnded awaited, on leave() and on exit.
LEAVE_GRACE_S: Final = 5.0
# Bound on an UnsubscribeStream/UnpublishStream sent from aclose() (shielded).
CLOSE_GRACE_S: Final = 2.0
# After the media connection or a request broke: how long to wait for the signaling session to
# say why (SessionEnded) before calling it CONNECTION_LOST.
SETTLE_S: Final = 2.0
# Reconnection (docs/protocol.md §13). How long the session tries to get a lost connection back
# before it ends with CONNECTION_LOST: the MC's resume grace window (its default), counted from
# the moment the loss was noticed. Configurable per join (``resume_grace_s``; 0 turns
# reconnection off).
RESUME_GRACE_S: Final = 15.0
# Delays between attempts: exponential backoff with full jitter (a uniform draw in
# [0, min(RECONNECT_MAX_DELAY_S, RECONNECT_FIRST_DELAY_S * 2**n)] before retry n), so that
# many clients cut off together do not come back in lockstep. The first attempt is immediate.
RECONNECT_FIRST_DELAY_S: Final = 0.25
RECONNECT_MAX_DELAY_S: Final = 5.0
# Bound on one attempt to open a connection while reconnecting: a QUIC handshake sent into a
# dead path backs off its own retransmissions, so a fresh attempt comes back sooner once the
# path returns than one left to wait.
RECONNECT_ATTEMPT_S: Final = 2.0
# Rejoin (docs/protocol.md §13). When a resume cannot succeed — the MC said SERVER_SHUTDOWN,
# refused the resume token (it restarted and lost its state), or is gone (the GC names another
# MC, or says it lost this one; or the resume grace passed) — a session joined through the GC
# asks it for a new join and joins the meeting at the MC it names, for at most this long,
# counted from the moment the loss was noticed; then it ends (Lost). Long enough for the GC to
# notice a lost MC (its heartbeat timeout, 15 s) after the client noticed (its idle timeout, up
# to 15 s) and the resume grace. Configurable per join (``rejoin_window_s``; 0 turns it off).
REJOIN_WINDOW_S: Final = 60.0
# Bound on one attempt to rejoin: the GC's ticket (a fresh HTTP/3 connection if the client's is
# gone) and the join at the MC it names. Attempts are spaced by the backoff above.
REJOIN_ATTEMPT_S: Final = 5.0
# Bound on the GC's answer to "where is the meeting now", asked after a resume attempt failed.
LOCATE_S: Final = 2.0
# After a rejoin, a subscription whose stream is not in the meeting (yet) waits this long for a
# stream of that id to be published again (its publisher rejoins too, within the same window),
# then ends as an unpublished stream's does. Bounded so that an iteration never waits forever
# for a publisher that did not come back.
RESUBSCRIBE_WAIT_S: Final = REJOIN_WINDOW_S
# Publication.send_frame while the media connection is being re-established: waits at most
# this long for it, then drops the frame (counted in ``Publication.dropped``). Bounded so that
# a real-time sender is never held longer than about one frame interval; after the connection is
# back, video deltas are dropped until the next key frame (see Publication.send_frame).
RECONNECT_SEND_WAIT_S: Final = 0.05
# An X25519 public key (docs/protocol.md §16).
PUBLIC_KEY_BYTES: Final = 32
# Limits on what one StreamQualityUpdate or ActiveSpeakers from the MC is taken for: the first
# layers (a publication has at most 4, docs/protocol.md §3.2) and the first speakers (the
# dominant one first); the rest is ignored.
MAX_LAYER_FEEDBACK: Final = 16
MAX_SPEAKERS: Final = 64


class SessionEnded(SignalingEnded):
    """The meeting session is over; ``reason`` says why (a :class:`LeaveReason`, never None).

    Raised by the session's waiting calls and iterators once it ended: KICKED, MEETING_ENDED,
    CONNECTION_LOST or SERVER_SHUTDOWN from the server side, VOLUNTARY after :meth:`MeetingSession.leave` for
    calls (iterators simply stop then). The ``async with`` block that made the session
    swallows a SessionEnded of its own session, so a server-side end exits it cleanly.
    """

    reason: LeaveReason

    def __init__(self, reason: LeaveReason, message: str, *, session: object = None) -> None:
        super().__init__(reason, message)
        self.session = session


class RequestInterrupted(trio.BrokenResourceError):
    """The signaling connection was lost while a request waited for its reply, and the session
    is reconnecting: the MC may or may not have applied the request (it is not repeated;
    ``participants`` and the events say what is true once the session resumed)."""


@attrs.frozen
class SimulcastLayer:
    """One layer of a simulcast video (contract ``SimulcastLayer``); each layer is its own
    media stream whose UUID is ``layer_id`` (made up by :meth:`MeetingSession.publish` when
    empty). ``max_bitrate`` in bits/s."""

    width: int
    height: int
    max_bitrate: int = 0
    layer_id: str = ""


@attrs.frozen
class StreamInfo:
    """A stream published by another participant."""

    stream_id: str
    stream_type: StreamType
    participant_id: str
    codec: str = ""
    max_bitrate: int = 0
    width: int = 0  # video only, 0 if not said
    height: int = 0
    layer_ids: tuple[str, ...] = ()  # simulcast layers, each its own id on the wire

    @classmethod
    def from_pb(cls, participant_id: str, stream: common_pb2.MediaStream) -> StreamInfo | None:
        """None for a stream type this version does not know."""
        try:
            stream_type = stream_type_from_pb(stream.stream_type)
        except InvalidRequest:
            return None
        metadata = stream.metadata
        return cls(
            stream_id=stream.stream_id,
            stream_type=stream_type,
            participant_id=participant_id,
            codec=metadata.codec,
            max_bitrate=metadata.max_bitrate,
            width=metadata.video.width,
            height=metadata.video.height,
            layer_ids=tuple(layer.layer_id for layer in metadata.video.simulcast_layers),
        )


class ConnectionState(enum.Enum):
    """A participant's connection as the MC reports it (docs/protocol.md §13), or this session's
    own (:attr:`MeetingSession.connection`)."""

    CONNECTED = "connected"
    # Its connection was lost; it keeps its place in the meeting while it tries to come back.
    RECONNECTING = "reconnecting"


CONNECTION_STATES: Final = {
    sig.CONNECTED: ConnectionState.CONNECTED,
    sig.RECONNECTING: ConnectionState.RECONNECTING,
}


@attrs.frozen
class ParticipantInfo:
    """Another participant as this session last heard of it: ``host`` (it joined with the
    host's role; the session's own role is :attr:`MeetingSession.role`), its connection and its
    ``publication`` state (docs/protocol.md §18.1). In an end-to-end encrypted
    meeting ``public_key`` is its X25519 key for this meeting (empty otherwise) and
    :attr:`fingerprint` the safety number to compare out of band (docs/protocol.md §16)."""

    participant_id: str
    name: str
    streams: tuple[StreamInfo, ...] = ()
    joined_at_us: int = 0
    connection: ConnectionState = ConnectionState.CONNECTED
    public_key: bytes = b""
    publication: PublicationState = PublicationState()
    host: bool = False

    @classmethod
    def from_pb(cls, p: sig.Participant) -> ParticipantInfo:
        streams = (StreamInfo.from_pb(p.participant_id, s) for s in p.streams)
        return cls(
            participant_id=p.participant_id,
            name=p.name,
            streams=tuple(s for s in streams if s is not None),
            joined_at_us=p.joined_at,
            connection=CONNECTION_STATES.get(p.connection, ConnectionState.CONNECTED),
            public_key=p.public_key,
            publication=PublicationState.from_pb(p.publication),
            host=p.host,
        )

    @property
    def fingerprint(self) -> str:
        """The safety number of ``public_key`` ("01234 56789 01234 56789"); "" without one."""
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            return ""
        return fingerprint(self.public_key)

    def stream(self, stream_id: str) -> StreamInfo | None:
        return next((s for s in self.streams if s.stream_id == stream_id), None)


@attrs.frozen
class ParticipantJoined:
    participant: ParticipantInfo


@attrs.frozen
class ParticipantLeft:
    participant: ParticipantInfo  # as last known (name only if it was known)
    reason: LeaveReason


@attrs.frozen
class ParticipantUpdated:
    """Another participant's connection state changed (``participant.connection``): RECONNECTING
    while the MC waits for it to come back (its streams pause), CONNECTED once it did. A change
    of its publication state is a ``PublicationChanged`` (docs/protocol.md §18.1)."""

    participant: ParticipantInfo


@attrs.frozen
class Reconnecting:
    """This session lost a connection and is getting it back (docs/protocol.md §13): the
    signaling connection (a resume: ``media_only`` False; also when its MC shuts down) or the
    media connection alone. Exactly one :class:`Resumed`, :class:`Rejoined` or :class:`Lost`
    follows (a :class:`Rejoining` may come between)."""

    media_only: bool


@attrs.frozen
class Resumed:
    """This session is connected again (signaling and media): the same participant id,
    publications and subscriptions. ``outage_s`` runs from the :class:`Reconnecting` event;
    ``media_only`` is False if the signaling session had to be resumed."""

    media_only: bool
    outage_s: float


@attrs.frozen
class Rejoining:
    """Resuming is impossible and the session joins the meeting again through the GC (docs/
    protocol.md §13): ``reason`` SERVER_SHUTDOWN (the MC is shutting down; ``message`` is
    its), or CONNECTION_LOST (the MC refused the resume token, is gone, or did not come back
    within the grace window). Follows a :class:`Reconnecting`; :class:`Rejoined` or
    :class:`Lost` follows. Only a session joined with :func:`join_meeting_via_gc` rejoins."""

    reason: LeaveReason
    message: str = ""


@attrs.frozen
class Rejoined:
    """The session joined the meeting again through the GC, with the same display name, as a
    new participant (``old_participant_id`` → ``new_participant_id``, now
    :attr:`MeetingSession.participant_id`), at the MC the GC named. Its publications were
    published there again with their stream ids (video restarts at a key frame: a
    KeyFrameRequest each) and its subscriptions restored by stream id; a stream not in the
    meeting yet is subscribed again when it is published again (for ``RESUBSCRIBE_WAIT_S``).
    The room as the new MC has it was told just before as events: ParticipantLeft (``reason``
    of the Rejoining) for the participants of the old room, ParticipantJoined and
    StreamPublished for those of the new one. ``outage_s`` runs from the Reconnecting event."""

    old_participant_id: str
    new_participant_id: str
    outage_s: float


@attrs.frozen
class Lost:
    """Reconnecting failed and the session ended with ``reason``: CONNECTION_LOST (the grace
    window passed or the resume was refused; or, rejoining, the rejoin window passed or the GC
    refused it), KICKED or MEETING_ENDED (the resume or the GC's rejoin was refused with that
    reason), SERVER_SHUTDOWN (the MC shut down and no rejoin succeeded, or none was possible).
    ``message`` says why. The last event: the stream then raises SessionEnded."""

    reason: LeaveReason
    message: str = ""


@attrs.frozen
class StreamPublished:
    stream: StreamInfo


@attrs.frozen
class StreamUnpublished:
    stream: StreamInfo


@attrs.frozen
class LayerFeedback:
    """One simulcast layer of a video this session publishes, as its subscribers take it
    (docs/protocol.md §17.3): ``active`` is False when nobody receives it (the session then
    pauses it: dynacast), ``subscribers`` how many do, ``available_bitrate`` the most one of
    them can take (bits/s, 0: not known)."""

    layer_id: str
    active: bool
    subscribers: int = 0
    available_bitrate: int = 0


@attrs.frozen
class QualityUpdate:
    """Contract ``StreamQualityUpdate``, from the MH's estimates (via the MC) or relayed from a
    publisher to its subscribers. ``available_bitrate`` in bits/s.

    About a stream this session receives (docs/protocol.md §17.2): ``available_bitrate`` is
    the MH's estimate for this session's connection, ``layer_id`` the simulcast layer it gets
    ("" for a plain stream), ``paused`` that the MH holds the video back (LastN). About a
    stream it publishes (§17.3): ``available_bitrate`` is the most one of its subscribers can
    take (0: nobody subscribes) and, for a simulcast video, ``layers`` says which layers
    anyone receives (a layer not ``active`` is paused: see ``Publication.paused_layers``)."""

    stream_id: str
    available_bitrate: int
    packet_loss: float
    rtt_ms: int
    layer_id: str = ""
    paused: bool = False
    layers: tuple[LayerFeedback, ...] = ()

    @classmethod
    def from_pb(cls, q: sig.StreamQualityUpdate) -> QualityUpdate:
        layers = tuple(
            LayerFeedback(f.layer_id, f.active, f.subscribers, f.available_bitrate)
            for f in q.layers[:MAX_LAYER_FEEDBACK]
        )
        return cls(
            q.stream_id, q.available_bitrate, q.packet_loss, q.rtt_ms, q.layer_id, q.paused, layers
        )


@attrs.frozen
class ActiveSpeakers:
    """Who speaks in the meeting (docs/protocol.md §17.4): the dominant speaker first, then
    the other recent speakers, most recent first (this session's own id among them when it
    speaks); empty when nobody does. ``MeetingSession.adaptation.speakers`` is always the
    last one."""

    participant_ids: tuple[str, ...]

    @classmethod
    def from_pb(cls, m: sig.ActiveSpeakers) -> ActiveSpeakers:
        return cls(tuple(m.participant_ids[:MAX_SPEAKERS]))


@attrs.frozen
class KeyFrameRequest:
    """A subscriber of one of this session's streams needs a key frame."""

    stream_id: str


@attrs.frozen
class RecordingChanged:
    """The meeting's recording started (``recording``) or stopped (docs/protocol.md §2.1);
    ``MeetingSession.recording`` is always current."""

    recording: bool


@attrs.frozen
class DerivedStream:
    """A stream the server makes for one subscription, received instead of its source
    (docs/protocol.md §2.2): a transcode (``codec`` at ``bitrate`` bits/s) or the session's
    audio mix (``mix``: every other participant's audio, Opus). ``stream_id`` is the id its
    frames carry."""

    stream_id: str
    codec: str = ""
    bitrate: int = 0
    mix: bool = False

    @classmethod
    def from_pb(cls, derived: sig.DerivedStream) -> DerivedStream | None:
        """None for an unset one (the subscription is carried by its source)."""
        if not derived.stream_id:
            return None
        return cls(derived.stream_id, derived.codec, derived.bitrate, derived.mix)


@attrs.frozen
class E2EEKeyChanged:
    """The MC named another public key for a participant than the one this session first saw
    for its id (docs/protocol.md §16): the session goes on sealing its keys to the first one
    only (never to ``new_fingerprint``'s key) and opens that participant's shares with it;
    ``fingerprint`` is the first key's safety number, ``new_fingerprint`` the refused one's.
    Counted in ``session.e2ee.drops["key_changed"]``. A participant's own key never changes
    while its id lasts (a rejoin is a new id): show it, it may be an attack."""

    participant_id: str
    fingerprint: str
    new_fingerprint: str


SessionEvent = (
    ParticipantJoined
    | ParticipantLeft
    | ParticipantUpdated
    | Reconnecting
    | Resumed
    | Rejoining
    | Rejoined
    | Lost
    | StreamPublished
    | StreamUnpublished
    | QualityUpdate
    | KeyFrameRequest
    | RecordingChanged
    | E2EEKeyChanged
    | ActiveSpeakers
    | PublicationChanged
    | Moderated
    | ChatMessage
)


def role_of(join_token: str) -> Role | None:
    """The role claim of a join token, unverified: informational only (the MC enforces it)."""
    try:
        payload = join_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return Role(claims["role"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def stream_metadata(
    stream_type: StreamType,
    *,
    codec: str,
    max_bitrate: int,
    width: int,
    height: int,
    framerate: int,
    layers: Sequence[SimulcastLayer],
) -> common_pb2.StreamMetadata:
    """The ``StreamMetadata`` a PublishStream carries (video metadata for a video stream)."""
    metadata = common_pb2.StreamMetadata(codec=codec, max_bitrate=max_bitrate)
    if stream_type is not StreamType.AUDIO:
        metadata.video.CopyFrom(
            common_pb2.VideoMetadata(
                width=width,
                height=height,
                framerate=framerate,
                simulcast_layers=[
                    common_pb2.SimulcastLayer(
                        layer_id=la.layer_id,
                        width=la.width,
                        height=la.height,
                        max_bitrate=la.max_bitrate,
                    )
                    for la in layers
                ],
            )
        )
    return metadata


def wire_keys(stream_id: str, layer_ids: tuple[str, ...] = ()) -> list[bytes]:
    """The 16-byte stream ids that frames of ``stream_id`` carry (its layers' for simulcast).
    Raises InvalidRequest if ``stream_id`` is not a UUID (frames could never match it)."""
    keys = []
    for value in (stream_id, *layer_ids):
        try:
            keys.append(uuid.UUID(value).bytes)
        except ValueError:
            if value == stream_id:
                raise InvalidRequest(f"stream id {value!r} is not a UUID") from None
    return keys
