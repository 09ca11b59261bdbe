"""Fresh media connection tokens for one participant (docs/protocol.md §13): on its request
(MediaReconnectRequest), on a resume, and unsolicited when its Media Handler reports its media
connection lost while its signaling is up, or when its room moved to another Media Handler.

When the Media Handler answers that it had no registration of the participant any more
(``created``: it forgot it after its media grace), the participant's media state is replayed
there before the token is handed out: its published streams, its subscriptions and the others'
subscriptions to its streams (docs/protocol.md §13), the transcodes and the mix that carry
subscriptions (whose new stream ids the subscribers are told: docs/protocol.md §2.2) and its
recording (a new one)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from darktower.errors import CapacityExceeded, DarkTowerError, InternalError, NotFound
from darktower.logs import fields
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from . import _recording
from ._limits import MAX_MH_CALLS, MOVE_RETRIES, MOVE_RETRY_MAX_S, MOVE_RETRY_S
from ._metrics import ControllerMetrics
from ._processing import MIX, mix_command, routed_again, routing
from ._room import RoomMember, RoomState

if TYPE_CHECKING:
    from ._mh import MediaLink

logger = logging.getLogger("darktower.meeting_controller")

# The stream task of a participant scope that sends an unsolicited MediaReconnect.
MEDIA_RECONNECT = "media-reconnect"


class MediaReconnection:
    """The media side of ``member``'s reconnection, at ``room``'s Media Handler."""

    __slots__ = ("_due", "_replay_due", "member", "metrics", "room")

    def __init__(self, room: RoomState, member: RoomMember, metrics: ControllerMetrics) -> None:
        self.room = room
        self.member = member
        self.metrics = metrics
        self._due = False  # a loss was reported and no MediaReconnect went out for it yet
        # The MH lost the member's registration and the replay did not complete yet: the next
        # token waits for it (the MH now answers created = false).
        self._replay_due = False

    async def fresh(self) -> sig.MediaServerInfo:
        """A fresh connection token at the room's Media Handler: RegisterParticipant again,
        which keeps the participant's routes there (docs/protocol.md §13); at most the MH call
        deadline. If the MH had forgotten the participant, its media state is replayed first
        (see :meth:`_replay`; one MH call deadline per call). Raises CapacityExceeded if the MH
        refuses for room, InternalError if none is assigned or it cannot be reached (then no
        token: the client asks again)."""
        room = self.room
        for _ in range(MAX_MH_CALLS):  # again where the room went if it moved meanwhile
            mh = room.mh
            if mh is None:
                raise InternalError("no media handler is assigned to this meeting")
            try:
                reply = await mh.register_participant(
                    mh_pb.RegisterParticipant(
                        participant_id=self.member.id, meeting_id=room.id, room_epoch=room.epoch
                    )
                )
                if reply.created or self._replay_due:
                    self._replay_due = True
                    await self._replay(mh)
                    self._replay_due = False
            except CapacityExceeded as exc:
                raise CapacityExceeded(f"the media handler's room is full: {exc}") from exc
            except DarkTowerError as exc:
                raise InternalError(f"media handler unavailable: {exc}") from exc
            if room.mh is mh:
                break
            self._replay_due = True
        self.member.mh = mh
        return sig.MediaServerInfo(
            media_handler_url=reply.media_handler_url, connection_token=reply.connection_token
        )

    async def _replay(self, mh: MediaLink) -> None:
        """Give the room's MH the member's media state again, as the signaling handlers built
        it (docs/protocol.md §13): RegisterParticipant with its published streams (simulcast
        layers included), then RouteMedia for each of its subscriptions (publisher's stream →
        it) and for the others' subscriptions to its streams (its stream → them, one command
        per stream and options). Sequential, each call within the MH call deadline; at most
        1 + MAX_PUBLISHED_STREAMS subscriptions of its own + one per stream and options of
        others (one per subscriber at worst: bounded by the room's members). A subscriber the
        MH does not know (forgotten too) is skipped: its own replay routes it."""
        room, member = self.room, self.member
        streams = list(member.streams.values())
        if streams:
            await mh.register_participant(
                mh_pb.RegisterParticipant(
                    participant_id=member.id,
                    meeting_id=room.id,
                    streams=streams,
                    room_epoch=room.epoch,
                )
            )
        for stream_id, options in list(member.subscriptions.items()):
            derived = member.derived.get(stream_id)
            command = _route(room.id, stream_id, [member.id], options, derived)
            if derived is None:
                await mh.route_media(command)
            elif not derived.mix:  # (the mix is routed once, below)
                await routed_again(mh, room, member, stream_id, command)
        if member.mix is not None:
            await routed_again(mh, room, member, MIX, mix_command(member))
        for stream_id in [s.stream_id for s in streams]:
            groups: dict[tuple[str, int, bool], list[str]] = {}
            for other in list(room.subscribers_of(stream_id)):
                options = other.subscriptions[stream_id]
                derived = other.derived.get(stream_id)
                if derived is not None:
                    if not derived.mix:  # a transcode for it alone (its mix is its own)
                        command = _route(room.id, stream_id, [other.id], options, derived)
                        try:
                            await routed_again(mh, room, other, stream_id, command)
                        except NotFound:
                            pass
                    continue
                key = (options.preferred_layer, options.max_bitrate, options.pinned)
                groups.setdefault(key, []).append(other.id)
            for (layer, bitrate, pinned), ids in groups.items():
                options = sig.SubscriptionOptions(
                    preferred_layer=layer, max_bitrate=bitrate, pinned=pinned
                )
                try:
                    await mh.route_media(_route(room.id, stream_id, ids, options))
                except NotFound:  # one of them is not registered there: each on its own
                    for one in ids:
                        try:
                            await mh.route_media(_route(room.id, stream_id, [one], options))
                        except NotFound:
                            pass
        if member.recording_id and room.records:
            await _recording.start(room, member, self.metrics, mh)

    async def for_resume(self) -> sig.MediaServerInfo:
        """A fresh token for a resume; empty when the Media Handler is gone or refuses: the
        resume still succeeds (the participant keeps its place; its client asks again with
        MediaReconnectRequest)."""
        try:
            return await self.fresh()
        except DarkTowerError as exc:
            self.metrics.errors.inc(1, "RESUMED_WITHOUT_MEDIA")
            logger.warning(
                "resumed without a media token",
                extra=fields(participant_id=self.member.id, error=str(exc)),
            )
            return sig.MediaServerInfo()

    def lost(self) -> None:
        """The MH lost the member's media connection: send it a fresh token unsolicited
        (MediaReconnect, request_id 0), unless its signaling is down too (its resume brings
        one). One stream task at a time; at most one message per loss reported, never one
        without a loss (the MH reports a loss only of a connection that was up)."""
        participant = self.member.handle
        if participant is None or participant.reason is not None or self.member.reconnecting:
            return
        self._due = True
        if participant.stream(MEDIA_RECONNECT) is None:
            participant.start_stream_soon(MEDIA_RECONNECT, self._send)

    def moved(self) -> None:
        """The member's room moved to another Media Handler (``room.mh`` is the new one): send
        it a fresh token there unsolicited, as for a loss, after its media state was replayed
        there (also when that MH still knew the member: the room was there before)."""
        self._replay_due = True
        self.lost()

    async def _send(self) -> None:
        retries, pause = MOVE_RETRIES, MOVE_RETRY_S
        while self._due:
            self._due = False
            try:
                media = await self.fresh()
            except DarkTowerError as exc:  # the client may still ask (MediaReconnectRequest)
                logger.warning(
                    "no media token for a lost media connection",
                    extra=fields(participant_id=self.member.id, error=str(exc)),
                )
                if self.member.mh is not self.room.mh and retries:
                    # Moved: its client does not know where to go; ask again after a pause.
                    retries -= 1
                    self._due = True
                    await trio.sleep(pause)
                    pause = min(pause * 2, MOVE_RETRY_MAX_S)
                continue
            message = sig.ServerMessage(media_reconnect=sig.MediaReconnect(media_server=media))
            self.room.deliver(self.member, message)


def _route(
    meeting_id: str,
    stream_id: str,
    destinations: list[str],
    options: sig.SubscriptionOptions,
    derived: sig.DerivedStream | None = None,
) -> mh_pb.RouteMediaCommand:
    """The RouteMedia the subscribe handler sends (``_signaling.py``), for ``destinations``."""
    return mh_pb.RouteMediaCommand(
        meeting_id=meeting_id,
        source_stream_id=stream_id,
        destination_participant_ids=destinations,
        options=routing(options, derived),
    )
