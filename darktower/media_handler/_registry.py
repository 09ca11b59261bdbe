"""The rooms of one MH process: made at a meeting's first registration, each a meeting scope of
the task tree (docs/architecture.md §4.3), ended when its last member is forgotten.

:class:`RoomRegistry` is the one owner of ``rooms``: the RPCs (``_handler.py``) and the media
plane (``_plane.py``) are given it and go through it to make, find and forget rooms and
members.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import trio

from darktower.errors import CapacityExceeded, Conflict, NotFound
from darktower.model import LeaveReason, MeetingId, ParticipantId, StreamId
from darktower.nurseries import Meeting, TaskTree

from ._limits import REGISTRATION_SWEEP_S
from ._room import MediaMember, MediaRoom, parse_stream_id
from ._settings import Settings


class RoomRegistry:
    """Rooms by meeting id, on a running :class:`TaskTree`.

    Each room's meeting scope is started here; its body expires registrations never followed
    by a connection, and its cleanup forgets it. Bounded by ``settings.max_rooms``.
    """

    def __init__(self, tree: TaskTree, settings: Settings) -> None:
        self.tree = tree
        self.settings = settings
        self.rooms: dict[MeetingId, MediaRoom] = {}
        self._lock = trio.Lock()
        # Set when the MH starts draining: no new room (its MC moves the rooms away).
        self.draining = False
        # Told of each member about to be forgotten (its streams and routes still there):
        # media processing ends or changes the jobs that use them (docs/architecture.md §10).
        self.forgetting: Callable[[MediaMember], None] = _nothing

    def get(self, meeting_id: MeetingId) -> MediaRoom | None:
        return self.rooms.get(meeting_id)

    def member(self, meeting_id: MeetingId, participant_id: ParticipantId) -> MediaMember | None:
        room = self.rooms.get(meeting_id)
        return None if room is None else room.members.get(participant_id)

    def load(self) -> tuple[int, int, int]:
        """(rooms, registered participants, registered streams) on this MH now."""
        rooms = self.rooms.values()
        return (
            len(self.rooms),
            sum(len(r.members) for r in rooms),
            sum(r.stream_count() for r in rooms),
        )

    async def room_for(self, meeting_id: MeetingId, epoch: int = 0) -> MediaRoom:
        """The meeting's room, started in the task tree if it has none. ``epoch``: the room's
        incarnation at the MC (0: none said); a room of an older one (an MC that is gone left
        it in its media grace) is ended first and a new one started, with its members' media
        connections closed without a reason (docs/architecture.md §4.6). Raises Conflict for
        an epoch older than the room's, CapacityExceeded past ``max_rooms`` or while the MH
        drains, ScopeClosed once its tree drains."""
        async with self._lock:
            room = self.rooms.get(meeting_id)
            if room is not None and epoch and room.epoch and epoch != room.epoch:
                if epoch < room.epoch:
                    raise Conflict(f"a newer room of meeting {meeting_id} is here")
                del self.rooms[meeting_id]
                room.scope.end(LeaveReason.CONNECTION_LOST)
                room = None
            if room is not None:
                room.epoch = room.epoch or epoch
                return room
            if self.draining:
                raise CapacityExceeded("this media handler is draining")
            if len(self.rooms) >= self.settings.max_rooms:
                raise CapacityExceeded(f"this media handler has {len(self.rooms)} rooms")
            old = self.tree.meeting(meeting_id)
            if old is not None:  # an ended room still cleaning up
                await old.wait_closed()
            changed = trio.Event()  # the room's first expiry_changed, for its body
            meeting = await self.tree.start_meeting(
                meeting_id,
                functools.partial(self._room_body, changed),
                cleanup=functools.partial(self._room_closed, meeting_id),
                max_participants=self.settings.max_participants_per_room,
            )
            room = MediaRoom(meeting_id, meeting, expiry_changed=changed, epoch=epoch)
            self.rooms[meeting_id] = room
            return room

    def end_if_empty(self, room: MediaRoom) -> None:
        """Forget ``room`` and end its scope if it has no member (and is still the one)."""
        if not room.members and self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            room.scope.end()

    def forget_member(self, member: MediaMember) -> None:
        """Drop a member's state; end its room if it was the last one."""
        self.forgetting(member)
        room = member.room
        for publication in member.publications.values():
            room.forget_key_frames(publication)
        for sub in room.remove_member(member):
            if sub.task is not None:
                sub.task.cancel()
        self.end_if_empty(room)

    def room_of_stream(self, meeting_id: MeetingId, source: StreamId) -> MediaRoom:
        """The room a RouteMedia names (``meeting_id``), or else the one publishing ``source``.
        Raises InvalidRequest for a source that is not a UUID, NotFound if there is none."""
        parse_stream_id(source, "source_stream_id")
        if meeting_id:
            room = self.rooms.get(meeting_id)
            if room is None:
                raise NotFound(f"no room {meeting_id} on this media handler")
            return room
        for room in self.rooms.values():
            if source in room.publications:
                return room
        raise NotFound(
            f"stream {source} is in no room here (give meeting_id to route it ahead)",
            details={"field": "source_stream_id"},
        )

    def expiry_changed(self, room: MediaRoom) -> None:
        """A member of ``room`` was registered or lost: its body recomputes the next expiry."""
        room.expiry_changed.set()

    def _expires_at(self, member: MediaMember) -> float:
        """When a member without a media connection is forgotten: the media grace after its
        connection was lost, else the registration's life after its last registration."""
        if member.lost_at is not None:
            return member.lost_at + self.settings.media_grace_s
        return member.registered_at + self.settings.registration_ttl_s

    async def _room_body(self, changed: trio.Event, meeting: Meeting) -> None:
        """Forget members whose registration or media grace expired (_limits.py), each at its
        time; the room ends when its last member is forgotten. ``changed`` is the room's first
        ``expiry_changed`` (the room is filed in ``rooms`` only once this scope runs)."""
        wake_at = trio.current_time() + REGISTRATION_SWEEP_S
        while True:
            with trio.move_on_at(wake_at):
                await changed.wait()
            room = self.rooms.get(meeting.id)
            if room is None or room.scope is not meeting:
                return
            changed = room.expiry_changed = trio.Event()
            now = trio.current_time()
            wake_at = now + REGISTRATION_SWEEP_S
            for member in list(room.members.values()):
                if member.scope is not None or member.connecting:
                    continue
                expires_at = self._expires_at(member)
                if expires_at <= now:
                    self.forget_member(member)
                else:
                    wake_at = min(wake_at, expires_at)

    async def _room_closed(self, meeting_id: MeetingId, reason: LeaveReason) -> None:
        """The room's scope ended (last member gone, drain): forget whatever it still held,
        e.g. registrations that never connected."""
        room = self.rooms.get(meeting_id)
        if room is not None and room.scope.ending:
            del self.rooms[meeting_id]
        await trio.lowlevel.checkpoint()


def _nothing(member: MediaMember) -> None:
    pass
