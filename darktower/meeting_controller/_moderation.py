"""A host's moderation (docs/protocol.md §18.2): mute, stop or allow a participant's
publications, from a host over signaling (``ModerateParticipant``) or from the meeting's owner
through the GC's REST API (``MeetingControl.ModerateParticipant``, no ``by_participant_id``).

A mute or a stop is cancellation: the MC blocks the kind first (a publish of it racing the
moderation is refused), then has the Media Handler remove each of the participant's streams of
that kind (``MediaControl.RemoveStream``, as an unpublish does: ``_streams.end_stream``). At
the MH a stream is a scope of the task tree (docs/architecture.md §3, §4.3: the publisher's
``pub:<n>`` tasks and each subscriber's ``sub:<stream id>`` task), and RemoveStream cancels
it: routing stops, its subscribers' streams end and the publisher's QUIC streams of it are
reset, and the call returns once those tasks have exited. The moderation is answered only
after that, so no frame of an ended stream reaches anyone after the answer. Then every member
gets ``StreamUnpublished`` for each ended stream and ``ParticipantUpdated`` (when the state
changed), and the participant ``Moderated``. A guest's blocks that changed are reported to the
GC (``participant_moderated``, not a webhook event), which keeps them across a rejoin.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from darktower.errors import DarkTowerError, InternalError, InvalidRequest
from darktower.model import Role
from darktower.protocol import _bounds
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import registry_pb2 as reg
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import new_event
from ._limits import MODERATION_DEADLINE_S
from ._publication import Publication, announce
from ._room import Removal, RoomMember, RoomState
from ._streams import end_stream, removed_meanwhile, unpublished

# What each stopping action ends: the stream type of the streams it removes.
STOPS: dict[int, int] = {
    common_pb2.MODERATION_MUTE_AUDIO: common_pb2.AUDIO,
    common_pb2.MODERATION_STOP_VIDEO: common_pb2.VIDEO_CAMERA,
    common_pb2.MODERATION_STOP_SCREEN: common_pb2.VIDEO_SCREEN,
}


def check_request(actions: Sequence[int], message: str) -> None:
    """INVALID_REQUEST unless ``actions`` are one to six distinct defined actions and
    ``message`` at most 200 characters (the signaling bounds check these too; the RPC's
    request is checked here)."""
    if not actions:
        raise InvalidRequest("name at least one moderation action", details={"field": "actions"})
    if len(actions) > _bounds.MAX_MODERATION_ACTIONS or len(set(actions)) != len(actions):
        raise InvalidRequest(
            f"at most {_bounds.MAX_MODERATION_ACTIONS} distinct actions",
            details={"field": "actions"},
        )
    for action in actions:
        if action == common_pb2.MODERATION_ACTION_UNSPECIFIED or action not in (
            common_pb2.ModerationAction.values()
        ):
            raise InvalidRequest(
                f"{action} is not a moderation action", details={"field": "actions"}
            )
    if len(message) > _bounds.MAX_MODERATION_MESSAGE_CHARS:
        raise InvalidRequest(
            f"message exceeds {_bounds.MAX_MODERATION_MESSAGE_CHARS} characters",
            details={"field": "message"},
        )


def _apply(state: Publication, action: int) -> None:
    if action == common_pb2.MODERATION_MUTE_AUDIO:
        state.audio_muted = state.audio_blocked = True
    elif action == common_pb2.MODERATION_STOP_VIDEO:
        state.video_off = state.video_blocked = True
    elif action == common_pb2.MODERATION_STOP_SCREEN:
        state.screen_blocked = True
    elif action == common_pb2.MODERATION_ALLOW_AUDIO:
        state.audio_blocked = False
    elif action == common_pb2.MODERATION_ALLOW_VIDEO:
        state.video_blocked = False
    elif action == common_pb2.MODERATION_ALLOW_SCREEN:
        state.screen_blocked = False


def _blocks(state: common_pb2.PublicationState | Publication) -> tuple[bool, bool, bool]:
    return (state.audio_blocked, state.video_blocked, state.screen_blocked)


def _blocks_changed(
    room: RoomState, target: RoomMember, before: common_pb2.PublicationState
) -> None:
    """Report a guest's blocks to the GC when they changed (``participant_moderated``, with
    its join token's id): the GC keeps them for the token's join identity, so the next token it
    mints for it grants no kind a host blocked (a rejoin keeps the blocks). Never for a host,
    whose blocks a rejoin lifts."""
    state = target.publication
    if target.role is Role.HOST or not target.token_id or _blocks(state) == _blocks(before):
        return
    room.events.emit(
        new_event(
            room.id,
            participant_moderated=reg.ParticipantModeratedEvent(
                participant_id=target.id,
                token_id=target.token_id,
                audio_blocked=state.audio_blocked,
                video_blocked=state.video_blocked,
                screen_blocked=state.screen_blocked,
            ),
        )
    )


def _missed(target: RoomMember, actions: Sequence[int], message: str, by: str) -> None:
    """Keep a moderation of ``target`` while it is reconnecting, for its resume
    (``_batches.catch_up``): merged with those before, each action once (at most six), so a
    stop lifted again meanwhile still ends the client's publications of its kind."""
    missed = target.missed_moderation
    if missed is None:
        missed = target.missed_moderation = sig.Moderated()
    for action in actions:
        if action not in missed.actions:
            missed.actions.append(action)  # type: ignore[arg-type]
    missed.by_participant_id, missed.message = by, message


async def moderate(
    room: RoomState,
    target: RoomMember,
    actions: Sequence[int],
    message: str,
    by_participant_id: str = "",
) -> common_pb2.PublicationState:
    """Apply ``actions`` (checked: :func:`check_request`) to ``target``; return its state
    after them. Returns once every stream they end is removed at the Media Handler (see the
    module docstring). The removals are shielded from the caller's cancellation (the host's
    connection lost mid-way) and bounded by ``MODERATION_DEADLINE_S``: a stream the MH did not
    remove stays published, and the moderation is then INTERNAL_ERROR (the blocks stay; the
    host may ask again)."""
    before = target.publication.to_pb()
    for action in actions:
        _apply(target.publication, action)
    _blocks_changed(room, target, before)
    types = {STOPS[a] for a in actions if a in STOPS}
    doomed = [sid for sid, s in target.streams.items() if s.stream_type in types]
    # Streams of those kinds whose removal another request started (a second moderation, the
    # participant's unpublish): answered only once they are removed too.
    meanwhile = [(sid, r) for sid, r in target.removing.items() if r.stream.stream_type in types]
    ended: list[common_pb2.MediaStream] = []
    failures: list[str] = []

    async def end(stream_id: str) -> None:
        try:
            if stream_id in target.streams:  # not unpublished meanwhile
                ended.append(await end_stream(room, target, stream_id))
        except DarkTowerError as exc:
            failures.append(f"{stream_id}: {exc}")

    async def removed(stream_id: str, removal: Removal) -> None:
        try:
            await removed_meanwhile(target, removal, stream_id)
        except DarkTowerError as exc:
            failures.append(str(exc))

    with trio.move_on_after(MODERATION_DEADLINE_S, shield=True) as bounded:
        async with trio.open_nursery() as nursery:
            for stream_id in doomed:
                nursery.start_soon(end, stream_id)
            for stream_id, removal in meanwhile:
                nursery.start_soon(removed, stream_id, removal)
    if bounded.cancelled_caught:
        failures.append("the media handler did not answer in time")
    for stream in ended:
        unpublished(room, target, stream, tell_publisher=True)
    state = target.publication
    state.sharing = any(s.stream_type == common_pb2.VIDEO_SCREEN for s in target.streams.values())
    after = state.to_pb()
    if after != before:
        announce(room, target)
    if target.reconnecting:
        _missed(target, actions, message, by_participant_id)
    else:
        room.deliver(
            target,
            sig.ServerMessage(
                moderated=sig.Moderated(
                    by_participant_id=by_participant_id,
                    actions=list(actions),  # type: ignore[arg-type]
                    message=message,
                    publication=after,
                )
            ),
        )
    if failures:
        raise InternalError(
            "some streams could not be ended at the media handler: " + "; ".join(failures)
        )
    return after


__all__ = ["check_request", "moderate"]
