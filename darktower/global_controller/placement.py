"""Which Meeting Controller gets a new meeting: a pure function over the registry's views.

Rules, in order (each decided here and covered by ``tests/global_controller/test_placement.py``):

1. **Eligible** controllers are alive (a heartbeat within ``heartbeat_expiry_s`` of ``now``;
   an older one counts as ``UNHEALTHY`` whatever it last reported), not ``UNHEALTHY``, not
   draining (docs/protocol.md §14), and have room: ``current_meetings < max_meetings`` and ``current_participants < max_participants``
   (a zero maximum means no room: such a controller is misconfigured, not unlimited).
   No eligible controller raises :class:`~darktower.errors.CapacityExceeded` (the GC answers 503).
2. **Health**: a ``DEGRADED`` controller is used only when no ``HEALTHY`` one has room, in any
   region. A controller that says it is in trouble gets no new meeting while a healthy one can
   take it, even a farther one: a farther region costs latency, a failing controller costs
   the meeting.
3. **Region**: the requested region, else the nearest by :func:`region_distance` (names share a
   prefix: ``us-west-1`` is nearer to ``us-west-2`` than to ``us-east-1``, which is nearer than
   ``eu-west-1``). An empty requested region means no preference.
4. **Load**: the least loaded wins, load being the larger of the meeting and participant
   occupancy fractions.
5. **Ties** go to the smallest ``controller_id``, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from darktower.errors import CapacityExceeded
from darktower.global_controller.store import ControllerRecord, HealthStatus
from darktower.model import ControllerId
from darktower.protocol.heartbeats import MC_HEARTBEAT_TIMEOUT_S


@attrs.frozen
class ControllerView:
    """What placement needs to know of one registered controller."""

    controller_id: ControllerId
    region: str
    health: HealthStatus  # the contract's (lower is better), as the store keeps it
    max_meetings: int
    current_meetings: int
    max_participants: int
    current_participants: int
    last_heartbeat: float  # on the same clock as ``now``
    draining: bool = False  # it said it drains: nothing new goes there


def to_view(record: ControllerRecord) -> ControllerView:
    """A store record as placement sees it (``last_heartbeat`` in unix seconds)."""
    return ControllerView(
        controller_id=record.controller_id,
        region=record.region,
        health=record.health,
        max_meetings=record.capacity.max_meetings,
        current_meetings=record.capacity.current_meetings,
        max_participants=record.capacity.max_participants,
        current_participants=record.capacity.current_participants,
        last_heartbeat=record.last_heartbeat.timestamp(),
        draining=record.draining,
    )


def is_alive(
    view: ControllerView, now: float, heartbeat_expiry_s: float = MC_HEARTBEAT_TIMEOUT_S
) -> bool:
    """Whether the controller's last heartbeat is recent enough at ``now``."""
    return now - view.last_heartbeat <= heartbeat_expiry_s


def effective_health(
    view: ControllerView, now: float, heartbeat_expiry_s: float = MC_HEARTBEAT_TIMEOUT_S
) -> HealthStatus:
    """The reported health, or ``UNHEALTHY`` once the heartbeat has expired."""
    return view.health if is_alive(view, now, heartbeat_expiry_s) else HealthStatus.UNHEALTHY


def has_room(view: ControllerView) -> bool:
    return (
        view.current_meetings < view.max_meetings
        and view.current_participants < view.max_participants
    )


def load(view: ControllerView) -> float:
    """Occupancy in [0, 1] (above if over-full): the larger of meetings and participants."""
    if view.max_meetings <= 0 or view.max_participants <= 0:
        return float("inf")
    return max(
        view.current_meetings / view.max_meetings,
        view.current_participants / view.max_participants,
    )


def region_distance(requested: str, region: str) -> int:
    """0 for the same region, growing with the number of differing ``-``-separated parts."""
    if not requested:
        return 0
    a, b = requested.lower().split("-"), region.lower().split("-")
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return max(len(a), len(b)) - common


def place_meeting(
    controllers: Iterable[ControllerView],
    *,
    region: str,
    now: float,
    heartbeat_expiry_s: float = MC_HEARTBEAT_TIMEOUT_S,
) -> ControllerView:
    """Choose the controller for a new meeting (rules in the module docstring).

    Raises :class:`CapacityExceeded` when no controller is alive, healthy enough and has room.
    """
    views = list(controllers)
    eligible = [
        v
        for v in views
        if effective_health(v, now, heartbeat_expiry_s) is not HealthStatus.UNHEALTHY
        and not v.draining
        and has_room(v)
    ]
    if not eligible:
        down = sum(
            effective_health(v, now, heartbeat_expiry_s) is HealthStatus.UNHEALTHY or v.draining
            for v in views
        )
        raise CapacityExceeded(
            f"no healthy meeting controller with spare capacity ({len(views)} registered, "
            f"{down} unhealthy, silent or draining, {len(views) - down} full)",
            details={"registered": str(len(views)), "unhealthy": str(down)},
        )
    return min(
        eligible,
        key=lambda v: (v.health, region_distance(region, v.region), load(v), v.controller_id),
    )
