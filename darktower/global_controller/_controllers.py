"""The Meeting Controllers as the GC sees them: the seam that reaches one
(:class:`MeetingControllers`; ``mc_client.py`` over gRPC in production), the two addresses an
MC registers (kept in one store column), a short-lived cache of the registered controllers
(:class:`ControllerDirectory`) and telling many of them that meetings ended, within bounds
(:func:`tell_meetings_ended`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import trio

from darktower.errors import DarkTowerError, InternalError
from darktower.global_controller._limits import (
    CONTROLLER_CACHE_S,
    END_EMPTY_NOTIFY_S,
    MAX_CONCURRENT_END_CALLS,
)
from darktower.global_controller.store import (
    ControllerRecord,
    IssuedJoinToken,
    MeetingRecord,
    Store,
)
from darktower.logs import fields
from darktower.model import ControllerId, MeetingId, ParticipantId
from darktower.protocol.pb.v1 import common_pb2

log = logging.getLogger("darktower.gc")


class MeetingControllers(Protocol):
    """How the GC reaches a Meeting Controller (gRPC ``MeetingControl`` in production).

    Each method raises a :class:`DarkTowerError` when the MC refuses (its wire error) or
    cannot be reached (``RpcUnavailable``, an ``InternalError``).
    """

    async def assign_meeting(
        self, controller: ControllerRecord, meeting: MeetingRecord
    ) -> None: ...

    async def end_meeting(
        self, controller: ControllerRecord, meeting_id: MeetingId, reason: str = "ended"
    ) -> None:
        """``reason`` goes to the MC (``EndMeetingRequest.reason``): ``"ended"``, the
        owner's end, or ``"empty"``, the GC's empty timeout (docs/protocol.md §6, §18.5)."""
        ...

    async def kick(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        revoked: Sequence[IssuedJoinToken] = (),
    ) -> str:
        """Returns the join-token id (``jti``) the kicked session joined with, "" if the MC
        does not say. The MC refuses the ``revoked`` join tokens from now on (and ends a
        session using one), also when the participant has already left (then ``NotFound``)."""
        ...

    async def moderate(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        actions: Sequence[int],
        message: str,
    ) -> common_pb2.PublicationState:
        """The owner's moderation (docs/protocol.md §18.2): ``actions`` are ModerationAction
        values; returns the participant's state once the MC has applied them (``NotFound``
        for a participant not in the meeting)."""
        ...

    async def probe(
        self, controller: ControllerRecord, meeting: MeetingRecord, *, deadline_s: float
    ) -> bool:
        """Whether the MC answers at all within ``deadline_s``: it is asked to hold ``meeting``
        (``AssignMeeting``, idempotent: an MC that holds it does nothing), and any answer, a
        refusal too, counts. False when it cannot be reached (connection refused or lost, a
        certificate that is not the controller's, no answer in time). Raises nothing for the
        MC's sake."""
        ...


def pack_endpoint(grpc_endpoint: str, signaling_url: str) -> str:
    """The store's ``endpoint`` column holds both addresses an MC registers (host:port of its
    gRPC service, then its signaling URL, space-separated: neither contains a space)."""
    return f"{grpc_endpoint} {signaling_url}".strip()


def unpack_endpoint(stored: str) -> tuple[str, str]:
    """``(grpc_endpoint, signaling_url)``; an old record without a URL gives ``""`` for it."""
    grpc_endpoint, _, url = stored.partition(" ")
    return grpc_endpoint, url


def signaling_url(controller: ControllerRecord) -> str:
    return unpack_endpoint(controller.endpoint)[1]


def grpc_endpoint(controller: ControllerRecord) -> str:
    return unpack_endpoint(controller.endpoint)[0]


class ControllerDirectory:
    """The registered controllers, read from the store at most every
    :data:`CONTROLLER_CACHE_S` (this process's registrations and expiries call
    :meth:`changed`). Owns no task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._records: dict[str, ControllerRecord] = {}
        self._read_at = -float("inf")

    def changed(self) -> None:
        """Forget the cached controller list (a registration or an expiry was stored)."""
        self._read_at = -float("inf")

    async def records(self) -> dict[str, ControllerRecord]:
        """Every registered controller by id, as of at most :data:`CONTROLLER_CACHE_S` ago."""
        if trio.current_time() - self._read_at > CONTROLLER_CACHE_S:
            read_at = trio.current_time()
            records = await self._store.list_controllers()
            self._records = {r.controller_id: r for r in records}
            self._read_at = read_at
        return self._records

    async def controller_of(self, meeting: MeetingRecord) -> ControllerRecord:
        """The meeting's controller (``NotFound`` if it is no longer registered)."""
        if meeting.controller_id is None:
            raise InternalError(f"meeting {meeting.meeting_id} has no meeting controller")
        cached = (await self.records()).get(meeting.controller_id)
        if cached is not None:
            return cached
        return await self._store.get_controller(meeting.controller_id)


async def tell_meetings_ended(
    seam: MeetingControllers,
    meetings: Mapping[ControllerId, tuple[ControllerRecord, Sequence[MeetingId]]],
) -> bool:
    """Tell each controller its meetings ended, being empty (``reason`` ``"empty"``,
    docs/protocol.md §6): controllers concurrently (at most
    :data:`MAX_CONCURRENT_END_CALLS` at once), each one's meetings in turn, a controller
    dropped at its first failure, the whole round within :data:`END_EMPTY_NOTIFY_S`.
    Returns whether the round finished in time; failures are logged, never raised."""
    limiter = trio.CapacityLimiter(MAX_CONCURRENT_END_CALLS)
    with trio.move_on_after(END_EMPTY_NOTIFY_S) as scope:
        async with trio.open_nursery() as nursery:
            for controller, meeting_ids in meetings.values():
                nursery.start_soon(_tell_one, seam, controller, meeting_ids, limiter)
    return not scope.cancelled_caught


async def _tell_one(
    seam: MeetingControllers,
    controller: ControllerRecord,
    meeting_ids: Sequence[MeetingId],
    limiter: trio.CapacityLimiter,
) -> None:
    # One call at a time; stop at the first failure (the rest would likely wait as long for
    # nothing).
    async with limiter:
        for told, meeting_id in enumerate(meeting_ids):
            try:
                await seam.end_meeting(controller, meeting_id, reason="empty")
            except DarkTowerError as exc:
                log.warning(
                    "could not tell the meeting controller to end an empty meeting",
                    extra=fields(
                        controller=controller.controller_id,
                        meeting=meeting_id,
                        untold=len(meeting_ids) - told,
                        error=exc.message,
                    ),
                )
                return
