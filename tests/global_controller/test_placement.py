"""Placement as a table: every rule, ties, expired heartbeats, region fallback, no healthy MC."""

from __future__ import annotations

from typing import Any

import pytest

from darktower.errors import CapacityExceeded, ErrorCode
from darktower.global_controller.placement import (
    ControllerView,
    effective_health,
    is_alive,
    load,
    place_meeting,
    region_distance,
)
from darktower.global_controller.store import HealthStatus
from darktower.model import ControllerId
from darktower.protocol.heartbeats import MC_HEARTBEAT_TIMEOUT_S as HEARTBEAT_EXPIRY_S

NOW = 1000.0
H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def mc(
    cid: str,
    region: str = "us-west-1",
    health: HealthStatus = H,
    meetings: tuple[int, int] = (0, 10),
    participants: tuple[int, int] = (0, 100),
    age: float = 0.0,
) -> ControllerView:
    return ControllerView(
        controller_id=ControllerId(cid),
        region=region,
        health=health,
        current_meetings=meetings[0],
        max_meetings=meetings[1],
        current_participants=participants[0],
        max_participants=participants[1],
        last_heartbeat=NOW - age,
    )


CASES: list[tuple[str, list[ControllerView], str, str]] = [
    ("only one", [mc("a")], "us-west-1", "a"),
    ("requested region wins", [mc("a", "eu-west-1"), mc("b", "us-west-1")], "us-west-1", "b"),
    (
        "requested region wins over load",
        [mc("a", "eu-west-1"), mc("b", "us-west-1", meetings=(9, 10))],
        "us-west-1",
        "b",
    ),
    (
        "nearest region: same area",
        [mc("a", "eu-west-1"), mc("b", "us-east-1"), mc("c", "us-west-2")],
        "us-west-1",
        "c",
    ),
    (
        "nearest region: same continent",
        [mc("a", "eu-west-1"), mc("b", "us-east-1")],
        "us-west-1",
        "b",
    ),
    ("any region rather than none", [mc("a", "ap-south-1")], "us-west-1", "a"),
    ("no preference: least loaded", [mc("a", "eu-west-1", meetings=(5, 10)),
                                     mc("b", "us-east-1", meetings=(1, 10))], "", "b"),
    (
        "least loaded in the region",
        [mc("a", meetings=(5, 10)), mc("b", meetings=(2, 10)), mc("c", meetings=(3, 10))],
        "us-west-1",
        "b",
    ),
    (
        "load is the larger occupancy",
        [mc("a", meetings=(1, 10), participants=(90, 100)), mc("b", meetings=(5, 10))],
        "us-west-1",
        "b",
    ),
    (
        "load is relative to capacity",
        [mc("a", meetings=(5, 10)), mc("b", meetings=(10, 100))],
        "us-west-1",
        "b",
    ),
    ("tie: smallest id", [mc("c"), mc("a"), mc("b")], "us-west-1", "a"),
    (
        "tie after load: smallest id",
        [mc("b", meetings=(1, 10)), mc("a", meetings=(2, 20))],
        "us-west-1",
        "a",
    ),
    ("healthy before degraded", [mc("a", health=D), mc("b")], "us-west-1", "b"),
    (
        "healthy elsewhere before degraded in region",
        [mc("a", "us-west-1", health=D), mc("b", "eu-west-1")],
        "us-west-1",
        "b",
    ),
    (
        "degraded when healthy ones are full",
        [mc("a", health=D), mc("b", meetings=(10, 10))],
        "us-west-1",
        "a",
    ),
    (
        "degraded when healthy ones are silent",
        [mc("a", health=D), mc("b", age=HEARTBEAT_EXPIRY_S + 1)],
        "us-west-1",
        "a",
    ),
    ("unhealthy never", [mc("a", health=U), mc("b", "eu-west-1")], "us-west-1", "b"),
    (
        "full on meetings skipped",
        [mc("a", meetings=(10, 10)), mc("b", "eu-west-1", meetings=(9, 10))],
        "us-west-1",
        "b",
    ),
    (
        "full on participants skipped",
        [mc("a", participants=(100, 100)), mc("b", "eu-west-1")],
        "us-west-1",
        "b",
    ),
    (
        "expired heartbeat skipped even if it says healthy",
        [mc("a", age=HEARTBEAT_EXPIRY_S + 0.001), mc("b", "eu-west-1")],
        "us-west-1",
        "b",
    ),
    (
        "heartbeat exactly at expiry still alive",
        [mc("a", age=HEARTBEAT_EXPIRY_S), mc("b", "eu-west-1")],
        "us-west-1",
        "a",
    ),
    ("zero capacity means no room", [mc("a", meetings=(0, 0)), mc("b", "eu-west-1")],
     "us-west-1", "b"),
    ("region match ignores case", [mc("a", "US-West-1"), mc("b", "us-west-2")], "us-west-1", "a"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "views", "region", "expected"), CASES, ids=[c[0] for c in CASES])
def test_placement_table(
    name: str, views: list[ControllerView], region: str, expected: str
) -> None:
    assert place_meeting(views, region=region, now=NOW).controller_id == expected
    # Input order never matters.
    assert place_meeting(list(reversed(views)), region=region, now=NOW).controller_id == expected


NO_CAPACITY: list[tuple[str, list[ControllerView]]] = [
    ("none registered", []),
    ("all unhealthy", [mc("a", health=U), mc("b", health=U)]),
    ("all silent", [mc("a", age=HEARTBEAT_EXPIRY_S + 1), mc("b", health=D, age=1e6)]),
    ("all full", [mc("a", meetings=(10, 10)), mc("b", health=D, participants=(100, 100))]),
]


@pytest.mark.parametrize(("name", "views"), NO_CAPACITY, ids=[c[0] for c in NO_CAPACITY])
def test_no_eligible_controller_is_capacity_exceeded(
    name: str, views: list[ControllerView]
) -> None:
    with pytest.raises(CapacityExceeded, match="no healthy meeting controller") as info:
        place_meeting(views, region="us-west-1", now=NOW)
    assert info.value.code is ErrorCode.CAPACITY_EXCEEDED
    assert info.value.details["registered"] == str(len(views))


def test_custom_heartbeat_expiry() -> None:
    views = [mc("a", age=5.0), mc("b", "eu-west-1")]
    assert place_meeting(views, region="us-west-1", now=NOW).controller_id == "a"
    assert (
        place_meeting(views, region="us-west-1", now=NOW, heartbeat_expiry_s=4.0).controller_id
        == "b"
    )


@pytest.mark.parametrize(
    ("age", "alive"), [(0.0, True), (HEARTBEAT_EXPIRY_S, True), (HEARTBEAT_EXPIRY_S + 0.1, False)]
)
def test_is_alive(age: float, alive: bool) -> None:
    view = mc("a", health=D, age=age)
    assert is_alive(view, NOW) is alive
    assert effective_health(view, NOW) is (D if alive else U)


@pytest.mark.parametrize(
    ("requested", "region", "distance"),
    [
        ("us-west-1", "us-west-1", 0),
        ("us-west-1", "us-west-2", 1),
        ("us-west-1", "us-east-1", 2),
        ("us-west-1", "eu-west-1", 3),
        ("us-west-1", "local", 3),
        ("", "anything", 0),
    ],
)
def test_region_distance(requested: str, region: str, distance: int) -> None:
    assert region_distance(requested, region) == distance


def test_load_of_a_zero_capacity_controller_is_infinite() -> None:
    kwargs: dict[str, Any] = {"meetings": (0, 0)}
    assert load(mc("a", **kwargs)) == float("inf")
