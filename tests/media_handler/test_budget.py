"""The per-participant byte budget: token bucket and priority order (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktower.frames import FrameFlags, FrameType
from darktower.media_handler import ByteBudget, Priority, priority_of
from darktower.media_handler._budget import DEFAULT_BURST_S, RESERVE

DISC = int(FrameFlags.DISCARDABLE)
EOF = int(FrameFlags.END_OF_FRAME)

# (frame type, flags, top layer, class)
CLASSES = [
    (FrameType.VIDEO_DELTA, DISC, True, Priority.DISCARDABLE),
    (FrameType.VIDEO_DELTA, DISC, False, Priority.DISCARDABLE),
    (FrameType.AUDIO, DISC, False, Priority.DISCARDABLE),
    (FrameType.VIDEO_DELTA, EOF, True, Priority.TOP_LAYER_DELTA),
    (FrameType.VIDEO_DELTA, EOF, False, Priority.VIDEO_DELTA),
    (FrameType.VIDEO_DELTA, 0, False, Priority.VIDEO_DELTA),
    (FrameType.VIDEO_KEY, EOF, True, Priority.VIDEO_KEY),
    (FrameType.AUDIO, EOF, False, Priority.AUDIO),
]


@pytest.mark.parametrize(("frame_type", "flags", "top", "priority"), CLASSES)
def test_priority_of(frame_type: FrameType, flags: int, top: bool, priority: Priority) -> None:
    assert priority_of(frame_type, flags, top_layer=top) is priority


def test_priority_order_is_the_drop_order() -> None:
    # dropped first -> dropped last
    assert sorted(Priority) == [
        Priority.DISCARDABLE,
        Priority.TOP_LAYER_DELTA,
        Priority.VIDEO_DELTA,
        Priority.VIDEO_KEY,
        Priority.AUDIO,
    ]
    reserves = [RESERVE[p] for p in sorted(Priority)]
    assert reserves == sorted(reserves, reverse=True) and len(set(reserves)) == len(reserves)
    assert RESERVE[Priority.AUDIO] == 0


# Bucket of 1000 B/s, burst 1000 B. (tokens spent first, priority, size, admitted)
ADMIT = [
    (0, Priority.DISCARDABLE, 250, True),  # leaves 750 = its reserve
    (0, Priority.DISCARDABLE, 251, False),
    (300, Priority.DISCARDABLE, 1, False),  # 700 left: below the discardable reserve already
    (300, Priority.TOP_LAYER_DELTA, 200, True),  # leaves 500
    (300, Priority.TOP_LAYER_DELTA, 201, False),
    (300, Priority.VIDEO_DELTA, 201, True),
    (600, Priority.VIDEO_DELTA, 200, False),  # 400 - 200 < 250
    (600, Priority.VIDEO_KEY, 275, True),  # leaves 125
    (600, Priority.AUDIO, 400, True),  # audio may empty the bucket
    (600, Priority.AUDIO, 401, False),
    (1000, Priority.AUDIO, 1, False),
]


@pytest.mark.parametrize(("spent", "priority", "size", "admitted"), ADMIT)
def test_admit(spent: int, priority: Priority, size: int, admitted: bool) -> None:
    budget = ByteBudget(1000, 1000, now=5.0)
    if spent:
        assert budget.admit(Priority.AUDIO, spent, 5.0)
    before = budget.tokens(5.0)
    assert budget.admit(priority, size, 5.0) is admitted
    assert budget.tokens(5.0) == (before - size if admitted else before)


def test_refill_over_time_up_to_the_burst() -> None:
    budget = ByteBudget(1000, 500, now=0.0)
    assert budget.admit(Priority.AUDIO, 500, 0.0)
    assert budget.tokens(0.0) == 0
    assert budget.tokens(0.25) == 250
    assert not budget.admit(Priority.AUDIO, 300, 0.25)
    assert budget.admit(Priority.AUDIO, 300, 0.3)
    assert budget.tokens(10.0) == 500  # capped at the burst
    assert budget.tokens(9.0) == 500  # time going backwards adds nothing


def test_default_burst_and_validation() -> None:
    assert ByteBudget(2000).burst == 2000 * DEFAULT_BURST_S
    with pytest.raises(ValueError):
        ByteBudget(0)
    with pytest.raises(ValueError):
        ByteBudget(100, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(Priority)), st.integers(1, 400), st.floats(0, 0.05)),
        min_size=1,
        max_size=200,
    )
)
def test_over_budget_lower_classes_go_first(
    frames: list[tuple[Priority, int, float]],
) -> None:
    """Offered the same traffic, a higher class is never refused while a lower one gets through
    at the same moment, and no class spends past the rate plus burst."""
    budget = ByteBudget(10_000, 2_000, now=0.0)
    now = 0.0
    spent = 0
    for priority, size, gap in frames:
        now += gap
        tokens = budget.tokens(now)
        ok = budget.admit(priority, size, now)
        spent += size if ok else 0
        for other in Priority:
            would = tokens - size >= RESERVE[other] * budget.burst
            if other > priority and ok:
                assert would  # a more important frame of this size would have passed too
            if other < priority and not ok:
                assert not would
    assert spent <= 10_000 * now + 2_000 + 1e-6


def test_sustained_overload_starves_the_lowest_classes_first() -> None:
    # 4x over budget; within each 10 ms tick the least important frame is offered first, so
    # only the reserves (not the order of arrival) protect the important ones.
    budget = ByteBudget(10_000, 2_000, now=0.0)
    sizes = {
        Priority.DISCARDABLE: 100,
        Priority.TOP_LAYER_DELTA: 100,
        Priority.VIDEO_DELTA: 100,
        Priority.VIDEO_KEY: 100,
        Priority.AUDIO: 20,
    }
    admitted = dict.fromkeys(Priority, 0)
    ticks = 1000
    for tick in range(ticks):
        for priority in sorted(Priority):
            admitted[priority] += budget.admit(priority, sizes[priority], tick / 100)
    share = [admitted[p] / ticks for p in sorted(Priority)]
    assert share == sorted(share)
    assert share[-1] == 1.0  # audio never dropped
    assert share[0] < 0.05  # discardable nearly all dropped
    total = sum(admitted[p] * sizes[p] for p in Priority)
    assert total <= 10_000 * (ticks - 1) / 100 + 2_000
