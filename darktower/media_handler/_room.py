"""Rooms, members, publications and subscriptions: the routing state of the SFU.

See docs/architecture.md §4.3.

State only, plus the synchronous hot path :meth:`MediaPublication.route`; the tasks that move
bytes live in ``_plane.py`` (connections, publish streams) and ``_writer.py`` (subscriptions).
One :class:`MediaRoom` per meeting, one :class:`MediaMember` per registered participant
(connected or not), one :class:`MediaPublication` per registered stream (its simulcast layers are
:class:`PublishedLayer` entries, each its own stream id on the wire) and one
:class:`MediaSubscription` per (subscriber, routed stream) with its bounded queue. The MC's
counterparts are ``RoomState``/``RoomMember``; the client library's are its public
``Publication``/``Subscription``.

**Who may publish what.** A stream id listed in ``RegisterParticipant.streams`` (with its type
and simulcast layers; a later RegisterParticipant of the same participant adds streams) is
publishable only by that participant. A stream id nobody registered is claimed by the first
participant of the room whose frame carries it (an audio first frame makes it audio, else
video without simulcast): the MC validates publications on signaling and need not tell the MH
first. A frame whose stream id belongs to another participant resets that QUIC stream.
RouteMedia may name a stream before anyone claims it; the route waits in ``MediaRoom.routes``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from darktower.errors import InvalidRequest
from darktower.frames import Frame, FrameType
from darktower.model import MeetingId, ParticipantId, StreamId, StreamType
from darktower.protocol.ratelimit import TokenBucket

from ._budget import ByteBudget, priority_of
from ._estimate import BandwidthEstimator
from ._ingress import IngressBuffer
from ._limits import DATA_BURST_S, MAX_ROOM_DATA_COPIES_PER_S
from ._queue import (
    Dropped,
    DropReason,
    KeyFrameRequester,
    MediaKind,
    QueuedFrame,
    SubscriptionQueue,
)
from ._simulcast import Layer, LayerChooser, LayerSwitcher, choose_layer
from ._speaker import SpeakerTracker
from ._stats import StreamStats

if TYPE_CHECKING:
    from darktower.nurseries import Meeting, Participant, StreamTask
    from darktower.transport import TransportStats, WebTransportSession, WebTransportStream

# Called with (stream id to ask a key frame of, now) when a subscriber waits for one; False
# when the request was throttled (asked again at a later frame).
KeyFrameCallback = Callable[[StreamId, float], bool]
# Called with what a queue dropped (counted in the stream's stats by the callee, and /metrics).
DropSink = Callable[["MediaPublication", Sequence[Dropped[memoryview]]], None]


def parse_stream_id(text: str, what: str = "stream_id") -> bytes:
    """The 16 header bytes of a stream id in UUID string form (INVALID_REQUEST otherwise)."""
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise InvalidRequest(f"{what} {text!r} is not a UUID", details={"field": what}) from None


@attrs.define(eq=False)
class RouteOptions:
    """What RouteMedia asked for one (source, destination)."""

    preferred_layer: str = ""
    target_bitrate: int = 0  # bits/s, 0: no cap
    pinned: bool = False  # LastN never holds it back (docs/protocol.md §17.4)


@attrs.define(eq=False)
class PublishedLayer:
    """One stream id on the wire: a plain stream, or one simulcast layer of a video."""

    publication: MediaPublication
    layer_id: StreamId
    key: bytes  # the 16 header bytes of layer_id
    top: bool  # the highest simulcast layer: its deltas go first under budget
    bound: bool = False  # a QUIC stream of the publisher carries it now
    stream: WebTransportStream | None = None  # that QUIC stream, while bound
    removed: bool = False  # RemoveStream forgot it: its QUIC stream routes nothing more


@attrs.define(eq=False)
class MediaSubscription:
    """The bounded queue and layer choice of one (subscriber, routed stream)."""

    subscriber: MediaMember
    publication: MediaPublication
    options: RouteOptions
    queue: SubscriptionQueue[memoryview]
    switcher: LayerSwitcher | None
    wake: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    task: StreamTask | None = None
    # While its task is parked: writes a frame just queued from the publisher's task, True
    # if it went (_direct.py); False or None: the task is woken.
    direct: Callable[[QueuedFrame[memoryview], float], bool] | None = None
    # Its task waits for the subscriber's flow-control credit (_credit.py): routed frames
    # neither wake it nor ask for the key frame its video may wait for (asked once it writes).
    blocked: bool = False
    # Held back (LastN, docs/protocol.md §17.4): a held video routes nothing to this
    # subscriber, and restarts at a key frame when released (:meth:`hold`). Audio ignores it.
    held: bool = False
    # The layer choice's hysteresis (simulcast only) and what the last SubscriberQuality said
    # (_adapt.py): (layer, paused, estimate), when, and the connection's counters then.
    chooser: LayerChooser = attrs.Factory(LayerChooser)
    share: int = 0  # its share of the subscriber's estimate, bits/s (audio: all of it)
    reported: tuple[str, bool, int] | None = None
    reported_at: float = -1e9
    reported_stats: TransportStats | None = None

    def hold(self, held: bool) -> None:
        """Hold this subscriber's video back, or release it: the video then restarts at a key
        frame, asked for at the next frame routed."""
        if held == self.held:
            return
        self.held = held
        if held or self.publication.kind is not MediaKind.VIDEO:
            return
        if self.switcher is not None:
            self.switcher.restart()
        else:
            self.queue.lose_incoming()


@attrs.define(eq=False)
class MediaPublication:
    """A registered stream of one member, and everyone it is routed to."""

    stream_id: StreamId
    stream_type: StreamType
    publisher: MediaMember
    layers: tuple[Layer, ...]  # simulcast layers, empty for a plain stream
    stats: StreamStats
    on_drops: DropSink
    subscriptions: dict[ParticipantId, MediaSubscription] = attrs.Factory(dict)
    codec: str = ""  # StreamMetadata.codec as registered ("": not said, or claimed by a frame)
    # What the last PublisherFeedback said (_adapt.py): the layers' active flags (all active
    # until told otherwise), the figures, when; and the connection's counters then.
    active: dict[StreamId, bool] = attrs.Factory(dict)
    fed_back: tuple[int, tuple[tuple[int, int], ...]] | None = None
    fed_back_at: float = -1e9
    fed_back_stats: TransportStats | None = None

    @property
    def kind(self) -> MediaKind:
        return MediaKind.of_stream_type(self.stream_type)

    def choose(self, options: RouteOptions, available_bitrate: int | None) -> StreamId | None:
        if not self.layers:
            return None
        return choose_layer(
            self.layers, options.preferred_layer, options.target_bitrate, available_bitrate
        )

    def route(
        self, layer: PublishedLayer, frame: Frame, now: float, on_key_frame: KeyFrameCallback
    ) -> None:
        """Offer one frame of ``layer`` (already admitted by the publisher's budget) to every
        subscription: layer choice, the subscriber's budget, its queue. Never blocks."""
        frame_type = frame.frame_type
        raw = frame.raw
        item: QueuedFrame[memoryview] = QueuedFrame(
            frame_type, int(frame.flags), raw.nbytes, raw, now
        )
        on_drops = self.on_drops
        layer_id = layer.layer_id
        priority = priority_of(frame_type, item.flags, top_layer=layer.top)
        video = frame_type != FrameType.AUDIO
        for sub in self.subscriptions.values():
            if video and sub.held:
                continue
            switcher = sub.switcher
            if switcher is not None and not switcher.on_frame(layer_id, frame_type):
                continue
            if not sub.subscriber.budget_out.admit(priority, item.size, now):
                on_drops(self, sub.queue.drop(item, DropReason.BUDGET))
            else:
                drops = sub.queue.push(item)
                if drops:
                    on_drops(self, drops)
            if not sub.blocked:
                request_key_frame(sub, now, on_key_frame)
                direct = sub.direct
                if direct is None or not direct(item, now):
                    sub.wake.unpark_all()

    def drop_at_ingress(self, frame: Frame, now: float, on_key_frame: KeyFrameCallback) -> None:
        """The publisher's budget refused ``frame``: every subscriber loses it (counted once
        each), and video subscribers wait for the next key frame."""
        raw = frame.raw
        item: QueuedFrame[memoryview] = QueuedFrame(
            frame.frame_type, int(frame.flags), raw.nbytes, raw, now
        )
        for sub in self.subscriptions.values():
            self.on_drops(self, sub.queue.drop(item, DropReason.BUDGET))
            if not sub.blocked:  # (one waiting for credit asks once it writes again)
                request_key_frame(sub, now, on_key_frame)

    def publisher_lost(self) -> None:
        """The publisher's connection went (lost or replaced): frames in flight are gone, so
        every subscriber's video resumes at a key frame, asked for at the next frame routed."""
        for sub in self.subscriptions.values():
            sub.queue.lose_incoming()


def request_key_frame(sub: MediaSubscription, now: float, on_key_frame: KeyFrameCallback) -> None:
    """Ask for a key frame if ``sub`` just started waiting for one (join, loss, layer switch).

    A request the throttle held back is raised again, so the next frame routed asks anew: the
    key frame that answered an earlier request may have passed before ``sub`` waited."""
    switcher = sub.switcher
    queue = sub.queue
    if switcher is not None:
        layer = switcher.take_key_frame_request()
        waiting = queue.take_key_frame_request()
        if layer is not None:
            if not on_key_frame(layer, now):
                switcher.ask_again(layer)
        elif waiting and switcher.current is not None:
            if not on_key_frame(switcher.current, now):
                queue.ask_again()
    elif queue.take_key_frame_request():
        if not on_key_frame(sub.publication.stream_id, now):
            queue.ask_again()


@attrs.define(eq=False)
class MediaMember:
    """A registered participant of a room: its streams, budgets, and once connected, its
    media session and task-tree scope."""

    id: ParticipantId
    room: MediaRoom
    registered_at: float
    budget_in: ByteBudget
    budget_out: ByteBudget
    # Partial frames its publish streams hold (the cap's policy: _limits.py).
    ingress: IngressBuffer
    publications: dict[StreamId, MediaPublication] = attrs.Factory(dict)
    session: WebTransportSession | None = None
    scope: Participant | None = None
    connecting: bool = False  # a session is being accepted for it
    settled: trio.Event = attrs.Factory(trio.Event)  # set once a connection attempt settled
    removed: bool = False  # the MC removed it (no ParticipantDisconnected back to the MC)
    # When its media connection was lost; it is kept with its routes for the media grace
    # (_limits.py), None while connected or never connected.
    lost_at: float | None = None
    replacing: bool = False  # a newer media connection is replacing the live one
    # How long its connection may hold what the MH sends (the CONNECT's send_delay_ms).
    send_delay_s: float = 0.0
    # Connection tokens it used (token id -> expiry, epoch seconds): each opens one connection.
    used_tokens: dict[str, float] = attrs.Factory(dict)
    # The bandwidth estimate of its media connection (_adapt.py), and that connection.
    link: BandwidthEstimator | None = None
    link_session: WebTransportSession | None = None

    @property
    def connected(self) -> bool:
        return self.scope is not None

    def stream_count(self) -> int:
        """Stream ids it publishes on the wire (each simulcast layer counts one)."""
        return sum(len(p.layers) or 1 for p in self.publications.values())


@attrs.define(eq=False)
class MediaRoom:
    """One meeting on this MH: its members, its streams by wire id, its routes."""

    id: MeetingId
    scope: Meeting
    key_frames: KeyFrameRequester = attrs.Factory(KeyFrameRequester)
    members: dict[ParticipantId, MediaMember] = attrs.Factory(dict)
    # Wire stream id (16 bytes) -> the layer (or plain stream) it carries.
    layers: dict[bytes, PublishedLayer] = attrs.Factory(dict)
    publications: dict[StreamId, MediaPublication] = attrs.Factory(dict)
    # RouteMedia's table: source stream -> destination -> options. Kept for destinations not
    # connected yet; a subscription is made from it when they connect.
    routes: dict[StreamId, dict[ParticipantId, RouteOptions]] = attrs.Factory(dict)
    # Set when a member's expiry changes (registered, lost): the room's body recomputes when
    # to forget the next one, and replaces it.
    expiry_changed: trio.Event = attrs.Factory(trio.Event)
    # The incarnation of the meeting's room at its MC (RegisterParticipant.room_epoch; 0: none
    # said): a registration of a newer one replaces this room (_registry.py).
    epoch: int = 0
    # Who speaks, from the audio levels its members publish (_speaking.py).
    speakers: SpeakerTracker = attrs.Factory(SpeakerTracker)
    # The data message copies it may still relay (_data.py, _limits.py).
    data_copies: TokenBucket = attrs.Factory(
        lambda: TokenBucket(MAX_ROOM_DATA_COPIES_PER_S, MAX_ROOM_DATA_COPIES_PER_S * DATA_BURST_S)
    )

    def add_publication(self, publication: MediaPublication) -> None:
        self.publications[publication.stream_id] = publication
        publication.publisher.publications[publication.stream_id] = publication
        if publication.layers:
            top = max(publication.layers, key=lambda la: (la.width * la.height, la.max_bitrate))
            for la in publication.layers:
                key = parse_stream_id(la.layer_id, "layer_id")
                self.layers[key] = PublishedLayer(publication, la.layer_id, key, la is top)
        else:
            key = parse_stream_id(publication.stream_id)
            self.layers[key] = PublishedLayer(publication, publication.stream_id, key, False)

    def remove_publication(self, publication: MediaPublication) -> list[MediaSubscription]:
        """Forget a stream; return its subscriptions, whose tasks the caller cancels. Its
        layers are marked removed (a QUIC stream still bound to one routes nothing more)."""
        self.publications.pop(publication.stream_id, None)
        publication.publisher.publications.pop(publication.stream_id, None)
        ids = [la.layer_id for la in publication.layers] or [publication.stream_id]
        for layer_id in ids:
            layer = self.layers.get(parse_stream_id(layer_id))
            if layer is not None and layer.publication is publication:
                layer.removed = True
                del self.layers[layer.key]
        self.routes.pop(publication.stream_id, None)
        subs = list(publication.subscriptions.values())
        publication.subscriptions.clear()
        return subs

    def remove_member(self, member: MediaMember) -> list[MediaSubscription]:
        """Forget a member, its streams and every route to or from it; return the
        subscriptions (of others) whose tasks the caller cancels."""
        if self.members.get(member.id) is member:
            del self.members[member.id]
            self.speakers.forget(member.id)
        orphans: list[MediaSubscription] = []
        for publication in list(member.publications.values()):
            orphans.extend(self.remove_publication(publication))
        for publication in self.publications.values():
            publication.subscriptions.pop(member.id, None)
        for destinations in self.routes.values():
            destinations.pop(member.id, None)
        return orphans

    def forget_key_frames(self, publication: MediaPublication) -> None:
        """Bounds the key frame requester to live streams."""
        self.key_frames.forget(publication.stream_id)
        for layer in publication.layers:
            self.key_frames.forget(layer.layer_id)

    def stream_count(self) -> int:
        return len(self.layers)


def frame_kind_matches(publication: MediaPublication, frame_type: FrameType) -> bool:
    """Audio frames only on audio streams, video frames only on video streams."""
    return (frame_type == FrameType.AUDIO) == (publication.stream_type == StreamType.AUDIO)
