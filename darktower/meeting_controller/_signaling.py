"""Handlers of the client's signaling requests, one per ``ClientMessage`` kind.

A table of handlers, as docs/architecture.md §7 describes.

Each takes the session (its room, its member and the controller's controls) and the request,
and returns the reply (its ``request_id`` is set by the dispatcher) or None when the reply is
the session's ``SessionEnded``; a ``DarkTowerError`` becomes the ``ErrorMessage`` reply.

Quality reports from clients: a report on a stream the client *receives* becomes a
``RouteMedia`` options update for that subscription (``target_bitrate`` = the reported
available bitrate within the subscription's ``max_bitrate``, the preferred layer and the pin
kept; a report without a bitrate leaves only ``max_bitrate``), so the MH's layer choice
follows the client's downlink (not for a subscription carried by a derived stream: a
transcode keeps its bitrate); a report on a stream the client *publishes* is relayed to that
stream's subscribers.

Subscriptions may be carried by a stream the server makes (a transcode, an audio mix), and a
participant's first publish starts its recording in a meeting that records: ``_processing``
and ``_recording`` (docs/protocol.md §2.1, §2.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from darktower.errors import (
    CapacityExceeded,
    Conflict,
    DarkTowerError,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from darktower.model import LeaveReason, ParticipantId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from . import _recording
from ._chat import send_chat
from ._limits import MAX_PUBLISHED_STREAMS, MH_CALL_DEADLINE_S
from ._moderation import check_request
from ._moderation import moderate as moderation
from ._processing import (
    E2EE_REFUSAL,
    MIX,
    auto_mixed,
    mixed,
    plan_transcode,
    release_mix,
    replaced,
    route,
    routing,
    transcoded,
)
from ._publication import announce, check_publish, set_own, streams_changed
from ._room import RoomMember, RoomState, at_room_mh
from ._streams import end_stream, published, removed_meanwhile, unpublished

if TYPE_CHECKING:
    from ._session import SignalingSession

Reply = sig.ServerMessage | None
Handler = Callable[["SignalingSession", sig.ClientMessage], Awaitable[Reply]]
MAX_STREAM_ID_CHARS = 128


def _ack(stream_id: str = "", derived: sig.DerivedStream | None = None) -> sig.ServerMessage:
    return sig.ServerMessage(ack=sig.Ack(stream_id=stream_id, derived=derived))


def _stream_id(value: str) -> str:
    if not value or len(value) > MAX_STREAM_ID_CHARS:
        raise InvalidRequest("stream_id must be 1 to 128 characters")
    return value


async def _route(room: RoomState, command: mh_pb.RouteMediaCommand) -> None:
    await route(room, command)


def _check_ids_free(room: RoomState, ids: set[str]) -> None:
    taken = room.id_in_use(ids)
    if taken is not None:
        raise Conflict(f"stream id {taken} is already published in this meeting")


async def publish(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    stream_id = _stream_id(m.publish.stream_id)
    check_publish(member, m.publish.stream_type)
    ids = {stream_id, *(la.layer_id for la in m.publish.metadata.video.simulcast_layers)}
    _check_ids_free(room, ids)
    if len(member.streams) >= MAX_PUBLISHED_STREAMS:
        raise CapacityExceeded(f"at most {MAX_PUBLISHED_STREAMS} published streams")
    stream = common_pb2.MediaStream(
        stream_id=stream_id, stream_type=m.publish.stream_type, metadata=m.publish.metadata
    )
    # The MH learns the stream, and its simulcast layers, before anyone hears of it: its
    # frames are then accepted from this participant only, each layer as its own wire id.
    register = mh_pb.RegisterParticipant(
        participant_id=member.id, meeting_id=room.id, streams=[stream], room_epoch=room.epoch
    )
    await at_room_mh(room, lambda mh: mh.register_participant(register))
    _check_ids_free(room, ids)  # published by another meanwhile
    if member.publication.blocked(stream.stream_type):
        # A host blocked the kind meanwhile: nobody heard of the stream, the MH forgets it
        # (a removal that fails leaves it registered there, routed to nobody).
        member.streams[stream_id] = stream
        try:
            with trio.move_on_after(MH_CALL_DEADLINE_S), contextlib.suppress(DarkTowerError):
                await end_stream(room, member, stream_id)
        finally:
            member.streams.pop(stream_id, None)
        check_publish(member, stream.stream_type)
    member.streams[stream_id] = stream
    published(room, member, stream)
    streams_changed(room, member)
    _recording.start_soon(room, member, session.metrics)
    return _ack(stream_id)


async def unpublish(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    stream_id = m.unpublish.stream_id
    removal = member.removing.get(stream_id)
    if removal is not None and stream_id not in member.streams:
        # A host's moderation is removing it: answered once the MH no longer routes it (the
        # moderation tells the members).
        await removed_meanwhile(member, removal, stream_id)
        return _ack(stream_id)
    if stream_id not in member.streams:
        raise NotFound(f"stream {stream_id} is not published by you")
    # The MH stops routing it (and ends its QUIC streams) before anyone hears it is gone: a
    # publisher that unpublishes and keeps writing frames reaches nobody.
    stream = await end_stream(room, member, stream_id)
    unpublished(room, member, stream, tell_publisher=False)
    streams_changed(room, member)
    return _ack(stream_id)


async def set_publication(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    """The participant's own switches (docs/protocol.md §18.1): everyone hears of a change."""
    if set_own(session.member, m.set_publication):
        announce(session.room, session.member)
    return _ack()


async def subscribe(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    if m.subscribe.mix_audio:
        return await _subscribe_mix(session, m.subscribe)
    stream_id = _stream_id(m.subscribe.stream_id)
    publisher = room.publisher_of(stream_id)
    if publisher is None:
        raise NotFound(f"stream {stream_id} is not published in this meeting")
    if publisher is member:
        raise InvalidRequest("cannot subscribe to your own stream")
    stream = publisher.streams[stream_id]
    video = stream.stream_type != common_pb2.AUDIO
    limit = member.max_video_streams
    if video and limit and stream_id not in member.video_subscriptions:
        if len(member.video_subscriptions) >= limit:
            raise CapacityExceeded(
                f"at most {limit} video streams at once (your max_video_streams)",
                details={"field": "capabilities.max_video_streams", "limit": str(limit)},
            )
    options = m.subscribe.options
    before, old = member.subscriptions.get(stream_id), member.derived.get(stream_id)
    plan = plan_transcode(member, stream, options)
    if plan is not None and room.e2ee:
        if plan.required:
            raise InvalidRequest(E2EE_REFUSAL.format("transcode"))
        plan = None  # for its bitrate only: the lowest layer instead
    # A route of its own made before the meeting passed the threshold stays one.
    derived = None if before is not None and old is None else await auto_mixed(room, member, stream)
    if derived is None and plan is not None:
        derived = await transcoded(room, member, stream_id, options, plan)
    if derived is None:
        await _route(
            room,
            mh_pb.RouteMediaCommand(
                source_stream_id=stream_id,
                destination_participant_ids=[member.id],
                options=routing(options, None),
            ),
        )
    if room.publisher_of(stream_id) is publisher:  # still there after the call
        member.subscriptions[stream_id] = options
        if video:
            member.video_subscriptions.add(stream_id)
        if derived is None:
            member.derived.pop(stream_id, None)
        else:
            member.derived[stream_id] = derived
        if before is not None:
            await replaced(room, member, stream_id, before, old, derived)
    return _ack(stream_id, derived)


async def _subscribe_mix(session: SignalingSession, request: sig.SubscribeStream) -> Reply:
    """SubscribeStream{mix_audio}: the participant's mix (idempotent)."""
    room, member = session.room, session.member
    if request.stream_id:
        raise InvalidRequest("a mix_audio subscription names no stream_id")
    if room.e2ee:
        raise InvalidRequest(E2EE_REFUSAL.format("mix"))
    derived = await mixed(room, member)
    member.derived[MIX] = derived
    return _ack(MIX, derived)


async def unsubscribe(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    """UnsubscribeStream of a subscription (by its stream id), or of the mix asked for with
    mix_audio (by the mix's stream id)."""
    room, member = session.room, session.member
    stream_id = m.unsubscribe.stream_id
    options = member.subscriptions.get(stream_id)
    if options is None:
        mix = member.derived.get(MIX)
        if mix is None or mix.stream_id != stream_id:
            raise NotFound(f"you are not subscribed to stream {stream_id}")
        del member.derived[MIX]
        await release_mix(room, member)
        return _ack(stream_id)
    derived = member.drop_subscription(stream_id)
    if derived is not None and derived.mix:
        await release_mix(room, member)
        return _ack(stream_id)
    await _route(
        room,
        mh_pb.RouteMediaCommand(
            source_stream_id=stream_id,
            destination_participant_ids=[member.id],
            options=None if derived is None else routing(options, derived),
            unroute=True,
        ),
    )
    return _ack(stream_id)


async def quality(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    report = m.quality
    options = member.subscriptions.get(report.stream_id)
    if options is not None and report.stream_id in member.derived:
        pass  # carried by a transcode or the mix: its bitrate is the server's
    elif options is not None:
        # The report caps the route within the subscription's own max_bitrate; 0 says no figure
        # (a report of loss and RTT only), which leaves that cap (docs/protocol.md §17.5).
        caps = [b for b in (report.available_bitrate, options.max_bitrate) if b]
        await _route(
            room,
            mh_pb.RouteMediaCommand(
                source_stream_id=report.stream_id,
                destination_participant_ids=[member.id],
                options=mh_pb.RoutingOptions(
                    preferred_layer=options.preferred_layer,
                    target_bitrate=min(caps, default=0),
                    pinned=options.pinned,
                ),
            ),
        )
    elif report.stream_id in member.streams:
        # The contract's fields only: layers, layer_id and paused are the MH's to say
        # (docs/protocol.md §17).
        update = sig.ServerMessage(
            quality=sig.StreamQualityUpdate(
                stream_id=report.stream_id,
                available_bitrate=report.available_bitrate,
                packet_loss=report.packet_loss,
                rtt_ms=report.rtt_ms,
            )
        )
        for subscriber in list(room.subscribers_of(report.stream_id)):
            room.deliver(subscriber, update)
    else:
        raise NotFound(f"stream {report.stream_id} is neither yours nor subscribed")
    return _ack(report.stream_id)


async def leave(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    member = session.member
    member.end_request_id = m.request_id
    member.leave(LeaveReason.VOLUNTARY)
    return None


def _host(member: RoomMember) -> None:
    if member.role is not Role.HOST:
        raise Forbidden("only the host may do this")


async def kick(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    _host(member)
    session.controls.kick(room.id, ParticipantId(m.kick.participant_id), "removed by the host")
    return _ack()


async def end_meeting(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    _host(member)
    member.end_request_id = m.request_id
    session.controls.end(room.id, "the host ended the meeting")
    return None


async def moderate(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    """A host's ModerateParticipant (docs/protocol.md §18.2): answered once every stream it
    ends is removed at the Media Handler (``_moderation``)."""
    room, member = session.room, session.member
    _host(member)
    request = m.moderate
    check_request(request.actions, request.message)
    target = room.members.get(ParticipantId(request.participant_id))
    if target is None:
        raise NotFound(f"participant {request.participant_id} is not in this meeting")
    await moderation(room, target, request.actions, request.message, member.id)
    return _ack()


async def ping(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    return sig.ServerMessage(pong=sig.Pong(timestamp=m.ping.timestamp))


async def key_share(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    room, member = session.room, session.member
    target = room.members.get(ParticipantId(m.key_share.to_participant_id))
    if target is None:
        raise NotFound(f"participant {m.key_share.to_participant_id} is not in this meeting")
    relayed = sig.E2EEKeyShare()
    relayed.CopyFrom(m.key_share)
    relayed.from_participant_id = member.id  # the sender cannot speak for someone else
    room.deliver(target, sig.ServerMessage(key_share=relayed))
    return _ack()


async def media_reconnect(session: SignalingSession, m: sig.ClientMessage) -> Reply:
    """A fresh media connection token (docs/protocol.md §13); CAPACITY_EXCEEDED or
    INTERNAL_ERROR when the Media Handler refuses or is gone (the client may ask again)."""
    media = await session.media.fresh()
    return sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=media))


HANDLERS: dict[str, Handler] = {
    "publish": publish,
    "unpublish": unpublish,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "quality": quality,
    "leave": leave,
    "kick": kick,
    "end_meeting": end_meeting,
    "ping": ping,
    "key_share": key_share,
    "media_reconnect_request": media_reconnect,
    "set_publication": set_publication,
    "moderate": moderate,
    "send_chat": send_chat,
}

__all__ = ["HANDLERS"]
