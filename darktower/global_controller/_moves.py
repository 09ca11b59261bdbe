"""A meeting never dies with its Meeting Controller (docs/protocol.md §14): the controller a
join goes to, after moving the meeting to a live one when its own is lost, draining or gone.

The move is a compare-and-set in the store (``Store.move_meeting``) made before the new MC is
told (``AssignMeeting``): of two replicas or two joins moving the meeting at once one wins and
the other sends its joiner to the winner's MC; an MC that holds no room for a meeting the GC
has active on it re-creates it when a join asks (its heartbeat reply lists the meeting). An MC
that takes nothing leaves the meeting CONTROLLER_LOST for the next join to try again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from darktower.errors import CapacityExceeded, Conflict, DarkTowerError, NotFound
from darktower.global_controller import placement
from darktower.global_controller._limits import MAX_PLACEMENT_ATTEMPTS
from darktower.global_controller.store import ControllerRecord, MeetingRecord, MeetingStatus
from darktower.logs import fields
from darktower.model import ControllerId

if TYPE_CHECKING:
    from darktower.global_controller.service import GlobalController

log = logging.getLogger("darktower.gc")

# A join that lost the race to move its meeting reads it again, at most this many times (each
# loss means another join or replica moved it, so the next read finds it placed).
MAX_MOVE_ROUNDS = 3


def ended(meeting: MeetingRecord) -> Conflict:
    return Conflict(f"meeting {meeting.meeting_id} has ended", details={"status": "ended"})


async def controller_for_join(
    gc: GlobalController, meeting: MeetingRecord
) -> tuple[MeetingRecord, ControllerRecord]:
    """The meeting (as it is now) and the controller a join of it goes to.

    A meeting whose controller is lost (CONTROLLER_LOST), draining or no longer registered is
    first moved to a live controller (placement's rules, in the old controller's region).
    Raises ``Conflict`` for an ended meeting, ``CapacityExceeded`` when no controller takes it.
    """
    for _ in range(MAX_MOVE_ROUNDS):
        if not meeting.is_active:
            raise ended(meeting)
        current: ControllerRecord | None = None
        if meeting.controller_id is not None:
            try:
                current = await gc.directory.controller_of(meeting)
            except NotFound:
                pass
        if meeting.status is MeetingStatus.ACTIVE and current is not None and not current.draining:
            return meeting, current
        moved = await _move(gc, meeting, current)
        if moved is not None:
            return moved
        meeting = await gc.store.get_meeting(meeting.meeting_id)  # moved by someone else
    raise CapacityExceeded(
        f"meeting {meeting.meeting_id} is being moved to another meeting controller; try again"
    )


async def _move(
    gc: GlobalController, meeting: MeetingRecord, current: ControllerRecord | None
) -> tuple[MeetingRecord, ControllerRecord] | None:
    """Move ``meeting`` off ``current`` (its controller, None if not registered); None when
    the meeting changed meanwhile (another join or replica moved or ended it)."""
    records = await gc.directory.records()
    region = current.region if current is not None else gc.default_region
    expected: tuple[ControllerId | None, MeetingStatus] = (meeting.controller_id, meeting.status)
    placed: ControllerId | None = None  # the last controller the meeting was moved to
    tried: set[str] = set()
    errors: list[str] = []
    while len(tried) < MAX_PLACEMENT_ATTEMPTS:
        candidates = [
            placement.to_view(r) for r in records.values() if r.controller_id not in tried
        ]
        try:
            choice = placement.place_meeting(
                candidates, region=region, now=gc.now(), heartbeat_expiry_s=gc.heartbeat_timeout_s
            )
        except CapacityExceeded:
            break
        target = records[choice.controller_id]
        tried.add(target.controller_id)
        moved = await gc.store.move_meeting(
            meeting.meeting_id, expected, (target.controller_id, MeetingStatus.ACTIVE)
        )
        if moved is None:
            return None
        placed = target.controller_id
        expected = (placed, MeetingStatus.ACTIVE)
        try:
            await gc.controllers.assign_meeting(target, moved)
        except DarkTowerError as exc:
            log.warning(
                "meeting controller did not take a moved meeting",
                extra=fields(
                    meeting=meeting.meeting_id, controller=target.controller_id, error=exc.message
                ),
            )
            errors.append(f"{target.controller_id}: {exc.message}")
            continue
        log.info(
            "meeting moved to another meeting controller",
            extra=fields(
                meeting=meeting.meeting_id,
                from_controller=meeting.controller_id or "",
                was=meeting.status.value,
                to_controller=target.controller_id,
            ),
        )
        return moved, target
    if placed is not None:
        # Placed on an MC that did not take it: lost again, for the next join to try.
        await gc.store.move_meeting(
            meeting.meeting_id, expected, (placed, MeetingStatus.CONTROLLER_LOST)
        )
    why = "; ".join(errors) or "no live meeting controller has room"
    raise CapacityExceeded(
        f"the meeting controller of meeting {meeting.meeting_id} is not responding or is "
        f"draining, and no other took the meeting ({why})",
        details={"status": MeetingStatus.CONTROLLER_LOST.value, "tried": str(len(tried))},
    )
