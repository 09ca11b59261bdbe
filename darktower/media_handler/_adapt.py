"""Adaptive media (docs/protocol.md §17.2, §17.3): the estimate of each subscriber connection,
the layers it gets, and what both ends are told.

One task of the service (:meth:`Adaptation.run`, docs/architecture.md §4.3) ticks every
``TICK_S``; each tick, for every connected member of every room:

1. its connection's :class:`~darktower.media_handler._estimate.BandwidthEstimator` takes a
   sample of QUIC's counters and of the backlog at the MH: the stream bytes QUIC has not sent
   yet (the subscriptions' queues are left out: a subscription held off after abandoned sends
   keeps its queue whatever the path can take, docs/protocol.md §13);
2. its estimate, less what the path's queue holds (spread over ``DRAIN_S``), is split across
   its subscriptions, audio first (what its audio
   streams carry now), the rest across its videos (water-filling: a video that needs less than
   an equal share leaves the rest to the others); each simulcast video aims for the highest
   layer that fits its share and its route's ``preferred_layer``/``target_bitrate``, down at
   once, up with hysteresis (:class:`~darktower.media_handler._simulcast.LayerChooser`), the
   switch at a key frame of the new layer (requested); a switch down on congestion stops the
   old layer at once;
3. if the layers it would like need more than the estimate, the estimator may probe: padding
   goes out as WebTransport datagrams of zeros, which clients ignore (their datagram queues
   are bounded and drop the oldest);
4. a ``SubscriberQuality`` per subscription when its layer or ``paused`` changed or the
   estimate moved by a fifth, at most once per ``QUALITY_INTERVAL_S``.

Then, for each published stream, a ``PublisherFeedback`` (dynacast): which layers someone
receives or aims for, how many, the most one of them can take; sent at once when a layer's
``active`` flag changes (a layer that comes back is asked for a key frame), otherwise at most
every ``FEEDBACK_INTERVAL_S`` when the figures moved by a fifth.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import trio

from darktower.model import ParticipantId, StreamId
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb

from ._estimate import MIN_PACKET_BYTES, BandwidthEstimator, LinkSample
from ._queue import MediaKind
from ._room import MediaMember, MediaPublication, MediaRoom, MediaSubscription, request_key_frame
from ._simulcast import choose_layer, layer_bitrate, rank, step_up
from ._telemetry import UINT32_MAX, TelemetryHub

logger = logging.getLogger("darktower.media_handler")

if TYPE_CHECKING:
    from darktower.transport import TransportStats, WebTransportSession

    from ._router import MediaRouter

# How often the estimates are fed and the layers chosen, seconds.
TICK_S: Final = 0.1
# A tick later than this means the process stalled (see Adaptation.run), seconds.
STALL_S: Final = 0.05
# SubscriberQuality: at most one per subscription per this long; sent when the layer or
# paused changed, or the estimate moved by this fraction since the last one sent.
QUALITY_INTERVAL_S: Final = 1.0
QUALITY_CHANGE: Final = 0.2
# PublisherFeedback: a change of a layer's active flag goes at once; other moves (by
# QUALITY_CHANGE, or a count of subscribers) at most once per this long.
FEEDBACK_INTERVAL_S: Final = 2.0
# What the wire costs over the media's own bytes (QUIC packet headers and frames): audio
# frames are small, one or two a packet; video frames fill packets.
AUDIO_OVERHEAD: Final = 1.3
VIDEO_OVERHEAD: Final = 1.05
# The layers are chosen for the estimate less what the path's queue holds, spread over this
# long (at most MAX_DRAIN of it): a queue built before the congestion was seen drains in
# about that long instead of at the estimate's margin.
DRAIN_S: Final = 0.5
MAX_DRAIN: Final = 0.6
# Quality events (SubscriberQuality, PublisherFeedback) published per tick at most, over all
# rooms: what is due beyond goes at a later tick, so a room that connects at once does not
# flood the MCs' telemetry queues (TELEMETRY_QUEUE_SIZE, shared with key frame requests).
# A PublisherFeedback that turns a layer on or off is never held back.
MAX_EVENTS_PER_TICK: Final = 256
# Padding: datagram payload size, and at most this many datagrams per connection per tick
# (the transport's datagram queue is 64 deep and drops the oldest).
PADDING_DATAGRAM: Final = 1100
MAX_PADDING_DATAGRAMS: Final = 32
_ZEROS: Final = bytes(PADDING_DATAGRAM)


class Adaptation:
    """The adaptation tick (see the module doc). ``router`` asks for key frames;
    ``telemetry`` carries the events to the MCs."""

    def __init__(self, router: MediaRouter, telemetry: TelemetryHub) -> None:
        self.router = router
        self.telemetry = telemetry
        self.stalled_at = -1e9  # when a tick last came late (see run)
        self._events = MAX_EVENTS_PER_TICK  # quality events this tick may still publish

    async def run(self, rooms: Callable[[], Iterable[MediaRoom]]) -> None:
        """Tick every TICK_S until cancelled (owned by the service's nursery). A tick late
        by more than STALL_S means this process stalled (acknowledgements waited too): the
        estimators are told (``LinkSample.stalled_at``)."""
        while True:
            before = trio.current_time()
            await trio.sleep(TICK_S)
            now = trio.current_time()
            if now - before > TICK_S + STALL_S:
                self.stalled_at = now
            self.tick(rooms(), now)

    def tick(self, rooms: Iterable[MediaRoom], now: float) -> None:
        """One tick over ``rooms``. An error in one room is logged and skips that room's
        tick only (an error boundary: the service goes on)."""
        self._events = MAX_EVENTS_PER_TICK
        for room in list(rooms):
            try:
                self._tick_room(room, now)
            except Exception:
                logger.exception("adaptation of room %s failed", room.id)

    def _tick_room(self, room: MediaRoom, now: float) -> None:
        subs_of: dict[ParticipantId, list[MediaSubscription]] = {}
        for publication in room.publications.values():
            for pid, sub in publication.subscriptions.items():
                subs_of.setdefault(pid, []).append(sub)
        stats_of: dict[ParticipantId, TransportStats] = {}
        for member in room.members.values():
            session = member.session
            if session is None or member.scope is None or session.is_closed:
                member.link = member.link_session = None
                continue
            stats = stats_of[member.id] = session.transport_stats()
            self._adapt(room, member, session, stats, subs_of.get(member.id, []), now)
        if self.telemetry.listeners:
            for publication in list(room.publications.values()):
                pub_stats = stats_of.get(publication.publisher.id)
                if pub_stats is not None:
                    self._feed_back(room, publication, pub_stats, now)

    # -- one subscriber connection -------------------------------------------------------------

    def _adapt(
        self,
        room: MediaRoom,
        member: MediaMember,
        session: WebTransportSession,
        stats: TransportStats,
        subs: list[MediaSubscription],
        now: float,
    ) -> None:
        link = member.link
        if link is None or member.link_session is not session:
            link = member.link = BandwidthEstimator(now=now, max_bps=member.budget_out.rate * 8)
            member.link_session = session
        link.update(
            LinkSample(
                now=now,
                rtt_s=stats.rtt_recent_ms / 1000,
                bytes_sent=stats.bytes_sent,
                bytes_acked=stats.bytes_acked,
                packets_sent=stats.packets_sent,
                packets_lost=stats.packets_lost,
                backlog=stats.bytes_unsent,
                in_flight=stats.bytes_in_flight_after_ack,
                stalled_at=self.stalled_at,
                # About one full packet: the largest datagram that fits in one.
                packet_bytes=max(MIN_PACKET_BYTES, session.max_datagram_size),
            )
        )
        wanted, sending = self._choose(room, link, subs, now)
        if any(
            sub.switcher is not None and sub.switcher.switching and not sub.held for sub in subs
        ):
            # No probe on top of a key frame on its way (a switch), nor until the path showed
            # how it takes the new layer.
            wanted = 0.0
            link.settle(now)
        padding = link.plan(wanted, now, sending, _padding_capacity(session))
        if padding:
            _pad(session, padding)
        if self.telemetry.listeners:
            for sub in subs:
                self._report(room, member, sub, link, stats, now)

    def _choose(
        self, room: MediaRoom, link: BandwidthEstimator, subs: list[MediaSubscription], now: float
    ) -> tuple[float, float]:
        """Split the estimate, aim each simulcast video at its layer; return what the
        subscriber would take with each simulcast video one layer up (a probe proves the next
        step, not the top at once) and what it takes as aimed now (bits/s on the wire)."""
        # A queue on the path must drain too: what it holds comes off for DRAIN_S.
        estimate = link.estimate * (1 - min(MAX_DRAIN, link.queuing_delay_s / DRAIN_S))
        audio = 0.0
        # (the most it would take, its best layer (None: a plain video), sub)
        videos: list[tuple[float, StreamId | None, MediaSubscription]] = []
        for sub in subs:
            publication = sub.publication
            if publication.kind is MediaKind.AUDIO:
                audio += publication.stats.bitrate(now) * AUDIO_OVERHEAD
                sub.share = int(estimate)
            elif sub.held:
                sub.share = 0
            else:
                best, rate = _best(sub, now)
                videos.append((rate * VIDEO_OVERHEAD, best, sub))
        wanted = sending = audio
        left = max(0.0, estimate - audio)
        videos.sort(key=lambda v: v[0])
        proven = link.probe_succeeded_at == now
        on_key_frame = functools.partial(self.router.key_frame, room)
        for i, (demand, best, sub) in enumerate(videos):
            fair = left / (len(videos) - i)
            left -= fair if not demand else min(demand, fair)
            sub.share = int(fair)
            switcher = sub.switcher
            layers = sub.publication.layers
            if switcher is None or best is None:
                wanted += demand
                sending += demand
                continue
            options = sub.options
            target = sub.chooser.choose(
                layers,
                switcher.target,
                options.preferred_layer,
                options.target_bitrate,
                int(fair / VIDEO_OVERHEAD),
                now,
                proven=proven,
                hold=not link.probing,
            )
            if target != switcher.target:
                # Down on congestion: the higher layer stops at once (the picture waits
                # for the lower layer's key frame), so the path's queue drains.
                switcher.set_target(target, at_once=link.congested)
            # Every tick: a video restarted (LastN released it, a switch at once) passes no
            # frame before its key frame, so route() would never ask; nor re-ask one the
            # throttle held back. Nothing pending costs nothing; one waiting for credit
            # asks once it writes again (_credit.py).
            if not sub.blocked:
                request_key_frame(sub, now, on_key_frame)
            up = step_up(layers, switcher.target, best)
            wanted += layer_bitrate(layers, up) * VIDEO_OVERHEAD
            sending += layer_bitrate(layers, switcher.target) * VIDEO_OVERHEAD
        return wanted, sending

    def _report(
        self,
        room: MediaRoom,
        member: MediaMember,
        sub: MediaSubscription,
        link: BandwidthEstimator,
        stats: TransportStats,
        now: float,
    ) -> None:
        """A SubscriberQuality for ``sub``, if due (see the module doc)."""
        switcher = sub.switcher
        layer = "" if switcher is None else (switcher.current or switcher.target)
        paused = sub.held and sub.publication.kind is MediaKind.VIDEO
        estimate = int(link.estimate)
        last = sub.reported
        if last is not None:
            if now - sub.reported_at < QUALITY_INTERVAL_S:
                return
            if last[:2] == (layer, paused) and not _moved(estimate, last[2]):
                return
        if self._events <= 0:
            return  # still due: at a later tick
        self._events -= 1
        before = sub.reported_stats
        loss = 0.0 if before is None else stats.loss_since(before)
        sub.reported, sub.reported_at, sub.reported_stats = (layer, paused, estimate), now, stats
        self.telemetry.publish(
            mc_pb.TelemetryEvent(
                meeting_id=room.id,
                subscriber_quality=mc_pb.SubscriberQuality(
                    participant_id=member.id,
                    stream_id=sub.publication.stream_id,
                    available_bitrate=min(estimate, UINT32_MAX),
                    rtt_ms=min(int(stats.rtt_ms), UINT32_MAX),
                    packet_loss=loss,
                    layer_id=layer,
                    paused=paused,
                ),
            )
        )

    # -- one published stream ------------------------------------------------------------------

    def _feed_back(
        self, room: MediaRoom, publication: MediaPublication, stats: TransportStats, now: float
    ) -> None:
        """A PublisherFeedback for ``publication``, if due (see the module doc)."""
        layers = publication.layers
        receivers: dict[StreamId, list[int]] = {la.layer_id: [0, 0] for la in layers}
        best = 0
        for sub in publication.subscriptions.values():
            if sub.held and publication.kind is MediaKind.VIDEO:
                continue
            best = max(best, sub.share)
            switcher = sub.switcher
            if switcher is None:
                continue
            for layer_id in {switcher.target, switcher.current}:
                counted = receivers.get(layer_id) if layer_id is not None else None
                if counted is not None:
                    counted[0] += 1
                    counted[1] = max(counted[1], sub.share)
        active = {layer_id: c[0] > 0 for layer_id, c in receivers.items()}
        if layers:
            live = [la for la in layers if active[la.layer_id]]
            best = receivers[max(live, key=rank).layer_id][1] if live else 0
        figures = (best, tuple((c[0], c[1]) for c in receivers.values()))
        flipped = [lid for lid, on in active.items() if publication.active.get(lid, True) != on]
        last = publication.fed_back
        if last is None and not flipped and not publication.subscriptions:
            return  # nothing to say yet: nobody subscribes, every layer goes on as it is
        if not flipped and last is not None:
            if now - publication.fed_back_at < FEEDBACK_INTERVAL_S:
                return
            if not _figures_moved(figures, last):
                return
            if self._events <= 0:
                return  # still due: at a later tick (a layer turning on or off never waits)
        self._events -= 1
        on_key_frame = functools.partial(self.router.key_frame, room)
        for layer_id in flipped:
            if active[layer_id]:  # it comes back: from a key frame
                on_key_frame(layer_id, now)
        publication.active = active
        before = publication.fed_back_stats
        loss = 0.0 if before is None else stats.loss_since(before)
        publication.fed_back, publication.fed_back_at = figures, now
        publication.fed_back_stats = stats
        self.telemetry.publish(
            mc_pb.TelemetryEvent(
                meeting_id=room.id,
                publisher_feedback=mc_pb.PublisherFeedback(
                    stream_id=publication.stream_id,
                    available_bitrate=min(best, UINT32_MAX),
                    packet_loss=loss,
                    rtt_ms=min(int(stats.rtt_ms), UINT32_MAX),
                    layers=[
                        common_pb2.LayerFeedback(
                            layer_id=la.layer_id,
                            active=active[la.layer_id],
                            subscribers=receivers[la.layer_id][0],
                            available_bitrate=min(receivers[la.layer_id][1], UINT32_MAX),
                        )
                        for la in layers
                    ],
                ),
            )
        )


def _best(sub: MediaSubscription, now: float) -> tuple[StreamId | None, int]:
    """A video subscription's best layer without the estimate's limit (None: a plain video)
    and what it takes (bits/s; 0: not known): that layer's declared bitrate, or what a plain
    video carries now."""
    publication = sub.publication
    layers = publication.layers
    if not layers:
        return None, publication.stats.bitrate(now)
    options = sub.options
    best = choose_layer(layers, options.preferred_layer, options.target_bitrate, None)
    return best, layer_bitrate(layers, best)


def _moved(value: int, before: int) -> bool:
    return abs(value - before) > QUALITY_CHANGE * max(before, 1)


def _figures_moved(
    figures: tuple[int, tuple[tuple[int, int], ...]],
    last: tuple[int, tuple[tuple[int, int], ...]],
) -> bool:
    if _moved(figures[0], last[0]) or len(figures[1]) != len(last[1]):
        return True
    return any(a[0] != b[0] or _moved(a[1], b[1]) for a, b in zip(figures[1], last[1], strict=True))


def _padding_size(session: WebTransportSession) -> int:
    """The size of one padding datagram on ``session`` (0: it takes no datagrams)."""
    return max(0, min(session.max_datagram_size, PADDING_DATAGRAM))


def _padding_capacity(session: WebTransportSession) -> int:
    """The most padding one tick sends (_pad), bytes."""
    return MAX_PADDING_DATAGRAMS * _padding_size(session)


def _pad(session: WebTransportSession, nbytes: int) -> None:
    """Send ``nbytes`` of padding as datagrams of zeros (bounded per tick)."""
    size = _padding_size(session)
    if size <= 0:
        return
    count = min(math.ceil(nbytes / size), MAX_PADDING_DATAGRAMS)
    data = _ZEROS[:size]
    try:
        for _ in range(count):
            session.send_datagram(data)
    except (ValueError, trio.ClosedResourceError, trio.BrokenResourceError):
        pass  # the session is ending: its subscriptions end with it
