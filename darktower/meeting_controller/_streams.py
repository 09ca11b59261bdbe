"""How a published stream ends, for an ``UnpublishStream`` and for a host's moderation alike
(docs/protocol.md §8, §18.2): at the Media Handler first, then for the members and the GC's
webhooks (docs/protocol.md §18.5)."""

from __future__ import annotations

import trio

from darktower.errors import InternalError
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport.rpc import RpcError

from ._events import new_event
from ._limits import MODERATION_DEADLINE_S
from ._room import Removal, RoomMember, RoomState, at_room_mh


async def end_stream(room: RoomState, member: RoomMember, stream_id: str) -> common_pb2.MediaStream:
    """End ``member``'s published stream ``stream_id`` (KeyError if it publishes none) at the
    Media Handler, then forget its subscriptions; return it (the caller tells the members).

    The stream is forgotten first, so a subscribe racing this finds nothing to route; then the MH's ``RemoveStream`` cancels the
    stream's scope there (docs/architecture.md §4.3: its subscription tasks exit, the
    publisher's QUIC streams of it, each simulcast layer's, are reset) and returns once that
    is done: a frame the publisher writes after it reaches nobody. If the call fails, or is
    cancelled, the stream is published again (the MH's RemoveStream of a stream it no longer
    has is a success, so a retry completes); an unreachable MH is INTERNAL_ERROR."""
    stream = member.streams.pop(stream_id)
    if room.mh is not None:
        remove = mh_pb.RemoveStreamRequest(
            meeting_id=room.id, participant_id=member.id, stream_id=stream_id
        )
        removal = member.removing[stream_id] = Removal(stream)
        try:
            await at_room_mh(room, lambda mh: mh.remove_stream(remove))
        except BaseException as exc:
            member.streams[stream_id] = stream
            if isinstance(exc, RpcError):
                raise InternalError(f"media handler unreachable: {exc}") from exc
            raise
        finally:
            if member.removing.get(stream_id) is removal:
                del member.removing[stream_id]
            removal.done.set()
    for other in list(room.subscribers_of(stream_id)):
        other.drop_subscription(stream_id)
    return stream


async def removed_meanwhile(member: RoomMember, removal: Removal, stream_id: str) -> None:
    """Wait (at most ``MODERATION_DEADLINE_S``) for ``removal``, a removal of ``member``'s
    stream ``stream_id`` under way at the Media Handler, started by another request: a second
    moderation, or the publisher's unpublish, is answered only once the MH no longer routes the
    stream (docs/protocol.md §18.2). INTERNAL_ERROR if it is not done in time or failed (the
    stream is published again)."""
    with trio.move_on_after(MODERATION_DEADLINE_S):
        await removal.done.wait()
    if not removal.done.is_set():
        raise InternalError(f"{stream_id}: the media handler did not remove it in time")
    if stream_id in member.streams:
        raise InternalError(f"{stream_id}: its removal at the media handler failed")


def published(room: RoomState, member: RoomMember, stream: common_pb2.MediaStream) -> None:
    """``stream`` of ``member`` is published: tell the others and the GC."""
    room.broadcast(
        sig.ServerMessage(
            stream_published=sig.StreamPublished(participant_id=member.id, stream=stream)
        ),
        skip=member.id,
    )
    room.events.emit(
        new_event(
            room.id,
            stream_published=reg.StreamEvent(participant_id=member.id, stream=stream),
        )
    )


def unpublished(
    room: RoomState, member: RoomMember, stream: common_pb2.MediaStream, *, tell_publisher: bool
) -> None:
    """``stream`` of ``member`` ended (:func:`end_stream`): tell the members (the publisher
    too when it did not ask for it) and the GC."""
    room.broadcast(
        sig.ServerMessage(
            stream_unpublished=sig.StreamUnpublished(
                participant_id=member.id, stream_id=stream.stream_id
            )
        ),
        skip=None if tell_publisher else member.id,
    )
    room.events.emit(
        new_event(
            room.id,
            stream_unpublished=reg.StreamEvent(participant_id=member.id, stream=stream),
        )
    )


__all__ = ["end_stream", "published", "removed_meanwhile", "unpublished"]
