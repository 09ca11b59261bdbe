"""How a subscription is routed when the subscriber cannot take the source as it is: a
transcode, or the subscriber's audio mix (docs/protocol.md §2.2). The Media Handler makes the
derived stream through a media processor (docs/architecture.md §10) and names it in its
RouteMedia reply; the subscriber learns that name from the subscription's Ack (``derived``)
and, when it changes (its room moved to another MH), from SubscriptionUpdated.

- *Capabilities.* A video subscription whose subscriber listed video codecs
  (``ParticipantCapabilities.video_codecs``) without the publisher's (``StreamMetadata.codec``)
  is a transcode to the first of its codecs among VP8, VP9, H264, AV1 (none of them:
  INVALID_REQUEST); the subscribe fails with the MH's refusal (the subscriber could not decode
  the source anyway). A publisher's codec that is not one of the contract's is never
  transcoded.
- *Bitrate.* A video subscription whose ``max_bitrate`` is below the lowest simulcast layer's
  is a transcode to the publisher's codec at that bitrate; refused by the MH, or in an
  end-to-end encrypted meeting, it is the plain route instead (the MH sends the lowest layer).
- A transcode's bitrate is the publisher's ``max_bitrate`` (DEFAULT_TRANSCODE_BITRATE if it
  said none), or the subscriber's ``max_bitrate`` when lower.
- *Mix.* ``SubscribeStream{mix_audio}`` routes the participant its mix; in a meeting with
  more audio publishers than ``mix_above`` a subscription to an audio stream is answered with
  the mix too (routed once: later ones route nothing). The mix stays while a subscription
  answered with it stays, or until the participant leaves. Refused by the MH, an automatic
  mix is the plain route instead, and not asked again for that participant.
- *End-to-end encryption.* The server cannot read the media: a transcode the subscriber needs
  and a mix asked for are INVALID_REQUEST; nothing is mixed automatically.
"""

from __future__ import annotations

import logging

import attrs

from darktower.errors import DarkTowerError, InternalError, InvalidRequest
from darktower.logs import fields
from darktower.protocol.codecs import VIDEO_CODECS, normalize_codec
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport.rpc import RpcError

from ._limits import DEFAULT_TRANSCODE_BITRATE
from ._mh import MediaLink
from ._room import RoomMember, RoomState, at_room_mh

logger = logging.getLogger("darktower.meeting_controller")

E2EE_REFUSAL = "the meeting is end-to-end encrypted: the server cannot {} its media"
MIX = ""  # the key in RoomMember.derived of the mix asked for with mix_audio


@attrs.frozen
class Transcode:
    """A transcode a subscription needs: to ``codec`` at ``bitrate``; ``required`` when the
    subscriber cannot decode the source (else it is for its bitrate only)."""

    codec: str
    bitrate: int
    required: bool


def plan_transcode(
    member: RoomMember, stream: common_pb2.MediaStream, options: sig.SubscriptionOptions
) -> Transcode | None:
    """The transcode ``member``'s subscription to ``stream`` needs, if any (see the module
    docstring). Raises InvalidRequest when it needs one to none of the codecs it listed."""
    if stream.stream_type == common_pb2.AUDIO:
        return None
    metadata = stream.metadata
    source = normalize_codec(metadata.codec)
    listed = [normalize_codec(name) for name in member.video_codecs]
    required = bool(listed) and source is not None and source not in listed
    target = source
    if required:
        target = next((codec for codec in listed if codec in VIDEO_CODECS), None)
        if target is None:
            raise InvalidRequest(
                f"none of your video codecs ({', '.join(member.video_codecs)}) can be made "
                f"from {metadata.codec}: the server encodes {', '.join(VIDEO_CODECS)}",
                details={"field": "capabilities.video_codecs"},
            )
    wanted = options.max_bitrate
    layers = [layer.max_bitrate for layer in metadata.video.simulcast_layers if layer.max_bitrate]
    low = bool(wanted) and bool(layers) and wanted < min(layers)
    if target is None or not (required or low):
        return None
    bitrate = metadata.max_bitrate or DEFAULT_TRANSCODE_BITRATE
    if wanted:
        bitrate = min(bitrate, wanted)
    return Transcode(target, bitrate, required)


def routing(
    options: sig.SubscriptionOptions, derived: sig.DerivedStream | None
) -> mh_pb.RoutingOptions:
    """The RoutingOptions of a subscription with ``options``, carried by ``derived`` (a
    transcode's codec and bitrate, the mix) or by the source itself."""
    routed = mh_pb.RoutingOptions(
        preferred_layer=options.preferred_layer,
        target_bitrate=options.max_bitrate,
        pinned=options.pinned,
    )
    if derived is not None and derived.mix:
        return mh_pb.RoutingOptions(mix_audio=True)
    if derived is not None:
        routed.transcode = True
        routed.target_codec = derived.codec
        routed.target_bitrate = derived.bitrate
    return routed


async def route(room: RoomState, command: mh_pb.RouteMediaCommand) -> mh_pb.RouteMediaResponse:
    """RouteMedia at the room's MH (followed if the room moves); the MH's refusal as it is,
    InternalError if it cannot be reached."""
    command.meeting_id = room.id
    try:
        return await at_room_mh(room, lambda mh: mh.route_media(command))
    except RpcError as exc:
        raise InternalError(f"media handler unreachable: {exc}") from exc


def mix_command(member: RoomMember, *, unroute: bool = False) -> mh_pb.RouteMediaCommand:
    """The mix of the room's audio, every source but ``member``'s, routed to ``member`` (no
    source stream: the MH mixes every audio stream of the room)."""
    return mh_pb.RouteMediaCommand(
        destination_participant_ids=[member.id],
        options=mh_pb.RoutingOptions(mix_audio=True),
        unroute=unroute,
    )


async def transcoded(
    room: RoomState,
    member: RoomMember,
    stream_id: str,
    options: sig.SubscriptionOptions,
    plan: Transcode,
) -> sig.DerivedStream | None:
    """Route ``stream_id`` to ``member`` transcoded by ``plan``; the derived stream, or None
    when the MH refused a transcode that was for the bitrate only (then nothing was routed).
    Raises the MH's refusal of a required one."""
    derived = sig.DerivedStream(codec=plan.codec, bitrate=plan.bitrate)
    command = mh_pb.RouteMediaCommand(
        source_stream_id=stream_id,
        destination_participant_ids=[member.id],
        options=routing(options, derived),
    )
    try:
        reply = await route(room, command)
        if not reply.derived_stream_id:
            raise InternalError("the media handler named no transcoded stream")
    except DarkTowerError as exc:
        if plan.required:
            raise
        logger.info(
            "transcode for a subscriber's bitrate refused: the plain route instead",
            extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
        )
        return None
    derived.stream_id = reply.derived_stream_id
    return derived


async def mixed(room: RoomState, member: RoomMember) -> sig.DerivedStream:
    """``member``'s mix, routed to it first if it has none. Raises the MH's refusal."""
    if member.mix is not None:
        return member.mix
    reply = await route(room, mix_command(member))
    if not reply.derived_stream_id:
        raise InternalError("the media handler named no mixed stream")
    member.mix = sig.DerivedStream(stream_id=reply.derived_stream_id, codec="Opus", mix=True)
    return member.mix


async def auto_mixed(
    room: RoomState, member: RoomMember, stream: common_pb2.MediaStream
) -> sig.DerivedStream | None:
    """The mix for ``member``'s subscription to ``stream`` when the meeting mixes by itself
    (an audio stream, more audio publishers than ``room.mix_above``), else None."""
    if (
        stream.stream_type != common_pb2.AUDIO
        or room.e2ee
        or room.mix_above <= 0
        or member.mix_refused
        or not room.audio_publishers_above(room.mix_above)
    ):
        return None
    try:
        return await mixed(room, member)
    except DarkTowerError as exc:
        member.mix_refused = True
        logger.info(
            "automatic audio mix refused: one route per audio stream instead",
            extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
        )
        return None


async def release_mix(room: RoomState, member: RoomMember) -> None:
    """Stop routing ``member``'s mix once no subscription of it is answered with it."""
    if member.mix is None or any(d.mix for d in member.derived.values()):
        return
    member.mix = None
    await route(room, mix_command(member, unroute=True))


async def replaced(
    room: RoomState,
    member: RoomMember,
    stream_id: str,
    before: sig.SubscriptionOptions,
    old: sig.DerivedStream | None,
    new: sig.DerivedStream | None,
) -> None:
    """``member`` subscribed to ``stream_id`` again (options changed), now carried by ``new``
    (None: the source): stop what carried it before, ``old`` with options ``before``, unless
    it still does (the same derived stream; or the source, whose route the MH updated). A
    failure is logged: the subscription as it is now works."""
    if (old is None and new is None) or (old is not None and new is not None and old == new):
        return
    try:
        if old is not None and old.mix:
            await release_mix(room, member)
            return
        await route(
            room,
            mh_pb.RouteMediaCommand(
                source_stream_id=stream_id,
                destination_participant_ids=[member.id],
                options=None if old is None else routing(before, old),
                unroute=True,
            ),
        )
    except DarkTowerError as exc:
        logger.warning(
            "what carried a subscription before could not be stopped",
            extra=fields(meeting_id=room.id, participant_id=member.id, error=str(exc)),
        )


async def routed_again(
    mh: MediaLink, room: RoomState, member: RoomMember, key: str, command: mh_pb.RouteMediaCommand
) -> None:
    """Send ``command`` (a transcode or mix of ``member``'s subscription ``key``) to ``mh``
    again, after a move or when the MH forgot the member (docs/protocol.md §13); tell
    ``member`` the derived stream's new id, if it changed."""
    command.meeting_id = room.id
    reply = await mh.route_media(command)
    derived = member.mix if command.options.mix_audio else member.derived.get(key)
    if derived is None or not reply.derived_stream_id:
        return
    if reply.derived_stream_id != derived.stream_id:
        derived.stream_id = reply.derived_stream_id
        keys = [k for k, d in member.derived.items() if d is derived]
        for changed in keys:
            room.deliver(member, updated(changed, derived))


def updated(key: str, derived: sig.DerivedStream) -> sig.ServerMessage:
    return sig.ServerMessage(
        subscription_updated=sig.SubscriptionUpdated(stream_id=key, derived=derived)
    )


def repeat_derived(room: RoomState, member: RoomMember) -> None:
    """After a resume: tell ``member`` again which stream carries each of its subscriptions
    that has a derived one (a change while it was away was not delivered)."""
    for key, derived in member.derived.items():
        room.deliver(member, updated(key, derived))


__all__ = [
    "MIX",
    "Transcode",
    "auto_mixed",
    "mix_command",
    "mixed",
    "plan_transcode",
    "release_mix",
    "repeat_derived",
    "replaced",
    "route",
    "routed_again",
    "routing",
    "transcoded",
    "updated",
]
